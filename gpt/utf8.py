"""Samples that are always text: which tokens may come next so that the bytes stay UTF-8.

A byte-level model can put any byte anywhere: a continuation byte with no character to
continue, a lead byte followed by a token that does not continue it, 0xFF, which no UTF-8
text holds. Once drawn, such bytes can only be printed as U+FFFD. So the sampler draws only
the tokens that keep the bytes so far a valid UTF-8 prefix, and gives the others -inf before
the softmax (gpt.sampling.probabilities): probability 0. This is constrained decoding, the
way grammars and JSON schemas are imposed on a language model's output.

Which tokens may come next depends only on the character left unfinished at the end of the
bytes so far: how many continuation bytes it still needs, and the range the next one must be
in. That is the *state*, one of eight. So the rule is a table, computed once per vocabulary:
for each state and each token, what is due after it, or NOT_ALLOWED.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Unicode's table of well-formed UTF-8 (The Unicode Standard, Table 3-7): the lead bytes, how
# many continuation bytes follow each, and the range of the first of them (the later ones are
# always 80..BF). The narrow ranges rule out overlong forms (after E0 and F0), surrogates
# (after ED) and code points above U+10FFFF (after F4); bytes 80..C1 and F5..FF lead nothing.
CONTINUATION = (0x80, 0xBF)
LEAD_BYTES = [  # (first lead byte, last lead byte, continuation bytes, range of the first of them)
    (0x00, 0x7F, 0, None),
    (0xC2, 0xDF, 1, CONTINUATION),
    (0xE0, 0xE0, 2, (0xA0, 0xBF)),
    (0xE1, 0xEC, 2, CONTINUATION),
    (0xED, 0xED, 2, (0x80, 0x9F)),
    (0xEE, 0xEF, 2, CONTINUATION),
    (0xF0, 0xF0, 3, (0x90, 0xBF)),
    (0xF1, 0xF3, 3, CONTINUATION),
    (0xF4, 0xF4, 3, (0x80, 0x8F)),
]

State = tuple[int, tuple[int, int] | None]  # (continuation bytes due, the range of the next one)
START: State = (0, None)  # between two characters
# every state is START or what a lead byte leaves due; a continuation byte leaves (2, 80..BF)
# or (1, 80..BF), which lead bytes E1 and C2 leave too
STATES: list[State] = [START] + list(dict.fromkeys((due, first) for *_, due, first in LEAD_BYTES if due))
DUE = np.array([due for due, _ in STATES])  # (S,) continuation bytes due in each state
NOT_ALLOWED = 4  # in due_after: more than any state leaves due, so no limit lets it through


def next_state(state: State, byte: int) -> State | None:
    """The state after one more byte, or None where the byte cannot come next."""
    due, expected = state
    if due == 0:
        return next(((n, first) for lo, hi, n, first in LEAD_BYTES if lo <= byte <= hi), None)
    if not expected[0] <= byte <= expected[1]:
        return None
    return (due - 1, CONTINUATION) if due > 1 else START


def state_after(data: bytes, state: State = START) -> State:
    """The state at the end of data. A byte that cannot come where it stands is read again as
    the start of a character (and skipped if it cannot start one either), as Python's decoder
    goes on after a bad byte with errors="replace": bytes given by hand have a state too."""
    for byte in data:
        state = next_state(state, byte) or next_state(START, byte) or START
    return state


class Utf8Mask:
    """Which tokens of a vocabulary may come next, in each state (see the module docstring).

    due_after[s, v] is the number of continuation bytes due after token v in state s, or
    NOT_ALLOWED where v would break the UTF-8; index_after[s, v] the index in STATES of the
    state it leaves. A vocabulary that holds the 256 single bytes (a byte-level BPE's first tokens)
    allows something in every state: ASCII between characters, and the continuation bytes of
    the range that is due.
    """

    def __init__(self, tokens: Sequence[bytes]):
        self.tokens = list(tokens)
        self.due_after = np.full((len(STATES), len(tokens)), NOT_ALLOWED, dtype=np.int8)  # (S, V)
        self.index_after = np.zeros((len(STATES), len(tokens)), dtype=np.int64)  # (S, V)
        for s, state in enumerate(STATES):
            for v, token in enumerate(self.tokens):
                after: State | None = state
                for byte in token:
                    after = next_state(after, byte)
                    if after is None:
                        break
                else:
                    self.due_after[s, v] = after[0]
                    self.index_after[s, v] = STATES.index(after)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def start(self, ids: np.ndarray) -> np.ndarray:
        """(B,) the state at the end of each row of ids (B, t), a prompt."""
        return np.array([STATES.index(state_after(b"".join(self.tokens[i] for i in row))) for row in ids.tolist()])

    def allowed(self, states: np.ndarray, remaining: int) -> np.ndarray:
        """(B, V) the tokens that may come next in states (B,) (indices into STATES), when
        `remaining` more tokens will follow this one. A token may leave a character unfinished
        only if the tokens left can finish it (each can bring one of the bytes due, at least),
        so that a sample never ends inside a character. A prompt given as ids may end in a
        character that cannot be finished in time: then its next continuation byte is still
        allowed."""
        if remaining >= NOT_ALLOWED - 1:  # time enough to finish any character
            return self.due_after[states] < NOT_ALLOWED
        limit = np.maximum(remaining, DUE[states] - 1)  # (B,)
        return self.due_after[states] <= limit[:, None]

    def advance(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(B,) the states after tokens (B,), drawn from what allowed() let through."""
        return self.index_after[states, tokens]
