"""Donut's token2json against transformers' DonutProcessor.token2json on the same strings."""

from __future__ import annotations

import json

import pytest

from purevedec.captioning.document_output import token2json

ADDED = {"<advertisement/>", "<s_menu>", "</s_menu>", "<sep/>"}
SEQUENCES = [
    "<s_class><advertisement/></s_class>",                                   # rvlcdip: a categorical leaf
    "<s_class><memo/></s_class>",                                            # a <name/> leaf not in the vocab
    "<s_menu><s_nm>Latte</s_nm><s_price>4.50</s_price><sep/><s_nm>Tea</s_nm><s_cnt>2</s_cnt></s_menu>"
    "<s_total><s_total_price>6.50</s_total_price></s_total>",               # cord: a list of objects
    "<s_answer>1999</s_answer>",                                             # docvqa
    "<s_nm>a<sep/>b<sep/> c </s_nm>",                                        # a list of leaves
    "<s_nm>unclosed <s_price>3</s_price>",                                   # a tag without its end
    "<S_Nm>Mixed</s_nm>",                                                    # case-insensitive tags
    "plain text, no fields",
    "<s_a>1</s_a><s_a>2</s_a><s_b>3</s_b>",                                  # a repeated key
    "<s_a><s_b></s_b></s_a>",                                                # an empty inner object
    "<s_a><s_b>x</s_b><sep/></s_a> trailing",
    "</s_x>before<s_x>after</s_x>",                                          # the end tag first
    "<s_a>\nmulti\nline\n</s_a>",
    "<s_",
    "<s_k>v</s_k><sep/><s_k>w</s_k>",                                        # a top-level separator
    "",
]


@pytest.mark.parametrize("text", SEQUENCES)
def test_equals_transformers(text):
    from transformers import DonutProcessor
    reference = DonutProcessor.__new__(DonutProcessor)  # token2json reads no processor state
    ours, theirs = token2json(text, ADDED), reference.token2json(text, added_vocab=ADDED)
    assert json.dumps(ours) == json.dumps(theirs)  # the same values in the same key order
