"""Hostile side files and images: sizes and nesting bounded, FIFOs and devices refused at once,
the tokenizers library's panics turned into TokenizerErrors, decoded pixels bounded before
decoding (the bounded child: tests/hostile_util.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib

import pytest

import purevedec as pv
from hostile_util import (assert_refused, captioning_dir, run_bounded, safetensors_file,
                          write_json, write_tiny, write_tokenizer)


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path)


# ----- side files: sizes, deep nesting -----

def test_side_file_options_are_bounded(tiny):
    _, path = tiny
    write_json(os.path.join(path, "preprocessor_config.json"), {"size": {"height": 100_000, "width": 100_000}})
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json: preprocessor size=.* sides in \[1, 4096\]"):
        pv.load_image_config(path)
    write_json(os.path.join(path, "generation_config.json"), {"num_beams": 2_000_000})
    with pytest.raises(pv.ConfigError, match=r"generation_config\.json: num_beams=2000000 is more than"):
        pv.load_generation_config(path)
    # 17 MB of "[]," parses to ~0.4 GB of lists: side files are bounded at 16 MiB before parsing.
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        f.write('{"a": [' + "[]," * (17 * 2 ** 20 // 3) + "[]]}")
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json holds \d+ bytes, more than the 16777216"):
        pv.load_image_config(path)


DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("name, error", [
    ("config.json", pv.ConfigError), ("generation_config.json", pv.ConfigError),
    ("preprocessor_config.json", pv.ConfigError), ("tokenizer_config.json", pv.TokenizerError),
    ("special_tokens_map.json", pv.TokenizerError), ("tokenizer.json", pv.TokenizerError),
    ("vocab.json", pv.TokenizerError), ("model.safetensors.index.json", pv.CheckpointError),
    ("model.safetensors", pv.CheckpointError)])
def test_deeply_nested_json_is_the_library_error(tiny, name, error):
    """50,000 levels of nesting in any JSON a checkpoint carries (the tokenizers library reads
    tokenizer.json and vocab.json itself, with its own recursion limit)."""
    _, path = tiny
    write_tokenizer(path, with_json=name != "vocab.json")
    target = os.path.join(path, name)
    if name == "model.safetensors":
        safetensors_file(target, DEEP)
    else:
        if name == "model.safetensors.index.json":
            os.remove(os.path.join(path, "model.safetensors"))
        with open(target, "w") as f:
            f.write(DEEP)
    read = {pv.ConfigError: {"preprocessor_config.json": pv.load_image_config,
                             "generation_config.json": pv.load_generation_config}.get(name, pv.load_config),
            pv.TokenizerError: pv.load_tokenizer, pv.CheckpointError: pv.load}[error]
    with pytest.raises(error, match=name.replace(".", r"\.")):
        read(path)


# ----- images: decoded pixels bounded before decoding -----

def png_of_zeros(path, width: int, height: int, rows: int | None = None) -> str:
    """A grayscale PNG of width x height zero pixels (only `rows` rows of data when given: enough
    for a header check), a few hundred KB whatever its size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = height if rows is None else rows
    per_block = 1000  # rows per fully flushed deflate block, repeated
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes((width + 1) * per_block)) + c.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes((width + 1) * (rows % per_block))) + last.flush()
    adler = 1
    for _ in range(rows // per_block):
        adler = zlib.adler32(bytes((width + 1) * per_block), adler)
    adler = zlib.adler32(bytes((width + 1) * (rows % per_block)), adler)
    idat = b"\x78\x01" + block * (rows // per_block) + tail + struct.pack(">I", adler)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


def test_image_pixels_are_bounded_before_decoding(tmp_path):
    """13000 x 13000 (169 M pixels, under pillow's own refusal at 179 M: it decodes to 0.5 GB of
    RGB and more in copies) and 20000 x 20000 (pillow's DecompressionBombError): both are the
    file's ImageError, before any pixel is decoded; a small image still reads."""
    from PIL import Image
    files = {"13000 squared": png_of_zeros(tmp_path / "big.png", 13000, 13000),
             "20000 squared": png_of_zeros(tmp_path / "bomb.png", 20000, 20000, rows=1),
             "small": png_of_zeros(tmp_path / "small.png", 30, 20)}
    assert os.path.getsize(files["13000 squared"]) < 2 ** 20
    with pytest.warns(Image.DecompressionBombWarning), Image.open(files["13000 squared"]) as im:
        assert im.size == (13000, 13000)  # pillow only warns: it would decode this one
    results = run_bounded({k: f"pv.preprocess([{p!r}], pv.ImageConfig())" for k, p in files.items()})
    assert_refused(results, {
        "13000 squared": ("ImageError", r"^[^()]*big\.png: image of 13000 x 13000 pixels is larger than the 89478485"),
        "20000 squared": ("ImageError", r"bomb\.png: cannot read image \(Image size \(400000000 pixels\) exceeds"),
    })
    assert results["small"]["type"] is None, results["small"]


# ----- side files that are not files, or grow past their bound while read -----

SIDE_FILES = {"config.json": "pv.load_config", "generation_config.json": "pv.load_generation_config",
              "preprocessor_config.json": "pv.load_image_config", "tokenizer_config.json": "pv.load_tokenizer",
              "special_tokens_map.json": "pv.load_tokenizer", "tokenizer.json": "pv.load_tokenizer",
              "vocab.json": "pv.load_tokenizer", "merges.txt": "pv.load_tokenizer",
              "sentencepiece.bpe.model": "pv.load_tokenizer"}


def _side_file_dir(base, folder, name: str) -> str:
    """A copy of checkpoint ``base`` with the tokenizer files that make ``name`` the one read."""
    path = shutil.copytree(base, folder)
    if name in ("vocab.json", "merges.txt"):
        write_tokenizer(path, with_json=False)
    elif name != "sentencepiece.bpe.model":
        write_tokenizer(path, with_json=True)
    write_json(os.path.join(path, "preprocessor_config.json"), {"size": 16})
    target = os.path.join(path, name)
    if os.path.exists(target):
        os.remove(target)
    return target


def test_special_side_files_are_refused_at_once(tiny, tmp_path):
    """A FIFO (a read blocks forever), a device (/dev/zero never ends) or a folder in the place of
    any side file: the file's own error, naming it, without reading it."""
    _, path = tiny
    attacks, expected = {}, {}
    for i, (name, reader) in enumerate(SIDE_FILES.items()):
        error = "ConfigError" if reader != "pv.load_tokenizer" else "TokenizerError"
        for kind, make in (("a FIFO", os.mkfifo), ("a device", lambda t: os.symlink("/dev/zero", t)),
                           ("a directory", os.mkdir)):
            target = _side_file_dir(path, tmp_path / f"{i}-{kind[2:]}", name)
            make(target)
            attacks[f"{name} {kind}"] = f"{reader}({os.path.dirname(target)!r})"
            expected[f"{name} {kind}"] = (error, rf"{re.escape(target)} is {kind}, not a file")
    weights = shutil.copytree(path, tmp_path / "weights-FIFO")
    os.remove(weights / "model.safetensors")
    os.mkfifo(weights / "model.safetensors")
    attacks["weights FIFO"] = f"pv.load({str(weights)!r})"
    expected["weights FIFO"] = ("CheckpointError", r"model\.safetensors is a FIFO, not a weights file")
    assert_refused(run_bounded(attacks, timeout=120), expected)


def test_side_file_bound_holds_while_reading(tiny, monkeypatch):
    """A file whose reported size is small (a /proc-like file, or one still growing) is cut off at
    the bound by the bytes actually read."""
    from purevedec.checkpoints import jsonfile
    _, path = tiny
    file = os.path.join(path, "preprocessor_config.json")
    with open(file, "w") as f:
        f.write('{"a": "' + "x" * (17 * 2 ** 20) + '"}')
    real_fstat = os.fstat

    def reports_empty(fd):
        info = real_fstat(fd)
        return os.stat_result((info.st_mode, *info[1:6], 0, *info[7:]))
    monkeypatch.setattr(jsonfile.os, "fstat", reports_empty)
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json holds more than the 16777216 bytes"):
        pv.load_image_config(path)


def test_oversized_tokenizer_files_are_refused_before_the_library_reads_them(tiny):
    """A 65 MiB (sparse) tokenizer.json or merges.txt: refused by size, not handed to the
    tokenizers library (which aborts the process when its parse runs out of memory)."""
    _, path = tiny
    for with_json, name in ((True, "tokenizer.json"), (False, "merges.txt")):
        write_tokenizer(path, with_json=with_json)
        os.truncate(os.path.join(path, name), 65 * 2 ** 20)
        with pytest.raises(pv.TokenizerError, match=rf"{name.replace('.', '[.]')} holds 68157440 bytes, more than "
                                                    r"the 67108864"):
            pv.load_tokenizer(path)
        os.remove(os.path.join(path, name))


def test_empty_tokenizer_models_are_errors(tmp_path):
    from tokenizers import Tokenizer, models
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "sentencepiece.bpe.model").write_bytes(b"")
    with pytest.raises(pv.TokenizerError, match=r"sentencepiece\.bpe\.model holds no tokens"):
        pv.load_tokenizer(tmp_path / "spm")
    (tmp_path / "json").mkdir()
    Tokenizer(models.BPE(vocab={}, merges=[])).save(str(tmp_path / "json" / "tokenizer.json"))
    with pytest.raises(pv.TokenizerError, match=r"json: the tokenizer model holds no tokens"):
        pv.load_tokenizer(tmp_path / "json")


# ----- the tokenizers library's panics become TokenizerErrors -----

def _tokenizer_json(path, edit) -> None:
    from tokenizers import Tokenizer, models
    d = json.loads(Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")])).to_str())
    edit(d)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(d, f)


def test_tokenizer_library_panics_are_tokenizer_errors(tmp_path):
    """A merge whose result is not in the vocabulary panics inside the library at load; a
    backtracking regex panics at encode. Both are PanicExceptions (BaseException) unless caught."""
    (tmp_path / "merge").mkdir()
    _tokenizer_json(tmp_path / "merge", lambda d: d["model"]["merges"].append(["ab", "b"]))
    with pytest.raises(pv.TokenizerError, match=r"tokenizer\.json is not a readable tokenizer: the tokenizers "
                                                r"library failed"):
        pv.load_tokenizer(tmp_path / "merge")
    (tmp_path / "regex").mkdir()
    _tokenizer_json(tmp_path / "regex", lambda d: d.__setitem__("pre_tokenizer", {
        "type": "Split", "pattern": {"Regex": "(a*)*$"}, "behavior": "Isolated", "invert": False}))
    tok = pv.load_tokenizer(tmp_path / "regex")
    with pytest.raises(pv.TokenizerError, match=r"cannot encode 'aaaa.*the tokenizers library failed .*retry-limit"):
        tok.encode("a" * 5000 + "c")


def test_merges_are_read_as_the_library_reads_them(tmp_path):
    """vocab.json + merges.txt, read by purevedec and handed over as values: the same tokens as
    the library's own file reader; a malformed line and a merge over a missing token are errors."""
    from tokenizers.models import BPE
    write_tokenizer(tmp_path, with_json=False)
    with open(tmp_path / "merges.txt", "a") as f:
        f.write("ab b\r\n")
    with open(tmp_path / "vocab.json", "w") as f:
        json.dump({"a": 0, "b": 1, "ab": 2, "abb": 3}, f)
    ours = pv.load_tokenizer(tmp_path)
    theirs = BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert ours.backend.model.tokenize("abbab") and \
        [t.value for t in ours.backend.model.tokenize("abbab")] == [t.value for t in theirs.tokenize("abbab")] == \
        ["abb", "ab"]
    with open(tmp_path / "merges.txt", "a") as f:
        f.write("a b c\n")
    with pytest.raises(pv.TokenizerError, match=r"merges\.txt line 4 is not two tokens"):
        pv.load_tokenizer(tmp_path)
    with open(tmp_path / "merges.txt", "w") as f:
        f.write("a zz\n")
    with pytest.raises(pv.TokenizerError, match=r"cannot read .*vocab\.json / .*merges\.txt: .*zz"):
        pv.load_tokenizer(tmp_path)


def test_a_tokenizer_smaller_than_the_model_is_refused(tiny):
    _, path = tiny
    captioning_dir(path)
    pv.Captioner.from_pretrained(path)
    write_tokenizer(path, with_json=True)     # 3 tokens for a model of 50
    with pytest.raises(pv.TokenizerError, match=r"the tokenizer knows 3 token ids, fewer than the model's "
                                                r"vocabulary of 50"):
        pv.Captioner.from_pretrained(path)
