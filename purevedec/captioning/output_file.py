"""``caption --output FILE`` (and ``read``'s): the resumable file of caption records. Each input's
record is written in one piece and flushed, so a killed run leaves whole records (and at most one
unfinished last line, cut when the file is next opened); ``--skip-existing`` reads which inputs
it already holds.

``read`` writes page records: ``PATH<TAB>PAGE<TAB>TEXT`` lines, or ``{"path", "page", "text",
"score"}`` objects; ``paged=True`` reads those, and an input is then a (path, page) pair."""

from __future__ import annotations

import json
import os
import stat
from typing import Optional, TextIO

from ..checkpoints.jsonfile import file_kind
from .escape import escape, is_escaped, json_line, unescape
from .program import OutputError, UsageError, say


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


def format_page_record(fmt: str, path: str, page: int, texts: list[str], scores: list[float],
                       fields: Optional[list] = None) -> str:
    """One page's texts as the text of its record; ``fields``: each text's JSON value (``--json``),
    which the text format prints instead of the text."""
    if fmt == "jsonl":
        record = {"path": path, "page": page, "text": texts[0], "score": scores[0]}
        if len(texts) > 1:
            record.update(texts=texts, scores=scores)
        if fields is not None:
            record["json"] = fields[0] if len(texts) == 1 else fields
        return json_line(record) + "\n"
    shown = texts if fields is None else [json.dumps(f, ensure_ascii=False) for f in fields]
    return "".join(f"{escape(path)}\t{page}\t{escape(t)}\n" for t in shown)


_JSONL_KEYS = frozenset({"path", "caption", "score", "captions", "scores", "attention_map"})
_PAGE_KEYS = frozenset({"path", "page", "text", "score", "texts", "scores", "json"})
_JSONL_START = '{"path": '          # how json_line begins every record
_MAX_LINE = 1 << 20                  # bytes; a caption record is far shorter


class NotARecordFile(ValueError):
    """A line that ``format_record`` cannot have written."""


def _text_field(text: str, unfinished: bool = False) -> str:
    """A field of a text record, unescaped; NotARecordFile unless ``escape`` can have written it."""
    if not is_escaped(text, unfinished=unfinished):
        raise NotARecordFile(text)
    return unescape(text)


def _page_number(value) -> int:
    if type(value) is not int or value < 1:
        raise NotARecordFile(str(value))
    return value


def _page_record(line: str, fmt: str) -> tuple[str, int]:
    """(path, page) of one whole page record line (without its newline)."""
    if fmt == "jsonl":
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise NotARecordFile(line) from None
        if (not isinstance(record, dict) or not record.keys() >= {"path", "page", "text", "score"}
                or not record.keys() <= _PAGE_KEYS or not isinstance(record["path"], str)
                or not isinstance(record["text"], str)):
            raise NotARecordFile(line)
        return record["path"], _page_number(record["page"])
    path, page, text = (line.split("\t", 2) + ["", ""])[:3]
    if not path or not page.isdigit() or not page.isascii():
        raise NotARecordFile(line)
    _text_field(text)
    return _text_field(path), _page_number(int(page))


def _record_path(line: str, fmt: str, paged: bool = False):
    """The input path (``paged``: the (path, page) pair) of one whole record line (without its newline)."""
    if paged:
        return _page_record(line, fmt)
    if fmt == "jsonl":
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise NotARecordFile(line) from None
        if (not isinstance(record, dict) or not record.keys() >= {"path", "caption", "score"}
                or not record.keys() <= _JSONL_KEYS or not isinstance(record["path"], str)
                or not isinstance(record["caption"], str)):
            raise NotARecordFile(line)
        return record["path"]
    path, tab, caption = line.partition("\t")
    if not tab or not path:
        raise NotARecordFile(line)
    _text_field(caption)
    return _text_field(path)


