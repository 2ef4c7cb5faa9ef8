"""Donut's structured output -> JSON: the result of transformers' ``DonutProcessor.token2json``.

Donut fine-tunes write fields as ``<s_key>value</s_key>``; a value holding further ``<s_..>`` /
``</s_..>`` tags is an object (or a list of objects), ``<sep/>`` separates list items, and a leaf
that is one of the tokenizer's added tokens written ``<name/>`` (a class label, as in rvlcdip's
``<advertisement/>``) becomes ``name``. The rules below reproduce transformers' reading, quirks
included, because users compare the two:

- tags match case-insensitively; a key runs from ``<s_`` to the first ``>``;
- an opening tag without a closing tag anywhere is deleted (every exact occurrence) and the scan
  goes on;
- the value is the shortest text between the opening and the closing tag, stripped; an object
  value that comes out empty is left out, a list of one object or one leaf becomes that item;
- after a field, the text after the first occurrence of the closing tag is read next; a
  ``<sep/>`` there starts the next item of a list of objects;
- a repeated key keeps its first position and its last value;
- text with no field at all comes back as ``{"text_sequence": text}``.
"""

from __future__ import annotations

import re
from typing import Any, Collection

SEP = "<sep/>"


def _next_field(text: str) -> tuple[str, str] | None:
    """(the opening tag as written, its key) of the first ``<s_`` in ``text`` with a ``>`` after it."""
    start = re.search(r"<s_", text, re.IGNORECASE)
    if start is None:
        return None
    close = text.find(">", start.start())
    if close < 0:
        return None
    tag = text[start.start():close + 1]
    return tag, tag[len("<s_"):-1]


def _leaf_values(content: str, added_vocab: Collection[str]) -> str | list[str]:
    values = []
    for leaf in content.split(SEP):
        leaf = leaf.strip()
        if leaf in added_vocab and leaf[:1] == "<" and leaf[-2:] == "/>":
            leaf = leaf[1:-2]  # a categorical token such as <advertisement/>
        values.append(leaf)
    return values[0] if len(values) == 1 else values


def _items(text: str, added_vocab: Collection[str], inner: bool) -> dict | list:
    """The fields of ``text``: a dict at the top level, a list of dicts inside a value."""
    fields: dict[str, Any] = {}
    while text:
        found = _next_field(text)
        if found is None:
            break
        tag, key = found
        end = re.search(rf"</s_{re.escape(key)}>", text, re.IGNORECASE)
        if end is None:
            text = text.replace(tag, "")
            continue
        end_tag = end.group()
        content = re.search(f"{re.escape(tag)}(.*?){re.escape(end_tag)}", text, re.IGNORECASE | re.DOTALL)
        if content is not None:
            inside = content.group(1).strip()
            if "<s_" in inside and "</s_" in inside:
                value = _items(inside, added_vocab, inner=True)
                if value:
                    fields[key] = value[0] if len(value) == 1 else value
            else:
                fields[key] = _leaf_values(inside, added_vocab)
        text = text[text.find(end_tag) + len(end_tag):].strip()
        if text.startswith(SEP):
            return [fields] + _items(text[len(SEP):], added_vocab, inner=True)
    if fields:
        return [fields] if inner else fields
    return [] if inner else {"text_sequence": text}


def token2json(text: str, added_vocab: Collection[str] = ()) -> dict:
    """A decoded Donut sequence (task prompt and special tokens already removed) -> its JSON object.
    ``added_vocab``: the tokenizer's added tokens (categorical ``<name/>`` leaves are read by name)."""
    return _items(text, added_vocab, inner=False)
