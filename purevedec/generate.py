"""Generation as one jitted ``lax.while_loop``: greedy, sampling and beam search.

The loop keeps a fixed-shape token buffer, a done mask and the cache; it exits early when
every row is done and syncs with the host only at the end. Cross-attention K/V are computed
once per image and shared by that image's beams or samples; beam search reorders only the
self-attention cache. Options and their defaults follow transformers' ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config
from .generation_config import GenerationConfig, resolve
from .model import _init_cache_jit, cache_step, check_ids, check_pixels, encoder_states
from .processors import Processing, process

NEG = -1.0e9  # transformers' "impossible" beam score


class GenerateOutput(NamedTuple):
    sequences: np.ndarray               # [N,L]: start token (or prompt) first, pad after EOS
    scores: np.ndarray                  # [N]: beam score (length-penalised), else sum of token_logprobs
    token_logprobs: np.ndarray          # [N,L-P]: log-prob of each generated token after processing; 0 after EOS
    cross_attentions: Optional[np.ndarray] = None  # [N,L-P,layers,heads,S] when asked


@dataclass(frozen=True)
class Plan:
    """Everything static about one generate call (hashed by jit)."""
    mode: str                 # "greedy", "sample", "beam", "beam_sample"
    num_beams: int
    num_return_sequences: int
    rows_per_image: int
    length_penalty: float
    early_stopping: object
    pad: int
    processing: Processing
    cross_attentions: bool


def _lengths(gen: GenerationConfig, prompt_len: int, config: Config) -> tuple[int, int]:
    """(max_length, min_length) in decoder tokens, prompt included, as transformers computes them."""
    if gen.max_new_tokens is not None:
        max_length = prompt_len + gen.max_new_tokens
    elif gen.max_length is not None:
        max_length = gen.max_length
    else:
        max_length = prompt_len + 20  # transformers' default: 20 new tokens
    if prompt_len >= max_length:
        raise ValueError(f"Input length of decoder_input_ids is {prompt_len}, but `max_length` is set to "
                         f"{max_length}. Set max_new_tokens to generate new tokens.")
    if max_length > config.decoder.n_positions:
        raise ValueError(f"max_length={max_length} exceeds the decoder's n_positions={config.decoder.n_positions}")
    min_length = gen.min_length or 0
    if gen.min_new_tokens is not None:
        min_length = gen.min_new_tokens + prompt_len
    return max_length, min_length


def _mode(gen: GenerationConfig) -> str:
    if gen.num_beams < 1 or gen.num_return_sequences < 1:
        raise ValueError("num_beams and num_return_sequences must be >= 1")
    if gen.num_beams == 1:
        if gen.num_return_sequences > 1 and not gen.do_sample:
            raise ValueError("Greedy search cannot return num_return_sequences > 1; use beams or do_sample=True")
        return "sample" if gen.do_sample else "greedy"
    if gen.num_return_sequences > gen.num_beams:
        raise ValueError("`num_return_sequences` has to be smaller or equal to `num_beams`.")
    return "beam_sample" if gen.do_sample else "beam"


def special_ids(gen: GenerationConfig) -> tuple[int, tuple[int, ...], Optional[int]]:
    """(decoder start, eos ids, pad) with transformers' fallbacks: start <- bos; pad <- eos[0]."""
    start = gen.decoder_start_token_id if gen.decoder_start_token_id is not None else gen.bos_token_id
    if start is None:
        raise ValueError("`decoder_start_token_id` or `bos_token_id` has to be defined for encoder-decoder generation.")
    eos = gen.eos_token_id or ()
    pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else None)
    return start, eos, pad


