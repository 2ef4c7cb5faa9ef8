"""``purevedec read`` on tiny Donut- and Nougat-shaped checkpoints: one record per PDF page and image,
texts equal to transformers' generate on the pages pypdfium2 renders, per-file errors, resuming,
``--json`` equal to Donut's processor recipe and ``--markdown`` equal to Nougat's post-processing."""

from __future__ import annotations

import json
import re
import types

import numpy as np
import pytest
import torch
from PIL import Image

import purevedec as pv
from cli_util import run_cli
from models import save_captioning_checkpoint
from test_document_models import make_pair

pdfium = pytest.importorskip("pypdfium2")
START, PAD, EOS = 0, 1, 2
TAGS = ["<s_cord-v2>", "<s_menu>", "</s_menu>", "<s_nm>", "</s_nm>", "<s_price>", "</s_price>", "<sep/>",
        "<memo/>"]


def word_tokenizer(path, vocab_size: int, tokenizer_class: str, tags=()):
    """A word-level tokenizer over the whole vocabulary ("t<id>", "</s>" at EOS, "<pad>" at PAD), the
    ``tags`` as added special tokens at ids 3.., saved with ``tokenizer_class`` (if not None) named in
    its config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    names = {PAD: "<pad>", EOS: "</s>", **{3 + i: t for i, t in enumerate(tags)}}
    vocab = {names.get(i, f"t{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<pad>",
                            additional_special_tokens=list(tags)).save_pretrained(path)
    if tokenizer_class is not None:
        config = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": tokenizer_class}))


def checkpoint_dir(name, path, processor, tokenizer_class, tags=()):
    model = make_pair(name)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = START, PAD, EOS
    save_captioning_checkpoint(model, path)
    processor.save_pretrained(path)
    word_tokenizer(path, model.config.decoder.vocab_size, tokenizer_class, tags)
    return model, str(path)


@pytest.fixture(scope="module")
def nougat(tmp_path_factory):
    from transformers import NougatImageProcessor
    return checkpoint_dir("swin_bart", tmp_path_factory.mktemp("nougat"),
                          NougatImageProcessor(size={"height": 40, "width": 56}), "NougatTokenizerFast")


@pytest.fixture(scope="module")
def donut(tmp_path_factory):
    from transformers import DonutImageProcessor
    return checkpoint_dir("donut_swin_mbart", tmp_path_factory.mktemp("donut"),
                          DonutImageProcessor(size=[24, 32], do_align_long_axis=True), None, TAGS)


def pdf_file(path, seed: int, pages: int) -> str:
    rs = np.random.RandomState(seed)
    ims = [Image.fromarray(rs.randint(0, 255, (70 + 9 * i, 50, 3), np.uint8)) for i in range(pages)]
    ims[0].save(path, format="PDF", save_all=True, append_images=ims[1:], resolution=72)
    return str(path)


def rendered(path: str, canvas) -> list[Image.Image]:
    """Every page as the read command should see it: the page's shorter side at the canvas's, >= 96 dpi."""
    with pdfium.PdfDocument(path) as doc:
        return [doc[i].render(scale=max(min(canvas) / min(doc[i].get_size()), 96 / 72)).to_pil().convert("RGB")
                for i in range(len(doc))]


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


NEW = ["--max-new-tokens", "6", "--num-beams", "1", "--no-progress"]


def test_pdf_pages_and_images_read_as_transformers_reads_the_rendered_pages(nougat, tmp_path):
    model, path = nougat
    from transformers import NougatImageProcessor
    doc, image = pdf_file(tmp_path / "paper.pdf", 1, 3), tmp_path / "scan.png"
    Image.fromarray(np.random.RandomState(2).randint(0, 255, (60, 45, 3), np.uint8)).save(image)
    code, out, err = run_cli(["read", "--model", path, doc, str(image), "--format", "jsonl", "--no-markdown",
                              "--batch-size", "2", *NEW])
    assert code == 0, err
    got = records(out)
    assert [(r["path"], r["page"]) for r in got] == [(doc, 1), (doc, 2), (doc, 3), (str(image), 1)]
    pages = rendered(doc, (40, 56)) + [Image.open(image).convert("RGB")]
    pixels = NougatImageProcessor.from_pretrained(path)(pages, return_tensors="np")["pixel_values"]
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(pixels), max_new_tokens=6, num_beams=1, do_sample=False)
    cap = pv.Captioner.from_pretrained(path)
    want = [cap.tokenizer.decode(row) for row in ref.tolist()]
    assert [r["text"] for r in got] == want
    assert len(set(want)) > 1   # the pages differ, so a page read twice or out of order would show


def test_text_records_name_the_page(nougat, tmp_path):
    _, path = nougat
    doc = pdf_file(tmp_path / "a\tb.pdf", 3, 2)
    code, out, err = run_cli(["read", "--model", path, doc, "--no-markdown", *NEW])
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[doc.replace("\t", "\\t"), "1"], [doc.replace("\t", "\\t"), "2"]]


def test_bad_files_are_reported_and_the_others_read(nougat, tmp_path):
    _, path = nougat
    good = pdf_file(tmp_path / "good.pdf", 4, 2)
    (tmp_path / "damaged.pdf").write_bytes(b"%PDF-1.5\n1 0 obj << /Type /Catalog")
    long = pdf_file(tmp_path / "long.pdf", 5, 4)
    code, out, err = run_cli(["read", "--model", path, str(tmp_path), "--max-pages", "3", "--format", "jsonl", *NEW])
    assert code == 1
    assert [(r["path"], r["page"]) for r in records(out)] == [(good, 1), (good, 2)]
    assert re.search(r"error: .*damaged\.pdf: cannot open PDF", err)
    assert f"error: {long}: the PDF has 4 pages, more than --max-pages 3" in err
    assert "2 input(s) could not be read" in err


def test_skip_existing_resumes_page_by_page(nougat, tmp_path):
    _, path = nougat
    doc = pdf_file(tmp_path / "doc.pdf", 6, 3)
    output = tmp_path / "out.jsonl"
    full = run_cli(["read", "--model", path, doc, "--format", "jsonl", *NEW])[1]
    output.write_text(full.splitlines()[0] + "\n" + full.splitlines()[2] + "\n")   # pages 1 and 3 done
    code, out, err = run_cli(["read", "--model", path, doc, "--format", "jsonl", "--output", str(output),
                              "--skip-existing", *NEW])
    assert code == 0 and out == "" and "skipping 2 page(s) already read" in err
    resumed = records(output.read_text())
    assert [r["page"] for r in resumed] == [1, 3, 2]
    assert resumed[2]["text"] == records(full)[1]["text"]   # (scores differ in the last digits: batch of 1, not 3)


def test_nougat_markdown_is_on_by_default_and_equals_transformers(nougat, tmp_path, monkeypatch):
    _, path = nougat
    from transformers.models.nougat import tokenization_nougat
    def no_word_list():
        raise LookupError("words")   # what NLTK raises without its corpus: the reference adds a space
    monkeypatch.setattr(tokenization_nougat, "nltk", types.SimpleNamespace(
        corpus=types.SimpleNamespace(words=types.SimpleNamespace(words=no_word_list))), raising=False)
    from purevedec.captioning import page_markdown
    monkeypatch.setattr(page_markdown, "english_words", lambda: None)
    doc = pdf_file(tmp_path / "doc.pdf", 7, 2)
    raw = records(run_cli(["read", "--model", path, doc, "--format", "jsonl", "--no-markdown", *NEW])[1])
    code, out, err = run_cli(["read", "--model", path, doc, "--format", "jsonl", *NEW])
    assert code == 0, err
    reference = tokenization_nougat.NougatTokenizer()
    want = [reference.post_process_single(r["text"]) for r in raw]
    assert [r["text"] for r in records(out)] == want and want != [r["text"] for r in raw]


# Pages a decoder caught in a loop ends as it runs out of tokens, and one that ended by itself
LOOPING_PAGES = [
    "We report the results in Table 1. The values hold for every sample we took. " * 7,
    "# Methods\n\nWe measure $x_{1}$ twice.\n\n" + "\\begin{tabular}{l l} a & b \\\\ \\end{tabular} " * 12,
    "Intro. " + "Then it loops: and so on and so forth, again and again. " * 6 + "Then it loops: and so",   # cut mid-copy
    "A short page that ends by itself, as most do.",
]


def test_read_markdown_cuts_a_repetition_loop_as_transformers(nougat, monkeypatch):
    """read's Markdown record of a page ending in a repetition loop is transformers' NougatProcessor
    post-processing of its text: the repeated tail cut to one copy (and the rest of its clean-up)."""
    from argparse import Namespace
    from transformers import NougatProcessor
    from transformers.models.nougat import tokenization_nougat
    from purevedec.captioning import page_markdown, read_cli
    from purevedec.captioning.captioner import Caption
    from purevedec.captioning.inputs import Input
    def no_word_list():
        raise LookupError("words")   # as in the test above: the reference's word list, not installed
    monkeypatch.setattr(tokenization_nougat, "nltk", types.SimpleNamespace(
        corpus=types.SimpleNamespace(words=types.SimpleNamespace(words=no_word_list))), raising=False)
    monkeypatch.setattr(page_markdown, "english_words", lambda: None)
    # its backend check wants nltk installed, whose word list is replaced above anyway
    monkeypatch.setattr(tokenization_nougat, "requires_backends", lambda *a: None)
    processor = NougatProcessor.__new__(NougatProcessor)
    processor.tokenizer = tokenization_nougat.NougatTokenizer.__new__(tokenization_nougat.NougatTokenizer)
    args = Namespace(markdown=None, format="jsonl", json=False, prompt=None)
    record = read_cli._record(args)(pv.Captioner.from_pretrained(nougat[1]), args)
    got = [json.loads(record(Input("p.pdf", page=1), [Caption(t, 0.0, (), None)]))["text"] for t in LOOPING_PAGES]
    assert got == processor.post_process_generation(LOOPING_PAGES)
    assert [len(g) < len(t) // 2 for g, t in zip(got, LOOPING_PAGES)] == [True, True, True, False]


def donut_recipe(tokenizer, row: list[int]) -> dict:
    """Donut's documented reading of a generated row: decode keeping special tokens, drop EOS and
    padding, drop the first tag (the task token), token2json with the tokenizer's added vocabulary."""
    from transformers import DonutProcessor
    text = tokenizer.decode(row, skip_special_tokens=False)
    text = text.replace(tokenizer.eos_token, "").replace(tokenizer.pad_token, "")
    text = re.sub(r"<.*?>", "", text, count=1).strip()
    return DonutProcessor.__new__(DonutProcessor).token2json(text, added_vocab=tokenizer.get_added_vocab())


