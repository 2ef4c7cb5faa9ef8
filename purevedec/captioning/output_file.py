"""``caption --output FILE``: the resumable file of caption records. Each input's record is
written in one piece and flushed, so a killed run leaves whole records (and at most one
unfinished last line, cut when the file is next opened); ``--skip-existing`` reads which inputs
it already holds."""

from __future__ import annotations

import json
import os
from typing import Optional, TextIO

from .escape import escape, json_line, unescape
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
