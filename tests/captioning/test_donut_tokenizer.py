"""Donut's tokenizer as its checkpoints ship it: XLM-R's sentencepiece.bpe.model plus added_tokens.json and
the task/field tokens the tokenizer config calls special, decoded as transformers' tokenizer decodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from purevedec.captioning.text import load_tokenizer
from purevedec.errors import TokenizerError

spm = pytest.importorskip("sentencepiece")

SPECIAL = ["<s_cord-v2>", "<s_menu>", "</s_menu>"]
TEXT = ["the total price of the menu is 12.50", "receipt item count two", "hello world naïve café",
        "question answer document"] * 50


def donut_tokenizer_dir(path, first_added=None):
    """A sentencepiece model trained here, with three special and one plain added token after it."""
    corpus = path / "corpus.txt"
    corpus.write_text("\n".join(TEXT))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(path / "m"), vocab_size=36,
                                   model_type="unigram", minloglevel=2)
    (path / "m.model").rename(path / "sentencepiece.bpe.model")
    # fairseq ids: 4 specials, the pieces from their id 3 on (+1), <mask>; the added tokens follow
    first = spm.SentencePieceProcessor(model_file=str(path / "sentencepiece.bpe.model")).get_piece_size() + 2
    first = first if first_added is None else first_added
    added = {t: first + i for i, t in enumerate([*SPECIAL, "<sep/>"])}
    (path / "added_tokens.json").write_text(json.dumps(added))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "additional_special_tokens": SPECIAL, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}))
    return str(path)


def test_decode_equals_transformers(tmp_path):
    from transformers import AutoTokenizer
    path = donut_tokenizer_dir(tmp_path)
    ref, ours = AutoTokenizer.from_pretrained(path), load_tokenizer(path)
    first = json.load(open(f"{path}/added_tokens.json"))["<s_cord-v2>"]
    assert ours.size == len(ref) == first + 4
    text = "<s_cord-v2><s_menu>the total price</s_menu> naïve<sep/>café"
    ids = ref(text)["input_ids"]
    assert set(ids) >= {first, first + 1, first + 2, first + 3}  # every added token is in the row
    rows = [ids] + np.random.RandomState(0).randint(0, len(ref), (20, 12)).tolist()
    for row in rows:
        for skip in (True, False):
            assert ours.decode(row, skip_special_tokens=skip) == ref.decode(row, skip_special_tokens=skip)


def test_an_added_token_off_its_id_is_refused(tmp_path):
    path = donut_tokenizer_dir(tmp_path, first_added=60)
    with pytest.raises(TokenizerError, match=r"added token '<s_cord-v2>' has id 60, but the next free id is \d+"):
        load_tokenizer(path)
