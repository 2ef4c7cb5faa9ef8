"""Just enough protobuf to read one field of a serialized message (a sentencepiece model's
normalization table) without the protobuf package: varints and length-delimited fields, bounds-checked."""

from __future__ import annotations


def varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[i]
        value, shift, i = value | (byte & 0x7F) << shift, shift + 7, i + 1
        if byte < 0x80:
            return value, i


def proto_bytes(buf: bytes, number: int) -> bytes | None:
    """The first length-delimited field ``number`` of a protobuf message (bounds-checked; nothing
    else is interpreted)."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = varint(buf, i)
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            n, i = varint(buf, i)
            if i + n > len(buf):
                raise ValueError("field runs past the end")
            if key >> 3 == number:
                return buf[i:i + n]
            i += n
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return None
