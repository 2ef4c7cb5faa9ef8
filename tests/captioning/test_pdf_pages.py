"""PDF pages for ``purevedec read``: recognised by content, counted and bounded before rendering,
rendered by pypdfium2 at the scale the model's input asks for, every failure an ImageError naming
the file or the page."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from purevedec.captioning import pdf_pages as pp
from purevedec.errors import ImageError

pdfium = pytest.importorskip("pypdfium2")


def blank_pdf(path, sizes) -> str:
    """A PDF of empty pages of the given (width, height) in points."""
    doc = pdfium.PdfDocument.new()
    for w, h in sizes:
        doc.new_page(w, h)
    buf = io.BytesIO()
    doc.save(buf)
    path.write_bytes(buf.getvalue())
    return str(path)


def image_pdf(path, seed=0, pages=2) -> str:
    """A PDF whose pages are random 60x80 images, one pixel a point (pillow writes it)."""
    rs = np.random.RandomState(seed)
    ims = [Image.fromarray(rs.randint(0, 255, (80, 60, 3), np.uint8)) for _ in range(pages)]
    ims[0].save(path, format="PDF", save_all=True, append_images=ims[1:], resolution=72)
    return str(path)


# A PDF whose trailer names a standard security handler: PDFium asks for a password it is not given.
ENCRYPTED = (b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n"
             b"2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\n"
             b"3 0 obj <</Filter /Standard /V 1 /R 2 /O <" + b"00" * 32 + b"> /U <" + b"00" * 32 +
             b"> /P -4>> endobj\ntrailer <</Root 1 0 R /Encrypt 3 0 R /ID [<01020304> <01020304>]>>\n%%EOF\n")


def test_recognised_by_content_not_by_name(tmp_path):
    pdf = image_pdf(tmp_path / "scan.png")          # a PDF under an image's name
    png = tmp_path / "page.pdf"
    Image.new("RGB", (4, 4)).save(png, format="PNG")  # an image under a PDF's name
    assert pp.is_pdf(pdf) and not pp.is_pdf(str(png)) and not pp.is_pdf(str(tmp_path / "missing.pdf"))


def test_pages_render_as_pdfium_renders_them(tmp_path):
    path = image_pdf(tmp_path / "doc.pdf", pages=3)
    found = pp.pdf_pages(path, (160, 120), max_pages=5)
    assert found.problem is None and [p.number for p in found.pages] == [1, 2, 3]
    page = found.pages[1]
    assert page.name == f"{path} page 2"
    scale = 120 / 60                     # the page's shorter side (60 pt) at the canvas's shorter side (120 px)
    with pdfium.PdfDocument(path) as doc:
        want = np.asarray(doc[1].render(scale=scale).to_pil().convert("RGB"))
    got = np.asarray(page.open())
    assert got.shape == (160, 120, 3) and np.array_equal(got, want)
    assert got.std() > 20                # the random picture, not a blank page


def test_render_scale():
    letter = (612, 792)
    assert pp.render_scale(*letter, (2560, 1920), None) == pytest.approx(1920 / 612)   # Donut's canvas
    assert pp.render_scale(*letter, (40, 56), None) == pytest.approx(96 / 72)          # never under 96 dpi
    assert pp.render_scale(*letter, (2560, 1920), 300) == pytest.approx(300 / 72)      # --dpi wins
    assert pp.rendered_size(612, 792, 1.5) == (918, 1188)


def test_a_page_too_large_is_refused_before_rendering(tmp_path, monkeypatch):
    path = blank_pdf(tmp_path / "big.pdf", [(100, 100), (14400, 14400)])
    pages = pp.pdf_pages(path, (40, 40), max_pages=5).pages
    assert pages[0].open().size == (134, 134)     # 96 dpi: ceil(100 * 4/3)
    monkeypatch.setattr(pdfium.PdfPage, "render", lambda *a, **k: pytest.fail("rendered an oversized page"))
    with pytest.raises(ImageError, match=r"big\.pdf page 2: a 14400 x 14400 point page would render to 19200 x "
                                         r"19200 pixels, more than"):
        pages[1].open()


@pytest.mark.parametrize("content, message", [
    (b"%PDF-1.4\ngarbage", r"cannot open PDF \(.*Data format error"),
    (b"%PDF-1.7\n" + b"\x00" * 200, r"cannot open PDF"),
    (ENCRYPTED, r"cannot open PDF \(.*(password|security)"),
])
def test_unopenable_files_are_that_files_problem(tmp_path, content, message):
    path = tmp_path / "bad.pdf"
    path.write_bytes(content)
    found = pp.pdf_pages(str(path), (40, 40), max_pages=5)
    assert found.pages == [] and found.problem is not None
    assert re.search(message, found.problem), found.problem


def test_page_count_is_bounded(tmp_path):
    path = blank_pdf(tmp_path / "long.pdf", [(50, 50)] * 4)
    assert len(pp.pdf_pages(path, (40, 40), max_pages=4).pages) == 4
    found = pp.pdf_pages(path, (40, 40), max_pages=3)
    assert found.pages == [] and found.problem == "the PDF has 4 pages, more than --max-pages 3"


def test_a_page_gone_since_counting_is_that_pages_error(tmp_path):
    path = tmp_path / "doc.pdf"
    page = pp.pdf_pages(image_pdf(path, pages=2), (40, 40), max_pages=5).pages[1]
    image_pdf(path, pages=1)                     # the file shrank between counting and rendering
    with pytest.raises(ImageError, match=r"doc\.pdf page 2: the PDF now has only 1 pages"):
        page.open()
