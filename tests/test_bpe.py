"""The byte-level BPE tokenizer: the incremental trainer's merges are the naive one's, the ids
are those of replaying every merge; round trips over all of Unicode, determinism, dtypes,
JSON, and one-line errors for bad input."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpt.bpe import N_BYTES, BPETokenizer, chunk_counts, merge, naive_merges, split_chunks
from gpt.errors import UserError
from gpt.tokenizer import tokenizer_from_json

REPO = Path(__file__).resolve().parent.parent

# Few symbols, so that pairs repeat and many merges happen; a space, an apostrophe, a digit,
# an underscore and a newline exercise every pre-split rule, "é" and "😀" multi-byte UTF-8.
SMALL_ALPHABET = "ab '1_\né😀"
# Any code point at all, lone surrogates included (st.text() leaves them out by default, and
# they would be rare among all code points: drawn on their own half the time).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()) | st.characters(categories=["Cs"]), max_size=40)

HARD_TEXTS = [
    "", "a", "\x00", "\r\n", "\r\n\r\n  \t\n", "   leading and trailing   ", "naïve café", "e\u0301\u0302",
    "日本語のテキスト", "👩‍👩‍👧 🏳️‍🌈 😀😀", "\ud800", "a\udfffb",
    "\ud83d\ude00",  # a surrogate pair written as two code units: two lone surrogates, not "😀"
    "don't we'll I'm you're they've he'd it's 'S", "x__y 3.14159 -- 1,000,000!!!", "\u2028\x85\xa0\u3000",
]


@pytest.fixture(scope="module")
def unicode_tokenizer() -> BPETokenizer:
    """Merges learned from a text where multi-byte characters are frequent, so tokens hold
    whole characters and pieces of characters alike."""
    return BPETokenizer.train("".join(HARD_TEXTS) * 3 + "le café de Noël 😀 日本 " * 20, 400)


# ---- the pre-split --------------------------------------------------------------------------
@settings(deadline=None, max_examples=200)
@given(ANY_TEXT)
@example("".join(HARD_TEXTS))
def test_chunks_concatenate_back_to_the_text(text):
    chunks = split_chunks(text)
    assert "".join(chunks) == text and all(chunks)


def test_chunks_follow_gpt2s_rules():
    text = "Hello world's  123 foo_bar!!\n\n x"
    assert split_chunks(text) == ["Hello", " world", "'s", " ", " 123", " foo", "_", "bar", "!!", "\n\n", " x"]


# ---- training: the incremental trainer against the naive one --------------------------------
def naive_train(text: str, vocab_size: int) -> list[tuple[int, int]]:
    return naive_merges(chunk_counts(split_chunks(text)), vocab_size - N_BYTES)


def replay_merges(merges: list[tuple[int, int]], text: str) -> list[int]:
    """The ids of text as the definition has them: each chunk's bytes, with every merge
    applied in the order it was learned."""
    ids = []
    for chunk in split_chunks(text):
        chunk_ids = list(chunk.encode("utf-8", "surrogatepass"))
        for rank, pair in enumerate(merges):
            chunk_ids = merge(chunk_ids, pair, N_BYTES + rank)
        ids += chunk_ids
    return ids


@settings(deadline=None, max_examples=150)
@given(st.text(SMALL_ALPHABET, max_size=80) | ANY_TEXT, st.integers(256, 320))
@example("aaaa aaaaa aaa", 300)  # overlapping runs
@example("ab ab ba ba", 300)  # ties
def test_incremental_training_gives_the_naive_merges(text, vocab_size):
    tok = BPETokenizer.train(text, vocab_size)
    assert tok.merges == naive_train(text, vocab_size)
    assert tok.vocab_size == 256 + len(tok.merges) <= vocab_size


@settings(deadline=None, max_examples=150)
@given(st.text(SMALL_ALPHABET, max_size=80), st.text(SMALL_ALPHABET, max_size=40) | ANY_TEXT)
@example("bc\nbc\nab", "abc")  # (b, c) ranks before (a, b): "abc" is "a" "bc", though "ab" comes first
def test_encoding_gives_the_ids_of_replaying_every_merge(train_text, text):
    """On the training text and on text it has not seen."""
    tok = BPETokenizer.train(train_text, 300)
    for t in (train_text, text):
        assert tok.encode(t).tolist() == replay_merges(tok.merges, t)


def test_ties_go_to_the_smallest_pair():
    # chunks "ab", " cd": the pairs (a, b), (" ", c), (c, d) all occur once
    assert BPETokenizer.train("ab cd", 300).merges == [(32, 99), (97, 98), (256, 100)]


def test_overlapping_runs_merge_left_to_right():
    # "aaa": (a, a) twice, but only the first two a's merge; then (aa, a)
    assert BPETokenizer.train("aaa", 300).merges == [(97, 97), (256, 97)]
    # chunks "aaaa", " aaaa": (a, a) counts 3 + 3, then (aa, aa) 2 beats (" ", aa) 1
    assert BPETokenizer.train("aaaa aaaa", 300).merges[:2] == [(97, 97), (256, 256)]


def test_training_stops_when_every_chunk_is_one_token():
    tok = BPETokenizer.train("ab ab", 1000)
    assert tok.merges == [(97, 98), (32, 256)] and tok.vocab_size == 258
    assert BPETokenizer.train("", 1000).vocab_size == 256


def test_training_is_the_same_in_every_process():
    """Two processes with different string hash seeds (which change the order of sets and
    dicts of strings) learn the same merges."""
    code = ("import sys; from gpt.bpe import BPETokenizer; "
            "print(BPETokenizer.train(sys.stdin.buffer.read().decode('utf-8', 'surrogatepass'), 320).to_json())")
    text = "The quick brown fox jumps over the lazy dog's back, again and again; " * 5 + "".join(HARD_TEXTS)
    outputs = [subprocess.run([sys.executable, "-c", code], input=text.encode("utf-8", "surrogatepass"),
                              capture_output=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed},
                              check=True).stdout.decode()
               for seed in ("1", "2")]
    assert outputs[0] == outputs[1] == BPETokenizer.train(text, 320).to_json() + "\n"


# ---- encoding and decoding ------------------------------------------------------------------
@settings(deadline=None, max_examples=300)
@given(ANY_TEXT | st.text(SMALL_ALPHABET, max_size=60))
def test_round_trip_any_text(unicode_tokenizer, text):
    ids = unicode_tokenizer.encode(text)
    assert unicode_tokenizer.decode(ids) == text and unicode_tokenizer.decode(ids.tolist()) == text
    assert unicode_tokenizer.decode_bytes(ids) == text.encode("utf-8", "surrogatepass")
    assert unicode_tokenizer.chars_per_token[ids].sum() == len(text)


@settings(deadline=None, max_examples=100)
@given(ANY_TEXT | st.text(SMALL_ALPHABET, max_size=60), st.integers(0, 100))
def test_chunks_encode_in_parts(unicode_tokenizer, text, cut):
    """The ids of consecutive runs of chunks concatenate to the ids of the whole text."""
    chunks = split_chunks(text)
    cut = min(cut, len(chunks))
    parts = [unicode_tokenizer.encode_chunks(chunks[:cut]), unicode_tokenizer.encode_chunks(chunks[cut:])]
    np.testing.assert_array_equal(np.concatenate(parts), unicode_tokenizer.encode(text))
    assert all(part.dtype == unicode_tokenizer.dtype for part in parts)


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip_hard_cases(unicode_tokenizer, text):
    assert unicode_tokenizer.decode(unicode_tokenizer.encode(text)) == text


def test_round_trip_of_the_whole_corpus(shakespeare):
    """Merges from a slice; then the whole corpus, with words the slice never had."""
    text = shakespeare.read_text(encoding="utf-8")
    tok = BPETokenizer.train(text[:200_000], 512)
    assert tok.vocab_size == 512
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < 0.6 * len(text)


def test_tokens_are_the_bytes_of_their_merges(unicode_tokenizer):
    tok = unicode_tokenizer
    assert [tok.token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    for rank, (a, b) in enumerate(tok.merges):
        assert tok.token_bytes(256 + rank) == tok.token_bytes(a) + tok.token_bytes(b)
    assert tok.chars_per_token.shape == (tok.vocab_size,)
    assert tok.chars_per_token[[ord("a"), 0xC3, 0xA9]].tolist() == [1, 1, 0]  # "a", and "é" as bytes C3 A9


def test_decode_replaces_bytes_that_are_not_utf8():
    tok = BPETokenizer.train("café", 260)
    e_acute = tok.encode("é").tolist()
    assert tok.decode_bytes([0xC3]) == b"\xc3" and tok.decode([0xC3]) == "\ufffd"  # half of "é"
    assert tok.decode([0xFF] + e_acute) == "\ufffdé"


def test_decode_accepts_lists_arrays_and_scalars_and_refuses_unknown_ids():
    tok = BPETokenizer.train("abab", 257)
    assert tok.decode([256, 97]) == tok.decode(np.array([256, 97], dtype=np.uint16)) == "aba"
    assert tok.decode(np.int64(256)) == "ab" and tok.decode([]) == ""
    for bad in ([257], [-1]):
        with pytest.raises(UserError, match=rf"^token id {bad[0]} is outside the vocabulary \[0, 257\)$"):
            tok.decode(bad)


@pytest.mark.parametrize("n_merges, dtype", [(0, np.uint8), (1, np.uint16), (65280, np.uint16), (65281, np.uint32)])
def test_ids_use_the_smallest_dtype_that_fits(n_merges, dtype):
    merges = list(itertools.islice(itertools.product(range(256), repeat=2), n_merges))  # distinct byte pairs
    tok = BPETokenizer(merges)
    assert tok.vocab_size == 256 + n_merges and tok.dtype == dtype
    ids = tok.encode("\x00\x00 \x00")
    assert ids.dtype == dtype and tok.decode(ids) == "\x00\x00 \x00"
    if n_merges:
        assert ids[0] == 256  # the pair (0, 0), merged first


# ---- JSON and validation --------------------------------------------------------------------
def test_json_round_trip(unicode_tokenizer):
    again = tokenizer_from_json(unicode_tokenizer.to_json())
    assert again.merges == unicode_tokenizer.merges
    assert json.loads(unicode_tokenizer.to_json())["type"] == "bpe"
    text = "le café 😀 and text it never saw"
    np.testing.assert_array_equal(again.encode(text), unicode_tokenizer.encode(text))


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"type": "char", "chars": 5}), "must be a JSON object"),
    (json.dumps({"type": "bpe"}), "must be a JSON object"),
    (json.dumps({"type": "bpe", "merges": {"0": [1, 2]}}), "must be a JSON object"),
    (json.dumps({"type": "bpe", "merges": [[1, 2], [3]]}), r"merge 1 must be a pair of ids \[a, b\], got \[3\]"),
    (json.dumps({"type": "bpe", "merges": [[1, "2"]]}), "merge 0 must be a pair of ids"),
    (json.dumps({"type": "bpe", "merges": [[1, 2.5]]}), "merge 0 must be a pair of ids"),
    (json.dumps({"type": "bpe", "merges": [[True, 2]]}), "merge 0 must be a pair of ids"),
    (json.dumps({"type": "bpe", "merges": [[1, 2], 3]}), "merge 1 must be a pair of ids"),
    (json.dumps({"type": "bpe", "merges": [[1, 2], [256, 257]]}), r"merge 1 \(256, 257\) uses id 257, which does not "
                                                                  r"exist before it \(ids 0\.\.256\)"),
    (json.dumps({"type": "bpe", "merges": [[256, 1]]}), "merge 0 .* uses id 256"),
    (json.dumps({"type": "bpe", "merges": [[-1, 1]]}), "merge 0 .* uses id -1"),
    (json.dumps({"type": "bpe", "merges": [[1, 2], [3, 4], [1, 2]]}), r"merge 2 \(1, 2\) is a duplicate of merge 0"),
])
def test_bad_json_is_a_one_line_user_error(text, message):
    with pytest.raises(UserError, match=message) as info:
        tokenizer_from_json(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("vocab_size, message", [
    (255, "at least 256"), (0, "at least 256"), (2**32 + 1, r"at most 2\*\*32 .* uint32"), (300.0, "an integer"),
])
def test_bad_vocab_size_is_a_user_error(vocab_size, message):
    with pytest.raises(UserError, match=message):
        BPETokenizer.train("some text", vocab_size)
