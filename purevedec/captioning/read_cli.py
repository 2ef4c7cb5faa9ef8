"""The ``read`` command: ``purevedec read FILES... --model NAME_OR_PATH``: document pages to text.

Inputs are image files and PDF files (recognised by their content), folders (their images and
PDFs, recursively) and glob patterns. Each PDF page is rendered (pypdfium2: pip install
'purevedec[pdf]') when its batch needs it, at the resolution the model's input asks for (the
page's shorter side at the input's shorter side, at least 96 dpi; ``--dpi`` sets it); an image is
one page. Batching, progress, ``--output``/``--skip-existing``, the generation options and the
exit codes are ``caption``'s.

Formats (one record per page, written in one piece as soon as its batch is done):

- text: ``PATH<TAB>PAGE<TAB>TEXT`` per line (PAGE counts from 1; an image is page 1), escaped as
  ``caption``'s lines are, so a multi-line Markdown page is still one line.
- jsonl: ``{"path", "page", "text", "score"}``; with ``--num-return-sequences N`` > 1 also
  ``"texts"`` and ``"scores"``; with ``--json`` also ``"json"``.

``--json`` reads each page's fields as Donut's processor does (``token2json``: the whole decoded
sequence, special tokens kept, end and padding tokens and the first tag, the task token, removed);
the text format then prints the JSON object. ``--markdown`` applies Nougat's clean-up of generated
Markdown (repetitions cut, hallucinated references and broken tables removed), as transformers'
``NougatTokenizerFast.post_process_generation``; ``--markdown`` is on by default for checkpoints
whose preprocessor is Nougat's.

``--stop-score-variance`` ends a page where Nougat's reference implementation ends it when
caught in a repetition loop: once the variance of the variance of the top score of each step has
stayed under 0.015 over 200 steps (its ``StoppingCriteriaScores``, read as for a page decoded
alone, in batches and in slots alike). It is on by default for checkpoints whose preprocessor is
Nougat's (the encoder family's record says which preprocessing wants which defaults).

A PDF that cannot be opened (damaged, encrypted) or has more than ``--max-pages`` pages, and a
page that cannot be rendered or would render larger than images may be, is named on stderr and
the other files and pages are still read (exit code 1).
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

from .cli import Job, add_run_flags, generation_options, run_job
from .inputs import IMAGE_EXTENSIONS, Input
from .output_file import format_page_record
from .program import UsageError

DEFAULT_MAX_PAGES = 1000
PDF_EXTENSIONS = (".pdf",)


def _dpi(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 1 <= value <= 2400):
        raise argparse.ArgumentTypeError(f"must be a resolution in [1, 2400] dpi, got {text!r}")
    return value


def add_read_command(commands) -> argparse.ArgumentParser:
    """Add ``read`` to the subparsers object ``commands``."""
    from .flags import positive_int
    cmd = commands.add_parser("read", help="read document pages (images, PDF files) to text",
                              description="Read document pages (images and PDF files) to text.",
                              epilog=__doc__.split("\n\n", 1)[1].replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.set_defaults(run=read_command)
    cmd.add_argument("images", nargs="+", metavar="files", help="image or PDF files, folders or glob patterns")
    cmd.add_argument("--model", required=True, help="hub id or local checkpoint of a document reader")
    add_run_flags(cmd, "pages")
    out = cmd.add_argument_group("documents")
    out.add_argument("--json", action="store_true",
                     help="each page's fields as JSON, as Donut's processor reads them (token2json)")
    out.add_argument("--markdown", action=argparse.BooleanOptionalAction, default=None,
                     help="clean up generated Markdown as Nougat's post-processing does (default: on for "
                          "checkpoints with Nougat's preprocessor)")
    out.add_argument("--stop-score-variance", action=argparse.BooleanOptionalAction, default=None,
                     help="end a page caught in a repetition loop as Nougat's reference does (its top "
                          "scores steady over 200 steps; default: on for checkpoints with Nougat's preprocessor)")
    out.add_argument("--dpi", type=_dpi, default=None,
                     help="render PDF pages at this resolution (default: the page's shorter side at the "
                          "model input's shorter side, at least 96 dpi)")
    out.add_argument("--max-pages", type=positive_int, default=DEFAULT_MAX_PAGES,
                     help=f"refuse a PDF of more pages than this (default {DEFAULT_MAX_PAGES})")
    return cmd


def _pages(args) -> Callable:
    """``Job.expand``: an image is its own page 1; a PDF becomes one input per page."""
    def expand(captioner, inputs: list[Input]) -> list[Input]:
        from .pdf_pages import is_pdf, pdf_pages
        out = []
        for item in inputs:
            if item.problem is not None or not is_pdf(item.path):
                out.append(item._replace(page=1))
                continue
            found = pdf_pages(item.path, captioner.image_config.size, max_pages=args.max_pages, dpi=args.dpi)
            if found.problem is not None:
                out.append(Input(item.path, found.problem))
            out.extend(Input(item.path, page=p.number, source=p) for p in found.pages)
        return out
    return expand


def page_defaults_of(captioner) -> dict:
    """What ``read`` does by default for this checkpoint ("markdown", "stop_score_variance"): its
    encoder family's record, for the preprocessing its preprocessor_config.json names."""
    from ..models import encoder_family
    from .preprocessor import pipeline_of
    pipeline = pipeline_of(captioner.image_config)
    return dict(encoder_family(captioner.config.encoder).page_defaults.get(pipeline, {}))


