"""Tokenizers of BERT-style decoders as their checkpoints ship them: WordPiece from vocab.txt
(BERT's, and BertJapaneseTokenizer's character-level vocabulary as manga-ocr's), BERT's
tokenizer.json, RoBERTa's byte-level BPE; decoded text equal to transformers' on the same ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from purevedec.captioning.text import load_tokenizer
from purevedec.errors import TokenizerError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KANA = [chr(c) for c in range(0x3041, 0x3097)]  # hiragana
JAPANESE = SPECIALS + KANA + list("漫画読字。、！？「」…ー") + ["A", "B", "##B", "1", "２"]
ENGLISH = SPECIALS + ["the", "a", "cat", "dog", "sat", "on", "mat", "##s", "##ing", "run", ",", ".", "'", "it",
                      "isn", "t", "!", "?", "un", "##believ", "##able", "é", "cafe"]


def _write_vocab(path, tokens, config):
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def _manga_like(tmp_path):
    return _write_vocab(tmp_path / "manga", JAPANESE, {
        "tokenizer_class": "BertJapaneseTokenizer", "do_lower_case": False, "word_tokenizer_type": "basic",
        "subword_tokenizer_type": "character", "model_max_length": 300})


def _random_rows(vocab: int, seed: int, rows: int = 40, length: int = 12) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, (rows, length))


def _assert_same_decoding(ours, theirs, vocab: int, seed: int):
    for row in _random_rows(vocab, seed):
        for skip in (True, False):
            assert ours.decode(row, skip_special_tokens=skip) == theirs.decode(row.tolist(), skip_special_tokens=skip), \
                (row, skip)


def test_character_level_japanese_vocab_txt_decodes_as_transformers(tmp_path):
    """manga-ocr's tokenizer: characters joined by spaces, [UNK] dropped with the other specials."""
    from transformers import AutoTokenizer
    path = _manga_like(tmp_path)
    ours, theirs = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert type(theirs).__name__ == "BertJapaneseTokenizer"
    _assert_same_decoding(ours, theirs, len(JAPANESE), seed=0)
    text = "漫画を読む。「ＡＢ！」ぽ字ゑ"
    assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids


def test_bert_vocab_txt_decodes_and_encodes_as_transformers(tmp_path):
    from transformers import AutoTokenizer
    path = _write_vocab(tmp_path / "bert", ENGLISH, {"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    ours, theirs = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    _assert_same_decoding(ours, theirs, len(ENGLISH), seed=1)
    text = "The cats sat on a mat, unbelievable! Isn't it? Café"
    assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids


def test_bert_tokenizer_json_decodes_as_transformers(tmp_path):
    from transformers import AutoTokenizer, BertTokenizer
    src = _write_vocab(tmp_path / "src", ENGLISH, {"tokenizer_class": "BertTokenizer"})
    BertTokenizer.from_pretrained(src).save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").exists()
    ours, theirs = load_tokenizer(tmp_path / "saved"), AutoTokenizer.from_pretrained(tmp_path / "saved")
    _assert_same_decoding(ours, theirs, len(ENGLISH), seed=2)


def test_roberta_byte_level_bpe_decodes_as_transformers(tmp_path):
    """RoBERTa's vocab.json + merges.txt (no tokenizer.json), its specials named by tokenizer_config.json."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["The cat sat on the mat.", "Roberta reads a receipt: 12,50 EUR!"] * 20, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    path = tmp_path / "roberta"
    path.mkdir()
    bpe.save_model(str(path))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>", "sep_token": "</s>", "cls_token": "<s>"}))
    ours, theirs = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    _assert_same_decoding(ours, theirs, bpe.get_vocab_size(), seed=3)
    text = "The mat reads 12,50 EUR."
    assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("option", [dict(word_tokenizer_type="mecab"), dict(subword_tokenizer_type="sentencepiece")])
def test_japanese_tokenizers_needing_other_libraries_are_refused(tmp_path, option):
    path = _write_vocab(tmp_path / "jp", JAPANESE, {"tokenizer_class": "BertJapaneseTokenizer", **option})
    with pytest.raises(TokenizerError, match="is not supported"):
        load_tokenizer(path)
