"""OCR inputs and outputs against transformers: RoBERTa BPE and XLM-R-style unigram tokenizers,
DeiT's resize + center crop, and the command line reading a folder of rendered text lines."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

import purevedec as pv
from ocr_models import make_ocr_reference
from purevedec.captioning.image import parse_image_config, preprocess
from purevedec.captioning.text import load_tokenizer
from purevedec.commands import main

LINES = ["the quick brown fox", "jumps over 12 lazy dogs", "Hello, World!", "an invoice: $3.50"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in RoBERTa (start/eos 2, pad 1)


def _roberta_files(path, vocab_size=300):
    """vocab.json + merges.txt of a byte-level BPE trained here, and the transformers tokenizer
    built from them (RobertaTokenizer), saved beside them."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(LINES * 4, vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS + ["<mask>"])
    path.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(path))
    tok = RobertaTokenizer.from_pretrained(path)  # transformers' own reading of the two files
    tok.save_pretrained(path)
    return tok


def _ids(vocab, seed, n=6, length=12):
    rs = np.random.RandomState(seed)
    rows = [list(rs.randint(0, vocab, length)) for _ in range(n)]
    rows[0] = [0, 5, 6, 2, 1, 1]  # specials around ordinary tokens
    return rows


def test_roberta_bpe_decodes_as_transformers(tmp_path):
    from transformers import AutoTokenizer
    _roberta_files(tmp_path / "tj")
    assert (tmp_path / "tj" / "tokenizer.json").exists()
    vocab_only = tmp_path / "vm"  # the same tokenizer as vocab.json + merges.txt only
    vocab_only.mkdir()
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (vocab_only / f).write_bytes((tmp_path / "tj" / f).read_bytes())
    for path in (tmp_path / "tj", vocab_only):
        ours, theirs = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
        size = len(theirs)
        for rows in (_ids(size, 1), [theirs(line).input_ids for line in LINES]):
            assert ours.batch_decode(rows) == theirs.batch_decode(rows, skip_special_tokens=True)
            assert [ours.decode(r, skip_special_tokens=False) for r in rows] == \
                [theirs.decode(r, skip_special_tokens=False) for r in rows]
        assert theirs.batch_decode([theirs(line).input_ids for line in LINES], skip_special_tokens=True) == LINES


def test_xlmr_style_unigram_decodes_as_transformers(tmp_path):
    """trocr-small's tokenizer kind: a sentencepiece unigram model with Metaspace, read from tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(LINES * 4, trainers.UnigramTrainer(
        vocab_size=80, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(tmp_path)
    ours, theirs = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    for rows in (_ids(len(theirs), 2), [theirs(line).input_ids for line in LINES]):
        assert ours.batch_decode(rows) == theirs.batch_decode(rows, skip_special_tokens=True)


# Text for the sentencepiece models: accents and a dash that its normalization table rewrites.
SPM_LINES = LINES + ["Ünïcode façade — naïve café", "ｆｕｌｌ width ２０２６"]


def _sentencepiece_checkpoint(folder, model_type):
    """A checkpoint folder holding only sentencepiece.bpe.model, trained here on SPM_LINES."""
    import io
    import sentencepiece
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(SPM_LINES * 20), model_writer=model,
                                             vocab_size=48, model_type=model_type, character_coverage=1.0,
                                             minloglevel=2)
    folder.mkdir()
    (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    return folder


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_model_alone_decodes_as_transformers(tmp_path, model_type):
    """trocr-small ships XLM-R's sentencepiece.bpe.model: fairseq ids (<s> <pad> </s> <unk>, the
    pieces, <mask> last), decoded and encoded as transformers' XLMRobertaTokenizer reads the file."""
    from transformers import XLMRobertaTokenizer
    path = _sentencepiece_checkpoint(tmp_path / "spm", model_type)
    ours, theirs = load_tokenizer(path), XLMRobertaTokenizer.from_pretrained(path)
    size = len(theirs)
    assert size == 48 + 2  # the pieces past the model's own 3 specials, 4 fairseq specials and <mask>
    encoded = [theirs(line).input_ids for line in SPM_LINES]
    specials = [[0, 5, 3, 6, 2, 1, 1], [size - 1, 9, 0, 4, 2], [3, 3, 7]]  # <mask> is the last id
    for rows in (_ids(size, 3), encoded, specials):
        assert ours.batch_decode(rows) == theirs.batch_decode(rows, skip_special_tokens=True)
        assert [ours.decode(r, skip_special_tokens=False) for r in rows] == \
            [theirs.decode(r, skip_special_tokens=False) for r in rows]
    assert [ours.encode(line) for line in SPM_LINES] == \
        [theirs(line, add_special_tokens=False).input_ids for line in SPM_LINES]
    assert "naïve café" in ours.decode(encoded[4]) and "<mask>" in ours.decode(specials[1], skip_special_tokens=False)


