"""``purevedec caption IMAGES... --model NAME_OR_PATH``: captions on stdout, problems on stderr.

Exit codes: 0 all inputs captioned; 1 some inputs could not be read (each is named on stderr,
the others are still captioned and printed as soon as their batch is done); 2 the model could
not be loaded or the command line is wrong.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Iterator, TextIO

DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purevedec", description="Pure-JAX VisionEncoderDecoder tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("caption", help="caption image files")
    cap.add_argument("images", nargs="+", help="image files, folders (their images) or glob patterns")
    cap.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local checkpoint (default {DEFAULT_MODEL})")
    cap.add_argument("--batch-size", type=int, default=8)
    cap.add_argument("--num-beams", type=int, default=None, help="default: the checkpoint's generation config")
    cap.add_argument("--max-new-tokens", type=int, default=None, help="default: the checkpoint's generation config")
    cap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="cast the parameters (default: as stored)")
    cap.add_argument("--format", choices=["text", "jsonl"], default="text")
    cap.add_argument("--attention-map", metavar="DIR", default=None,
                     help="write DIR/<image name>.png: each generated token's cross-attention over the image")
    cap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    cap.add_argument("--compile-cache", metavar="DIR", default=os.environ.get("PUREVEDEC_COMPILE_CACHE"),
                     help="keep compiled programs in DIR so the next run starts fast (default "
                          "$PUREVEDEC_COMPILE_CACHE, else $XDG_CACHE_HOME/purevedec/xla; 'none' turns it off)")
    return parser


def _is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[")


def expand_inputs(args: list[str]) -> Iterator[tuple[str, str | None]]:
    """(path, problem) pairs: files as given, a folder's image files (recursively, sorted), glob
    matches; a problem names an argument that matched nothing."""
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(os.path.join(root, f) for root, _, files in os.walk(arg) for f in files
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            yield from ((p, None) for p in found)
            if not found:
                yield arg, "folder holds no image files"
        elif os.path.exists(arg) or not _is_glob(arg):
            yield arg, None            # a missing plain path is reported when it is read
        else:
            matches = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            yield from ((p, None) for p in matches)
            if not matches:
                yield arg, "no file matches this pattern"


def progress_bar(total: int, stream: TextIO, enabled: bool):
    """tqdm's bar on its own stderr line, with images/s and ETA; off when asked, for a run of one
    batch, or when stderr is not a terminal (redirected logs get no carriage returns)."""
    from tqdm import tqdm
    return tqdm(total=total, unit="image", file=stream, disable=not enabled, dynamic_ncols=True)


def _write_result(out: TextIO, fmt: str, path: str, caption) -> None:
    if fmt == "jsonl":
        out.write(json.dumps({"path": path, "caption": caption.text, "score": caption.score},
                             ensure_ascii=False) + "\n")
    else:
        out.write(f"{path}\t{caption.text}\n")
    out.flush()


def _label(captioner, token_id: int) -> str:
    text = captioner.tokenizer.token_text(token_id)
    return text.strip() or repr(text)


def _write_map(captioner, path: str, caption, folder: str) -> None:
    from .attention_map import render
    from .image import open_image
    name = os.path.splitext(os.path.basename(path))[0] + ".png"
    labels = [_label(captioner, t) for t in caption.token_ids]
    render(open_image(path), caption.attention, labels, captioner.config.encoder.grid).save(
        os.path.join(folder, name))


def _run_batch(captioner, batch: list[tuple[str, object]], args, out: TextIO) -> None:
    import numpy as np
    captions = captioner.caption_pixels(np.stack([p for _, p in batch]), attention=bool(args.attention_map),
                                        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    for (path, _), caption in zip(batch, captions):
        _write_result(out, args.format, path, caption)
        if args.attention_map:
            _write_map(captioner, path, caption, args.attention_map)


def caption_files(captioner, args, out: TextIO, err: TextIO) -> int:
    """Caption every input; returns the number of inputs that failed."""
    from .image import ImageError, preprocess_one
    inputs = list(expand_inputs(args.images))
    shown = not args.no_progress and len(inputs) > args.batch_size and err.isatty()
    failed, batch = 0, []
    with progress_bar(len(inputs), err, shown) as progress:
        for i, (path, problem) in enumerate(inputs):
            try:
                if problem:
                    raise ImageError(f"{path}: {problem}")
                batch.append((path, preprocess_one(path, captioner.image_config)))
            except ImageError as e:
                failed += 1
                progress.write(f"error: {e}", file=err)
                progress.update(1)
            if batch and (len(batch) == args.batch_size or i == len(inputs) - 1):
                _run_batch(captioner, batch, args, out)
                progress.update(len(batch))
                batch = []
    return failed


def _caption_command(args, out: TextIO, err: TextIO) -> int:
    from .captioner import Captioner, ModelNotFound
    if args.batch_size < 1:
        err.write("error: --batch-size must be at least 1\n")
        return 2
    if args.compile_cache != "none" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        from .compile_cache import enable_compilation_cache
        enable_compilation_cache(args.compile_cache or None)
    try:
        captioner = Captioner.from_pretrained(args.model, dtype=args.dtype)
    except ModelNotFound as e:
        err.write(f"error: {e}\n")
        return 2
    except (ValueError, OSError) as e:  # CheckpointError, ConfigError, TokenizerError, unreadable files
        err.write(f"error: cannot load model {args.model!r}: {str(e).splitlines()[0]}\n")
        return 2
    if args.attention_map:
        os.makedirs(args.attention_map, exist_ok=True)
    failed = caption_files(captioner, args, out, err)
    if failed:
        err.write(f"{failed} input(s) could not be captioned\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    return _caption_command(args, out or sys.stdout, err or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
