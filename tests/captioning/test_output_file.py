"""Resuming a record file: an unfinished last line (a killed run) must be the start of a record,
for caption records (PATH<TAB>CAPTION) and page records (PATH<TAB>PAGE<TAB>TEXT) alike."""

from __future__ import annotations

import pytest

from purevedec.captioning.output_file import NotARecordFile, read_record_file

WHOLE = {"text": b"a.png\tcat\n", "paged": b"a.pdf\t1\tpage one\n"}   # the whole first line


@pytest.mark.parametrize("paged, cut, ok", [
    (False, b"b.png", True), (False, b"b.png\t", True), (False, b"b.png\ta dog \\", True),
    (False, "b.png\tcaf\u00e9".encode()[:-1], True),            # cut inside a UTF-8 character
    (False, b"b.png\ta\x07", False), (False, b"b\\q", False), (False, b"b\\\tdog", False),   # a whole field cut
    (True, b"c.pdf", True), (True, b"c.pdf\t", True), (True, b"c.pdf\t3", True), (True, b"c.pdf\t3\tso \\", True),
    (True, "c.pdf\t3\tcaf\u00e9".encode()[:-1], True),
    (True, b"c.pdf\tx", False), (True, b"c.pdf\t3x\t", False), (True, b"c.pdf\t\tb", False),
    (True, b"c.pdf\t3\ta\x07", False), (True, b"c\\q\t1", False), (True, b"c\\\t1", False),
])
def test_an_unfinished_last_line_must_start_a_record(tmp_path, paged, cut, ok):
    """A killed run leaves the start of a record: it is cut off on resuming; anything else is refused."""
    file = tmp_path / "out.txt"
    whole = WHOLE["paged" if paged else "text"]
    file.write_bytes(whole + cut)
    if ok:
        done, size, kept = read_record_file(str(file), "text", paged)
        assert len(done) == 1 and size == file.stat().st_size and kept == len(whole)
    else:
        with pytest.raises(NotARecordFile, match="line 2"):
            read_record_file(str(file), "text", paged)
