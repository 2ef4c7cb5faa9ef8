"""A captioned image folder -> fixed-shape, padded training batches.

The folder holds images and ``captions.jsonl`` (one object per line: ``{"image": "a.jpg",
"caption": "..."}`` or ``{"image": ..., "captions": [...]}``) or ``captions.csv`` (columns
``image,caption``; an image may have several rows). Problems (a missing image file, a bad line,
an empty caption) are collected as messages naming the file and line, and the entry skipped.

Batches have fixed shapes so that a run compiles a handful of programs: ``batch_size`` images
and ``captions_per_image`` caption rows per image (image-major), caption length padded up to
the smallest of a few bucket lengths; the last partial batch is kept, its empty rows zero
pixels and -100 labels (they count for nothing). Images are decoded and preprocessed on a
thread pool, one batch ahead of the step that consumes it.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import numpy as np

from ..errors import ConfigError
from .cross_entropy import IGNORE_INDEX
from .labels import caption_ids


@dataclass
class Example:
    image: str                 # path of the image file
    captions: list[str]


@dataclass
class Dataset:
    examples: list[Example]
    problems: list[str] = field(default_factory=list)  # what was skipped, and why


class Batch(NamedTuple):
    pixels: np.ndarray        # float32 [B,C,H,W]; zeros in unused rows
    labels: np.ndarray        # int32 [B*k,T]: caption tokens then eos, -100 after it and in unused rows
    images: list[str]         # the image paths in this batch (fewer than B in a partial one)
    references: list[list[str]]  # every caption of each image (for metrics)


# A caption file's line (or CSV field) longer than this is refused: nothing legitimate is that long,
# and bounding it bounds the memory one hostile line can take.
MAX_LINE_BYTES = 1 << 20


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, each line read with a bound; a line that is too long
    or not UTF-8 is a ConfigError naming the file and line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise ConfigError(f"{path}:{n}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _json_row(line: str, where: str) -> tuple[str, list[str], str]:
    """One jsonl line -> (image, captions, where); a ValueError says what is wrong with it."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # integers past Python's digit limit, nesting too deep
        raise ValueError(f"not usable JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(d, dict) or not isinstance(d.get("image"), str):
        raise ValueError("needs an object with an 'image' file name")
    caps = d.get("captions", d.get("caption"))
    caps = [caps] if isinstance(caps, str) else caps
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise ValueError("'caption' must be a string or 'captions' a list of strings")
    return d["image"], caps, where


def _from_jsonl(path: str, problems: list[str]) -> list[tuple[str, list[str], str]]:
    rows = []
    for n, line in _text_lines(path):
        if line.strip():
            try:
                rows.append(_json_row(line, f"{path}:{n}"))
            except ValueError as e:
                problems.append(f"{path}:{n}: {e}")
    return rows


def _from_csv(path: str, problems: list[str]) -> list[tuple[str, list[str], str]]:
    lines = _text_lines(path)
    reader = csv.reader(line for _, line in lines)
    try:
        header = next(reader, None)
        if not header or not {"image", "caption"} <= set(header):
            raise ConfigError(f"{path}:1: needs the columns 'image' and 'caption', found {header}")
        image, caption = header.index("image"), header.index("caption")
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) <= max(image, caption):
                problems.append(f"{where}: {len(row)} columns, expected {len(header)}")
                continue
            rows.append((row[image], [row[caption]], where))
        return rows
    except csv.Error as e:
        raise ConfigError(f"{path}:{reader.line_num}: {e}") from None


def _image_path(folder: str, image: str, allow_outside: bool) -> str | None:
    """The image's path; None when it leaves ``folder`` (an absolute path, ``..``) and that is not
    allowed."""
    path = os.path.join(folder, image)
    if allow_outside:
        return path
    root = os.path.abspath(folder)
    inside = os.path.commonpath([root, os.path.abspath(path)]) == root
    return path if inside else None


def read_folder(folder: str, *, allow_outside: bool = False) -> Dataset:
    """The captioned images of ``folder`` (captions.jsonl, else captions.csv), grouped by image
    in first-seen order; unusable entries are reported in ``problems`` and skipped. Image paths
    must stay inside ``folder`` unless ``allow_outside``."""
    problems: list[str] = []
    jsonl, csv_path = os.path.join(folder, "captions.jsonl"), os.path.join(folder, "captions.csv")
    if os.path.isfile(jsonl):
        rows = _from_jsonl(jsonl, problems)
    elif os.path.isfile(csv_path):
        rows = _from_csv(csv_path, problems)
    else:
        raise FileNotFoundError(f"{folder}: no captions.jsonl or captions.csv")
    grouped: dict[str, list[str]] = {}
    for image, caps, where in rows:
        path = _image_path(folder, image, allow_outside) if image else None
        if image and path is None:
            problems.append(f"{where}: image {image!r:.200} is outside the data folder (skipped; "
                            "--allow-outside-data allows it)")
            continue
        if not image or not os.path.isfile(path):
            problems.append(f"{where}: image file {image!r:.200} not found")
            continue
        good = [c.strip() for c in caps if c.strip()]
        if not good:
            problems.append(f"{where}: {image}: no caption")
            continue
        grouped.setdefault(path, []).extend(good)
    return Dataset([Example(p, c) for p, c in grouped.items()], problems)


