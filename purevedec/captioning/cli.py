"""The ``purevedec`` command: ``purevedec caption IMAGES... --model NAME_OR_PATH``.

Captions go to stdout (or, appended, to ``--output FILE``), problems to stderr, one line each.

Formats (every input file's record is written in one piece, as soon as its batch is done):

- text: ``PATH<TAB>CAPTION`` per line. With ``--num-return-sequences N`` > 1, N consecutive
  lines per file, in generate's order (beam search: best first). Tabs, newlines, backslashes,
  control characters and non-UTF-8 bytes in PATH and CAPTION are backslash-escaped (see
  ``purevedec.captioning.escape``), so every line is exactly one record.
- jsonl: one object per file: ``{"path", "caption", "score"}`` (the first caption and its
  score); with N > 1 also ``"captions"`` and ``"scores"``, the N of them in order; with
  ``--attention-map`` also ``"attention_map"``, the PNG's path. ``score`` is generate's
  sequence score: length-normalised for beam search, a summed log-probability otherwise.

Exit codes: 0 every input captioned; 1 some inputs could not be read (each named on stderr;
the others are still captioned); 2 the command line, the generation options or the model are
wrong (one line on stderr); 3 the output could not be written (disk full, ...); 130
interrupted; 141 stdout was closed early (``| head``): the run stops quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from typing import Callable, Optional, TextIO

from .escape import escape, json_line, unescape
from .inputs import IMAGE_EXTENSIONS, Input, expand_inputs, map_names  # noqa: F401 (re-exported)

DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"
DEFAULT_SEED = 0
EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_OUTPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 3, 130, 141


class UsageError(Exception):
    """A wrong command line or option: reported as one line, exit 2."""


class OutputError(Exception):
    """The captions could not be written: reported as one line, exit 3."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its usage block is for --help)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {escape(message, backslash=False)}\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


