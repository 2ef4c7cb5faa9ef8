"""What a run measures when the user names it: a checkpoint (local directory or Hub id through
the local cache) and a folder of images, each preprocessed by both stacks' own processors, and
the identity of both (the Hub revision or a hash of the weight files; a hash of the images)."""

from __future__ import annotations

import hashlib
import os

import numpy as np

import purevedec as pv
from purevedec.checkpoints.loader import local_dir, weight_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ReferenceUnavailable(SystemExit):
    """transformers cannot load the checkpoint: the run stops with this one line (exit status 2)."""

    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


def _sha256_files(paths, with_names=False) -> str:
    h = hashlib.sha256()
    for p in paths:
        if with_names:
            h.update(os.path.basename(p).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def model_identity(name: str, path: str) -> dict:
    """A Hub snapshot is named by its revision (the commit folder it lives in); anything else by
    a hash of its weight files' bytes."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    out = {"name": name, "path": path}
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        out["revision"] = parts[-1]
    else:
        out["weights_sha256"] = _sha256_files(weight_files(path)[1])
    return out


def resolve(name: str) -> str:
    return local_dir(name)


def image_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise SystemExit(f"--images {folder}: not a folder")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise SystemExit(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def readable_images(files: list[str], log=print) -> list[str]:
    """The files that open and decode as images; each other one is reported (one line) and left
    out before anything is measured. None readable: the run stops with one line."""
    from PIL import Image
    good = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.convert("RGB").load()
            good.append(f)
        except Exception as e:  # noqa: BLE001 - any decoding failure skips that file
            log(f"skipped {f}: not a readable image ({type(e).__name__}: {str(e)[:120]})")
    if not good:
        raise SystemExit(f"--images: none of the {len(files)} image files could be read")
    return good


def full_size_vit_gpt2(config) -> bool:
    """Whether ``config`` has vit-gpt2's shapes (ViT-B/16 at 224 px, 12-layer 768-wide GPT-2): the
    model the suite's goals are set for."""
    enc, dec = config.encoder, config.decoder
    return (enc.model_type == "vit" and enc.hidden_size == 768 and enc.num_hidden_layers == 12
            and tuple(enc.image_size) == (224, 224) and dec.model_type == "gpt2" and dec.n_embd == 768
            and dec.n_layer == 12)


def images_identity(folder: str, files: list[str]) -> dict:
    return {"folder": folder, "count": len(files), "files": [os.path.basename(f) for f in files[:8]],
            "sha256": _sha256_files(files, with_names=True)}


def _missing_architectures(path: str) -> list[str]:
    """The encoder / decoder model types in config.json that the installed transformers does not know."""
    import json

    from transformers import CONFIG_MAPPING
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    return [f"{part} architecture '{cfg[part].get('model_type')}'" for part in ("encoder", "decoder")
            if isinstance(cfg.get(part), dict) and cfg[part].get("model_type") not in CONFIG_MAPPING]


def load_reference(path: str, name: str):
    """transformers' VisionEncoderDecoderModel from the checkpoint (eval, eager attention), or a
    one-line ReferenceUnavailable naming what the installed transformers lacks."""
    import transformers
    from transformers import VisionEncoderDecoderModel
    where = f"transformers {transformers.__version__} cannot load {name}"
    missing = _missing_architectures(path)
    if missing:
        raise ReferenceUnavailable(f"{where}: it does not know the {' and the '.join(missing)} "
                                   "(purevedec loads it; the suite needs both stacks, so it stops here)")
    try:
        model = VisionEncoderDecoderModel.from_pretrained(path, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 - whatever it is, the user gets one line naming it
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ReferenceUnavailable(f"{where}: {type(e).__name__}: {first[:300]}") from None
    return model.eval()


def pixels_both(path: str, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The images through purevedec's processor and through transformers' AutoImageProcessor."""
    from PIL import Image
    from transformers import AutoImageProcessor
    ours = pv.preprocess(files, pv.load_image_config(path))
    proc = AutoImageProcessor.from_pretrained(path)
    ims = []
    for f in files:
        with Image.open(f) as im:
            ims.append(im.convert("RGB"))
    theirs = np.asarray(proc(images=ims, return_tensors="np")["pixel_values"], np.float32)
    return ours, theirs


def tokenizers(path: str):
    """(purevedec's, transformers') tokenizers, or (None, None) when the checkpoint has none."""
    try:
        from transformers import AutoTokenizer
        return pv.load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 - no tokenizer files: captions are shown as token ids
        return None, None


def quiet_third_party() -> None:
    """The report is the output: transformers' and huggingface_hub's advice, progress bars and
    Python warnings from the libraries measured would bury it."""
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "huggingface_hub", "torch", "jax", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