def make_plan(gen: GenerationConfig, config: Config, prompt_len: int, cross_attentions: bool) -> Plan:
    mode = _mode(gen)
    max_length, min_length = _lengths(gen, prompt_len, config)
    _, eos, pad = special_ids(gen)
    bad = [b for b in (gen.bad_words_ids or ()) if not (len(b) == 1 and b[0] in eos)]  # eos is never banned
    beams = mode.startswith("beam")
    sample = mode in ("sample", "beam_sample")
    # Beam buffers are filled with `pad or eos[0]` (a pad id of 0 falls through to eos, as in transformers).
    fill = (pad or (eos[0] if eos else -1)) if beams else (pad if pad is not None else 0)
    processing = Processing(
        prompt_len=prompt_len, max_length=max_length, eos=eos, repetition_penalty=gen.repetition_penalty,
        no_repeat_ngram_size=gen.no_repeat_ngram_size or 0,
        bad_single=tuple(b[0] for b in bad if len(b) == 1), bad_multi=tuple(b for b in bad if len(b) > 1),
        min_length=min_length, min_new_tokens=gen.min_new_tokens or 0,
        forced_bos_token_id=gen.forced_bos_token_id, forced_eos_token_id=gen.forced_eos_token_id,
        sample=sample, temperature=gen.temperature, top_k=gen.top_k or 0, top_p=gen.top_p,
        min_tokens_to_keep=(len(eos) + 1 if eos else 2) if (beams and sample) else 1)
    return Plan(mode=mode, num_beams=gen.num_beams, num_return_sequences=gen.num_return_sequences,
                rows_per_image=gen.num_beams if beams else gen.num_return_sequences,
                length_penalty=gen.length_penalty, early_stopping=gen.early_stopping, pad=int(fill),
                processing=processing, cross_attentions=cross_attentions)


def prepare_prompt(gen: GenerationConfig, batch: int, decoder_input_ids=None,
                   decoder_attention_mask=None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Decoder prompt [B,P] and mask. Rows given as lists of different lengths are left-padded.
    Like transformers, the start token is prepended when no row begins with it."""
    start, _, pad = special_ids(gen)
    if decoder_input_ids is None:
        return np.full((batch, 1), start, np.int32), None
    if isinstance(decoder_input_ids, (list, tuple)) and any(np.ndim(r) == 1 for r in decoder_input_ids):
        if decoder_attention_mask is not None:
            raise ValueError("pass decoder_attention_mask only with a padded [B,P] decoder_input_ids array")
        width = max(len(r) for r in decoder_input_ids)
        ids = np.full((len(decoder_input_ids), width), pad if pad is not None else start, np.int32)
        mask = np.zeros_like(ids)
        for i, row in enumerate(decoder_input_ids):
            if len(row):
                ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
        decoder_input_ids, decoder_attention_mask = ids, mask
    ids = np.asarray(decoder_input_ids, np.int32)
    mask = None if decoder_attention_mask is None else np.asarray(decoder_attention_mask, np.int32)
    if ids.ndim != 2 or ids.shape[0] != batch:
        raise ValueError(f"decoder_input_ids must be [{batch},P] (one row per image), got shape {ids.shape}")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"decoder_attention_mask has shape {mask.shape}, expected {ids.shape}")
    if np.all(ids[:, 0] != start):
        ids = np.concatenate([np.full((batch, 1), start, np.int32), ids], axis=1)
        mask = None if mask is None else np.concatenate([np.ones((batch, 1), np.int32), mask], axis=1)
    return ids, mask


def _last_cross(cross_ws) -> jax.Array:
    """Per-layer weights [R,H,t,S] -> the last query's, stacked [R,layers,H,S]."""
    return jnp.stack([w[:, :, -1] for w in cross_ws], axis=1)


def _sample_loop(params, cache, logits, xw, tokens, ignore_len, key, *, config, plan, dtype):
    """Greedy or sampling: one token per row per iteration until every row hit EOS or max_length."""
    pr = plan.processing
    rows = tokens.shape[0]
    gen_len = pr.max_length - pr.prompt_len
    state = dict(tokens=tokens, cur=jnp.int32(pr.prompt_len), live=jnp.ones(rows, bool), logits=logits,
                 cache=cache, lp=jnp.zeros((rows, gen_len), jnp.float32), xw=xw,
                 xbuf=jnp.zeros((rows, gen_len) + xw.shape[1:], jnp.float32) if plan.cross_attentions else None)

    def body(s):
        scores = process(pr, s["logits"], s["tokens"], s["cur"], ignore_len)
        if plan.mode == "sample":
            tok = jax.random.categorical(jax.random.fold_in(key, s["cur"]), scores, axis=-1)
        else:
            tok = jnp.argmax(scores, axis=-1)
        lp = jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), tok[:, None], -1)[:, 0]
        tok = jnp.where(s["live"], tok, plan.pad).astype(jnp.int32)
        i = s["cur"] - pr.prompt_len
        out = dict(s, tokens=jax.lax.dynamic_update_slice(s["tokens"], tok[:, None], (0, s["cur"])),
                   lp=jax.lax.dynamic_update_slice(s["lp"], jnp.where(s["live"], lp, 0.0)[:, None], (0, i)),
                   live=s["live"] & ~jnp.isin(tok, jnp.array(pr.eos or (-1,))), cur=s["cur"] + 1)
        if plan.cross_attentions:
            out["xbuf"] = s["xbuf"].at[:, i].set(jnp.where(s["live"][:, None, None, None], s["xw"], 0.0))
        go = (out["cur"] < pr.max_length) & jnp.any(out["live"])
        out["logits"], out["cache"], out["xw"] = _maybe_step(params, out["cache"], tok[:, None], go, s["logits"],
                                                             s["xw"], config, dtype)
        return out

    s = jax.lax.while_loop(lambda s: (s["cur"] < pr.max_length) & jnp.any(s["live"]), body, state)
    return s["tokens"], s["cur"], s["lp"], jnp.sum(s["lp"], -1), s["xbuf"]