def test_sentencepiece_model_without_the_package_names_the_extra(tmp_path, monkeypatch):
    import sys
    path = _sentencepiece_checkpoint(tmp_path / "spm", "unigram")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if not installed: import raises
    with pytest.raises(pv.TokenizerError, match=r"sentencepiece\.bpe\.model.*purevedec\[sentencepiece\]"):
        load_tokenizer(path)


def test_unreadable_sentencepiece_model_is_named(tmp_path):
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"\x0a\x05not a model")
    with pytest.raises(pv.TokenizerError, match="sentencepiece.bpe.model is not a readable sentencepiece model"):
        load_tokenizer(tmp_path)


def _photo(seed, size=(37, 90)):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (*size, 3), np.uint8))


@pytest.mark.parametrize("cfg", [
    {"image_processor_type": "DeiTImageProcessor"},  # the class defaults: 256 bicubic, crop 224
    {"image_processor_type": "DeiTImageProcessor", "size": {"height": 40, "width": 30}, "resample": 2,
     "crop_size": {"height": 32, "width": 24}, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    {"image_processor_type": "DeiTImageProcessor", "do_resize": False, "crop_size": {"height": 50, "width": 50}},
])
def test_deit_processor_matches_transformers(tmp_path, cfg):
    """Resize then center crop (zero padding where the crop is larger), bit-identical."""
    from transformers import AutoImageProcessor
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    theirs = AutoImageProcessor.from_pretrained(tmp_path)
    images = [_photo(1), _photo(2, (41, 41))]
    want = np.stack([np.asarray(theirs(im, return_tensors="np").pixel_values[0]) for im in images])
    got = preprocess(images, parse_image_config(cfg))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def _render_lines(folder, size=(16, 16)):
    """Text-line crops as an OCR pipeline gets them: black text on white, one line per PNG."""
    folder.mkdir()
    paths = []
    for i, line in enumerate(LINES):
        im = Image.new("RGB", (8 * len(line) + 8, 20), "white")
        ImageDraw.Draw(im).text((4, 4), line, fill="black")
        paths.append(str(folder / f"line{i}.png"))
        im.save(paths[-1])
    return paths


@pytest.mark.parametrize("num_beams", [1, 4])
def test_cli_reads_text_lines_as_transformers(tmp_path, num_beams):
    """`purevedec caption` on a folder of rendered lines prints what generate + batch_decode print."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.image_utils import load_image
    ckpt = tmp_path / "ckpt"
    tok = _roberta_files(ckpt)
    model = make_ocr_reference(seed=7, scale=0.6, dec_kw=dict(vocab_size=len(tok), max_position_embeddings=70))
    model.save_pretrained(ckpt)
    (ckpt / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 16}, "resample": 2}))
    paths = _render_lines(tmp_path / "lines")
    pixels = AutoImageProcessor.from_pretrained(ckpt)([load_image(p) for p in paths], return_tensors="pt").pixel_values
    kw = dict(max_new_tokens=10, num_beams=num_beams)
    with torch.no_grad():
        seqs = model.generate(pixel_values=pixels, **kw)
    expected = AutoTokenizer.from_pretrained(ckpt).batch_decode(seqs, skip_special_tokens=True)
    assert any(expected)  # the random model does produce text
    out, err = io.StringIO(), io.StringIO()
    code = main(["caption", str(tmp_path / "lines"), "--model", str(ckpt), "--max-new-tokens", "10",
                     "--num-beams", str(num_beams), "--format", "jsonl"], out, err)
    assert code == 0, err.getvalue()
    rows = [json.loads(r) for r in out.getvalue().splitlines()]
    by_name = {r["path"].split("/")[-1]: r["caption"] for r in rows}
    assert [by_name[p.split("/")[-1]] for p in paths] == expected
