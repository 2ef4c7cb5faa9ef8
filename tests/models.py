"""Random transformers VisionEncoderDecoder models, and the tokenizer and preprocessor a
captioning checkpoint carries: the reference every purevedec output is compared with.

The one builder of reference models, used by the tests (``from models import ...``, the tests
folder being on the path) and by the benchmarks (``from tests.models import ...``); needs the
test extra (torch, transformers).
"""

from __future__ import annotations

TINY_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    image_size=16, patch_size=4)
TINY_DECODER = dict(n_embd=24, n_layer=2, n_head=4, vocab_size=50, n_positions=24, bos_token_id=0,
                    eos_token_id=2, pad_token_id=None)
# nlpconnect/vit-gpt2-image-captioning's shapes: ViT-B/16 at 224 and GPT-2 124M with cross-attention.
FULL_ENCODER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    image_size=224, patch_size=16)
FULL_DECODER = dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024,
                    bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)


# The config matrix: each case changes options a real checkpoint can carry; together they cover
# every option the config parser implements. Values are (encoder, decoder) keyword overrides.
CASES = {
    "default_projection": ({}, {}),
    "same_width_no_qkv_bias_relu": (dict(hidden_size=24, qkv_bias=False, hidden_act="gelu_new"),
                                    dict(activation_function="relu", n_inner=40)),
    "inverse_layer_scale_upcast": (dict(layer_norm_eps=1e-6, hidden_act="quick_gelu"),
                                   dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
                                        layer_norm_epsilon=1e-3, activation_function="gelu_pytorch_tanh")),
    "unscaled_attention_untied_head": (dict(hidden_act="silu"),
                                       dict(scale_attn_weights=False, tie_word_embeddings=False,
                                            activation_function="gelu")),
    "rect_image_one_channel": (dict(image_size=[16, 24], patch_size=4, num_channels=1, hidden_act="relu"),
                               dict(activation_function="gelu_fast", n_head=2)),
    "rect_patch": (dict(image_size=[16, 24], patch_size=[4, 8], intermediate_size=20), dict(n_layer=3)),
    "cross_size_given": (dict(hidden_size=24, num_attention_heads=3), dict(cross_attention_hidden_size=24)),
}
# Fixed per case, so that a failure reproduces (string hashes change from process to process).
SEEDS = {name: seed for seed, name in enumerate(CASES)}


def make_reference(enc_kw=None, dec_kw=None, *, seed=0, init_scale=1.0, top_kw=None,
                   encoder=TINY_ENCODER, decoder=TINY_DECODER):
    """A random torch VisionEncoderDecoderModel in eval mode with eager attention (the path
    that returns attention weights).

    ``init_scale`` multiplies every non-norm weight so that logits are decisive (generation
    tests); ``top_kw`` sets top-level config attributes."""
    import torch
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    enc = ViTConfig(**{**encoder, **(enc_kw or {})})
    dec = GPT2Config(**{**decoder, **(dec_kw or {}), "add_cross_attention": True, "is_decoder": True})
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = dec.bos_token_id
    cfg.pad_token_id = dec.pad_token_id if dec.pad_token_id is not None else 1
    cfg.eos_token_id = dec.eos_token_id
    for k, v in (top_kw or {}).items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(cfg)
    if init_scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name and "ln_" not in name:
                    p.mul_(init_scale)
    for c in (model.config, model.encoder.config, model.decoder.config):
        c._attn_implementation = "eager"
    return model.eval()


def make_full_reference(seed=0):
    return make_reference(seed=seed, encoder=FULL_ENCODER, decoder=FULL_DECODER)


def save_captioning_checkpoint(model, path) -> str:
    """``model`` plus what a captioning pipeline reads beside it: ViT's default preprocessor
    config and a tokenizer covering the whole vocabulary (word-level "t<id>" tokens: random
    weights emit any id, and decoding speed is not what is measured)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, ViTImageProcessor

    model.save_pretrained(path)
    eos = model.config.decoder.eos_token_id
    vocab = {("<|endoftext|>" if i == eos else f"t{i}"): i for i in range(model.config.decoder.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(path)
    ViTImageProcessor(size={"height": model.config.encoder.image_size,
                            "width": model.config.encoder.image_size}).save_pretrained(path)
    return str(path)