def _maybe_step(params, cache, ids, go, logits, xw, config, dtype):
    """Run the decoder on ``ids`` only when the loop will continue (the last token needs no logits)."""
    def run(_):
        out, new_cache, cross = cache_step(params, cache, ids, config, None, dtype)
        return out[:, -1].astype(jnp.float32), new_cache, _last_cross(cross).astype(xw.dtype)
    return jax.lax.cond(go, run, lambda _: (logits, cache, xw), None)


def _gather(x, idx):
    """x [B,N,...] rows picked per image by idx [B,M] -> [B,M,...]"""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_candidates(s, scores, key, plan, b, nb):
    """Top continuations over all beams x vocab, as transformers' _get_top_k_continuations."""
    pr = plan.processing
    v = scores.shape[-1]
    keep = max(2, 1 + len(pr.eos)) * nb
    acc = (scores.reshape(b, nb, v) + s["run_scores"][:, :, None]).reshape(b, nb * v)
    if plan.mode == "beam_sample":  # sampling without replacement = top-k of Gumbel-perturbed scores
        g = jax.random.gumbel(jax.random.fold_in(key, s["cur"]), acc.shape)
        idx = jax.lax.top_k(jnp.where(jnp.isfinite(acc), acc + g, -jnp.inf), keep)[1]
        top = jnp.take_along_axis(acc, idx, -1)
        order = jnp.argsort(-top, axis=-1, stable=True)
        top, idx = jnp.take_along_axis(top, order, -1), jnp.take_along_axis(idx, order, -1)
    else:
        top, idx = jax.lax.top_k(acc, keep)
    src, tok = idx // v, (idx % v).astype(jnp.int32)
    tlp = jnp.take_along_axis(scores.reshape(b, nb * v), idx, -1)  # this step's (processed) log-prob
    i = s["cur"] - pr.prompt_len
    seq = _gather(s["run_seq"], src).at[:, :, s["cur"]].set(tok)
    hist = _gather(s["run_lp"], src).at[:, :, i].set(tlp)
    xh = _gather(s["run_x"], src).at[:, :, i].set(_gather(s["xw"].reshape((b, nb) + s["xw"].shape[1:]), src)) \
        if plan.cross_attentions else None
    hits = (s["cur"] + 1 >= pr.max_length) | jnp.isin(tok, jnp.array(pr.eos or (-1,)))
    return top, src, seq, hist, xh, hits


