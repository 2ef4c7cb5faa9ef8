"""The ``caption`` command: ``purevedec caption IMAGES... --model NAME_OR_PATH``.

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
import os
from typing import Callable, NamedTuple, Optional, TextIO

from ..errors import TokenizerError
from .escape import escape
from . import interrupts
from .flags import add_mesh_flag, count, finite_float, mesh_from, positive_int, seed
from .inputs import IMAGE_EXTENSIONS, Input, expand_inputs, map_names
from .output_file import format_record, open_output, write_record
from .program import EXIT_FAILED_INPUTS, EXIT_OK, UsageError, say

DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"
DEFAULT_SEED = 0


def add_caption_command(commands) -> argparse.ArgumentParser:
    """Add ``caption`` to the subparsers object ``commands``."""
    cap = commands.add_parser("caption", help="caption image files", description="Caption image files.",
                              epilog=__doc__.split("\n\n", 1)[1].replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    cap.set_defaults(run=caption_command)
    cap.add_argument("images", nargs="+", help="image files, folders (their images) or glob patterns")
    cap.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local checkpoint (default {DEFAULT_MODEL})")
    add_run_flags(cap, "images")
    cap.add_argument("--attention-map", metavar="DIR", default=None,
                     help="write DIR/<path relative to the inputs' common folder>.png: each generated "
                          "token's cross-attention over the image")
    return cap


def add_run_flags(parser: argparse.ArgumentParser, what: str):
    """The flags every model-running command shares (batching, generation, dtype, output, progress,
    mesh, compile cache); ``what`` names its inputs ("images", "pages"). Returns the generation group."""
    parser.add_argument("--batch-size", type=positive_int, default=8, help=f"{what} per generate call (default 8)")
    parser.add_argument("--slots", type=positive_int, default=None,
                        help=f"decode through N slots (continuous batching: one of the {what} whose text ended "
                             "gives its slot to the next) instead of batches; greedy texts are the same, sampling "
                             "draws per input; beams decode in one slot per input; not with several sampled sequences, "
                             "--prompt, --attention-map or --mesh")
    parser.add_argument("--workers", type=count, default=None,
                        help=f"threads that decode and preprocess {what} up to two batches ahead of the model "
                             "(default: up to 4, one per CPU; 0 reads each just before its batch)")
    gen = parser.add_argument_group("generation (default: the checkpoint's generation config)")
    gen.add_argument("--num-beams", type=positive_int, default=None)
    gen.add_argument("--max-new-tokens", type=positive_int, default=None)
    gen.add_argument("--num-return-sequences", type=positive_int, default=None,
                     help="texts per input (needs beams, at least as many, or --do-sample)")
    gen.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                     help="sample instead of greedy or beam search (--no-do-sample turns it off)")
    gen.add_argument("--temperature", type=finite_float, default=None)
    gen.add_argument("--top-k", type=int, default=None, help="0 turns it off")
    gen.add_argument("--top-p", type=finite_float, default=None)
    gen.add_argument("--prompt", default=None, metavar="TEXT",
                     help='decoder prompt, after the start token (a Donut encoder\'s task prompt such as '
                          '"<s_cord-v2>" is the start itself, as in transformers); the output text includes it '
                          "unless its tokens are special")
    gen.add_argument("--seed", type=seed, default=DEFAULT_SEED,
                     help=f"random seed for sampling (default {DEFAULT_SEED}: runs repeat)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast the parameters (default: as stored)")
    parser.add_argument("--grayscale", action="store_true",
                        help="turn inputs gray (and back to RGB) before preprocessing, as manga-ocr's application does")
    parser.add_argument("--format", choices=["text", "jsonl"], default="text")
    parser.add_argument("--output", "-o", metavar="FILE", default=None,
                        help="append the records to FILE instead of writing them to stdout")
    parser.add_argument("--skip-existing", action="store_true",
                        help=f"with --output: skip the {what} FILE already holds records for (resume a run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_mesh_flag(parser, "batches")
    parser.add_argument("--compile-cache", metavar="DIR", default=os.environ.get("PUREVEDEC_COMPILE_CACHE"),
                        help="keep compiled programs in DIR so the next run starts fast (default "
                             "$PUREVEDEC_COMPILE_CACHE, else $XDG_CACHE_HOME/purevedec/xla; 'none' turns it off)")
    return gen


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


def _check_slots(captioner, args, options: dict) -> None:
    from .slot_captions import check_slot_options
    try:
        check_slot_options(captioner, args.slots, options, bool(getattr(args, "attention_map", None)))
    except ValueError as e:
        raise UsageError(f"--{e}") from None


# --- the caption command --------------------------------------------------------------------------

def progress_bar(total: int, stream: TextIO, enabled: bool):
    """tqdm's bar on its own stderr line, with images/s and ETA; off when asked, for a run of one
    batch, or when stderr is not a terminal (redirected logs get no carriage returns). It counts
    the files read and captioned (or failed) only: an argument that named no file is reported
    but not counted, so the rate and ETA are those of real images."""
    from tqdm import tqdm
    return tqdm(total=total, unit="image", file=stream, disable=not enabled, dynamic_ncols=True)


def _load(args):
    from .captioner import Captioner, ModelNotFound
    if args.compile_cache != "none" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        from .compile_cache import enable_compilation_cache
        try:
            enable_compilation_cache(args.compile_cache or None)
        except OSError as e:  # a file where the folder should be, no permission, ...
            raise UsageError(f"--compile-cache {e.filename or args.compile_cache}: cannot use it as the compiled-"
                             f"program cache folder ({e.strerror or e})") from None
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
    """Render ``caption``'s attention over the image at ``path`` into the PNG ``target``, a new file."""
    from .attention_map import render
    from .image import open_image
    labels, special = _special_labels(captioner, caption.token_ids)
    picture = render(open_image(path), caption.attention, labels, captioner.config.encoder.grid, special=special)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    try:
        with open(target, "xb") as f:   # never replaces a file this run did not write (an input, a photo)
            picture.save(f, format="PNG")
    except FileExistsError:
        raise OSError(f"{target} exists (remove it, or choose another --attention-map folder)") from None


