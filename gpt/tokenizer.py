"""The character tokenizer: every distinct character of the corpus is one token.

A tiny vocabulary (65 symbols for tiny shakespeare) means long sequences; sub-word
tokenizers such as GPT-2's (50,257 tokens) trade a larger vocabulary for shorter sequences.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from .errors import UserError


def smallest_uint(n: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds the ids 0 .. n-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class CharTokenizer:
    """encode: text -> ids (the positions of the characters in the sorted vocabulary);
    decode: ids -> text."""

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise UserError("a tokenizer vocabulary must be a non-empty set of single characters")
        self.dtype = smallest_uint(len(self.chars))
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)  # sorted

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """ids (len(text),) of dtype self.dtype. Vectorised: text as an array of code points,
        looked up in the sorted vocabulary with one binary search per character."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codepoints, codepoints)
        found = ids < len(self.chars)
        found[found] = self._codepoints[ids[found]] == codepoints[found]
        if not found.all():
            unknown = sorted({chr(c) for c in codepoints[~found]})
            listed = ", ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise UserError(f"characters not in the vocabulary: {listed}")
        return ids.astype(self.dtype)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids, dtype=np.int64).reshape(-1))

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": "".join(self.chars)})

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        try:
            obj = json.loads(text)
            return cls(obj["chars"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"not a tokenizer description ({type(exc).__name__}: {exc})") from None