def _update_finished(s, top, seq, hist, xh, hits, plan, nb):
    """Merge newly finished hypotheses into the kept ones (transformers' _update_finished_beams)."""
    pr = plan.processing
    did = hits & (jnp.arange(top.shape[1]) < nb)[None, :]
    score = top / ((s["cur"] + 1 - pr.prompt_len).astype(jnp.float32) ** plan.length_penalty)
    full = jnp.all(s["done"], -1, keepdims=True) & (plan.early_stopping is True)
    score = score + full * NEG + (~s["unsat"]) * NEG + (~did) * NEG
    cat = lambda a, c: jnp.concatenate([a, c], axis=1)  # noqa: E731
    pick = jax.lax.top_k(cat(s["scores"], score), nb)[1]
    new_len = jnp.broadcast_to(s["cur"] + 1 - pr.prompt_len, did.shape)
    out = dict(seq=_gather(cat(s["seq"], seq), pick), scores=_gather(cat(s["scores"], score), pick),
               done=_gather(cat(s["done"], did), pick), lp=_gather(cat(s["lp"], hist), pick),
               length=_gather(cat(s["length"], new_len), pick))
    if plan.cross_attentions:
        out["x"] = _gather(cat(s["x"], xh), pick)
    return out


def _still_improving(s, plan):
    """transformers' _check_early_stop_heuristic, after cur was advanced."""
    pr = plan.processing
    if plan.early_stopping == "never" and plan.length_penalty > 0.0:
        best_len = jnp.float32(pr.max_length - pr.prompt_len)
    else:
        best_len = (s["cur"] - pr.prompt_len).astype(jnp.float32)
    best_running = s["run_scores"][:, :1] / best_len ** plan.length_penalty
    worst_done = jnp.where(s["done"], jnp.min(s["scores"], axis=1, keepdims=True), NEG)
    return s["unsat"] & jnp.any(best_running > worst_done, axis=-1, keepdims=True)


def _beam_loop(params, cache, logits, xw, tokens, ignore_len, key, *, config, plan, dtype):
    pr = plan.processing
    nb = plan.num_beams
    b = tokens.shape[0] // nb
    gen_len = pr.max_length - pr.prompt_len
    run_seq = tokens.reshape(b, nb, -1)
    xzeros = jnp.zeros((b, nb, gen_len) + xw.shape[1:], jnp.float32) if plan.cross_attentions else None
    s = dict(cur=jnp.int32(pr.prompt_len), go=jnp.bool_(True), logits=logits, cache=cache, xw=xw,
             run_seq=run_seq, run_scores=jnp.zeros((b, nb)).at[:, 1:].set(NEG),
             run_lp=jnp.zeros((b, nb, gen_len)), run_x=xzeros,
             seq=run_seq, scores=jnp.full((b, nb), NEG), done=jnp.zeros((b, nb), bool),
             lp=jnp.zeros((b, nb, gen_len)), x=xzeros, length=jnp.zeros((b, nb), jnp.int32),
             unsat=jnp.ones((b, 1), bool))

    def body(s):
        flat = s["run_seq"].reshape(b * nb, -1)
        scores = process(pr, jax.nn.log_softmax(s["logits"], axis=-1), flat, s["cur"], ignore_len)
        top, src, seq, hist, xh, hits = _beam_candidates(s, scores, key, plan, b, nb)
        nxt = jax.lax.top_k(top + hits * NEG, nb)[1]
        out = dict(s, run_seq=_gather(seq, nxt), run_scores=_gather(top + hits * NEG, nxt),
                   run_lp=_gather(hist, nxt), **_update_finished(s, top, seq, hist, xh, hits, plan, nb))
        if plan.cross_attentions:
            out["run_x"] = _gather(xh, nxt)
        origin = (_gather(src, nxt) + jnp.arange(b)[:, None] * nb).reshape(-1)
        cache = dict(s["cache"], self=jax.tree.map(lambda a: a[origin], s["cache"]["self"]),
                     mask=s["cache"]["mask"][origin])  # cross K/V stay once per image
        out["cur"] = s["cur"] + 1
        out["unsat"] = _still_improving(out, plan)
        out["go"] = (jnp.any(out["unsat"]) & ~(jnp.all(out["done"]) & (plan.early_stopping is True))
                     & ~jnp.all(hits) & (out["cur"] < pr.max_length))
        last = out["run_seq"].reshape(b * nb, -1)[:, s["cur"]][:, None]
        out["logits"], out["cache"], out["xw"] = _maybe_step(params, cache, last, out["go"], s["logits"], s["xw"],
                                                             config, dtype)
        return out

    s = jax.lax.while_loop(lambda s: s["go"], body, s)
    keep = plan.num_return_sequences
    flat = lambda a: None if a is None else a[:, :keep].reshape((b * keep,) + a.shape[2:])  # noqa: E731
    length = pr.prompt_len + jnp.max(s["length"][:, :keep])
    return flat(s["seq"]), length, flat(s["lp"]), flat(s["scores"]), flat(s["x"])


