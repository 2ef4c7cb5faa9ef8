"""``generate``: caption images with one jitted ``lax.while_loop`` (greedy, sampling, beams).

``generate_core`` is the traceable part: fixed-shape arrays out, no host sync, usable under
``jit``, ``vmap`` and ``shard_map`` (on-device evaluation, RL, self-critical training).
``generate`` calls it, then trims the buffers to the longest row on the host, as transformers
returns them. Options and their defaults follow transformers' ``generate``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..backend_tuning import decode_jit
from ..config import Config
from ..decoding import cache_step, new_cache, shifted_positions
from ..encoder_chunks import encoder_chunk, encoder_states
from ..inputs import check_ids, check_pixels, compute_dtype
from ..models import encoder_family
from ..params import unpack
from ..sharding import batch_split, gather_weights, weight_gathers
from .beam_loop import beam_results, beam_state, run_beam
from .keys import batch_key, per_image, row_keys
from ..generation_config import defaults_of
from .options import TRACEABLE, GenerationConfig, with_options
from .plan import make_plan, prepare_prompt
from .processors import Knobs
from .score_stop import check_rule as check_score_rule
from .sample_loop import last_cross, run_sample, sample_results, sample_state


class GenerationResult(NamedTuple):
    """``generate_core``'s fixed-shape output; N = images x returned sequences, Lmax = max_length,
    G = Lmax - prompt length."""
    sequences: jax.Array
    """[N,Lmax] int32: prompt, generated tokens, pad after EOS and up to Lmax."""
    lengths: jax.Array
    """[N] int32: tokens in each row, prompt and EOS included."""
    scores: jax.Array
    """[N] float32: the length-penalised beam score for beam search, else the sum of ``token_logprobs``."""
    token_logprobs: jax.Array
    """[N,G] float32: log-prob of each generated token after the logits processors (as sampled); 0 after EOS."""
    cross_attentions: Optional[jax.Array] = None
    """[N,G,layers,heads,S] float32 cross-attention of each generated token, when asked; else None."""
    model_logprobs: Optional[jax.Array] = None
    """[N,G] float32: log-prob of each generated token under the model's own logits; 0 after EOS."""


class GenerateOutput(NamedTuple):
    """``generate``'s output, as numpy arrays trimmed to the longest row (L <= Lmax)."""
    sequences: np.ndarray
    """[N,L] int: start token (or prompt) first, pad after EOS, as transformers returns them."""
    scores: np.ndarray
    """[N] float32: the length-penalised beam score for beam search, else the sum of ``token_logprobs``."""
    token_logprobs: np.ndarray
    """[N,L-P] float32: log-prob of each generated token after the logits processors (as sampled); 0 after EOS."""
    cross_attentions: Optional[np.ndarray] = None
    """[N,L-P,layers,heads,S] float32 cross-attention of each generated token, when asked; else None."""
    model_logprobs: Optional[np.ndarray] = None
    """[N,L-P] float32: log-prob of each generated token under the model's own logits; 0 after EOS."""


def prefill(weights, pixels, prompt, prompt_mask, key, *, config, plan, dtype, interpolate_pos_encoding, shifted,
            chunk, split, capacity):
    """Encode, feed the prompt to a cache of ``capacity`` columns: (the loop's first state, the
    sampling key(s) the loop draws from)."""
    enc = encoder_states(weights, pixels, config, interpolate_pos_encoding, dtype, chunk)
    state = first_state(weights, enc, prompt, prompt_mask, config=config, plan=plan, dtype=dtype, shifted=shifted,
                        split=split, capacity=capacity)
    if per_image(key) and not plan.mode.startswith("beam"):  # beam sampling draws per image, sampling per row
        key = row_keys(key, plan.rows_per_image)
    return state, key


def first_state(weights, enc, prompt, prompt_mask, *, config, plan, dtype, capacity, shifted=False, split=None):
    """The loop's first state from encoder states ``enc``: ``prompt`` (rows_per_image rows per
    image) fed to a new cache of ``capacity`` columns. The slot engine's beam slots start here too."""
    cache = new_cache(weights, enc, config, capacity, plan.rows_per_image, dtype, split)
    logits, cache, cross = cache_step(weights, cache, prompt, config, prompt_mask, dtype, shifted=shifted)
    tokens = jnp.full((prompt.shape[0], plan.processing.max_length), plan.pad, jnp.int32)
    tokens = tokens.at[:, :prompt.shape[1]].set(prompt)
    first = beam_state if plan.mode.startswith("beam") else sample_state
    return first(cache, logits[:, -1].astype(jnp.float32), last_cross(cross).astype(jnp.float32), tokens,
                 plan=plan)


