"""Random transformers VisionEncoderDecoder models with BERT-style decoders (bert, roberta,
bert-generation) behind a ViT or DeiT encoder: the reference the BERT tests and the
manga-ocr-shaped benchmark row compare purevedec with. Needs the test extra (torch, transformers).
"""

from __future__ import annotations

TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    image_size=16, patch_size=4)
TINY_DECODER = dict(vocab_size=60, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                    max_position_embeddings=40)
# kha-white/manga-ocr-base's shapes: ViT-B/16 at 224 and a 2-layer BERT-base-wide decoder over a
# 6144-character vocabulary; its ids ([CLS] 2 starts, [SEP] 3 ends, [PAD] 0).
MANGA_ENCODER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     image_size=224, patch_size=16)
MANGA_DECODER = dict(vocab_size=6144, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512)
# manga-ocr keeps its generation defaults in config.json (it has no generation_config.json).
MANGA_GENERATION = dict(max_length=300, num_beams=4, no_repeat_ngram_size=3, length_penalty=2.0, early_stopping=True)
# (decoder start, pad, eos) per decoder type: BERT's [CLS]/[PAD]/[SEP] as manga-ocr, RoBERTa's <s>/<pad>/</s>.
IDS = {"bert": (2, 0, 3), "roberta": (0, 1, 2), "bert-generation": (2, 0, 1)}


def _configs(encoder: str, decoder: str):
    from transformers import BertConfig, BertGenerationConfig, DeiTConfig, RobertaConfig, ViTConfig
    return ({"vit": ViTConfig, "deit": DeiTConfig}[encoder],
            {"bert": BertConfig, "roberta": RobertaConfig, "bert-generation": BertGenerationConfig}[decoder])


def make_bert_reference(decoder: str = "bert", encoder: str = "vit", enc_kw=None, dec_kw=None, *, seed=0,
                        scale=0.3, enc_base=TINY_ENCODER, dec_base=TINY_DECODER, randomized=True):
    """A random torch VisionEncoderDecoderModel (ViT/DeiT + a BERT-style decoder) in eval mode with
    eager attention; every tensor redrawn (``ocr_models.randomize``), so that the vocabulary
    bias, norm biases and the pad rows transformers initialises to zero are read too."""
    import torch
    from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    from ocr_models import randomize

    enc_cls, dec_cls = _configs(encoder, decoder)
    start, pad, eos = IDS[decoder]
    dec_kw = {**dec_base, **(dec_kw or {})}
    pad = dec_kw.pop("pad_token_id", pad)
    enc = enc_cls(**{**enc_base, **(enc_kw or {})})
    dec = dec_cls(**dec_kw, is_decoder=True, add_cross_attention=True, pad_token_id=pad, eos_token_id=eos,
                  bos_token_id=start)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = start, pad, eos
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(cfg)
    if randomized:
        randomize(model, seed, scale)
    for c in (model.config, model.encoder.config, model.decoder.config):
        c._attn_implementation = "eager"
    return model.eval()


def make_generation_reference(decoder: str = "bert", encoder: str = "vit", *, seed=5, **kw):
    """A reference whose greedy outputs differ from image to image and from step to step:
    transformers' own init with every weight x3 and the cross-attention (and projection) x15 more.
    (With every tensor redrawn, post-norm decoders with a tied head repeat one token whatever the
    image.)"""
    import torch
    model = make_bert_reference(decoder, encoder, seed=seed, randomized=False, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name.lower():
                p.mul_(3.0 * (15.0 if "crossattention" in name or "enc_to_dec_proj" in name else 1.0))
    return model