@partial(jax.jit, static_argnames=("config", "plan", "dtype", "interpolate_pos_encoding"))
def _generate_jit(params, pixels, prompt, prompt_mask, ignore_len, key, *, config, plan, dtype,
                  interpolate_pos_encoding):
    enc = encoder_states(params, pixels, config, interpolate_pos_encoding, dtype)
    cache = _init_cache_jit(params, enc, config=config, max_len=plan.processing.max_length,
                            rows_per_image=plan.rows_per_image, dtype=dtype)
    logits, cache, cross = cache_step(params, cache, prompt, config, prompt_mask, dtype)
    tokens = jnp.full((prompt.shape[0], plan.processing.max_length), plan.pad, jnp.int32)
    tokens = tokens.at[:, :prompt.shape[1]].set(prompt)
    loop = _beam_loop if plan.mode.startswith("beam") else _sample_loop
    return loop(params, cache, logits[:, -1].astype(jnp.float32), _last_cross(cross).astype(jnp.float32), tokens,
                ignore_len, key, config=config, plan=plan, dtype=dtype)


def generate(params, pixels, config: Config, *, key=None, generation_config: GenerationConfig | None = None,
             decoder_input_ids=None, decoder_attention_mask=None, output_cross_attentions: bool = False,
             interpolate_pos_encoding: bool = False, dtype=jnp.float32, **options) -> GenerateOutput:
    """Caption a batch of images. pixels [B,C,H,W] -> ``GenerateOutput`` with ``sequences`` laid
    out as transformers returns them.

    Options are transformers' generate keywords (max_new_tokens, num_beams, do_sample,
    temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size, bad_words_ids,
    length_penalty, early_stopping, num_return_sequences, min_new_tokens, ...); unset ones come
    from the checkpoint's generation config. Sampling draws only from ``key``: same key, same
    output. ``decoder_input_ids`` is a prompt: a [B,P] array (with ``decoder_attention_mask``
    for left padding) or a list of per-image token lists of different lengths."""
    check_pixels(pixels, config)
    gen = resolve(generation_config or config.generation, options)
    prompt, mask = prepare_prompt(gen, pixels.shape[0], decoder_input_ids, decoder_attention_mask)
    plan = make_plan(gen, config, prompt.shape[1], output_cross_attentions)
    if plan.processing.sample and key is None:
        raise ValueError("do_sample=True draws random numbers: pass key=jax.random.key(seed)")
    check_ids(prompt, config, "decoder_input_ids")
    rep = lambda a: np.repeat(a, plan.rows_per_image, axis=0)  # noqa: E731  (image-major rows)
    ignore = np.zeros(prompt.shape[0], np.int32) if mask is None else np.argmax(mask != 0, axis=1).astype(np.int32)
    seq, length, lp, scores, x = _generate_jit(
        params, pixels, rep(prompt), None if mask is None else rep(mask), rep(ignore),
        key if key is not None else jax.random.key(0), config=config, plan=plan, dtype=jnp.dtype(dtype),
        interpolate_pos_encoding=interpolate_pos_encoding)
    n = int(length)
    gen_n = n - prompt.shape[1]
    return GenerateOutput(np.asarray(seq)[:, :n], np.asarray(scores), np.asarray(lp)[:, :gen_n],
                          None if x is None else np.asarray(x)[:, :gen_n])