_positive_int, _count = _int_at_least(1), _int_at_least(0)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def version() -> str:
    """The installed package's version (from its metadata)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("purevedec")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser(extra_commands=()) -> argparse.ArgumentParser:
    """The ``purevedec`` parser: one subparser per command, each with ``run`` set to its function
    ``run(args, out, err) -> exit code``. ``extra_commands`` are functions like
    ``add_caption_command`` that add the commands of higher layers (``purevedec.commands``)."""
    parser = _Parser(prog="purevedec", description="Pure-JAX VisionEncoderDecoder tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_caption_command(commands)
    for add in extra_commands:
        add(commands)
    return parser


def add_caption_command(commands) -> argparse.ArgumentParser:
    """Add ``caption`` to the subparsers object ``commands``."""
    cap = commands.add_parser("caption", help="caption image files", description="Caption image files.",
                              epilog=__doc__.split("\n\n", 1)[1].replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    cap.set_defaults(run=caption_command)
    cap.add_argument("images", nargs="+", help="image files, folders (their images) or glob patterns")
    cap.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local checkpoint (default {DEFAULT_MODEL})")
    cap.add_argument("--batch-size", type=_positive_int, default=8, help="images per generate call (default 8)")
    cap.add_argument("--workers", type=_count, default=None,
                     help="threads that decode and preprocess images up to two batches ahead of the model "
                          "(default: up to 4, one per CPU; 0 reads each image just before its batch)")
    gen = cap.add_argument_group("generation (default: the checkpoint's generation config)")
    gen.add_argument("--num-beams", type=_positive_int, default=None)
    gen.add_argument("--max-new-tokens", type=_positive_int, default=None)
    gen.add_argument("--num-return-sequences", type=_positive_int, default=None,
                     help="captions per image (needs beams, at least as many, or --do-sample)")
    gen.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                     help="sample instead of greedy or beam search (--no-do-sample turns it off)")
    gen.add_argument("--temperature", type=_finite_float, default=None)
    gen.add_argument("--top-k", type=int, default=None, help="0 turns it off")
    gen.add_argument("--top-p", type=_finite_float, default=None)
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED,
                     help=f"random seed for sampling (default {DEFAULT_SEED}: runs repeat)")
    cap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="cast the parameters (default: as stored)")
    cap.add_argument("--grayscale", action="store_true",
                     help="turn images gray (and back to RGB) before preprocessing, as manga-ocr's application does")
    cap.add_argument("--format", choices=["text", "jsonl"], default="text")
    cap.add_argument("--output", "-o", metavar="FILE", default=None,
                     help="append the captions to FILE instead of writing them to stdout")
    cap.add_argument("--skip-existing", action="store_true",
                     help="with --output: skip the files FILE already holds captions for (resume a run)")
    cap.add_argument("--attention-map", metavar="DIR", default=None,
                     help="write DIR/<path relative to the inputs' common folder>.png: each generated "
                          "token's cross-attention over the image")
    cap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    cap.add_argument("--mesh", metavar="data=N,model=M", default=None,
                     help="run on a device mesh: batches split over N devices, attention heads, MLP width "
                          "and vocabulary over M (N*M must be the device count; see docs/sharding.md)")
    cap.add_argument("--compile-cache", metavar="DIR", default=os.environ.get("PUREVEDEC_COMPILE_CACHE"),
                     help="keep compiled programs in DIR so the next run starts fast (default "
                          "$PUREVEDEC_COMPILE_CACHE, else $XDG_CACHE_HOME/purevedec/xla; 'none' turns it off)")
    return cap


# --- generation options -------------------------------------------------------------------------

_GENERATION_FLAGS = ("num_beams", "max_new_tokens", "num_return_sequences", "do_sample", "temperature", "top_k",
                     "top_p")


def generation_options(args) -> dict:
    """The generate options set on the command line, each range-checked by the same rules as
    generate's (UsageError naming the flag)."""
    from ..generation.options import from_dict
    options = {}
    for name in _GENERATION_FLAGS:
        value = getattr(args, name)
        if value is not None:
            flag = "--" + name.replace("_", "-")
            try:
                options.update(from_dict({name: value}, flag))
            except ValueError as e:
                raise UsageError(str(e)) from None
    return options


def check_generation(captioner, options: dict, attention: bool) -> None:
    """Options merged with the checkpoint's defaults must make a valid plan (beams, lengths within
    the decoder's positions, ...): checked once, before any image is read."""
    from ..generation.options import with_options
    from ..generation.plan import make_plan
    try:
        gen = with_options(captioner.generation_config, options)
        make_plan(gen, captioner.config, 1, attention)
    except (ValueError, TypeError) as e:
        raise UsageError(f"generation options: {str(e).splitlines()[0]}") from None


# --- output ---------------------------------------------------------------------------------------

def format_record(fmt: str, path: str, captions: list, map_path: Optional[str] = None) -> str:
    """One input's captions as the text of its record (lines ending in newline)."""
    if fmt == "jsonl":
        record = {"path": path, "caption": captions[0].text, "score": captions[0].score}
        if len(captions) > 1:
            record.update(captions=[c.text for c in captions], scores=[c.score for c in captions])
        if map_path is not None:
            record["attention_map"] = map_path
        return json_line(record) + "\n"
    return "".join(f"{escape(path)}\t{escape(c.text)}\n" for c in captions)


def _record_path(line: str, fmt: str) -> str:
    if fmt == "jsonl":
        path = json.loads(line)["path"]
        if not isinstance(path, str):
            raise TypeError(path)
        return path
    path, tab, _ = line.partition("\t")
    if not tab:
        raise ValueError(line)
    return unescape(path)


def recorded_paths(path: str, fmt: str) -> set[str]:
    """The input paths an earlier run's output FILE holds records for (empty when it is missing)."""
    done = set()
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for number, line in enumerate(f, 1):
                try:
                    done.add(_record_path(line, fmt))
                except (ValueError, KeyError, TypeError):
                    raise UsageError(f"{escape(path, backslash=False)} line {number} is not a {fmt} caption "
                                     f"record; was it written with another --format?") from None
    except FileNotFoundError:
        pass
    return done


