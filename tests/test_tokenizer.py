"""The character tokenizer: round trips, dtypes, unknown characters, JSON; the tokenizers'
modules import neither each other nor the corpus pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt.chars import CharTokenizer
from gpt.errors import UserError
from gpt.tokenizer import tokenizer_from_json

REPO = Path(__file__).resolve().parent.parent


@settings(deadline=None, max_examples=100)
@given(st.text(min_size=1, max_size=200))
def test_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text))
    assert ids.shape == (len(text),) and ids.max() < tok.vocab_size


@settings(deadline=None, max_examples=50)
@given(st.text(min_size=1, max_size=50), st.text(max_size=50))
def test_ids_are_positions_in_the_sorted_vocabulary(vocab, text):
    tok = CharTokenizer(vocab)
    text = "".join(c for c in text if c in vocab)
    assert tok.encode(text).tolist() == [tok.chars.index(c) for c in text]


@pytest.mark.parametrize("size, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                         (65536, np.uint16), (65537, np.uint32)])
def test_ids_use_the_smallest_dtype_that_fits(size, dtype):
    tok = CharTokenizer("".join(chr(0x10000 + i) for i in range(size)))  # beyond the BMP: emoji and such
    assert tok.vocab_size == size
    ids = tok.encode(tok.chars[-1] + tok.chars[0])
    assert ids.dtype == dtype and ids.tolist() == [size - 1, 0]


def test_unknown_characters_are_listed_once_each():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(UserError, match=r"^characters not in the vocabulary: 'é', '€'$"):
        tok.encode("h€llé€é")


def test_decode_accepts_lists_arrays_and_scalars_and_refuses_unknown_ids():
    tok = CharTokenizer("abc")
    assert tok.decode([2, 0]) == tok.decode(np.array([2, 0], dtype=np.uint8)) == "ca"
    assert tok.decode(np.int64(1)) == "b" and tok.decode([]) == ""
    for bad in ([3], [-1]):
        with pytest.raises(UserError, match="outside the vocabulary"):
            tok.decode(bad)


def test_json_round_trip():
    tok = CharTokenizer.from_text("To be, or not to be?\n Ünïcödé €")
    again = tokenizer_from_json(tok.to_json())
    assert again.chars == tok.chars
    text = "be or not €"
    np.testing.assert_array_equal(again.encode(text), tok.encode(text))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({"type": "bpe", "chars": "ab"}),
                                  json.dumps({"type": "char", "chars": 5}), json.dumps({"type": "char"}),
                                  json.dumps({"type": "char", "chars": ""})])
def test_bad_json_is_a_user_error(text):
    with pytest.raises(UserError, match="tokenizer"):
        tokenizer_from_json(text)


@pytest.mark.parametrize("module, not_imported", [
    ("gpt.checkpoint", "gpt.prepare"),  # a checkpoint's tokenizer needs none of the corpus pipeline
    ("gpt.runlog", "gpt.prepare"),  # nor does what a run shows and records
    ("gpt.sample", "gpt.prepare"),  # nor sampling a run
    ("gpt.bpe", "gpt.chars"),  # nor does one tokenizer need the other
    ("gpt.chars", "gpt.bpe"),
])
def test_the_tokenizers_stand_apart(module, not_imported):
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert module in result.stdout.split() and not_imported not in result.stdout.split()
