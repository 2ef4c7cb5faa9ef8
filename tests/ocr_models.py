"""Random transformers OCR models (ViT, DeiT or BEiT encoder + TrOCR decoder): the reference the
OCR tests and benchmark rows compare purevedec with. Needs the test extra (torch, transformers).

Every tensor is redrawn at random (norm scales around 1), so that parameters transformers
initialises to constants (BEiT's zero relative-bias tables and cls token, its layer scales, norm
biases) still test the code that reads them.
"""

from __future__ import annotations

TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    image_size=16, patch_size=4)
# trocr-base's decoder options (sinusoidal positions, scaled embeddings, no embedding norm, an
# untied bias-free output projection, relu) at a tiny size.
TINY_TROCR = dict(vocab_size=60, d_model=24, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=40,
                  max_position_embeddings=40, activation_function="relu", use_learned_position_embeddings=False,
                  scale_embedding=True, layernorm_embedding=False, tie_word_embeddings=False)
# Full trocr-base shapes (ViT-B/16 at 384 without qkv bias; the 12-layer 1024-wide decoder).
FULL_ENCODER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    image_size=384, patch_size=16, qkv_bias=False)
FULL_TROCR = dict(vocab_size=50265, d_model=1024, decoder_layers=12, decoder_attention_heads=16, decoder_ffn_dim=4096,
                  max_position_embeddings=512, activation_function="gelu", use_learned_position_embeddings=False,
                  scale_embedding=True, layernorm_embedding=True, tie_word_embeddings=False)
# The ids every TrOCR checkpoint uses.
START, PAD, EOS = 2, 1, 2


def _encoder_config(kind: str, kw: dict):
    from transformers import BeitConfig, DeiTConfig, ViTConfig
    return {"vit": ViTConfig, "deit": DeiTConfig, "beit": BeitConfig}[kind](**kw)


def randomize(model, seed: int, scale: float = 0.3) -> None:
    """Redraw every parameter: N(0, scale) weights, norm scales 1 + N(0, 0.1), norm biases N(0, 0.1)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            is_norm = "norm" in name
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_((0.1 if is_norm else scale) * noise)


def make_ocr_reference(encoder: str = "vit", enc_kw=None, dec_kw=None, *, seed=0, scale=0.3, cross_size=True,
                       enc_base=TINY_ENCODER, dec_base=TINY_TROCR):
    """A random torch VisionEncoderDecoderModel (``encoder`` in vit/deit/beit + TrOCR) in eval
    mode with eager attention, its top-level ids those of the TrOCR checkpoints (start 2, pad 1,
    eos 2). ``cross_size``: the decoder's cross-attention reads the encoder width directly
    (cross_attention_hidden_size, as the released checkpoints do); False gives a projection."""
    import torch
    from transformers import TrOCRConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    enc = _encoder_config(encoder, {**enc_base, **(enc_kw or {})})
    dec_kw = {**dec_base, **(dec_kw or {})}
    if cross_size:
        dec_kw.setdefault("cross_attention_hidden_size", enc.hidden_size)
    dec = TrOCRConfig(**dec_kw, is_decoder=True, add_cross_attention=True, pad_token_id=PAD, eos_token_id=EOS,
                      bos_token_id=0, decoder_start_token_id=START)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = START, PAD, EOS
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(cfg)
    randomize(model, seed, scale)
    for c in (model.config, model.encoder.config, model.decoder.config):
        c._attn_implementation = "eager"
    return model.eval()


def load_reference(path):
    """``VisionEncoderDecoderModel.from_pretrained(path)`` in eval mode with eager attention.

    transformers 5 builds the model on the meta device while loading, and TrOCR's sinusoidal
    table is a plain attribute (neither parameter nor buffer), so it stays an empty meta tensor
    and the first forward fails ("Cannot copy out of meta tensor"); it is rebuilt here with
    transformers' own function."""
    from transformers import VisionEncoderDecoderModel
    model = VisionEncoderDecoderModel.from_pretrained(path).eval()
    positions = model.decoder.model.decoder.embed_positions if model.config.decoder.model_type == "trocr" else None
    if positions is not None and hasattr(positions, "get_embedding") and positions.weights.is_meta:
        positions.weights = positions.get_embedding(positions.weights.shape[0], positions.embedding_dim,
                                                    positions.padding_idx)
    for c in (model.config, model.encoder.config, model.decoder.config):
        c._attn_implementation = "eager"
    return model


def decoder_ids(b: int, t: int, seed: int, vocab: int = 60):
    """[b,t] int32 random ordinary token ids (3..vocab-1) starting with the start id."""
    import numpy as np
    ids = np.random.RandomState(seed).randint(3, vocab, (b, t)).astype(np.int32)
    ids[:, 0] = START
    return ids


def saved_variant(name: str, options: dict, seed: int, folder):
    """A random reference built with ``make_ocr_reference(seed=seed, **options)``, saved into
    ``folder`` and loaded by purevedec: (name, torch model, params, config, folder)."""
    import purevedec as pv
    model = make_ocr_reference(seed=seed, **options)
    model.save_pretrained(folder)
    params, config = pv.load(folder)
    return name, model, params, config, folder


def compose_both(tmp_path, enc, dec):
    """Save a randomized standalone encoder and TrOCRForCausalLM, compose them with purevedec and
    with transformers, and save both compositions. Returns (purevedec params, config, transformers'
    state dict, purevedec's state dict) as written to disk."""
    import jax
    from transformers import AutoConfig, VisionEncoderDecoderModel

    import purevedec as pv
    from formats_util import hf_state_dict
    randomize(enc, 1)
    randomize(dec, 2)
    enc.save_pretrained(tmp_path / "enc")
    dec.save_pretrained(tmp_path / "dec")
    params, config = pv.from_encoder_decoder_pretrained(str(tmp_path / "enc"), str(tmp_path / "dec"),
                                                         key=jax.random.PRNGKey(0))
    # transformers 5's own path reads decoder_config.add_cross_attention, which TrOCRConfig no
    # longer defines; pass the decoder config it would build.
    dec_cfg = AutoConfig.from_pretrained(tmp_path / "dec")
    dec_cfg.is_decoder, dec_cfg.add_cross_attention = True, True
    ref = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(str(tmp_path / "enc"), str(tmp_path / "dec"),
                                                                    decoder_config=dec_cfg)
    ref.save_pretrained(tmp_path / "ref")
    pv.save(params, tmp_path / "ours")
    return params, config, hf_state_dict(tmp_path / "ref"), hf_state_dict(tmp_path / "ours")


def assert_same_tensors(want: dict, got: dict) -> None:
    """The same tensor names, and equal values except the unused pooler and a projection drawn at random."""
    import numpy as np
    assert set(got) == set(want)
    for name in want:
        if "pooler" not in name and "enc_to_dec_proj" not in name:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
