"""The character tokenizer: every distinct character of the corpus is one token.

A tiny vocabulary (65 symbols for tiny shakespeare) means long sequences; sub-word
tokenizers such as GPT-2's (50,257 tokens) trade a larger vocabulary for shorter sequences.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from .errors import UserError
from .token_ids import check_ids, smallest_uint

MAX_LISTED = 20  # unknown characters named in an error message, at most


class UnknownCharacters(UserError):
    """A text holds characters that the vocabulary lacks."""


def _codepoints(text: str) -> np.ndarray:
    """The Unicode code points of text as a uint32 array, without a Python loop (UTF-32 is
    exactly one 4-byte unit per character)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


class CharTokenizer:
    """encode: text -> ids (the positions of the characters in the sorted vocabulary);
    decode: ids -> text."""

    utf8_mask = None  # every token is a whole character: any may follow any (see gpt.utf8)

    def __init__(self, chars: str | Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if not self.chars or any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise UserError("a tokenizer vocabulary must be a non-empty set of single characters")
        self.dtype = smallest_uint(len(self.chars))
        self._vocab_codepoints = _codepoints("".join(self.chars))  # sorted, as self.chars is

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is every character that occurs in text."""
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def chars_per_token(self) -> np.ndarray:
        """(V,) the characters each token stands for: one each."""
        return np.ones(self.vocab_size, dtype=np.int64)

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes of token i's character (as gpt.bpe's tokens are bytes)."""
        return self.chars[i].encode("utf-8", errors="surrogatepass")

    def encode(self, text: str) -> np.ndarray:
        """ids (len(text),) of dtype self.dtype. Vectorised: text as an array of code points,
        looked up in the sorted vocabulary with one binary search per character."""
        codepoints = _codepoints(text)
        ids = np.searchsorted(self._vocab_codepoints, codepoints)
        found = ids < self.vocab_size
        found[found] = self._vocab_codepoints[ids[found]] == codepoints[found]
        if not found.all():
            unknown = [chr(c) for c in np.unique(codepoints[~found])]
            listed = ", ".join(repr(c) for c in unknown[:MAX_LISTED])
            more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
            raise UnknownCharacters(f"characters not in the vocabulary: {listed}{more}")
        return ids.astype(self.dtype)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of a sequence of ids (a list, an array of any integer dtype, or one id)."""
        codepoints = self._vocab_codepoints[check_ids(ids, self.vocab_size)]
        return codepoints.tobytes().decode("utf-32-le", errors="surrogatepass")

    def to_json(self) -> str:
        """The vocabulary as JSON, stored in checkpoints so sampling uses the same ids (read back
        by gpt.tokenizer.tokenizer_from_json)."""
        return json.dumps({"type": "char", "chars": "".join(self.chars)})
