"""Token ids, whichever tokenizer made them: the dtype they are stored in, and the check that
they belong to a vocabulary."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import UserError


def smallest_uint(n: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds the ids 0 .. n-1 (1 byte per token for
    a vocabulary of up to 256 tokens, so a 1 MB corpus of characters takes 1 MB as ids)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def check_ids(ids: Iterable[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """ids (a list, an array of any integer dtype, or one id) as a flat int64 array; a one-line
    UserError naming the first id outside [0, vocab_size)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    outside = (ids < 0) | (ids >= vocab_size)
    if outside.any():
        raise UserError(f"token id {ids[outside][0]} is outside the vocabulary [0, {vocab_size})")
    return ids
