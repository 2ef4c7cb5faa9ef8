"""The documents section: Donut and Nougat at their checkpoints' shapes against transformers, same run.

Two random VisionEncoderDecoder models (a DonutSwin encoder and an mBART decoder, built and saved
in the run; N(0, 0.05) weights, tests/ocr_models.randomize):

- Donut at cord-v2's shapes: 1280x960 pages, Swin-B (embed 128, depths 2-2-14-2, window 10), a
  4-layer mBART of width 1024 over 57,580 tokens. Pages per second at batch 1 and 4: one call
  reads the page (encoder) and writes ``donut_tokens`` tokens.
- Nougat at nougat-base's shapes: 896x672 pages, Swin-B with window 7, a 10-layer mBART of width
  1024 over 50,000 tokens with 4,096 positions. Tokens per second for one page writing 256 and
  1,024 tokens (the page's encoder included).

One call reads the page and writes its tokens; the call writing one token stands for the encoder
(it adds one decoder step). Both greedy, fp32 and bf16, EOS suppressed (``min_new_tokens`` of the
whole position table in the saved generation config, which both libraries honour) so that both
write exactly the tokens asked. Each cell also gives the encoder alone and the decode time per
token, against the machine's bounds (costs.py) as the captioning section does, and the fraction
of fp32 tokens equal between the libraries.

    python -m benchmarks.run --only documents [--doc-batches 1,4] [--doc-tokens 128] [--doc-page-tokens 256,1024]
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

import purevedec as pv

from . import costs, speed
from .fidelity import token_agreement
from .timing import timed

SWIN_B = dict(patch_size=4, embed_dim=128, depths=[2, 2, 14, 2], num_heads=[4, 8, 16, 32], drop_path_rate=0.0)
MBART = dict(d_model=1024, decoder_attention_heads=16, decoder_ffn_dim=4096, scale_embedding=True,
             add_final_layer_norm=True, activation_function="gelu", dropout=0.0)
SUBJECTS = {
    "donut": dict(name="Donut cord-v2 shapes (Swin-B 1280x960 + 4-layer mBART), random weights",
                  encoder=dict(SWIN_B, image_size=[1280, 960], window_size=10),
                  decoder=dict(MBART, decoder_layers=4, vocab_size=57580, max_position_embeddings=1536)),
    "nougat": dict(name="Nougat-base shapes (Swin-B 896x672 + 10-layer mBART), random weights",
                   encoder=dict(SWIN_B, image_size=[896, 672], window_size=7),
                   decoder=dict(MBART, decoder_layers=10, vocab_size=50000, max_position_embeddings=4096)),
}
TINY = dict(encoder=dict(patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], image_size=[64, 48],
                         window_size=4, drop_path_rate=0.0),
            decoder=dict(MBART, d_model=32, decoder_attention_heads=4, decoder_ffn_dim=64, decoder_layers=2,
                         vocab_size=120, max_position_embeddings=1100))
START, PAD, EOS = 0, 1, 2


def reference(subject: str, tiny: bool):
    """The torch model both libraries run (eval mode, eager attention), EOS suppressed; no forced
    EOS at the last column (mBART's default), which would end a call early."""
    import torch
    from transformers import DonutSwinConfig, MBartConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    from tests.ocr_models import randomize
    shapes = TINY if tiny else SUBJECTS[subject]
    dec = MBartConfig(**shapes["decoder"], is_decoder=True, add_cross_attention=True, pad_token_id=PAD,
                      bos_token_id=START, eos_token_id=EOS, decoder_start_token_id=START,
                      forced_eos_token_id=None)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(DonutSwinConfig(**shapes["encoder"]), dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = START, PAD, EOS
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(cfg)
    randomize(model, 0, 0.3 if tiny else 0.05)
    if tiny:
        _favour_eos(model)
    for c in (model.config, model.encoder.config, model.decoder.config):
        c._attn_implementation = "eager"
    g = model.generation_config
    g.decoder_start_token_id, g.pad_token_id, g.eos_token_id, g.forced_eos_token_id = START, PAD, EOS, None
    g.min_new_tokens = dec.max_position_embeddings  # no EOS before any call's end
    return model.eval()


def _favour_eos(model) -> None:
    """Shifts the decoder's final norm towards EOS's (tied) embedding, so that a tiny model would
    end its text at once: the suppression of EOS is then what lets both sides write every token."""
    import torch
    decoder = model.decoder.model.decoder
    eos = decoder.embed_tokens.weight[EOS]
    with torch.no_grad():
        decoder.layer_norm.bias.copy_(4.0 * eos / eos.norm())


def _calls(lib, px, tokens: int):
    """(first call s, warm call s of ``tokens`` tokens, its sequences, warm call s of one token).
    purevedec compiles on its first call of each length, so each is timed on its second;
    transformers compiles nothing: its one-token call warms it, then each length runs once."""
    if lib.name == "purevedec":
        _, one, _ = timed(lib.generate(px, 1, 1), max_repeats=1)
        first, warm, seqs = timed(lib.generate(px, 1, tokens), max_repeats=1)
        return first, warm, seqs, one
    one = _once(lib.generate(px, 1, 1))[0]
    warm, seqs = _once(lib.generate(px, 1, tokens))
    return warm, warm, seqs, one


def _once(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def _cell(lib, config, batch: int, tokens: int, log) -> dict:
    """One library's page time (``tokens`` new tokens), its one-token time (the encoder and the
    prompt step: what the encoder is judged by) and its per-token time."""
    first, warm, seqs, one = _calls(lib, speed.pixels(config, batch), tokens)
    generated = int(np.shape(seqs)[1] - 1)
    log(f"  {lib.name} b{batch} {tokens} tokens: {warm:.2f} s (one token {one:.2f} s, first call {first:.1f} s)")
    # At batch 4 a page's encoder (~20 s) varies by more than 128 decode steps take: no time then
    per_token = (warm - one) / (generated - 1) * 1e3 if generated > 1 and warm > one else None
    return dict(s=warm, first_s=first, encoder_s=one, new_tokens=generated, token_ms=per_token,
                sequences=np.asarray(seqs).tolist())


def _compare(model, params, config, runs, dtypes, limits, log) -> list[dict]:
    """Cells for every dtype and (batch, tokens) of ``runs``, both libraries."""
    cells = []
    for dtype in dtypes:
        libs = (speed.Purevedec(params, config, dtype), speed.Transformers(model, dtype))
        for batch, tokens in runs:
            cell = dict(workload="greedy", batch=batch, tokens=tokens, dtype=dtype)
            for tag, lib in zip(("pv", "hf"), libs):
                cell.update({f"{tag}_{k}": v for k, v in _cell(lib, config, batch, tokens, log).items()})
            costs.bounds([cell], config, limits, tokens)
            cells.append(cell)
    speed.restore_reference(model)
    return cells


def run_subject(subject: str, tiny: bool, limits: dict, workdir: str, *, runs, dtypes, log=print) -> dict:
    """Builds one subject in ``workdir`` and times both libraries over ``runs`` ((batch, tokens) pairs)."""
    name = f"tiny random Donut-Swin + mBART ({subject} options)" if tiny else SUBJECTS[subject]["name"]
    log(f"documents: building {name} ...")
    model = reference(subject, tiny)
    path = os.path.join(workdir, subject)
    model.save_pretrained(path)
    params, config = pv.load(path)
    cells = _compare(model, params, config, runs, dtypes, limits, log)
    for c in cells:
        c["pv_pages_per_s"], c["hf_pages_per_s"] = c["batch"] / c["pv_s"], c["batch"] / c["hf_s"]
        c["pv_tokens_per_s"], c["hf_tokens_per_s"] = (c["batch"] * c["tokens"] / c[f"{t}_s"] for t in ("pv", "hf"))
        if c["dtype"] == "float32":
            c["tokens_equal"] = token_agreement(c["pv_sequences"], c["hf_sequences"])["tokens"]
    return dict(model=name, params=sum(x.size for x in jax.tree.leaves(params)), cells=cells)


def _targets(subject: str, cells: list[dict]) -> list[dict]:
    """The issue's goal: ahead of transformers in every cell."""
    return [dict(name=f"{subject} b{c['batch']} {c['tokens']} tokens {c['dtype']} time vs transformers",
                 value=c["pv_s"] / c["hf_s"], goal="< 1.0x", met=bool(c["pv_s"] < c["hf_s"])) for c in cells]


def run_section(tiny: bool, limits: dict, workdir: str, *, batches, tokens: int, page_tokens, dtypes,
                log=print) -> dict:
    """Donut (pages/s at each batch, ``tokens`` tokens a page) and Nougat (one page, each of
    ``page_tokens``): the section's record, with ``targets``."""
    res = {"donut": run_subject("donut", tiny, limits, workdir, runs=[(b, tokens) for b in batches],
                                dtypes=dtypes, log=log),
           "nougat": run_subject("nougat", tiny, limits, workdir, runs=[(1, t) for t in page_tokens],
                                 dtypes=dtypes, log=log)}
    res["targets"] = [t for s in ("donut", "nougat") for t in _targets(s, res[s]["cells"])]
    return res


def _over(value, bound):
    return "-" if value is None else f"{value / bound:.2f}x"


def _table(cells: list[dict], per: str) -> str:
    from .report import table
    rows = [[c["batch"], c["tokens"], c["dtype"], c[f"pv_{per}_per_s"], c[f"hf_{per}_per_s"],
             f"{c['hf_s'] / c['pv_s']:.2f}x", c["pv_encoder_s"], c["hf_encoder_s"],
             f"{c['pv_encoder_s'] / c['bound_encoder_s']:.2f}x", c["pv_token_ms"], c["hf_token_ms"],
             _over(c["pv_token_ms"], c["bound_token_ms"]), c.get("tokens_equal"), c["pv_first_s"]] for c in cells]
    return table(["batch", "tokens", "dtype", f"purevedec {per}/s", f"transformers {per}/s", "speed-up",
                  "purevedec 1-token call s", "transformers 1-token call s", "1-token call / encoder bound",
                  "purevedec ms/token",
                  "transformers ms/token", "token / bound", "fp32 tokens equal", "purevedec first call s"], rows)


def markdown(res: dict) -> list[str]:
    d, n = res["donut"], res["nougat"]
    return [f"## Documents: {d['model']}",
            f"The model ({d['params'] / 1e6:.0f}M parameters) reading pages (N(0,1) pixels) and writing a fixed "
            "number of tokens each, greedy, EOS suppressed on both sides; pages/s is the batch over the best warm "
            "call (encoder included), speed-up transformers' time over purevedec's; purevedec is timed on its second "
            "call of each length (the first compiles), transformers once after its one-token call. The one-token "
            "call is the encoder and one decoder step, judged against the encoder's FLOPs at the dtype's peak; "
            "ms/token is (page time - one-token time) / (tokens - 1); token / bound: "
            "a decode step's bytes over the read bandwidth or its FLOPs at the peak (half-full cache).",
            _table(d["cells"], "pages"),
            f"## Documents: {n['model']}",
            f"The model ({n['params'] / 1e6:.0f}M parameters) reading one page and writing 256 or 1,024 tokens, as "
            "above; tokens/s counts the tokens over the whole call (the page's encoder included).",
            _table(n["cells"], "tokens")]
