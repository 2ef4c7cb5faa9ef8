"""PDF files as pages to read: each page rendered to an RGB image by pypdfium2 (the ``pdf`` extra),
only when its batch needs it, at a resolution chosen from the model's input size.

Untrusted files: PDFium is given the file only to parse and rasterise it. Forms are never
initialised, so no JavaScript or XFA runs (pypdfium2's wheels ship PDFium without V8 anyway), and
nothing else is started. Before rendering, the page count is bounded (``max_pages``) and so is the
bitmap a page would need (its size in points times the scale, at most ``MAX_IMAGE_PIXELS``, the
bound images get), so a page that claims to be a mile wide is that page's error, not a 40 GB
allocation. A file that cannot be opened (damaged, encrypted, not a PDF) is that file's error.

PDFium is not thread-safe, not even across documents: every call into it holds one lock. The
loader's threads still overlap rendering with the model; they only take turns with each other.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Iterator, NamedTuple

from PIL import Image

from ..errors import ImageError
from .image_files import MAX_IMAGE_PIXELS, DeferredImage

PDF_MAGIC = b"%PDF-"
HEADER_WINDOW = 1024      # PDFium, like Acrobat, accepts a header anywhere in the first KiB
POINTS_PER_INCH = 72
MIN_DPI = 96              # Nougat's own tool rasterises papers at 96 dpi: never render coarser
_PDFIUM = threading.Lock()


def is_pdf(path: str) -> bool:
    """Whether the regular file ``path`` starts like a PDF (by content, not by its name)."""
    try:
        with open(path, "rb") as f:
            return PDF_MAGIC in f.read(HEADER_WINDOW)
    except OSError:
        return False   # reported when the file is read as an image


def _pdfium():
    try:
        import pypdfium2
    except ImportError:
        raise ImageError("reading PDF files needs pypdfium2: pip install 'purevedec[pdf]'") from None
    return pypdfium2


@contextlib.contextmanager
def _document(path: str) -> Iterator:
    """The open document, under the PDFium lock; any failure to open it an ImageError naming it."""
    pdfium = _pdfium()
    with _PDFIUM:
        try:
            doc = pdfium.PdfDocument(path)
        except pdfium.PdfiumError as e:   # damaged, encrypted ("Incorrect password"), not a PDF
            raise ImageError(f"{path}: cannot open PDF ({e})") from None
        try:
            yield doc
        finally:
            doc.close()


def page_count(path: str, max_pages: int) -> int:
    """How many pages ``path`` holds; ImageError if it cannot be opened, has none or more than ``max_pages``."""
    with _document(path) as doc:
        count = len(doc)
    if count == 0:
        raise ImageError(f"{path}: the PDF has no pages")
    if count > max_pages:
        raise ImageError(f"{path}: the PDF has {count} pages, more than --max-pages {max_pages}")
    return count


def render_scale(width_pt: float, height_pt: float, canvas: tuple[int, int], dpi: float | None) -> float:
    """Pixels per point: ``dpi`` when given; else the page's shorter side rendered at the canvas's
    shorter side (what the preprocessor's resize makes of it, so it only ever shrinks the page),
    and never under MIN_DPI."""
    if dpi is not None:
        return dpi / POINTS_PER_INCH
    return max(min(canvas) / min(width_pt, height_pt), MIN_DPI / POINTS_PER_INCH)


def rendered_size(width_pt: float, height_pt: float, scale: float) -> tuple[int, int]:
    """(width, height) in pixels of the bitmap PDFium makes at ``scale`` (it rounds up)."""
    return math.ceil(width_pt * scale), math.ceil(height_pt * scale)


class PdfPage(DeferredImage):
    """Page ``number`` (1-based) of the PDF at ``path``, rendered for a model whose input is ``canvas``
    (height, width) when ``open`` is called."""

    def __init__(self, path: str, number: int, canvas: tuple[int, int], dpi: float | None = None):
        self.path, self.number, self.canvas, self.dpi = path, number, tuple(canvas), dpi
        self.name = f"{path} page {number}"

    def __repr__(self) -> str:
        return f"PdfPage({self.path!r}, {self.number})"

    def open(self) -> Image.Image:
        """Render the page (RGB, white paper), its bitmap bounded before it is allocated."""
        with _document(self.path) as doc:
            if self.number > len(doc):
                raise ImageError(f"{self.name}: the PDF now has only {len(doc)} pages")
            page = doc[self.number - 1]
            try:
                return self._render(page)
            finally:
                page.close()

    def _render(self, page) -> Image.Image:
        width, height = page.get_size()   # points, the page's /Rotate applied
        if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
            raise ImageError(f"{self.name}: the page has no area ({width} x {height} points)")
        scale = render_scale(width, height, self.canvas, self.dpi)
        w, h = rendered_size(width, height, scale)
        if w * h > MAX_IMAGE_PIXELS:
            raise ImageError(f"{self.name}: a {width:g} x {height:g} point page would render to {w} x {h} pixels, "
                             f"more than the {MAX_IMAGE_PIXELS} purevedec decodes (lower --dpi?)")
        bitmap = page.render(scale=scale, may_draw_forms=False)
        try:
            return bitmap.to_pil().convert("RGB")   # a copy: the bitmap's buffer is freed below
        finally:
            bitmap.close()


class PdfPages(NamedTuple):
    """A PDF's pages, or why it gave none."""
    pages: list
    problem: str | None = None


def pdf_pages(path: str, canvas: tuple[int, int], *, max_pages: int, dpi: float | None = None) -> PdfPages:
    """Every page of the PDF ``path`` as a ``PdfPage`` (rendered later), or the problem that names the file."""
    try:
        count = page_count(path, max_pages)
    except ImageError as e:
        return PdfPages([], str(e).removeprefix(f"{path}: "))
    return PdfPages([PdfPage(os.fspath(path), n, canvas, dpi) for n in range(1, count + 1)])