def split(data: Dataset, validation_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): a seeded random ``validation_fraction`` of the images (at least one
    when the fraction is positive and there are two images or more)."""
    order = np.random.default_rng(seed).permutation(len(data.examples))
    n_val = int(round(validation_fraction * len(order)))
    if validation_fraction > 0 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    val = [data.examples[i] for i in sorted(order[:n_val])]
    train = [data.examples[i] for i in sorted(order[n_val:])]
    return Dataset(train, data.problems), Dataset(val, [])


def bucket_length(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds n tokens (the largest bucket is the maximum length)."""
    return next((b for b in buckets if b >= n), buckets[-1])


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from 8 up to max_length, and max_length itself."""
    out, b = [], 8
    while b < max_length:
        out.append(b)
        b *= 2
    return tuple(out) + (max_length,)


@dataclass
class Batcher:
    """Turns a Dataset into Batches. ``encode`` maps a caption to token ids (without eos),
    ``load`` an image path to a preprocessed float32 [C,H,W] array (it may raise)."""
    encode: Callable[[str], list[int]]
    load: Callable[[str], np.ndarray]
    image_shape: tuple[int, int, int]
    eos_token_id: int
    batch_size: int
    captions_per_image: int = 1
    max_length: int = 32
    buckets: tuple[int, ...] = ()
    threads: int = 4
    process_index: int = 0                               # this process's share of each batch (several hosts)
    process_count: int = 1                               # processes sharing each batch
    truncated: int = 0                                   # captions cut to max_length so far
    problems: list[str] = field(default_factory=list)    # images that failed to load (each once)
    report: Callable[[str], None] | None = None          # told of each problem when it is first met

    def __post_init__(self):
        self.buckets = tuple(self.buckets) or default_buckets(self.max_length)
        if self.batch_size % self.process_count or not 0 <= self.process_index < self.process_count:
            raise ValueError(f"batch_size={self.batch_size} must split evenly over process_count="
                             f"{self.process_count} (process_index={self.process_index})")
        self._tokens: dict[str, list[int]] = {}
        self._unreadable: set[str] = set()

    def _ids(self, caption: str) -> list[int]:
        if caption not in self._tokens:
            ids, cut = caption_ids(self.encode, caption, self.eos_token_id, self.max_length)
            self.truncated += cut
            self._tokens[caption] = ids
        return self._tokens[caption]

    def _pick(self, captions: list[str], rng: np.random.Generator | None) -> list[str]:
        """k captions of an image: a seeded random choice when training (cycled if it has fewer)."""
        k = self.captions_per_image
        order = rng.permutation(len(captions)) if rng is not None else np.arange(len(captions))
        return [captions[order[i % len(captions)]] for i in range(k)]

    @property
    def local_batch_size(self) -> int:
        """Images per batch on this process: its contiguous share of every batch."""
        return self.batch_size // self.process_count

    def _local(self, items: list) -> list:
        """This process's share of a whole batch's items (rows process_index*b .. +b)."""
        b = self.local_batch_size
        return items[self.process_index * b:(self.process_index + 1) * b]

    def _assemble(self, chunk: list[Example], pixels: list, rng) -> Batch:
        """This process's rows of the batch of ``chunk`` (``pixels``: its share's images, loaded).
        Every process draws the whole batch's captions, so that the random choice and the padded
        caption length are the same on all of them."""
        b, k = self.local_batch_size, self.captions_per_image
        picked = [self._pick(ex.captions, rng) for ex in chunk]
        t = bucket_length(max((len(self._ids(c)) for caps in picked for c in caps), default=1), self.buckets)
        out_px = np.zeros((b, *self.image_shape), np.float32)
        rows, images, refs = [], [], []
        for (ex, caps), px in zip(self._local(list(zip(chunk, picked))), pixels):
            if isinstance(px, Exception):
                self._problem(ex.image, px)
                continue
            out_px[len(images)] = px
            images.append(ex.image)
            refs.append(ex.captions)
            rows.extend(self._ids(c) for c in caps)
        labels = np.full((b * k, t), IGNORE_INDEX, np.int32)
        for i, r in enumerate(rows):
            labels[i, : len(r)] = r
        return Batch(out_px, labels, images, refs)

    def _problem(self, image: str, error: Exception) -> None:
        """An unreadable image is recorded and reported the first time only (not every epoch)."""
        if image in self._unreadable:
            return
        self._unreadable.add(image)
        message = f"{image}: unreadable image skipped ({error})"
        self.problems.append(message)
        if self.report is not None:
            self.report(message)

    def _load_all(self, pool, chunk: list[Example]):
        def safe(path):
            try:
                return self.load(path)
            except Exception as e:  # noqa: BLE001 - one bad file must not end a long run
                return e
        return pool.map(safe, [ex.image for ex in chunk])

    def batches(self, data: Dataset, *, seed: int | None = None, epoch: int = 0) -> Iterator[Batch]:
        """One pass: shuffled from (seed, epoch) when ``seed`` is given, in order otherwise; the
        next batch's images load on the pool while the caller works on the current one. Each
        process loads only its share of every batch (``process_index`` of ``process_count``)."""
        rng = np.random.default_rng([seed, epoch]) if seed is not None else None
        order = rng.permutation(len(data.examples)) if rng is not None else np.arange(len(data.examples))
        chunks = [[data.examples[i] for i in order[s: s + self.batch_size]]
                  for s in range(0, len(order), self.batch_size)]
        with ThreadPoolExecutor(self.threads) as pool:
            pending = self._load_all(pool, self._local(chunks[0])) if chunks else None
            for n, chunk in enumerate(chunks):
                pixels = list(pending)
                pending = self._load_all(pool, self._local(chunks[n + 1])) if n + 1 < len(chunks) else None
                yield self._assemble(chunk, pixels, rng)