def _check_unfinished(line: bytes, fmt: str, paged: bool = False) -> None:
    """The start of a record, cut by a killed run (possibly inside a UTF-8 character)."""
    for cut in range(4):
        try:
            text = line[:len(line) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        raise NotARecordFile(line)
    if fmt == "jsonl":
        if not (text.startswith(_JSONL_START) or _JSONL_START.startswith(text)):
            raise NotARecordFile(text)
        return
    # PATH<TAB>TEXT or, paged, PATH<TAB>PAGE<TAB>TEXT: the fields present, the last one maybe cut short
    fields = text.split("\t", 2 if paged else 1)
    for i, field in enumerate(fields):
        last = i == len(fields) - 1
        if paged and i == 1:
            if not (field.isdigit() or (last and field == "")):
                raise NotARecordFile(text)
        else:
            _text_field(field, unfinished=last)


def read_record_file(path: str, fmt: str, paged: bool = False) -> tuple[set, int, int]:
    """(the input paths (``paged``: (path, page) pairs) ``path`` holds records for, its size, the
    bytes its whole lines take).
    NotARecordFile (with the line number) unless every whole line is a ``fmt`` record and an
    unfinished last line is the start of one, after at least one whole record."""
    done, whole = set(), 0
    with open(path, "rb") as f:
        for number, line in enumerate(iter(lambda: f.readline(_MAX_LINE + 1), b""), 1):
            if not line.endswith(b"\n"):
                if len(line) > _MAX_LINE or not done:
                    raise NotARecordFile(f"line {number}")
                try:
                    _check_unfinished(line, fmt, paged)
                except NotARecordFile:
                    raise NotARecordFile(f"line {number}") from None
                return done, whole + len(line), whole
            try:
                done.add(_record_path(line[:-1].decode("utf-8"), fmt, paged))
            except (NotARecordFile, UnicodeDecodeError):
                raise NotARecordFile(f"line {number}") from None
            whole += len(line)
    return done, whole, whole


def _existing_records(path: str, fmt: str, err: TextIO, paged: bool) -> set:
    """Check that the existing file ``path`` is a ``fmt`` caption record file (or empty) before
    anything is written to it, and cut an unfinished last line; the paths it holds records for."""
    mode = os.stat(path).st_mode
    shown = escape(path, backslash=False)
    if not stat.S_ISREG(mode):
        raise UsageError(f"--output {shown} is {file_kind(mode)}, not a caption file (write to stdout and "
                         "redirect it instead)")
    try:
        done, size, whole = read_record_file(path, fmt, paged)
    except NotARecordFile as e:
        raise UsageError(f"refusing to append to --output {shown}: {e} is not a {fmt} caption record (a file "
                         f"written with another --format, or not a caption file; nothing was written)") from None
    if whole < size:
        os.truncate(path, whole)
        say(err, f"warning: {path}: removed an unfinished last line ({size - whole} bytes)")
    return done


def open_output(args, out: TextIO, err: TextIO, paged: bool = False) -> tuple[TextIO, bool, set]:
    """(the stream captions go to, whether this function opened it, the input paths it already
    holds records for). An existing ``--output`` file is appended to only when it is empty or a
    caption record file of ``--format``; anything else is refused before a byte is written."""
    if args.output is None:
        if args.skip_existing:
            raise UsageError("--skip-existing needs --output FILE (the file that holds the earlier captions)")
        return out, False, set()
    try:
        try:
            done = _existing_records(args.output, args.format, err, paged)
        except FileNotFoundError:
            done = set()
        stream = open(args.output, "a", encoding="utf-8", errors="surrogateescape", newline="\n")
        return stream, True, done
    except OSError as e:
        raise UsageError(f"cannot open --output {escape(args.output, backslash=False)}: {e.strerror or e}") from None


def write_record(stream: TextIO, text: str) -> None:
    """Write one record in one piece and flush it, so a killed run leaves whole records."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:  # ValueError: the stream was closed
        raise OutputError(f"cannot write the captions: {e}") from None
