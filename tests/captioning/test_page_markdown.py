"""Nougat's post-processing of generated pages (``clean_page`` and its parts) against transformers'
NougatTokenizer functions on the same strings: crafted pages for each rule, then random pages built
from the fragments those rules look for."""

from __future__ import annotations

import random
import types

import pytest

from purevedec.captioning import page_markdown, page_references, page_repetition

Levenshtein = pytest.importorskip("Levenshtein")   # transformers' reference-removal needs it
nougat = pytest.importorskip("transformers.models.nougat.tokenization_nougat")

REFS = [f"* [{i}] A. Author and B. Writer. A study of things, _Journal_ {1990 + i}." for i in range(1, 21)]
PAGES = {
    "plain": "We prove that the bound holds.\n\nIt is tight",
    "long_heading": "## 1. " + "A heading that goes on and on " * 5 + "\n\nBody text.",
    "empty_headings": "# 3.\n## iv\nText after.\n### \nMore",
    "last_heading": "Some text here.\n\n## Conclusion",
    "leftmargin": "Items:\n* [leftmargin=*]\n* one\n* two",
    "repetition": "Intro sentence. " + "We repeat this sentence again and again. " * 12,
    "repetition_whole": "We say the same thing once more." * 4,      # nothing but the loop
    "repetition_no_stop": "start " + "abcdefghij klmnopqrst uvwxyz0123 " * 6,
    "repetition_upper": "Head. " + "THE SAME LINE, AGAIN AND AGAIN!\n" * 8,
    "dotted_i_lowering": "İİİ intro. " + "İ repeated text segment here ok. " * 6,
    "references": "Text before.\n\n## References\n\n" + "\n".join(REFS) + "\n\nAfter the list.",
    "references_mid": "Para one.\n" + "\n".join(REFS[:18]) + "\nTail line that differs entirely",
    "references_numbered": "\n".join(f"[{i}] Same reference text repeated here." for i in range(30)),
    "references_suffix": "\n".join(f"* [{i}] Same title of the work here, {2000 + i}a" for i in range(20))
                         + "\n* [20] Same title of the work here, 2020",   # the last line ends in digits
    "initials_ref": "* [3] A. B. C. D. E. F. G. H. I. J. K. Name\nok",
    "empty_brackets": "* [12][]Some Name, 2001\nText",
    "single_chars": "a\n\nThe middle part of the page.\n\nb",
    "pmc_math": "value _x__12_ and _y_ ; with (_a__bc_) and 3_k_4",
    "footnote": "Text.\nFootnote 1: footnotetext: the note\n\nNext. [FOOTNOTE:1]hidden[ENDFOOTNOTE] end",
    "lists": "- 1 first item - 2 second item - 2.1 nested item\nplain\n* i. alpha * ii. beta",
    "list_last": "intro\n- a b - c d - e",
    "ends_brace": "\\begin{equation} x \\end{equation}",
    "one_char": "A",
    "starts_bold": "**Bold** start and no end",
    "figure_last": "Text\nFigure 3: a plot",
    "tables": "Before \\begin{table} \\begin{tabular}{l l} a & b \\\\ \\end{tabular} \\end{table} Table 1: x",
    "empty_tabular": "x \\begin{tabular}{l l}  & \\\\ \\end{tabular} y\n\\begin{tabular}{}\n\n\\end{tabular}",
    "empty_tabular_cols": "\\begin{tabular}{c c c} & & \\\\ \\end{tabular}",
    "absurd_table": "keep\n" + "&" * 401 + "\nkeep too",
    "array": "\\begin{array}[]{cc} a \\end{array}",
    "sab": "**S. A. B.**\n**S. A. B.**\n\nrest",
    "period_lines": "a line\n.\n  \n.  \nb line",
    "blank_lines": "one\n\n\n\n\ntwo",
    "tags": "(1) \\[x=1\\]\n\\[y=2\\] (2a)\n\\[z\\] (3) \\[w\\]",
    "bold_math": "\\bm{x} and {\\bm y} and \\mbox{\\boldmath$z$}",
    "urls": "See https://example.com/a/b?c=d, and ftp://files.org/x. Also http://no",
    "code": "```  code here  ```",
    "escaped_period": "end\\. Next",
    "empty": "",
}


