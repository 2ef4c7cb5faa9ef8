"""Images in, captions out: a checkpoint's model, preprocessing and tokenizer held together.

    cap = purevedec.Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")
    cap.caption(["cat.jpg", pil_image], num_beams=4)        # -> ["a cat sitting on a couch", ...]
    cap.caption(["cat.jpg"], num_beams=4, num_return_sequences=2)   # -> [["a cat ...", "a cat on ..."]]
    cap.caption(["cat.jpg", "broken.jpg"], errors="skip")   # -> ["a cat ...", None]

Generation goes through ``purevedec.generate`` (transformers' generate options, defaults from
the checkpoint's generation config). Images are read by a few threads up to two batches ahead
of the model (an unreadable one is that item's error, see ``errors``), in input order, and
captioned ``batch_size`` readable images per generate call.
Every call of a run has the same number of rows, min(batch_size, number of images): the last,
smaller batch is padded (its padding rows' outputs are dropped), so it does not compile again.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

from ..checkpoints.loader import load, local_dir
from ..errors import ConfigError, GenerationError, ImageError, ModelNotFound, TokenizerError
from ..generation import generate
from ..generation_config import defaults_of
from ..models import encoder_family
from .image import ImageInput, as_list
from .image_files import DeferredImage
from .preprocessor import PreprocessorConfig, load_preprocessor, output_size, pixels_of, preprocess_any
from .loader_pipeline import default_workers, read_ahead
from .text import TextTokenizer, load_tokenizer

ERROR_MODES = ("raise", "skip", "return")


class Caption(NamedTuple):
    """One generated caption of one image.

    ``text`` is the decoded caption, special tokens skipped. ``score`` is the sequence score
    ``generate`` reports: the length-normalised beam score for
    beam search, the sum of the generated tokens' log-probabilities for greedy search and
    sampling. ``token_ids`` are the generated tokens (the decoder start token excluded) up to
    and including the first EOS. ``attention`` is None unless asked for: [T, P] float32, per
    generated token, the cross-attention over the P image patches (row-major over the patch
    grid), averaged over layers and heads, without the CLS token's share. ``prompt_ids`` are the
    ids the sequence began with before the generated ones: the decoder start token and the
    prompt, as generate fed them (a Donut encoder's prompt is its own start: no other token)."""
    text: str
    score: float
    token_ids: tuple[int, ...]
    attention: Optional[np.ndarray]
    prompt_ids: tuple[int, ...] = ()


# Per image: its captions (num_return_sequences of them), None (errors="skip") or the error (errors="return").
ImageResult = Union[list[Caption], None, Exception]


def model_dir(name: str | os.PathLike) -> str:
    """A local checkpoint directory, or a hub id fetched to (or found in) the local cache."""
    try:  # the loader's own resolver: it fetches only one weights format, with the side files
        return local_dir(name)
    except Exception as e:  # offline, unknown repo, bad id: all end the same way for the caller
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFound(f"cannot load model {os.fspath(name)!r}: {why}") from None


def _generated(row: np.ndarray, eos) -> int:
    """How many tokens of ``row`` (decoder start excluded) were generated, up to the first EOS."""
    eos = set(np.atleast_1d(eos).tolist()) if eos is not None else set()
    for i, token in enumerate(row.tolist()):
        if token in eos:
            return i + 1
    return len(row)


def _patch_attention(cross: np.ndarray, special: int) -> np.ndarray:
    """[T, layers, heads, S] -> [T, S-special]: averaged over layers and heads (every layer reads the
    image, and no single one is known to be the grounded one), the ``special`` leading tokens
    ([CLS], DeiT's distillation token) dropped: one weight per patch."""
    return cross.mean(axis=(1, 2))[:, special:]


def input_name(image: ImageInput, index: int) -> str:
    """How errors name an input: its path (a deferred one's name), else its position in the call."""
    if isinstance(image, DeferredImage):
        return image.name
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"


def read_pixels(image: ImageInput, config: PreprocessorConfig, index: int = 0) -> np.ndarray:
    """One input -> [3,H,W] float32, every failure an ``ImageError`` naming the input.

    A path must be a regular file: a FIFO or device would block or never end, so it is refused
    before it is opened. Any exception while decoding (pillow's DecompressionBombError, a
    MemoryError, a corrupt header) becomes this input's error, not the whole call's."""
    name = input_name(image, index)
    try:
        if isinstance(image, (str, os.PathLike)):
            mode = os.stat(image).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
                raise ImageError(f"{name}: {kind}, not an image file; skipped")
        if isinstance(image, DeferredImage):
            image = image.open()
        return pixels_of(image, config)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Exception as e:  # noqa: BLE001 - decoding untrusted bytes may fail in any way
        raise ImageError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None


@dataclass
class _Pending:
    """One input waiting for its batch: its pixels, or the error that replaced them."""
    pixels: Optional[np.ndarray]
    error: Optional[ImageError | GenerationError]
    name: str = ""
    result: Optional[list[Caption]] = None


def _read_or_error(image: ImageInput, index: int, *, config: PreprocessorConfig) -> _Pending:
    """``read_pixels`` as a record: a worker thread returns the input's error, it does not raise it."""
    try:
        return _Pending(read_pixels(image, config, index), None, input_name(image, index))
    except ImageError as e:
        return _Pending(None, e)


def check_parts(path: str, config, image_config: PreprocessorConfig, tokenizer: TextTokenizer) -> None:
    """The preprocessor and the tokenizer of checkpoint ``path`` must fit its model: the images it
    makes have the encoder's size, and the tokenizer knows every id the model can emit (ids past
    it would decode to nothing)."""
    want = tuple(config.encoder.image_size)
    key, got = output_size(image_config) or ("size", want)
    if tuple(got) != want:
        raise ConfigError(f"{os.path.join(path, 'preprocessor_config.json')}: {key} {tuple(got)} disagrees with "
                          f"config.json's encoder.image_size {want}: the model takes {want[0]} x {want[1]} images")
    if tokenizer.size < config.decoder.vocab_size:
        raise TokenizerError(f"{path}: the tokenizer knows {tokenizer.size} token ids, fewer than the model's "
                             f"vocabulary of {config.decoder.vocab_size}: the ids past it would decode to nothing")


@dataclass(frozen=True)
class Captioner:
    """A checkpoint ready to caption: params (with their config), preprocessing and tokenizer.

    Build it with ``Captioner.from_pretrained(name_or_path, dtype=None)``. ``caption`` returns
    texts, ``captions`` yields ``Caption`` records (scores, token ids, attention maps), one
    list per image. Options are ``purevedec.generate``'s (num_beams, max_new_tokens, do_sample,
    temperature, top_k, top_p, num_return_sequences, ...); unset ones come from the checkpoint's
    generation config. Inputs are paths, PIL images or arrays (HWC, CHW or HW)."""
    params: Any
    """The model's params (they carry their config)."""
    config: Any
    """The model's ``purevedec.Config``."""
    image_config: PreprocessorConfig
    """The checkpoint's preprocessing (``preprocessor_config.json``: ViT's or a document pipeline)."""
    tokenizer: TextTokenizer
    """The checkpoint's tokenizer."""
    dtype: Any = None
    """Compute dtype for generate (None: float32)."""
    mesh: Any = None
    """A device mesh (``with_mesh``): batches are split over its "data" axis; None: one device."""

    def __repr__(self) -> str:
        """One line: the families, the parameter count, the image size and the dtypes, not the
        weights (a dataclass repr would print every array)."""
        import jax

        from ..params import weights_of
        leaves = jax.tree.leaves(weights_of(self.params))
        count = sum(int(np.prod(np.shape(x))) for x in leaves)
        stored = str(np.dtype(leaves[0].dtype)) if leaves else "none"
        enc, dec = self.config.encoder, self.config.decoder
        sizes = f"{count / 1e6:.1f}M params" if count >= 1e5 else f"{count} params"
        mesh = f", mesh {dict(self.mesh.shape)}" if self.mesh is not None else ""
        return (f"Captioner({enc.model_type} encoder + {dec.model_type} decoder, {sizes}, "
                f"image {self.image_config.size[0]}x{self.image_config.size[1]}, weights {stored}, "
                f"compute {np.dtype(self.dtype).name if self.dtype is not None else 'float32'}{mesh})")

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike, *, dtype=None, grayscale: bool = False) -> "Captioner":
        """Load a local checkpoint directory or a hub id (weights, preprocessor and tokenizer).
        ``grayscale`` turns every image gray (and back to RGB) before preprocessing, as
        manga-ocr's application does (``ImageConfig.grayscale``)."""
        import dataclasses
        path = model_dir(name)
        params, config = load(path, dtype=dtype)
        image_config = dataclasses.replace(load_preprocessor(path), grayscale=bool(grayscale))
        tokenizer = load_tokenizer(path)
        check_parts(path, config, image_config, tokenizer)
        return cls(params, config, image_config, tokenizer, dtype)

    def with_mesh(self, mesh, *, rules=None, fsdp: bool = False) -> "Captioner":
        """This captioner on ``mesh``: params placed by ``shard_params`` (heads, MLP width and
        vocabulary over "model"), each batch split over "data" (padded to a multiple of its size)."""
        import dataclasses

        from ..sharding import shard_params
        return dataclasses.replace(self, params=shard_params(self.params, mesh, rules=rules, fsdp=fsdp), mesh=mesh)

    def _data_size(self) -> int:
        return self.mesh.shape.get("data", 1) if self.mesh is not None else 1

    @property
    def generation_config(self):
        """The checkpoint's generation defaults (what ``caption`` uses unless told otherwise)."""
        return defaults_of(self.params, self.config)

    def special_token_ids(self) -> frozenset[int]:
        """Ids the tokenizer treats as special (EOS, BOS, pad, ...), e.g. to mark them in maps."""
        added = self.tokenizer.backend.get_added_tokens_decoder()
        return frozenset(i for i, t in added.items() if t.special) | frozenset(self.generation_config.eos_token_id or ())

    def pixels(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """Inputs -> pixels [B,3,H,W] float32, as the checkpoint's image processor makes them."""
        return preprocess_any(images, self.image_config)

    def caption_pixels(self, pixels: np.ndarray, *, attention: bool = False, key=None, prompt: Optional[str] = None,
                       **options) -> list[list[Caption]]:
        """One generate call over pixels [B,3,H,W] -> B lists of num_return_sequences captions
        each, in generate's order (for beam search, best first). ``key`` feeds sampling. ``prompt``
        (a document task such as "<s_cord-v2>") is tokenized and given to generate as
        ``decoder_input_ids``, whose rule is transformers': after the decoder start token, or as given
        for a Donut encoder (its task token is the start). The text decodes the whole sequence, as
        transformers' batch_decode; ``token_ids`` follow the prompt, ``prompt_ids`` hold it."""
        options = {k: v for k, v in options.items() if v is not None}
        prompt_ids = self.tokenizer.encode(prompt) if prompt else []
        if prompt_ids:
            if attention or "decoder_input_ids" in options:
                raise ValueError("prompt cannot be combined with attention maps or decoder_input_ids")
            options["decoder_input_ids"] = [prompt_ids] * pixels.shape[0]
        if self.dtype is not None:
            options.setdefault("dtype", self.dtype)
        if self.mesh is not None:
            from ..sharding import shard_batch
            pixels = shard_batch(pixels, self.mesh)
        out = generate(self.params, pixels, self.config, output_cross_attentions=attention, key=key, **options)
        eos = options.get("eos_token_id", self.generation_config.eos_token_id)
        sequences, scores = np.asarray(out.sequences), np.asarray(out.scores)
        cross = np.asarray(out.cross_attentions) if attention else None
        special = encoder_family(self.config.encoder).special_tokens
        first = sequences.shape[1] - out.token_logprobs.shape[1]   # the prompt generate used, start included
        captions = []
        for i, row in enumerate(sequences):
            n = _generated(row[first:], eos)
            captions.append(Caption(self.tokenizer.decode(row), float(scores[i]), tuple(row[first:first + n].tolist()),
                                    _patch_attention(cross[i, :n], special) if cross is not None else None,
                                    tuple(row[:first].tolist())))
        per_image = len(captions) // pixels.shape[0]
        return [captions[i:i + per_image] for i in range(0, len(captions), per_image)]

    def _run(self, pending: list[_Pending], rows: int, batch_index: int, key, attention: bool,
             options: dict) -> None:
        """Caption the readable inputs of ``pending`` in one call padded to ``rows`` rows."""
        good = [p for p in pending if p.pixels is not None]
        if not good:
            return
        import jax
        pixels = np.stack([p.pixels for p in good])
        padded = np.concatenate([pixels, np.repeat(pixels[:1], rows - len(good), axis=0)]) if rows > len(good) \
            else pixels
        results = self.caption_pixels(padded, attention=attention, key=jax.random.fold_in(key, batch_index),
                                      **options)
        for p, r in zip(good, results):  # the padding rows' results are dropped
            if all(math.isfinite(c.score) for c in r):
                p.result = r
            else:   # NaN logits decode to an arbitrary (often empty) caption: never one to print
                p.error = GenerationError(f"{p.name}: generation turned non-finite (NaN or infinite scores): the "
                                          "weights or the compute dtype overflow (try float32)")

    def captions(self, images: Sequence[ImageInput], *, batch_size: int = 8, attention: bool = False,
                 errors: str = "raise", key=None, workers: Optional[int] = None,
                 slots: Optional[int] = None, **options) -> Iterator[ImageResult]:
        """Per input, in order: the list of its captions (num_return_sequences of them).

        ``errors`` says what an unreadable input gives: "raise" raises its ``ImageError`` (after
        yielding every earlier input's captions), "skip" yields None in its place and warns,
        "return" yields the ``ImageError`` itself. ``key`` (a jax key, default ``key(0)``) feeds
        sampling, folded with the batch number: the same call gives the same captions.
        ``workers`` threads decode and preprocess up to two batches ahead while the model runs
        (default: up to 4; 0 reads each image in this thread just before it is needed); the
        pixels, and so the captions, are the same either way.
        ``slots`` = N decodes through the continuous-batching engine instead of batches
        (``slot_captions.py``): N images decode at once and an image whose caption ended gives
        its slot to the next; greedy and beam captions are the same, sampled ones use a key per
        image.
        ``stop_score_variance=True`` (or (threshold, window)) ends each input where Nougat's
        reference ends a page read alone (its repetition-loop rule, ``score_stop.py``); with
        slots, ``stop_repeats=(max_period, repeats)`` ends one at a repeated block of tokens."""
        import jax
        if errors not in ERROR_MODES:
            raise ValueError(f"errors must be one of {ERROR_MODES}, got {errors!r}")
        if slots is None and options.get("stop_repeats"):
            raise ValueError("stop_repeats: checked inside the slot engine, so it needs slots=N")
        if slots is None:   # generate takes no stop_repeats, not even turned off
            options.pop("stop_repeats", None)
        if slots is not None:
            yield from self._slot_captions(images, slots, attention, errors, key, workers, options)
            return
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        images = as_list(images)
        fill = min(batch_size, len(images))  # images per call
        rows = -(-fill // self._data_size()) * self._data_size()  # padded to a whole number per device
        key = jax.random.key(0) if key is None else key
        if workers is None:  # one image: nothing to overlap, no pool to start
            workers = default_workers() if len(images) > 1 else 0
        read = functools.partial(_read_or_error, config=self.image_config)
        with contextlib.closing(read_ahead(images, read, workers=workers, window=2 * max(rows, 1))) as loaded:
            pending: list[_Pending] = []
            batch_index = 0
            for item in loaded:
                if item.error is not None:  # not an image's fault (those are ImageErrors in the record): a bug
                    raise item.error
                pending.append(item.value)
                ready = sum(p.pixels is not None for p in pending)
                last = item.index == len(images) - 1
                if ready == fill or last or (errors == "raise" and pending[-1].error is not None):
                    self._run(pending, rows, batch_index, key, attention, options)
                    batch_index += 1
                    yield from self._results(pending, errors)
                    pending = []

    def _slot_captions(self, images, slots, attention: bool, errors: str, key, workers, options: dict):
        import jax

        from .slot_captions import check_slot_options, slot_captions
        check_slot_options(self, slots, options, attention)
        images = as_list(images)
        if workers is None:
            workers = default_workers() if len(images) > 1 else 0
        yield from slot_captions(self, images, slots=slots, errors=errors, workers=workers, options=options,
                                 key=jax.random.key(0) if key is None else key,
                                 read=functools.partial(_read_or_error, config=self.image_config),
                                 caption=self._slot_caption)

    def _slot_caption(self, decoded, eos) -> list[Caption]:
        """The ``Caption``s of one engine output (rows start with the decoder start token): its
        beam hypotheses with their beam scores, best first, else its one sequence and the sum of
        its log-probs, as the batched path scores them."""
        rows = ([(h.sequence, h.score) for h in decoded.beams] if decoded.beams is not None
                else [(decoded.sequence, float(np.sum(decoded.token_logprobs)))])
        captions = []
        for row, score in rows:
            row = np.asarray(row)
            n = _generated(row[1:], eos)
            captions.append(Caption(self.tokenizer.decode(row), float(score), tuple(row[1:1 + n].tolist()), None,
                                    tuple(row[:1].tolist())))
        return captions

    @staticmethod
    def _results(pending: list[_Pending], errors: str) -> Iterator[ImageResult]:
        for p in pending:
            if p.error is None:
                yield p.result
            elif errors == "raise":
                raise p.error
            elif errors == "skip":
                warnings.warn(f"skipped: {p.error}", stacklevel=3)
                yield None
            else:
                yield p.error

    def caption(self, images, *, batch_size: int = 8, errors: str = "raise", key=None,
                slots: Optional[int] = None, **options) -> list:
        """Caption texts, as transformers' ``batch_decode(generate(...), skip_special_tokens=True)``.

        One entry per input. With num_return_sequences = 1 (the usual case) an entry is a str;
        with num_return_sequences = n > 1 (from the options or the checkpoint's generation
        config) it is a list of that image's n texts, in generate's order (beams: best first).
        An unreadable input raises (``errors="raise"``), gives None (``"skip"``) or its
        ``ImageError`` (``"return"``)."""
        grouped = self._returns_many(options)
        out = []
        for result in self.captions(images, batch_size=batch_size, errors=errors, key=key, slots=slots, **options):
            if isinstance(result, list):
                out.append([c.text for c in result] if grouped else result[0].text)
            else:
                out.append(result)
        return out

    def _returns_many(self, options: dict) -> bool:
        n = options.get("num_return_sequences")
        return (n if n is not None else self.generation_config.num_return_sequences) > 1
