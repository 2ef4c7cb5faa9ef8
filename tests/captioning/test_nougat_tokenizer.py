"""Nougat's tokenizer.json (a byte-level BPE) read by ``load_tokenizer``: decoded text equal to transformers'
NougatTokenizerFast on the same ids, Markdown, LaTeX and spacing included."""

from __future__ import annotations

import numpy as np

from purevedec.captioning.text import load_tokenizer

CORPUS = ["# Introduction\n\nWe prove that $x^2 + y^2 = z^2$ holds.", "| a | b |\n|---|---|\n| 1 | 2 |",
          "\\begin{equation} \\frac{a}{b} \\end{equation}", "Results, see [1] and Table 2 ."] * 20


def nougat_tokenizer_dir(path) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import NougatTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    NougatTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                        unk_token="<unk>").save_pretrained(path)
    return str(path)


def test_decode_equals_transformers(tmp_path):
    from transformers import AutoTokenizer
    path = nougat_tokenizer_dir(tmp_path)
    ref, ours = AutoTokenizer.from_pretrained(path), load_tokenizer(path)
    assert type(ref).__name__.startswith("NougatTokenizer") and ours.size == len(ref)
    rows = [ref(text)["input_ids"] for text in CORPUS[:4]]
    rows += np.random.RandomState(0).randint(0, len(ref), (20, 16)).tolist()
    for row in rows:
        for skip in (True, False):
            assert ours.decode(row, skip_special_tokens=skip) == ref.decode(row, skip_special_tokens=skip)
    assert ours.decode(rows[0]) == CORPUS[0]