def _task_removed(sequence: str) -> str:
    # Donut's documented recipe: the first tag of the sequence is the task token, not a field
    return re.sub(r"<.*?>", "", sequence, count=1).strip()


def _fields_of(captioner) -> Callable:
    """caption -> its token2json value, read from the whole decoded sequence (the ids generate
    began from, as the caption holds them, then its tokens; special tokens kept: Donut's field tags
    are special tokens) as Donut's processor recipe reads it."""
    from .document_output import token2json
    tokenizer = captioner.tokenizer
    added = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
    gen = captioner.generation_config
    dropped = {i for i in (*(gen.eos_token_id or ()), gen.pad_token_id) if i is not None}
    names = [tokenizer.token_text(i) for i in sorted(dropped)]

    def fields(caption) -> dict:
        text = tokenizer.decode([*caption.prompt_ids, *caption.token_ids], skip_special_tokens=False)
        for name in names:
            text = text.replace(name, "")
        return token2json(_task_removed(text), added)
    return fields


def _record(args) -> Callable:
    """``Job.record``: the page record, its texts cleaned up (``--markdown``) and read as fields (``--json``)."""
    def make(captioner, _args) -> Callable:
        markdown = args.markdown
        if markdown is None:
            markdown = page_defaults_of(captioner).get("markdown", False)
        fields = _fields_of(captioner) if args.json else None
        from .page_markdown import clean_page

        def record(item: Input, captions) -> str:
            texts = [clean_page(c.text) if markdown else c.text for c in captions]
            return format_page_record(args.format, item.path, item.page, texts, [c.score for c in captions],
                                      [fields(c) for c in captions] if fields else None)
        return record
    return make


def _model_options(captioner, args) -> dict:
    """``Job.model_options``: Nougat's stopping rule, when asked for or when the checkpoint's
    defaults say so (greedy search and sampling: the rule ends rows one by one, beams cannot)."""
    from ..generation.options import with_options
    beams = with_options(captioner.generation_config, generation_options(args)).num_beams > 1
    wanted = args.stop_score_variance
    if wanted and beams:
        raise UsageError("--stop-score-variance ends pages one by one: not with beam search (--num-beams 1)")
    if wanted is None:
        wanted = not beams and page_defaults_of(captioner).get("stop_score_variance", False)
    return {"stop_score_variance": True} if wanted else {}


def read_command(args, out, err) -> int:
    """Run ``purevedec read``; returns the exit code (UsageError and OutputError propagate)."""
    job = Job("page(s)", paged=True, extensions=IMAGE_EXTENSIONS + PDF_EXTENSIONS, expand=_pages(args),
              record=_record(args), model_options=_model_options)
    return run_job(args, out, err, job)