def test_donut_json_equals_the_processor_recipe(donut, tmp_path):
    model, path = donut
    from transformers import AutoTokenizer, DonutImageProcessor
    tokenizer = AutoTokenizer.from_pretrained(path)
    doc = pdf_file(tmp_path / "receipt.pdf", 8, 4)
    code, out, err = run_cli(["read", "--model", path, doc, "--format", "jsonl", "--json", "--prompt", "<s_cord-v2>",
                              "--max-new-tokens", "12", "--num-beams", "1", "--no-progress"])
    assert code == 0, err
    pixels = DonutImageProcessor.from_pretrained(path)(rendered(doc, (32, 24)), return_tensors="np")["pixel_values"]
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(pixels), decoder_input_ids=torch.tensor([[3]] * 4),
                             max_new_tokens=12, num_beams=1, do_sample=False)
    want = [donut_recipe(tokenizer, row) for row in ref.tolist()]
    assert [json.dumps(r["json"]) for r in records(out)] == [json.dumps(w) for w in want]
    code, text, err = run_cli(["read", "--model", path, doc, "--json", "--prompt", "<s_cord-v2>",
                               "--max-new-tokens", "12", "--num-beams", "1", "--no-progress"])
    assert [json.loads(line.split("\t")[2]) for line in text.splitlines()] == want


