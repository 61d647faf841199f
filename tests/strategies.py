"""Hypothesis strategies shared by the gradient tests: shapes, broadcasting pairs, arrays."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanograd import Tensor

# Values stay in a range where float64 central differences are accurate to ~1e-9.
FLOATS = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, width=64)


def shapes(min_dims: int = 1, max_dims: int = 4, max_side: int = 4):
    """Array shapes with 1 to 4 axes of size 1 to 4 (size-1 axes included on purpose)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)


def broadcast_pair(max_dims: int = 4):
    """Two shapes that broadcast against each other, e.g. (3, 2) with (1, 2) or (2,)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=max_dims, max_side=4).map(
        lambda result: result.input_shapes
    )


def tensor(shape, elements=FLOATS):
    """A float64 leaf tensor that requires a gradient, with values drawn by hypothesis."""
    return hnp.arrays(np.float64, shape, elements=elements).map(lambda a: Tensor(a, requires_grad=True))


def away_from_zero(low: float = 0.2, high: float = 2.0):
    """Values with |x| in [low, high]: for ops with a kink or a pole at 0 (relu, 1/x, log|x|)."""
    magnitude = st.floats(low, high, width=64)
    return st.tuples(magnitude, st.booleans()).map(lambda t: t[0] if t[1] else -t[0])


def distinct_tensor(shape):
    """A tensor whose elements are distinct and well separated, so that max has no ties."""
    size = int(np.prod(shape))
    return st.permutations(list(range(size))).map(
        lambda p: Tensor(np.array(p, dtype=np.float64).reshape(shape) * 0.1 + 0.05, requires_grad=True)
    )
