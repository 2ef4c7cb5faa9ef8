"""The pipelined loader (issue 14): images decoded and preprocessed on threads ahead of the model
give the same pixels, in the same order, as the plain preprocessing; a broken file is that
file's record and the rest go on; no more than the window is ever in flight; and the CLI's
output does not depend on how many threads read."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
from PIL import Image

from cli_util import checkpoint, run_cli  # noqa: F401 (fixture)
from purevedec.captioning.captioner import read_pixels
from purevedec.captioning.image import ImageConfig, load_image_config
from purevedec.captioning.loader_pipeline import read_ahead


def _mixed_folder(folder) -> tuple[list[str], set[str]]:
    """Files of mixed sizes and modes (RGB JPEGs 40..900 px, RGBA/P/L/16-bit PNGs, a CMYK JPEG)
    and three broken ones: (paths in order, names of the broken)."""
    folder.mkdir()
    rs = np.random.RandomState(14)
    paths, broken = [], set()

    def add(name, image=None, data=None):
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        else:
            image.save(path)
        paths.append(str(path))

    for i, (h, w) in enumerate([(40, 60), (900, 300), (224, 224), (517, 811), (31, 700)]):
        add(f"rgb{i}.jpg", Image.fromarray(rs.randint(0, 256, (h, w, 3), np.uint8)))
    add("rgba.png", Image.fromarray(rs.randint(0, 256, (50, 70, 4), np.uint8), "RGBA"))
    add("palette.png", Image.fromarray(rs.randint(0, 256, (64, 48, 3), np.uint8)).convert("P"))
    add("gray.png", Image.fromarray(rs.randint(0, 256, (33, 90), np.uint8), "L"))
    add("wide.png", Image.fromarray(rs.randint(0, 65536, (40, 40)).astype(np.uint16)))
    add("cmyk.jpg", Image.fromarray(rs.randint(0, 256, (45, 45, 4), np.uint8), "CMYK"))
    good = (folder / "rgb0.jpg").read_bytes()
    for name, data in (("empty.jpg", b""), ("text.png", b"not an image at all"), ("cut.jpg", good[:len(good) // 3])):
        add(name, data=data)
        broken.add(name)
    order = rs.permutation(len(paths))      # broken files spread among the good ones
    return [paths[i] for i in order], broken


@pytest.mark.parametrize("workers", [1, 3])
def test_pipelined_pixels_equal_plain_preprocessing_in_order(tmp_path, workers):
    """Every file's pixels from the thread pool equal ``read_pixels`` run one by one in this
    thread (which test_image checks against transformers' processor), in input order; each
    broken file is its own record naming it, and every file after it is still read."""
    paths, broken = _mixed_folder(tmp_path / "imgs")
    config = ImageConfig()
    loaded = list(read_ahead(paths, lambda p, i: read_pixels(p, config, i), workers=workers, window=4))
    assert [item.index for item in loaded] == list(range(len(paths)))
    for path, item in zip(paths, loaded):
        name = path.rsplit("/", 1)[1]
        if name in broken:
            assert item.value is None and path in str(item.error), (name, item)
            continue
        assert item.error is None, item.error
        with pytest.warns(UserWarning) if name == "wide.png" else contextlib.nullcontext():
            expected = read_pixels(path, config)
        np.testing.assert_array_equal(item.value, expected)
        assert item.value.dtype == np.float32 and item.value.shape == (3, 224, 224)


def test_in_flight_reads_never_exceed_the_window():
    """While the consumer holds an item, the pool reads ahead up to the window and no further:
    at most ``window`` items read and not yet taken, plus the one being handed back."""
    cond, state = threading.Condition(), {"started": 0, "taken": 0, "most_ahead": 0}

    def read(item, index):
        with cond:
            state["started"] += 1
            state["most_ahead"] = max(state["most_ahead"], state["started"] - state["taken"])
            cond.notify_all()
        return item * 2

    out = []
    for item in read_ahead(list(range(40)), read, workers=3, window=5):
        with cond:
            state["taken"] += 1
            # the model's turn: the pool fills the window meanwhile (the timeout only stops a hang)
            assert cond.wait_for(lambda: state["started"] >= min(40, state["taken"] + 5), timeout=120), state
        out.append(item.value)
    assert out == [2 * i for i in range(40)]
    assert 5 <= state["most_ahead"] <= 5 + 1  # the window, + the one being handed back


def test_closing_early_stops_reading():
    """A consumer that stops after 3 items: close() returns without waiting for the reads running
    (held on a gate), cancels the queued ones, and no read starts after it."""
    gate, started, finished = threading.Event(), [], []
    cond = threading.Condition()

    def read(x, i):
        with cond:
            started.append(i)
        if i >= 3:
            gate.wait(timeout=120)  # held until the consumer has closed (the timeout only stops a hang)
        with cond:
            finished.append(i)
            cond.notify_all()
        return x

    before = set(threading.enumerate())
    items = read_ahead(list(range(1000)), read, workers=2, window=4)
    assert [next(items).value for _ in range(3)] == [0, 1, 2]
    readers = set(threading.enumerate()) - before
    items.close()
    assert not gate.is_set()  # close() did not wait for the held reads
    with cond:
        running = list(started)
    gate.set()
    for thread in readers:  # the pool's threads end once it has nothing left to run
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert sorted(started) == sorted(running) == list(range(len(running)))
    assert len(running) <= 3 + 2  # the 3 taken + one held read per worker


def test_bad_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers"):
        list(read_ahead([1], lambda x, i: x, workers=-1, window=2))


def test_cli_output_is_the_same_with_and_without_the_pipeline(checkpoint, tmp_path):
    """`purevedec caption` over the mixed folder: the records with 3 reading threads equal those
    read in the main thread (--workers 0), file for file, each broken file named on stderr."""
    paths, broken = _mixed_folder(tmp_path / "imgs")
    argv = ["caption", str(tmp_path / "imgs"), "--model", checkpoint[1], "--batch-size", "4",
            "--max-new-tokens", "4", "--format", "jsonl"]
    code_plain, plain, err_plain = run_cli(argv + ["--workers", "0"])
    code, piped, err = run_cli(argv + ["--workers", "3"])
    assert code == code_plain == 1
    assert piped == plain and len(piped.splitlines()) == len(paths) - len(broken)
    for name in broken:
        assert sum(name in line for line in err.splitlines()) == 1, err
    assert sorted(err.splitlines()) == sorted(err_plain.splitlines())


def test_captioner_pipelined_batches_equal_plain(checkpoint, tmp_path):
    """The Captioner's folder path: with threads, the same captions and errors as without."""
    import purevedec
    paths, broken = _mixed_folder(tmp_path / "imgs")
    cap = purevedec.Captioner.from_pretrained(checkpoint[1])
    assert cap.image_config == load_image_config(checkpoint[1])
    plain = list(cap.captions(paths, batch_size=3, errors="return", workers=0, max_new_tokens=4))
    piped = list(cap.captions(paths, batch_size=3, errors="return", workers=2, max_new_tokens=4))
    for p, a, b in zip(paths, plain, piped):
        if p.rsplit("/", 1)[1] in broken:
            assert isinstance(a, Exception) and str(a) == str(b)
        else:
            assert [(c.text, c.token_ids) for c in a] == [(c.text, c.token_ids) for c in b]