@pytest.mark.parametrize("prompt", ["<s_cord-v2>", "<s_cord-v2> <s_nm> t25 </s_nm>"])   # a task; a question-like one
@pytest.mark.parametrize("generated", [
    "<s_menu> <s_nm> t20 t21 </s_nm> <s_price> t30 </s_price> <sep/> <s_nm> t22 </s_nm> </s_menu> </s>",
    "<s_nm> <memo/> </s_nm> </s>",
    "t40 <s_price> t41 </s>",
    "<s_nm> t20 <sep/> t21 </s_nm> <pad> <pad>",
])
def test_donut_fields_of_crafted_outputs_equal_the_recipe(donut, prompt, generated):
    from transformers import AutoTokenizer
    from purevedec.captioning.captioner import Caption
    from purevedec.captioning.read_cli import _fields_of
    _, path = donut
    tokenizer = AutoTokenizer.from_pretrained(path)
    cap = pv.Captioner.from_pretrained(path)
    prompt_ids, ids = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (prompt, generated))
    want = donut_recipe(tokenizer, [*prompt_ids, *ids])   # the row generate returns for a Donut encoder
    assert want != {"text_sequence": ""}
    got = _fields_of(cap)(Caption("", 0.0, tuple(ids), None, tuple(prompt_ids)))
    assert json.dumps(got) == json.dumps(want)