def reference(monkeypatch, words=None):
    """transformers' NougatTokenizer with NLTK's word list replaced: ``words`` or, if None, missing
    (the LookupError the reference turns into a trailing space)."""
    def corpus_words():
        if words is None:
            raise LookupError("words")
        return list(words)
    fake = types.SimpleNamespace(corpus=types.SimpleNamespace(words=types.SimpleNamespace(words=corpus_words)))
    monkeypatch.setattr(nougat, "nltk", fake, raising=False)
    return nougat.NougatTokenizer()


@pytest.mark.parametrize("name", sorted(PAGES))
@pytest.mark.parametrize("fix_markdown", [True, False])
def test_clean_page_equals_transformers(name, fix_markdown, monkeypatch):
    tok = reference(monkeypatch)
    text = PAGES[name]
    assert page_markdown.clean_page(text, fix_markdown, words=None) == tok.post_process_single(text, fix_markdown)


def test_the_rules_change_the_crafted_pages(monkeypatch):
    """The crafted pages exercise the rules: most of them come out changed."""
    changed = [n for n, t in PAGES.items() if page_markdown.clean_page(t, words=None) != t]
    assert len(changed) >= len(PAGES) - 3, sorted(set(PAGES) - set(changed))
    assert "[MISSING_PAGE_POST]" in page_markdown.clean_page(PAGES["references"], words=None)


@pytest.mark.parametrize("words", [{"end", "tight"}, set()])
def test_trailing_space_follows_the_word_list(words, monkeypatch):
    tok = reference(monkeypatch, words)
    for text in ("It is tight", "the very end", "no match"):
        assert page_markdown.clean_page(text, words=words) == tok.post_process_single(text)


FRAGMENTS = ["# Title", "## 2.", "Some text.", "More words here", "\n", "\n\n", "- a - b c - 2.1 d e", "* [4] ",
             "A. ", "_x__1_ ", " _y_ ", "\\begin{table} \\begin{tabular}{l l}", " & ", "\\\\", "\\end{tabular} \\end{table}",
             "Table 2", "Figure 1", "(4) \\[a\\]", "\\[b\\] (5)", "https://a.org/x", "**S. A. B.**", ".", "İ", "ok ",
             "Footnote 2: thanks: x", "[FOOTNOTE:3]n[ENDFOOTNOTE]", "```", "\\bm{", "}", "3", "? ", "!"]


def random_page(rng: random.Random) -> str:
    parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 30))]
    if rng.random() < 0.3:   # a loop, the way a stuck decoder ends a page
        parts.append((" ".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(3, 8))) + " ") * rng.randint(2, 9))
    if rng.random() < 0.2:   # a run of near-identical reference lines
        parts.append("\n".join(f"* [{i}] {rng.choice(['Smith', 'Jones'])} J. A long enough title. {2000 + i}"
                               for i in range(rng.randint(10, 25))))
    return "".join(parts)


def test_random_pages_equal_transformers(monkeypatch):
    tok = reference(monkeypatch)
    rng = random.Random(29)
    for _ in range(300):
        text = random_page(rng)
        assert page_markdown.clean_page(text, words=None) == tok.post_process_single(text), text


def test_parts_equal_transformers(monkeypatch):
    tok = reference(monkeypatch)
    rng = random.Random(7)
    texts = list(PAGES.values()) + [random_page(rng) for _ in range(200)]
    for text in texts:
        assert page_repetition.truncate_repetitions(text) == nougat.truncate_repetitions(text), text
        assert page_references.remove_hallucinated_references(text) == tok.remove_hallucinated_references(text), text
        assert page_markdown.markdown_compatible(text) == nougat.markdown_compatible(text), text
        assert page_markdown.normalize_list_like_lines(text) == nougat.normalize_list_like_lines(text), text
        assert page_markdown.correct_tables(text) == tok.correct_tables(text), text


def test_similarity_is_levenshtein_ratio():
    rng = random.Random(3)
    pairs = [("", ""), ("", "a"), ("abc", "abc"), ("kitten", "sitting"), ("a" * 300, "a" * 299 + "b")]
    pairs += [("".join(rng.choice("ab c") for _ in range(rng.randint(0, 40))),
               "".join(rng.choice("ab c") for _ in range(rng.randint(0, 40)))) for _ in range(2000)]
    for a, b in pairs:
        assert page_references.similarity(a, b) == Levenshtein.ratio(a, b), (a, b)