_MAX_LINE = 1 << 20   # bytes; a caption record is far shorter


def _drop_partial_line(path: str, err: TextIO) -> None:
    """A run killed mid-write may leave a last line without its newline: cut it, so that the
    lines appended next stay whole."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(max(0, size - _MAX_LINE))
            tail = f.read()
            if b"\n" not in tail and len(tail) < size:
                raise UsageError(f"{path}: its last {_MAX_LINE} bytes hold no line end: not a caption file")
            keep = size - len(tail) + tail.rfind(b"\n") + 1
            f.truncate(keep)
            say(err, f"warning: {path}: removed an unfinished last line ({size - keep} bytes)")
    except FileNotFoundError:
        pass


def open_output(args, out: TextIO, err: TextIO) -> tuple[TextIO, bool]:
    """(the stream captions go to, whether this function opened it)."""
    if args.output is None:
        if args.skip_existing:
            raise UsageError("--skip-existing needs --output FILE (the file that holds the earlier captions)")
        return out, False
    try:
        _drop_partial_line(args.output, err)
        return open(args.output, "a", encoding="utf-8", errors="surrogateescape", newline="\n"), True
    except OSError as e:
        raise UsageError(f"cannot open --output {args.output}: {e.strerror or e}") from None


def write_record(stream: TextIO, text: str) -> None:
    """Write one record in one piece and flush it, so a killed run leaves whole records."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:  # ValueError: the stream was closed
        raise OutputError(f"cannot write the captions: {e}") from None


def say(err: TextIO, message: str) -> None:
    """One line on stderr, with terminal control characters (from file names or a checkpoint) escaped."""
    err.write(escape(message, backslash=False) + "\n")
    err.flush()


# --- the caption command --------------------------------------------------------------------------

def progress_bar(total: int, stream: TextIO, enabled: bool):
    """tqdm's bar on its own stderr line, with images/s and ETA; off when asked, for a run of one
    batch, or when stderr is not a terminal (redirected logs get no carriage returns). It counts
    the files read and captioned (or failed) only: an argument that named no file is reported
    but not counted, so the rate and ETA are those of real images."""
    from tqdm import tqdm
    return tqdm(total=total, unit="image", file=stream, disable=not enabled, dynamic_ncols=True)


def mesh_from(text: str | None):
    """``--mesh data=N,model=M`` -> an Auto-axis mesh over every device (None: one device)."""
    if text is None:
        return None
    from ..sharding import make_mesh, parse_mesh
    try:
        return make_mesh(parse_mesh(text))
    except ValueError as e:
        raise UsageError(f"--mesh: {e}") from None


def _load(args):
    from .captioner import Captioner, ModelNotFound
    if args.compile_cache != "none" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        from .compile_cache import enable_compilation_cache
        enable_compilation_cache(args.compile_cache or None)
    try:
        return Captioner.from_pretrained(args.model, dtype=args.dtype, grayscale=args.grayscale)
    except ModelNotFound as e:
        raise UsageError(str(e)) from None
    except (ValueError, OSError) as e:  # CheckpointError, ConfigError, TokenizerError, unreadable files
        raise UsageError(f"cannot load model {args.model!r}: {str(e).splitlines()[0]}") from None


def _special_labels(captioner, token_ids) -> tuple[list[str], list[bool]]:
    special = captioner.special_token_ids()
    labels = []
    for t in token_ids:
        text = captioner.tokenizer.token_text(t)
        labels.append(escape(text.strip() or repr(text), backslash=False))
    return labels, [t in special for t in token_ids]


def write_map(captioner, path: str, caption, target: str) -> None:
    """Render ``caption``'s attention over the image at ``path`` into the PNG ``target``."""
    from .attention_map import render
    from .image import open_image
    labels, special = _special_labels(captioner, caption.token_ids)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    render(open_image(path), caption.attention, labels, captioner.config.encoder.grid,
           special=special).save(target, format="PNG")