class Job(NamedTuple):
    """What makes one command's run differ from ``caption``'s: which inputs it takes and what it writes."""
    what: str
    """What its inputs are called on stderr ("file(s)", "page(s)")."""
    paged: bool = False
    """Records name a page, and ``--skip-existing`` skips (path, page) pairs."""
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    """Which files a folder gives."""
    expand: Callable = lambda captioner, inputs: inputs
    """``expand(captioner, inputs) -> inputs``: each file's inputs for the model (a PDF's pages), after loading."""
    record: Optional[Callable] = None
    """``record(captioner, args)`` -> a function ``(item, captions) -> str`` making one input's record
    (None: ``format_record`` of ``--format``)."""
    model_options: Callable = lambda captioner, args: {}
    """``model_options(captioner, args)`` -> generation options decided once the model is loaded
    (read: Nougat's stopping rule); UsageError for a bad combination."""


CAPTION_JOB = Job("file(s)")


def caption_files(captioner, args, options: dict, inputs: list[Input], stream: TextIO, err: TextIO,
                  progress, record: Optional[Callable] = None) -> int:
    """Caption the readable ``inputs``, writing each record (``record(item, captions)``, default the
    caption record of ``--format``) as its batch is done; returns how many inputs failed (each is
    named on stderr)."""
    import jax
    failed = 0
    readable = [i for i in inputs if i.problem is None]
    for item in inputs:
        if item.problem is not None:
            failed += 1
            progress.write(escape(f"error: {item.path}: {item.problem}", backslash=False), file=err)
    attention = bool(getattr(args, "attention_map", None))
    maps = map_names([i.path for i in readable]) if attention else {}
    results = captioner.captions([i.path if i.source is None else i.source for i in readable],
                                 batch_size=args.batch_size, attention=attention, errors="return",
                                 key=jax.random.key(args.seed), workers=args.workers, slots=args.slots,
                                 prompt=args.prompt, **options)
    for item, result in zip(readable, results):
        interrupts.check()    # a Ctrl-C that a library lost stops the job at the next record
        progress.update(1)
        if isinstance(result, Exception):
            failed += 1
            progress.write(escape(f"error: {result}", backslash=False), file=err)
            continue
        if record is not None:
            write_record(stream, record(item, result))
            continue
        target = os.path.join(args.attention_map, maps[item.path]) if attention else None
        if target is not None:
            try:
                write_map(captioner, item.path, result[0], target)
            except Exception as e:  # noqa: BLE001 - a map that cannot be written is this file's error
                failed += 1
                progress.write(escape(f"error: {item.path}: attention map not written ({e})", backslash=False),
                               file=err)
                target = None
        write_record(stream, format_record(args.format, item.path, result, target))
    return failed