def loop_functions(plan):
    """(run, results) of the plan's loop: beam search's or greedy/sampling's."""
    if plan.mode.startswith("beam"):
        return run_beam, lambda s: beam_results(s, plan)
    return run_sample, sample_results


@partial(decode_jit, static_argnames=("config", "plan", "dtype", "interpolate_pos_encoding", "shifted", "chunk",
                                   "split", "gathers"))
def _generate_jit(weights, pixels, prompt, prompt_mask, ignore_len, key, knobs, *, config, plan, dtype,
                  interpolate_pos_encoding, shifted, chunk, split, gathers=None):
    weights = gather_weights(weights, gathers)  # FSDP: whole weights, the batch's rows per device
    state, key = prefill(weights, pixels, prompt, prompt_mask, key, config=config, plan=plan, dtype=dtype,
                         interpolate_pos_encoding=interpolate_pos_encoding, shifted=shifted, chunk=chunk,
                         split=split, capacity=plan.processing.max_length)
    run, results = loop_functions(plan)
    state = run(weights, state, ignore_len, key, knobs, config=config, plan=plan, dtype=dtype)
    return as_result(*results(state))


def as_result(seq, lengths, logprobs, scores, cross_maps, model_logprobs) -> GenerationResult:
    """A loop's results tuple (``sample_results`` / ``beam_results``) as a ``GenerationResult``."""
    return GenerationResult(seq, lengths, scores, logprobs, cross_maps, model_logprobs)


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _split_traced(options: dict) -> tuple[dict, dict]:
    """(options, traced numeric options): temperature, top_p, repetition_penalty and
    length_penalty given as tracers bypass the Python checks and are used as traced values."""
    traced = {k: options[k] for k in TRACEABLE if _is_tracer(options.get(k))}
    return {k: val for k, val in options.items() if k not in traced}, traced


def _prompt(gen: GenerationConfig, config: Config, batch: int, ids, mask):
    """The decoder prompt [B,P] and mask: prepared on the host when concrete (ragged lists,
    start token prepended when missing, unless the encoder's family says a prompt replaces it,
    as transformers does for Donut); a traced prompt is used as given."""
    if _is_tracer(ids) or _is_tracer(mask):
        return ids, mask
    return prepare_prompt(gen, batch, ids, mask, not encoder_family(config.encoder).prompt_replaces_start)


def generate_core(params, pixels, config: Config | None = None, *, key=None,
                  generation_config: GenerationConfig | None = None, decoder_input_ids=None,
                  decoder_attention_mask=None, positions: str = "per_row", output_cross_attentions: bool = False,
                  interpolate_pos_encoding: bool = False, dtype=jnp.float32, **options) -> GenerationResult:
    """The traceable generation core: pixels [B,C,H,W] -> ``GenerationResult`` of fixed-shape arrays.

    Takes ``generate``'s options. Under ``jit``/``vmap`` the pixels, prompt, key and the numeric
    options temperature, top_p, repetition_penalty and length_penalty may be traced: a sweep over
    their values compiles once. Structural options stay static (num_beams, lengths, top_k, n-gram
    size, bad words): they set shapes and loop bounds. A processor runs when its option is traced
    or differs from its neutral value (temperature 1, top_p 1, penalties 1), so going from the
    neutral value to another compiles once more. ``key`` feeds sampling (one key, or one per
    image); greedy and beam search ignore it. A traced ``decoder_input_ids`` is used as given (it
    must start with the start token). ``positions`` ("per_row" or "shifted") as in ``generate``.
    Called at top level it compiles with ``DECODE_COMPILER_OPTIONS``; inside a jit of one's own,
    pass them to that jit (``compiler_options=purevedec.backend_tuning.DECODE_COMPILER_OPTIONS``), else on
    CPU each step copies the whole cache (docs/perf-notes.md)."""
    arrays, statics = prepare(params, pixels, config, key=key, generation_config=generation_config,
                              decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                              positions=positions, output_cross_attentions=output_cross_attentions,
                              interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, **options)
    return _generate_jit(*arrays, **statics)


