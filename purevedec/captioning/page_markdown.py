"""Nougat's clean-up of a generated page of Markdown: ``clean_page(text)`` is transformers'
``NougatTokenizerFast.post_process_single(text)`` (its ``post_process_generation`` on one text),
the same string on the same input; the rules are the Nougat authors'.

In order: drop headings too long to be headings and empty numbered ones, and a heading that ends
the page (usually hallucinated); cut a repetition loop (``page_repetition``); replace runs of
hallucinated references (``page_references``); fix reference-list and PMC math artefacts and
footnotes; split list items run together on one line; end the page with the spacing that lets
pages be joined; separate and drop broken LaTeX tables; collapse blank lines; and, with
``fix_markdown``, turn equation numbers into ``\\tag``, bold math into ``\\mathbf`` and URLs into links.

The reference adds a space after a last word found in NLTK's English word list, or whenever that
list is not installed (``nltk.download("words")``); ``words`` passes a list instead.
"""

from __future__ import annotations

import functools
import re
from typing import Collection, Optional

from .page_references import remove_hallucinated_references
from .page_repetition import truncate_repetitions

M = re.MULTILINE

# (pattern, replacement, flags): the fixes applied before the repetition cut
_LONG_HEADING = (r"(?:\n|^)#+ \d*\W? ?(.{100,})", r"\n\1", 0)           # a heading of 100+ characters is text
_EMPTY_HEADING = (r"^#+ (?:[\d+\.]+|[ixv\.]+)?\s*(?:$|\n\s*)", "", M)    # "## 3." or "# iv" alone

# the fixes applied after the reference cut, in order
_ARTEFACTS = [
    (r"^\* \[\d+\](\s?[A-W]\.+\s?){10,}.*$", "", M),                   # a reference of ten-plus initials
    (r"^(\* \[\d+\])\[\](.*)$", r"\1\2", M),                           # "* [12][]Name" -> "* [12]Name"
    (r"(^\w\n\n|\n\n\w$)", "", 0),                                       # a lone character at either end
    (r"([\s.,()])_([a-zA-Z0-9])__([a-zA-Z0-9]){1,3}_([\s.,:()])", r"\1\(\2_{\3}\)\4", 0),   # PMC math: _x__i_
    (r"([\s.,\d])_([a-zA-Z0-9])_([\s.,\d;])", r"\1\(\2\)\3", 0),        # PMC math: _x_
    (r"(\nFootnote .*?:) (?:footnotetext|thanks):\W*(.*(?:\n\n|$))", r"\1 \2", 0),
    (r"\[FOOTNOTE:.+?\](.*?)\[ENDFOOTNOTE\]", "", 0),
]

# the fixes applied after the tables are separated
_LATE = [
    (r"\\begin{tabular}{([clr ]){2,}}\s*[& ]*\s*(\\\\)? \\end{tabular}", "", 0),   # an empty tabular
    (r"(\*\*S\. A\. B\.\*\*\n+){2,}", "", 0),
    (r"^#+( [\[\d\w])?$", "", M),                                        # an empty or cut heading
    (r"^\.\s*$", "", M),                                                 # a line of one period
    (r"\n{3,}", "\n\n", 0),
]

_MARKDOWN = [
    (r"^\(([\d.]+[a-zA-Z]?)\) \\\[(.+?)\\\]$", r"\[\2 \\tag{\1}\]", M),      # (3) \[x\] -> \[x \tag{3}\]
    (r"^\\\[(.+?)\\\] \(([\d.]+[a-zA-Z]?)\)$", r"\[\1 \\tag{\2}\]", M),      # \[x\] (3)
    (r"^\\\[(.+?)\\\] \(([\d.]+[a-zA-Z]?)\) (\\\[.+?\\\])$", r"\[\1 \\tag{\2}\] \3", M),
]
_URL = r"((?:http|ftp|https):\/\/(?:[\w_-]+(?:(?:\.[\w_-]+)+))(?:[\w.,@?^=%&:\/~+#-]*[\w@?^=%&\/~+#-]))"


def _apply(text: str, rules) -> str:
    for pattern, replacement, flags in rules:
        text = re.sub(pattern, replacement, text, flags=flags)
    return text