def caption_files(captioner, args, options: dict, inputs: list[Input], stream: TextIO, err: TextIO,
                  progress) -> int:
    """Caption the readable ``inputs``, writing each record as its batch is done; returns how many
    inputs failed (each is named on stderr)."""
    import jax
    failed = 0
    paths = [i.path for i in inputs if i.problem is None]
    for item in inputs:
        if item.problem is not None:
            failed += 1
            progress.write(escape(f"error: {item.path}: {item.problem}", backslash=False), file=err)
    maps = map_names(paths) if args.attention_map else {}
    results = captioner.captions(paths, batch_size=args.batch_size, attention=bool(args.attention_map),
                                 errors="return", key=jax.random.key(args.seed), workers=args.workers,
                                 **options)
    for path, result in zip(paths, results):
        progress.update(1)
        if isinstance(result, Exception):
            failed += 1
            progress.write(escape(f"error: {result}", backslash=False), file=err)
            continue
        target = os.path.join(args.attention_map, maps[path]) if args.attention_map else None
        if target is not None:
            try:
                write_map(captioner, path, result[0], target)
            except Exception as e:  # noqa: BLE001 - a map that cannot be written is this file's error
                failed += 1
                progress.write(escape(f"error: {path}: attention map not written ({e})", backslash=False), file=err)
                target = None
        write_record(stream, format_record(args.format, path, result, target))
    return failed


def _inputs(args, err: TextIO) -> list[Input]:
    inputs = list(expand_inputs(args.images))
    if args.skip_existing:
        done = recorded_paths(args.output, args.format)
        kept = [i for i in inputs if i.problem is not None or i.path not in done]
        if len(kept) < len(inputs):
            say(err, f"skipping {len(inputs) - len(kept)} file(s) already captioned in {args.output}")
        inputs = kept
    return inputs


def caption_command(args, out: TextIO, err: TextIO) -> int:
    """Run ``purevedec caption``; returns the exit code (UsageError and OutputError propagate)."""
    options = generation_options(args)          # bad numbers fail before the model is loaded
    mesh = mesh_from(args.mesh)
    stream, opened = open_output(args, out, err)
    try:
        inputs = _inputs(args, err)
        captioner = _load(args)
        check_generation(captioner, options, bool(args.attention_map))
        if mesh is not None:
            captioner = captioner.with_mesh(mesh)
        files = sum(i.problem is None for i in inputs)
        shown = not args.no_progress and files > args.batch_size and err.isatty()
        with progress_bar(files, err, shown) as progress:
            failed = caption_files(captioner, args, options, inputs, stream, err, progress)
    finally:
        if opened:
            stream.close()
    if failed:
        say(err, f"{failed} input(s) could not be captioned")
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


def _show_warning(err: TextIO) -> Callable:
    def show(message, category, filename, lineno, file=None, line=None):
        say(err, f"warning: {message}")
    return show


def _silence_stdout() -> None:
    """After a broken pipe or a full disk: point stdout at /dev/null so that Python's final
    flush of what is still buffered does not print a traceback."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None, *,
         extra_commands=()) -> int:
    """The command line's driver; returns the exit code. ``out``/``err`` default to
    sys.stdout/sys.stderr (tests pass their own); ``extra_commands`` as in ``_parser``."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = _parser(extra_commands).parse_args(argv)
    except SystemExit as e:  # --help, --version, or a one-line usage error
        return EXIT_OK if e.code is None else e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(err)
            return args.run(args, out, err)
    except UsageError as e:
        say(err, f"error: {e}")
        return EXIT_USAGE
    except OutputError as e:
        say(err, f"error: {e}")
        if out is sys.stdout:
            _silence_stdout()
        return EXIT_OUTPUT
    except BrokenPipeError:
        if out is sys.stdout:
            _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            say(err, "interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