def _done_key(item: Input, paged: bool):
    real = os.path.realpath(item.path)   # any spelling of a file
    return (real, item.page) if paged else real


def _skip_done(args, err: TextIO, inputs: list[Input], done: set, job: Job) -> list[Input]:
    if not args.skip_existing:
        return inputs
    done = {(os.path.realpath(d[0]), d[1]) if job.paged else os.path.realpath(d) for d in done}
    kept = [i for i in inputs if i.problem is not None or _done_key(i, job.paged) not in done]
    if len(kept) < len(inputs):
        say(err, f"skipping {len(inputs) - len(kept)} {job.what} already {'read' if job.paged else 'captioned'} "
                 f"in {args.output}")
    return kept


def _check_prompt(captioner, prompt: str) -> None:
    """A prompt the tokenizer cannot encode is the command line's one error, before any batch."""
    try:
        captioner.tokenizer.encode(prompt)
    except TokenizerError as e:
        raise UsageError(f"--prompt: {e}") from None


def _check_run(captioner, args, options: dict) -> None:
    attention = bool(getattr(args, "attention_map", None))
    check_generation(captioner, options, attention)
    if args.prompt and attention:
        raise UsageError("--prompt cannot be combined with --attention-map")
    if args.prompt and args.slots is not None:
        raise UsageError("--prompt cannot be combined with --slots (the slots start every input from the "
                         "decoder's start token)")
    if args.prompt:
        _check_prompt(captioner, args.prompt)


def run_job(args, out: TextIO, err: TextIO, job: Job = CAPTION_JOB) -> int:
    """Run a model over the inputs ``args`` names, as ``job`` says; returns the exit code (UsageError
    and OutputError propagate)."""
    options = generation_options(args)          # bad numbers fail before the model is loaded
    mesh = mesh_from(args.mesh)
    stream, opened, done = open_output(args, out, err, job.paged)
    try:
        inputs = list(expand_inputs(args.images, job.extensions))
        if not job.paged:   # known before loading the model
            inputs = _skip_done(args, err, inputs, done, job)
        captioner = _load(args)
        _check_run(captioner, args, options)
        if job.paged:
            inputs = _skip_done(args, err, job.expand(captioner, inputs), done, job)
        if mesh is not None:
            captioner = captioner.with_mesh(mesh)
        if args.slots is not None:
            _check_slots(captioner, args, options)
        options = {**options, **job.model_options(captioner, args)}
        files = sum(i.problem is None for i in inputs)
        shown = not args.no_progress and files > args.batch_size and err.isatty()
        with progress_bar(files, err, shown) as progress:
            record = job.record(captioner, args) if job.record is not None else None
            try:
                failed = caption_files(captioner, args, options, inputs, stream, err, progress, record)
            except TokenizerError as e:  # its decoder fails on what the model generates: the model is wrong
                raise UsageError(f"model {args.model!r}: {e}") from None
    finally:
        if opened:
            stream.close()
    if failed:
        say(err, f"{failed} input(s) could not be {'read' if job.paged else 'captioned'}")
    return EXIT_FAILED_INPUTS if failed else EXIT_OK


def caption_command(args, out: TextIO, err: TextIO) -> int:
    """Run ``purevedec caption``; returns the exit code (UsageError and OutputError propagate)."""
    return run_job(args, out, err, CAPTION_JOB)