@pytest.fixture
def rules_given(monkeypatch):
    """The stop_score_variance each generate call or slot-engine run of the test was given, in order."""
    from purevedec.captioning import captioner
    from purevedec.generation import engine
    seen = []

    def recording(real):
        def call(*args, **kwargs):
            seen.append(kwargs.get("stop_score_variance"))
            return real(*args, **kwargs)
        return call
    monkeypatch.setattr(engine, "stream", recording(engine.stream))
    monkeypatch.setattr(captioner, "generate", recording(captioner.generate))
    return seen


@pytest.mark.parametrize("slots", [[], ["--slots", "2"]])
@pytest.mark.parametrize("flag, want", [([], True), (["--no-stop-score-variance"], None),
                                        (["--stop-score-variance"], True)])
def test_nougat_stopping_rule_is_on_by_default(nougat, tmp_path, rules_given, slots, flag, want):
    _, path = nougat
    doc = pdf_file(tmp_path / "doc.pdf", 8, 2)
    code, out, err = run_cli(["read", "--model", path, doc, *slots, "--format", "jsonl", *flag, *NEW])
    assert code == 0, err
    assert len(records(out)) == 2 and rules_given == [want]


@pytest.fixture(scope="module")
def nougat_plain_tokenizer(tmp_path_factory):
    """Nougat's image processor with a tokenizer saved under a generic class name."""
    from transformers import NougatImageProcessor
    return checkpoint_dir("swin_bart", tmp_path_factory.mktemp("nougat_plain"),
                          NougatImageProcessor(size={"height": 40, "width": 56}), "PreTrainedTokenizerFast")


def test_page_defaults_follow_the_checkpoint_preprocessor_not_the_tokenizer_class(nougat_plain_tokenizer, tmp_path,
                                                                                    rules_given):
    """The checkpoint declares Nougat's image processor, which the encoder family's record maps to
    Nougat's page defaults (Markdown clean-up, its stopping rule), whatever its tokenizer is called."""
    from purevedec.captioning import read_cli
    _, path = nougat_plain_tokenizer
    doc = pdf_file(tmp_path / "doc.pdf", 8, 1)
    code, out, err = run_cli(["read", "--model", path, doc, "--format", "jsonl", *NEW])
    assert code == 0, err
    assert rules_given == [True]
    cap = pv.Captioner.from_pretrained(path)
    assert read_cli.page_defaults_of(cap) == {"markdown": True, "stop_score_variance": True}


def test_stopping_rule_is_off_for_other_checkpoints_and_beams(nougat, donut, tmp_path, rules_given):
    doc = pdf_file(tmp_path / "doc.pdf", 9, 1)
    code, _, err = run_cli(["read", "--model", donut[1], doc, *NEW])
    assert code == 0, err
    code, _, err = run_cli(["read", "--model", nougat[1], doc, *NEW, "--num-beams", "2"])
    assert code == 0, err
    assert rules_given == [None, None]   # Donut's checkpoint: not Nougat's preprocessor; beams
    code, out, err = run_cli(["read", "--model", nougat[1], doc, "--stop-score-variance", *NEW, "--num-beams", "2"])
    assert code == 2 and out == "" and "--stop-score-variance ends pages one by one" in err
    with pytest.raises(ValueError, match="stop_repeats: .* needs slots"):
        list(pv.Captioner.from_pretrained(nougat[1]).captions([rendered(doc, (40, 56))[0]], stop_repeats=(2, 3)))
