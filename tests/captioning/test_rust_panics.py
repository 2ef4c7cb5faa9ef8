"""The tokenizers library's Rust panics under the CLI: Rust's own report ("thread '<unnamed>'
panicked at ...", a backtrace under RUST_BACKTRACE) stays off stderr, the user reads the
package's one-line error and its exit code, and nothing else written to stderr is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import purevedec as pv
from cli_util import ROOT, checkpoint  # noqa: F401 (fixture)
from purevedec.captioning import rust_panics
from purevedec.captioning.text import library_errors

LONG = "a" * 5000 + "c"  # what the backtracking regex below gives up on (onig's retry limit)
BACKTRACKING = {"Regex": "(a*)*$"}


def _bad_merges(tok: dict) -> None:
    """A BPE model whose second merge makes "abb", which is not in the vocabulary: the library
    panics while building the model from tokenizer.json."""
    tok["model"] = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"], ["ab", "b"]]}


def _backtracking_pre_tokenizer(tok: dict) -> None:
    """Loads; panics when encoding text such as LONG (the --prompt)."""
    tok["pre_tokenizer"] = {"type": "Split", "pattern": BACKTRACKING, "behavior": "Isolated", "invert": False}


def _backtracking_decoder(tok: dict) -> None:
    """Every token is LONG-like, and the decoder runs the regex over each: decoding any caption
    the model generates panics."""
    size = len(tok["model"]["vocab"])
    tok["model"]["vocab"] = {f"{LONG}{i}": i for i in range(size)}
    tok["model"]["unk_token"] = f"{LONG}0"
    tok["added_tokens"] = []
    tok["decoder"] = {"type": "Replace", "pattern": BACKTRACKING, "content": ""}


def _with_tokenizer(checkpoint, tmp_path, edit) -> str:
    path = tmp_path / "model"
    shutil.copytree(checkpoint[1], path)
    tok = json.loads((path / "tokenizer.json").read_text())
    edit(tok)
    (path / "tokenizer.json").write_text(json.dumps(tok))
    return str(path)


def _caption(model: str, image: str, *extra: str, backtrace: str | None) -> subprocess.CompletedProcess:
    """``python -m purevedec caption`` as a user runs it, with RUST_BACKTRACE as given (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
    if backtrace is not None:
        env["RUST_BACKTRACE"] = backtrace
    return subprocess.run([sys.executable, "-m", "purevedec", "caption", "--model", model, image, *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("edit, extra, backtrace, message", [
    (_bad_merges, (), None, r"error: cannot load model '.*': .*tokenizer\.json is not a readable tokenizer: "
                            r"the tokenizers library failed \(range end index 3 out of range"),
    (_bad_merges, (), "1", r"is not a readable tokenizer"),
    (_bad_merges, (), "full", r"is not a readable tokenizer"),
    (_backtracking_pre_tokenizer, ("--prompt", LONG), "1",
     r"error: --prompt: cannot encode 'aaaa.*': the tokenizers library failed \(Onig: .*retry-limit"),
    (_backtracking_decoder, (), None,
     r"error: model '.*': cannot decode token ids: the tokenizers library failed \(Onig: .*retry-limit"),
], ids=["merges", "merges-backtrace", "merges-full-backtrace", "prompt", "decode"])
def test_the_cli_shows_one_line_for_a_tokenizer_panic(checkpoint, tmp_path, edit, extra, backtrace, message):
    model = _with_tokenizer(checkpoint, tmp_path, edit)
    image = str(tmp_path / "im.png")
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (20, 30, 3), np.uint8)).save(image)
    done = _caption(model, image, *extra, backtrace=backtrace)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "panicked" not in done.stderr and "backtrace" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert re.search(message, lines[0]), lines[0]


def _bad_merges_json() -> str:
    from tokenizers import Tokenizer, models
    tok = json.loads(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")).to_str())
    _bad_merges(tok)
    return json.dumps(tok)


def test_only_the_report_of_the_raised_panic_is_dropped(capfd):
    """Whatever else reaches descriptor 2 during the library call (a C library's line, text that
    only looks like a panic report) comes out, in order."""
    from tokenizers import Tokenizer
    data = _bad_merges_json()
    lookalike = "thread 'main' panicked at elsewhere.rs:1:1:\nanother panic\n"
    with rust_panics.hidden():
        os.write(2, b"before\n")
        with pytest.raises(pv.TokenizerError, match="the tokenizers library failed"):
            with library_errors("building"):
                os.write(2, b"a C library's line\n")
                os.write(2, lookalike.encode())
                Tokenizer.from_str(data)
        os.write(2, b"after\n")
    assert capfd.readouterr().err == "before\na C library's line\n" + lookalike + "after\n"


def test_a_library_user_sees_rust_report(capfd):
    """Outside the CLI the package leaves descriptor 2 alone: Rust's report is printed as Rust
    prints it, and the panic still arrives as a TokenizerError."""
    from tokenizers import Tokenizer
    with pytest.raises(pv.TokenizerError):
        with library_errors("building"):
            Tokenizer.from_str(_bad_merges_json())
    assert "panicked at" in capfd.readouterr().err


def test_a_panic_while_counting_unknown_words_is_a_tokenizer_error():
    """`purevedec train` looks for words its tokenizer does not know before training: a caption
    the library panics on is the package's TokenizerError (one line from the command), not pyo3's
    PanicException, which `except Exception` does not catch."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from purevedec.captioning.text import TextTokenizer
    from purevedec.training.vocabulary import unknown_words
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(BACKTRACKING["Regex"]), "isolated")
    tokenizer = TextTokenizer(backend)
    assert unknown_words(tokenizer, ["a b"]).affected == 1
    with pytest.raises(pv.TokenizerError, match="cannot encode"):
        unknown_words(tokenizer, ["a b", LONG])