def prepare(params, pixels, config=None, *, key=None, generation_config=None, decoder_input_ids=None,
            decoder_attention_mask=None, positions="per_row", output_cross_attentions=False,
            interpolate_pos_encoding=False, dtype=jnp.float32, **options) -> tuple[tuple, dict]:
    """``generate_core``'s checks and preparation: (the jitted call's array arguments
    (weights, pixels, prompt, prompt mask, ignored prompt columns, key, knobs), its static ones)."""
    weights, config = unpack(params, config)
    check_pixels(pixels, config)
    shifted = shifted_positions(positions)
    options, traced = _split_traced(options)
    score_rule = check_score_rule(options.pop("stop_score_variance", None))
    gen = with_options(generation_config or defaults_of(params, config), options)
    prompt, mask = _prompt(gen, config, pixels.shape[0], decoder_input_ids, decoder_attention_mask)
    plan = make_plan(gen, config, prompt.shape[1], bool(output_cross_attentions), traced=frozenset(traced))
    if score_rule is not None:
        if plan.mode.startswith("beam"):
            raise ValueError("stop_score_variance ends rows one by one: greedy search and sampling only")
        plan = dataclasses.replace(plan, score_stop=score_rule)
    if plan.processing.sample and key is None:
        raise ValueError("do_sample=True draws random numbers: pass key=jax.random.key(seed)")
    check_ids(prompt, config, "decoder_input_ids")  # the start token was checked by make_plan
    knobs = Knobs(*(jnp.asarray(traced.get(k, getattr(gen, k)), jnp.float32) for k in Knobs._fields))
    # A concrete prompt is laid out with numpy: as jax operations, each new batch or prompt shape
    # compiled a handful of one-operation programs.
    xp = jnp if _is_tracer(prompt) or _is_tracer(mask) else np
    rep = lambda a: xp.repeat(xp.asarray(a, xp.int32), plan.rows_per_image, axis=0)  # noqa: E731 (image-major)
    ignore = (xp.zeros(prompt.shape[0], xp.int32) if mask is None
              else xp.argmax(xp.asarray(mask) != 0, axis=1).astype(xp.int32))
    key = batch_key(key, pixels.shape[0]) if key is not None else jax.random.key(0)
    arrays = (weights, pixels, rep(prompt), None if mask is None else rep(mask), rep(ignore), key, knobs)
    statics = dict(config=config, plan=plan, dtype=compute_dtype(dtype),
                   interpolate_pos_encoding=bool(interpolate_pos_encoding), shifted=shifted,
                   chunk=encoder_chunk(pixels), split=batch_split(pixels),
                   gathers=weight_gathers(weights, batch_split(pixels)))
    return arrays, statics


def generate(params, pixels, config: Config | None = None, *, key=None,
             generation_config: GenerationConfig | None = None, decoder_input_ids=None,
             decoder_attention_mask=None, positions: str = "per_row", output_cross_attentions: bool = False,
             interpolate_pos_encoding: bool = False, dtype=jnp.float32, **options) -> GenerateOutput:
    """Caption a batch of images. pixels [B,C,H,W] -> ``GenerateOutput`` with ``sequences`` laid
    out as transformers returns them (trimmed to the longest row, on the host).

    Options are transformers' generate keywords (max_new_tokens, num_beams, do_sample,
    temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size, bad_words_ids,
    length_penalty, early_stopping, num_return_sequences, min_new_tokens, ...); unset ones come
    from ``generation_config``, else the checkpoint's (``params["generation_config"]``), else the
    config's own special ids. Sampling draws only from ``key``: same key, same output; greedy and
    beam search ignore it. ``key`` may also be one key per image ([B] keys, e.g.
    ``jax.random.split(k, B)``): each image then draws from its own key only, and gets the same
    output whatever else is in the batch.

    ``decoder_input_ids`` is a prompt: a [B,P] array (with ``decoder_attention_mask`` for left
    padding) or a list of per-image token lists of different lengths (left-padded here). As in
    transformers, the decoder start token is put before a prompt that lacks it, except for Donut
    (a donut-swin encoder), whose task prompt ("<s_cord-v2>") is its start. With
    ``positions="per_row"`` (default) each row's positions count from its first real token, so
    every row continues exactly as its prompt would alone; ``positions="shifted"`` numbers them
    from the start of the padded buffer, as transformers does (its batched output, token for
    token). ``stop_score_variance=True`` (or (threshold, window); greedy and sampling) ends each
    row where Nougat's reference stopping rule would end it decoded alone (``score_stop.py``).
    For a traceable call with fixed-shape outputs, use ``generate_core``."""
    out = generate_core(params, pixels, config, key=key, generation_config=generation_config,
                        decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                        positions=positions, output_cross_attentions=output_cross_attentions,
                        interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, **options)
    return trimmed(out)


def trimmed(out: GenerationResult) -> GenerateOutput:
    """Fixed-shape buffers -> numpy arrays trimmed to the longest row, as transformers returns them."""
    n = int(np.max(np.asarray(out.lengths)))
    gen_n = n - (out.sequences.shape[1] - out.token_logprobs.shape[1])
    return GenerateOutput(np.asarray(out.sequences)[:, :n], np.asarray(out.scores),
                          np.asarray(out.token_logprobs)[:, :gen_n],
                          None if out.cross_attentions is None else np.asarray(out.cross_attentions)[:, :gen_n],
                          np.asarray(out.model_logprobs)[:, :gen_n])
