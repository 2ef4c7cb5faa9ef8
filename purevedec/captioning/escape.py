"""Text the command line prints, made safe: one record per line, no terminal control sequences.

File names and captions are untrusted: a name may hold a tab or newline (which would forge
extra output lines), bytes that are not UTF-8 (Python keeps them as lone surrogates, which a
UTF-8 stream refuses to write), or ESC sequences that a terminal would obey. ``escape`` writes
every such character as a backslash escape, reversibly (``unescape``):

    \\\\ \\t \\n \\r          backslash, tab, newline, carriage return
    \\xNN               NN < 80: that control character; NN >= 80: the raw byte NN of a
                        file name that is not UTF-8 (os.fsencode gives the byte back)
    \\uNNNN \\UNNNNNNNN  other control, format (bidi overrides) and line-separator characters
"""

from __future__ import annotations

import json
import re
import unicodedata

_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"})
_ESCAPE = re.compile(r"\\(\\|t|n|r|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
_CUT_ESCAPE = re.compile(r"\\(x[0-9a-f]?|u[0-9a-f]{0,3}|U[0-9a-f]{0,7})?\Z")   # an escape cut short at the end


def _escape_char(c: str, backslash: bool) -> str:
    if c in _NAMED and (backslash or c != "\\"):
        return _NAMED[c]
    code = ord(c)
    if c == "\\" or unicodedata.category(c) not in _UNSAFE_CATEGORIES:
        return c
    if 0xDC80 <= code <= 0xDCFF:           # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(text: str, *, backslash: bool = True) -> str:
    """``text`` with every character that could break a line or drive a terminal escaped.
    ``backslash=False`` leaves backslashes alone (messages for people, not for parsing)."""
    if text.isprintable() and not (backslash and "\\" in text):
        return text
    return "".join(_escape_char(c, backslash) for c in text)


def _unescape_one(match: re.Match) -> str:
    body = match.group(1)
    if body in ("\\", "t", "n", "r"):
        return {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[body]
    code = int(body[1:], 16)
    if body[0] == "x" and code >= 0x80:
        return chr(0xDC00 + code)
    return chr(code)


def unescape(text: str) -> str:
    """The inverse of ``escape`` (with ``backslash=True``)."""
    return _ESCAPE.sub(_unescape_one, text)


def is_escaped(text: str, *, unfinished: bool = False) -> bool:
    """Whether ``escape`` can have written ``text``: no control or format character, every
    backslash the start of an escape (``unfinished``: the last escape may be cut short)."""
    rest = _ESCAPE.sub("", text)
    if unfinished:
        rest = _CUT_ESCAPE.sub("", rest)
    if "\\" in rest:
        return False
    return rest.isprintable() or not any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in rest)


def json_line(record: dict) -> str:
    """One JSON object on one line, human-readable UTF-8, yet with the characters ``escape``
    guards against (including U+2028, U+0085 and terminal controls, which json.dumps leaves
    raw) written as \\u escapes. Lone surrogates of non-UTF-8 file names stay surrogates:
    ``json.loads`` gives the same str back and ``os.fsencode`` the original bytes."""
    text = json.dumps(record, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(c if unicodedata.category(c) not in _UNSAFE_CATEGORIES else _json_escape(c) for c in text)


def _json_escape(c: str) -> str:
    code = ord(c)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON writes characters beyond the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