def markdown_compatible(text: str) -> str:
    """Equation numbers as ``\\tag``, bold math as ``\\mathbf``, URLs as links, code fences on their own lines."""
    text = _apply(text, _MARKDOWN)
    text = text.replace(r"\. ", ". ")
    text = text.replace(r"\bm{", r"\mathbf{").replace(r"{\\bm ", r"\mathbf{")
    text = re.sub(r"\\mbox{ ?\\boldmath\$(.*?)\$}", r"\\mathbf{\1}", text)
    text = re.sub(_URL, r"[\1](\1)", text)
    return re.sub(r"```\s*(.+?)\s*```", r"```\n\1\n```", text, flags=re.DOTALL)


_NUMERAL = re.compile(r"^[\dixv]+((?:\.[\dixv])?)+$", re.IGNORECASE | M)


def _split_items(line: str, first_line: bool, last_line: bool) -> str:
    """One line holding several list items ("- a - b") -> one item per line, nested by numbering."""
    bullet = re.search(r". ([-*]) ", line).group(1) + " "
    out = []
    for i, item in enumerate(line.split(bullet)[1:]):
        item = item.strip()
        numeral, _, rest = item.partition(" ")
        if not rest:
            continue
        level = numeral.count(".") if _NUMERAL.match(numeral) else 0
        lead = bullet if i > 0 or first_line else line[0] + " "
        out.append(("\n" if i > 0 else "") + "\t" * level + lead + item)
    return "".join(out) + ("\n" if last_line else "")


def normalize_list_like_lines(text: str) -> str:
    """Lines that start with a bullet and hold more items split into one item per line."""
    lines = text.split("\n")
    return "\n".join(_split_items(line, n == 0, n == len(lines) - 1)
                     if line[:1] in ("-", "*") and re.search(r". ([-*]) ", line) else line
                     for n, line in enumerate(lines))


def correct_tables(text: str) -> str:
    """Lines of absurd tables removed, table and tabular openings and closings on their own lines."""
    for line in text.split("\n"):
        if line.count("\\begin{tabular}") > 15 or line.count("\\multicolumn") > 60 or line.count("&") > 400:
            text = text.replace(line, "")
    for before, after in (("\\begin{table} \\begin{tabular}", "\\begin{table}\n\\begin{tabular}"),
                          ("\\end{tabular} \\end{table}", "\\end{tabular}\n\\end{table}"),
                          ("\\end{table} Tab", "\\end{table}\nTab")):
        text = text.replace(before, after)
    text = re.sub(r"(^.+)\\begin{tab", r"\1\n\\begin{tab", text, flags=M)
    text = text.replace(r"\begin{tabular}{l l}  & \\ \end{tabular}", "")
    return text.replace("\\begin{tabular}{}\n\n\\end{tabular}", "")


@functools.lru_cache(maxsize=1)
def english_words() -> Optional[frozenset]:
    """NLTK's English word list, or None when NLTK or its ``words`` corpus is not installed."""
    try:
        import nltk
        return frozenset(nltk.corpus.words.words())
    except (ImportError, LookupError):
        return None


def _page_end(text: str, words: Optional[Collection[str]]) -> str:
    """The spacing that lets this page be joined to the next one, by the reference's rules."""
    if text.endswith((".", "}")):
        text += "\n\n"
    if re.match(r"[A-Z0-9,;:]$", text):   # (a whole text of one such character, as the reference reads it)
        return text + " "
    if text.startswith(("#", "**", "\\begin")):
        return "\n\n" + text
    if text.split("\n")[-1].startswith(("#", "Figure", "Table")):
        return text + "\n\n"
    if words is None or text.split(" ")[-1] in words:
        return text + " "
    return text


def clean_page(text: str, fix_markdown: bool = True, words: Optional[Collection[str]] = ...) -> str:
    """One generated page cleaned up as transformers' ``NougatTokenizerFast.post_process_single`` does.
    ``words``: the word list that decides the trailing space (default NLTK's, if installed; None: none)."""
    words = english_words() if words is ... else words
    text = _apply(text, [_LONG_HEADING]).strip()
    text = text.replace("\n* [leftmargin=*]\n", "\n")
    text = _apply(text, [_EMPTY_HEADING])
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1].startswith("#") and lines[-1].lstrip("#").startswith(" "):
        text = "\n".join(lines[:-1])   # a heading as the page's last line is most likely hallucinated
    text = remove_hallucinated_references(truncate_repetitions(text))
    text = normalize_list_like_lines(_apply(text, _ARTEFACTS))
    text = correct_tables(_page_end(text, words))
    text = _apply(text.replace("\\begin{array}[]{", "\\begin{array}{"), _LATE)
    return markdown_compatible(text) if fix_markdown else text
