"""Decode/encode parity of purevedec.text with transformers' tokenizers on a small byte-level BPE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from purevedec.captioning.text import TokenizerError, load_tokenizer

CORPUS = ["a man riding a horse on a beach.", "two dogs play in the snow, don't they?",
          "a café — naïve 日本語 text 🙂", "there's a cat; it's   sleeping!\n\nnew line"]
TEXTS = ["a man riding a horse", " leading space", "trailing space ", "double  space",
         "don't , stop . now ?", "I'm sure they're here, aren't they ' ok", "café naïve 日本語 🙂🙂",
         "tabs\tand\nnewlines\r\n", "hi <sep> a horsey <|endoftext|> x", "<|endoftext|>", "",
         "   ", "horsey horseys", "émoji 🐎 on the beach.", "unknownish zzqx ©®"]
SPECIAL = "<|endoftext|>"


def _train():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    return tok


def _tokenizer_json(path, **config):
    from transformers import PreTrainedTokenizerFast
    wrapped = PreTrainedTokenizerFast(tokenizer_object=_train(), bos_token=SPECIAL, eos_token=SPECIAL,
                                      unk_token=SPECIAL)
    wrapped.add_special_tokens({"additional_special_tokens": ["<sep>"]})
    wrapped.add_tokens(["horsey"])
    wrapped.save_pretrained(path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**cfg, **config}))
    return path


def _vocab_merges(path, special_map=False, **config):
    tok = _train()
    path.mkdir()
    tok.model.save(str(path))
    vocab = len(json.loads((path / "vocab.json").read_text()))
    specials = {"bos_token": SPECIAL, "eos_token": SPECIAL, "unk_token": SPECIAL,
                "additional_special_tokens": ["<sep>"]}
    added = {str(vocab): {"content": "<sep>", "special": True, "lstrip": False, "rstrip": False,
                          "normalized": False, "single_word": False},
             str(vocab + 1): {"content": "horsey", "special": False, "lstrip": False, "rstrip": False,
                              "normalized": True, "single_word": False}}
    if special_map:
        (path / "special_tokens_map.json").write_text(json.dumps(specials))
        specials = {}
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "added_tokens_decoder": added, **specials, **config}))
    return path


LAYOUTS = {
    "tokenizer_json": lambda p: _tokenizer_json(p),
    "tokenizer_json_gpt2_cleanup": lambda p: _tokenizer_json(p, tokenizer_class="GPT2Tokenizer",
                                                             clean_up_tokenization_spaces=True),
    "tokenizer_json_forced_cleanup": lambda p: _tokenizer_json(
        p, clean_up_tokenization_spaces=True,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True),
    "vocab_merges": lambda p: _vocab_merges(p),
    "vocab_merges_prefix_space": lambda p: _vocab_merges(p, add_prefix_space=True),
    "vocab_merges_special_map": lambda p: _vocab_merges(p, special_map=True, clean_up_tokenization_spaces=True),
}


def _pair(tmp_path, layout):
    from transformers import AutoTokenizer
    path = LAYOUTS[layout](tmp_path / layout)
    return load_tokenizer(path), AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_encode_matches(tmp_path, layout):
    ours, ref = _pair(tmp_path, layout)
    for text in TEXTS:
        assert ours.encode(text) == ref(text, add_special_tokens=False).input_ids, text


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_batch_decode_matches(tmp_path, layout):
    ours, ref = _pair(tmp_path, layout)
    n = ref.backend_tokenizer.get_vocab_size()
    rs = np.random.RandomState(0)
    rows = [ref(t, add_special_tokens=False).input_ids for t in TEXTS]
    # Random rows hit special ids, added tokens and byte tokens that are not valid UTF-8 alone.
    rows += [rs.randint(0, n, rs.randint(1, 12)).tolist() for _ in range(200)]
    rows += [[0, 5, 0, 0], [n - 1, n - 2, 0], [0]]
    assert ours.batch_decode(rows) == ref.batch_decode(rows, skip_special_tokens=True)
    assert [ours.decode(r, skip_special_tokens=False) for r in rows] == [ref.decode(r) for r in rows]
    assert ours.batch_decode(np.array([rows[-2]])) == ref.batch_decode([rows[-2]], skip_special_tokens=True)


def test_cleanup_applies_only_when_forced(tmp_path):
    plain, _ = _pair(tmp_path, "tokenizer_json_gpt2_cleanup")
    forced, _ = _pair(tmp_path, "tokenizer_json_forced_cleanup")
    ids = plain.encode("don't , stop .")
    assert plain.decode(ids) == "don't , stop ."
    assert forced.decode(ids) == "don't, stop."


def test_token_text_and_errors(tmp_path):
    ours, _ = _pair(tmp_path, "tokenizer_json")
    assert ours.token_text(ours.encode(SPECIAL)[0]) == SPECIAL
    assert ours.token_text(ours.encode(" horse")[0]).startswith(" ")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
