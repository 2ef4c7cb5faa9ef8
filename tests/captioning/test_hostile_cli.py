"""Hostile command lines and output targets, each run as a user would: ``python -m purevedec``
in its own process, with an address-space limit and a timeout. Every case ends with one line
on stderr and its exit code, and no file that existed before the run changes unless the run
owns it (a caption file of its format)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys

import pytest

from cli_util import ROOT, checkpoint, make_images  # noqa: F401 (fixture)

MEMORY = 3 * 2 ** 30
SECONDS = 120   # a caption run compiles its model; the loaded 2-core test machine needs more than 45 s


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_user(*args) -> tuple[int, str, str]:
    """``python -m purevedec ARGS``: (exit code, stdout, stderr); a hang fails the test."""
    env = {**os.environ, "PUREVEDEC_COMPILE_CACHE": "none", "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's cache would take the place of --compile-cache
    try:
        done = subprocess.run([sys.executable, "-m", "purevedec", *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=SECONDS, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"purevedec {' '.join(args)} did not finish within {SECONDS} s")
    return done.returncode, done.stdout, done.stderr


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_one_line(code: int, err: str, expected_code: int, pattern: str) -> None:
    import re
    assert code == expected_code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err


# ----- --output appends only to a caption file of its format -----

def _targets(tmp_path, ckpt: str, image: str) -> dict[str, str]:
    """Files that are not caption files of the text format, by what they are."""
    notes = tmp_path / "notes.txt"
    notes.write_text("buy milk")                                  # one line, no final newline
    lines = tmp_path / "lines.txt"
    lines.write_text("meeting at ten\nbuy milk")                  # whole lines that are not records
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text(json.dumps({"path": image, "caption": "a cat", "score": -1.0}) + "\n")
    tsv = tmp_path / "escapes.txt"
    tsv.write_text("a\\q\tb\n")                                   # a backslash escape escape() never writes
    return {"input image": image, "weights": os.path.join(ckpt, "model.safetensors"), "notes": str(notes),
            "lines": str(lines), "jsonl read as text": str(jsonl), "bad escape": str(tsv)}


def test_output_refuses_files_that_are_not_caption_files(checkpoint, tmp_path):
    images = make_images(tmp_path / "imgs", 1)
    targets = _targets(tmp_path, checkpoint[1], images[0])
    before = {label: digest(path) for label, path in targets.items()}
    for label, path in targets.items():
        code, out, err = run_user("caption", images[0], "--model", checkpoint[1], "--max-new-tokens", "2",
                                  "--output", path)
        assert_one_line(code, err, 2, r"refusing to append to --output .*not a text caption record")
        assert out == "" and digest(path) == before[label], label


def test_output_refuses_special_files_at_once(checkpoint, tmp_path):
    images = make_images(tmp_path / "imgs", 1)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, kind in ((fifo, "a FIFO"), (tmp_path / "imgs", "a directory"), ("/dev/zero", "a device")):
        code, _, err = run_user("caption", images[0], "--model", checkpoint[1], "--output", str(target))
        assert_one_line(code, err, 2, f"--output .* is {kind}, not a caption file")


def test_output_resumes_a_text_file_cut_mid_line(checkpoint, tmp_path):
    """A text caption file whose last line was cut (inside an escape): the cut line is replaced,
    the whole records before it kept; an empty file is appended to."""
    images = make_images(tmp_path / "imgs", 2)
    caps = tmp_path / "caps.txt"
    caps.write_text(f"{images[0]}\tt1 t2\n{images[1]}\tcut \\x1")
    empty = tmp_path / "empty.txt"
    empty.touch()
    code, out, err = run_user("caption", *images, "--model", checkpoint[1], "--max-new-tokens", "2",
                              "--output", str(caps), "--skip-existing")
    assert code == 0 and "unfinished last line" in err, err
    lines = caps.read_text().splitlines()
    assert lines[0] == f"{images[0]}\tt1 t2" and [line.split("\t")[0] for line in lines] == images
    code, _, err = run_user("caption", images[0], "--model", checkpoint[1], "--max-new-tokens", "2",
                            "--output", str(empty))
    assert code == 0 and empty.read_text().startswith(images[0] + "\t"), err


# ----- attention maps never overwrite a file the run did not write -----

def test_attention_maps_do_not_overwrite_existing_files(checkpoint, tmp_path):
    """Maps written into the input folder: a.png's map would be a.png.png, which is also an
    input here; it is left as it was, a.png is reported, and the other maps are written."""
    folder = tmp_path / "imgs"
    paths = make_images(folder, 2)
    clash = folder / (os.path.basename(paths[0]) + ".png")
    os.replace(paths[1], clash)
    before = {p: digest(p) for p in (paths[0], clash)}
    code, out, err = run_user("caption", str(folder), "--model", checkpoint[1], "--max-new-tokens", "2",
                              "--attention-map", str(folder), "--format", "jsonl")
    assert code == 1, err
    assert "attention map not written" in err and "exists" in err and "Traceback" not in err
    assert all(digest(p) == d for p, d in before.items())
    records = {r["path"]: r for r in map(json.loads, out.splitlines())}
    assert "attention_map" not in records[paths[0]]
    assert os.path.isfile(records[str(clash)]["attention_map"])


# ----- flags -----

@pytest.mark.parametrize("flag, value, pattern", [
    ("--seed", str(2 ** 64), r"--seed: .*must be an integer in \[-2\^63, 2\^63\)"),
    ("--seed", "-" + "9" * 30, r"--seed: .*must be an integer in"),
    ("--seed", "1e3", r"--seed: '1e3' is not an integer"),
])
def test_bad_seed_is_one_line(checkpoint, tmp_path, flag, value, pattern):
    images = make_images(tmp_path / "imgs", 1)
    code, out, err = run_user("caption", images[0], "--model", checkpoint[1], flag, value)
    assert_one_line(code, err, 2, pattern)


def test_compile_cache_that_is_a_file_is_one_line(checkpoint, tmp_path):
    images = make_images(tmp_path / "imgs", 1)
    file = tmp_path / "cache"
    file.write_text("not a folder")
    code, out, err = run_user("caption", images[0], "--model", checkpoint[1], "--compile-cache", str(file))
    assert_one_line(code, err, 2, r"--compile-cache .*cache")
    assert file.read_text() == "not a folder"


# ----- generation that turns non-finite -----

def test_rows_that_turn_nonfinite_are_errors_not_empty_captions(checkpoint, tmp_path):
    """float16 activations that overflow (a final layer-norm scale of 60000, finite in float16):
    each input is named on stderr with exit 1, and no caption is printed for it."""
    import shutil
    from safetensors.numpy import load_file, save_file
    ckpt = shutil.copytree(checkpoint[1], tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    name = next(n for n in tensors if n.endswith("ln_f.weight") and n.startswith("decoder"))
    tensors[name] = tensors[name] * 0 + 60000.0
    save_file(tensors, ckpt / "model.safetensors")
    images = make_images(tmp_path / "imgs", 2)
    code, out, err = run_user("caption", *images, "--model", str(ckpt), "--dtype", "float16",
                              "--max-new-tokens", "3")
    assert code == 1 and out == "", err
    assert all(f"error: {p}: generation turned non-finite" in err for p in images), err
