"""The UTF-8 mask (gpt.utf8) against Python's own UTF-8: for every state and token, the mask
allows a token exactly where the bytes so far and the token's bytes are the start of valid
UTF-8 text; every state allows something; a sample never ends inside a character."""

from __future__ import annotations

import codecs
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt.bpe import BPETokenizer
from gpt.utf8 import DUE, NOT_ALLOWED, STATES, Utf8Mask, next_state, state_after


@pytest.fixture(scope="module")
def unfinished() -> dict[bytes, int]:
    """Every way a valid UTF-8 character can be cut short (its first 1 to 3 bytes), with the
    number of bytes still due: Python's encoder over all code points but the surrogates."""
    due = {}
    for code in (*range(0xD800), *range(0xE000, 0x110000)):
        data = chr(code).encode("utf-8")
        for cut in range(1, len(data)):
            due[data[:cut]] = len(data) - cut
    return due


def still_due(data: bytes, unfinished: dict[bytes, int]) -> int | None:
    """The bytes still due if data is the start of valid UTF-8 text, or None where it is not:
    Python's strict decoder reads the whole characters, and what it holds back must be the
    start of a character (it holds back ED A0, the start of a surrogate, which none finishes)."""
    try:
        _, read = codecs.utf_8_decode(data, "strict", False)
    except UnicodeDecodeError:
        return None
    return unfinished.get(data[read:]) if read < len(data) else 0


@pytest.fixture(scope="module")
def tokens() -> list[bytes]:
    """The 256 single bytes, a BPE's tokens learned from text of 1- to 4-byte characters, and
    pieces of UTF-8 cut at random places (tokens that start or end inside a character)."""
    text = "le café de Noël, 日本語のテキスト, 😀👩‍👩‍👧 ÿ€ \U0010ffff \ud7ff\ue000 " * 5
    merged = BPETokenizer.train(text, 400).vocab
    rng = random.Random(0)
    data = text.encode()
    pieces = []
    for _ in range(300):
        start = rng.randrange(len(data))
        pieces.append(data[start:start + rng.randint(1, 6)])
    return list(dict.fromkeys(merged + pieces + [b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff"]))


def test_the_states_are_closed_and_start_at_between_characters():
    assert STATES[0] == (0, None)
    for state in STATES:
        for byte in range(256):
            after = next_state(state, byte)
            assert after is None or after in STATES


def test_the_mask_allows_a_token_exactly_where_python_decodes_the_bytes(tokens, unfinished):
    """From every state (reached through every first byte of a character, and through many
    unfinished characters of 2 and 3 bytes), each token against Python's decoder."""
    rng = random.Random(0)
    longer = sorted(p for p in unfinished if len(p) > 1)
    pending = [b""] + [p for p in unfinished if len(p) == 1] + rng.sample(longer, 150)
    mask = Utf8Mask(tokens)
    reached = set()
    for before in pending:
        s = STATES.index(state_after(before))
        reached.add(s)
        expected = [still_due(before + token, unfinished) for token in tokens]
        got = mask.due_after[s].tolist()
        assert got == [NOT_ALLOWED if due is None else due for due in expected], before
    assert reached == set(range(len(STATES)))


@settings(deadline=None, max_examples=100)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_each_state_drawn_to_is_the_state_of_all_the_bytes_so_far(tokens, unfinished, choices):
    """A walk through the tokens that the mask allows, step after step (as the sampler takes
    them), stays the start of valid UTF-8 text, and its state is that of all its bytes."""
    mask = Utf8Mask(tokens)
    states, data = mask.start(np.array([[ord("a")]])), b"a"
    for choice in choices:
        allowed = np.flatnonzero(mask.allowed(states, remaining=NOT_ALLOWED))
        token = allowed[choice % len(allowed)]
        data += tokens[token]
        states = mask.advance(states, np.array([token]))
        assert still_due(data, unfinished) == DUE[states[0]]
        assert STATES[states[0]] == state_after(data)


@pytest.mark.parametrize("vocabulary", ["bytes", "merges"])
def test_every_state_allows_a_token_however_few_remain(tokens, vocabulary):
    """However many tokens remain, every state the sampler can be in has a token it may draw,
    and with r tokens to come after this one no token leaves more than r bytes due: the
    sample can always go on, and it ends on a whole character."""
    mask = Utf8Mask([bytes([b]) for b in range(256)] if vocabulary == "bytes" else tokens)
    for remaining in range(5):
        for s in range(len(STATES)):
            if DUE[s] > remaining + 1:  # (no earlier step leaves this much due)
                continue
            allowed = mask.allowed(np.array([s]), remaining)[0]
            assert allowed.any(), (STATES[s], remaining)
            assert (mask.due_after[s, allowed] <= remaining).all()


def test_a_prompt_of_bad_bytes_has_the_state_pythons_decoder_goes_on_from(unfinished):
    """Bytes given by hand: after a byte that cannot come where it stands, decoding starts
    again at that byte, as Python's decoder does with errors="replace"."""
    for data in [b"\xe2\x82", b"\xe2A", b"\xe2\xe2\x82", b"\x80\x80\xc3", b"\xff\xf0\x9f", b"\xc3\xf4\x8f",
                 b"\xf0\x9f\x98\x80", b"\xf0\x9f\x98\x80\x80"]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decoder.decode(data)
        held = decoder.getstate()[0]  # the unfinished character it waits on
        assert state_after(data) == state_after(held)
        assert DUE[STATES.index(state_after(data))] == unfinished.get(held, 0)
