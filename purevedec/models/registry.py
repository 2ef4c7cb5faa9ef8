"""The model families, by Hugging Face ``model_type``: one line per family.

Adding a family: write its module (see ``family.py`` for the record and the protocols it
follows) and add its record here. Everything else reads these tables.
"""

from __future__ import annotations

from . import beit, bert, deit, gpt2, mbart, swin, trocr, vit
from .family import DecoderFamily, EncoderFamily

ENCODERS: dict[str, EncoderFamily] = {f.model_type: f for f in (
    vit.FAMILY,
    deit.FAMILY,
    beit.FAMILY,
    swin.FAMILY,
    swin.DONUT_FAMILY,
)}
DECODERS: dict[str, DecoderFamily] = {f.model_type: f for f in (
    gpt2.FAMILY,
    trocr.FAMILY,
    *bert.FAMILIES,
    mbart.FAMILY,
    mbart.BART_FAMILY,
)}
# The families a Config built without one gets (transformers' VisionEncoderDecoder defaults).
DEFAULT_ENCODER, DEFAULT_DECODER = "vit", "gpt2"

# What a top-level model_type other than "vision-encoder-decoder" is, for the error a user sees
# when pointing us at the wrong kind of checkpoint.
OTHER_MODEL_TYPES = {
    "gpt2": "a GPT-2 language model", "vit": "a ViT image classifier or encoder alone",
    "trocr": "a TrOCR decoder alone", "donut-swin": "a Donut Swin encoder alone",
    "bert": "a BERT text model", "clip": "a CLIP model", "blip": "a BLIP model",
}
