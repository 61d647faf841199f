"""Hypothesis strategies for the gradient tests: shapes, broadcasting shapes, float64 arrays,
and, per op, a strategy that draws `(fn, inputs)` for nanograd.gradcheck.

Inputs are kept away from the points where an op is not differentiable or where central
differences are inaccurate: relu and 1/x near 0, log and sqrt near 0, ties of max.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanograd import Tensor
from nanograd import functional as F

# Values stay in a range where float64 central differences are accurate to ~1e-9.
FLOATS = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, width=64)


# ---- building blocks ------------------------------------------------------------------------
@st.composite
def shapes(draw, min_dims: int = 0, max_dims: int = 4, max_side: int = 4, empty: bool = True):
    """Array shapes of min_dims to max_dims axes of size 1 to max_side (size-1 axes included
    on purpose); 0 axes (a scalar) when min_dims is 0, and now and then, unless `empty` is
    False, one axis of size 0 (an array of no elements), which every op must take as NumPy does."""
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side))
    if empty and shape and draw(st.integers(0, 5)) == 0:
        i = draw(st.integers(0, len(shape) - 1))
        shape = shape[:i] + (0,) + shape[i + 1:]
    return shape


@st.composite
def broadcast_shapes(draw, num_shapes: int = 2, max_dims: int = 4):
    """Shapes that broadcast against each other, e.g. (3, 2) with (1, 2), (2,) or (); each may
    broadcast against the others, as (3, 1) with (1, 4). Their common shape may have an axis
    of size 0 (which only 0 or 1 broadcast against)."""
    base = draw(shapes(max_dims=max_dims))
    scalars = draw(st.integers(0, 3)) == 0  # (with min_dims=0 throughout, most draws hold a scalar)
    return draw(hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, base_shape=base, min_dims=0 if scalars else 1,
                                                  max_dims=max_dims, min_side=0 if 0 in base else 1,
                                                  max_side=4)).input_shapes


def arrays(shape, elements=FLOATS):
    """float64 arrays of the given shape."""
    return hnp.arrays(np.float64, shape, elements=elements)


def tensor(shape, elements=FLOATS):
    """A float64 leaf tensor that requires a gradient, with values drawn by hypothesis."""
    return arrays(shape, elements).map(lambda a: Tensor(a, requires_grad=True))


def away_from_zero(low: float = 0.2, high: float = 2.0):
    """Values with |x| in [low, high]: for ops with a kink or a pole at 0 (relu, 1/x)."""
    magnitude = st.floats(low, high, width=64)
    return st.tuples(magnitude, st.booleans()).map(lambda t: t[0] if t[1] else -t[0])


def positive(low: float = 0.2, high: float = 3.0):
    """Values in [low, high]: for log, sqrt and fractional powers."""
    return st.floats(low, high, width=64)


def distinct_tensor(shape):
    """A tensor whose elements are distinct and at least 0.1 apart, so that max has no ties."""
    size = int(np.prod(shape))
    return st.permutations(list(range(size))).map(
        lambda p: Tensor((np.array(p, dtype=np.float64).reshape(shape) - size / 2) * 0.1 + 0.05, requires_grad=True)
    )


def axes(ndim: int):
    """An `axis` argument: None, one axis (possibly negative) or a tuple of distinct axes; of a
    scalar, None or ()."""
    if ndim == 0:
        return st.sampled_from([None, ()])
    one = st.integers(-ndim, ndim - 1)
    several = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).flatmap(
        lambda picked: st.tuples(*[st.sampled_from([a, a - ndim]) for a in picked])
    )
    return st.one_of(st.none(), one, several)


def int_array(shape, high: int):
    """Integer ids in [0, high) of the given shape."""
    return hnp.arrays(np.int64, shape, elements=st.integers(0, high - 1))


def mask_for(shape):
    """A boolean mask that broadcasts to `shape` without enlarging it: some axes set to 1,
    maybe some leading axes dropped (all of them: a scalar mask)."""

    @st.composite
    def draw(draw_):
        keep = draw_(st.integers(0, len(shape)))
        mask_shape = tuple(n if draw_(st.booleans()) else 1 for n in shape[len(shape) - keep:])
        return draw_(hnp.arrays(np.bool_, mask_shape))

    return draw()


class FixedRandom:
    """Stands in for a numpy Generator, but every call starts from the same seed: dropout's
    mask is then the same in the analytic pass and in every finite-difference evaluation."""

    def __init__(self, seed: int):
        self.seed = seed

    def __getattr__(self, name):
        return getattr(np.random.default_rng(self.seed), name)


# ---- (fn, inputs) for each op ---------------------------------------------------------------
def binary(fn, right=None):
    """An op of two broadcasting tensors; `right` overrides the values of the second."""

    @st.composite
    def draw(draw_):
        a_shape, b_shape = draw_(broadcast_shapes(2))
        return fn, (draw_(tensor(a_shape)), draw_(tensor(b_shape, right if right is not None else FLOATS)))

    return draw()


def unary(fn, elements=FLOATS, shape=None):
    @st.composite
    def draw(draw_):
        return fn, (draw_(tensor(draw_(shape or shapes()), elements)),)

    return draw()


@st.composite
def reduction(draw, method):
    shape = draw(shapes(empty=method != "max"))  # (the max of nothing is an error: test_engine.py)
    x = draw(distinct_tensor(shape) if method == "max" else tensor(shape))
    axis, keepdims = draw(axes(len(shape))), draw(st.booleans())
    return (lambda x: getattr(x, method)(axis=axis, keepdims=keepdims)), (x,)


@st.composite
def reshape(draw):
    shape = draw(shapes())
    target = draw(st.sampled_from([(-1,), tuple(reversed(shape)), (1, -1), shape + (1,)]))
    return (lambda x: x.reshape(*target)), (draw(tensor(shape)),)


@st.composite
def transpose(draw):
    shape = draw(shapes(min_dims=2))
    a, b = draw(st.integers(-len(shape), len(shape) - 1)), draw(st.integers(-len(shape), len(shape) - 1))
    return (lambda x: x.transpose(a, b)), (draw(tensor(shape)),)


@st.composite
def permute(draw):
    shape = draw(shapes())
    order = draw(st.permutations(list(range(len(shape)))))
    return (lambda x: x.permute(*order)), (draw(tensor(shape)),)


@st.composite
def basic_index(draw):
    """Slices (any start, stop, step, negative steps too) on the leading axes, or an int."""
    shape = draw(shapes(min_dims=1))
    if shape[0] > 0 and draw(st.booleans()):
        i = draw(st.integers(-shape[0], shape[0] - 1))
        return (lambda x: x[i]), (draw(tensor(shape)),)
    n = draw(st.integers(1, len(shape)))
    index = tuple(draw(st.slices(side)) for side in shape[:n])
    return (lambda x: x[index]), (draw(tensor(shape)),)


@st.composite
def array_index(draw):
    """Integer-array indexing on the first or last axis, with at least one repeated index."""
    shape = list(draw(shapes(min_dims=1)))
    axis = draw(st.sampled_from([0, len(shape) - 1]))
    shape[axis] = max(shape[axis], 1)  # something to pick (an axis of size 0 may be elsewhere)
    shape = tuple(shape)
    picks = draw(st.lists(st.integers(0, shape[axis] - 1), min_size=1, max_size=5))
    picks = np.array(picks + picks[:1])  # the first pick twice: its gradient must accumulate
    if axis == 0:
        return (lambda x: x[picks]), (draw(tensor(shape)),)
    return (lambda x: x[..., picks]), (draw(tensor(shape)),)


@st.composite
def matmul(draw):
    sizes = [draw(st.integers(1, 4)) for _ in range(3)]
    if draw(st.integers(0, 5)) == 0:  # n, k or m of size 0 (k = 0: a product of zeros)
        sizes[draw(st.integers(0, 2))] = 0
    n, k, m = sizes
    batch_a, batch_b = draw(broadcast_shapes(2, max_dims=2))
    kind = draw(st.sampled_from(["2d", "batched", "batched@2d", "vector@matrix", "matrix@vector", "dot"]))
    a_shape, b_shape = {"2d": ((n, k), (k, m)), "batched": (batch_a + (n, k), batch_b + (k, m)),
                        "batched@2d": (batch_a + (n, k), (k, m)), "vector@matrix": ((k,), (k, m)),
                        "matrix@vector": (batch_a + (n, k), (k,)), "dot": ((k,), (k,))}[kind]
    return (lambda a, b: a @ b), (draw(tensor(a_shape)), draw(tensor(b_shape)))


@st.composite
def softmaxes(draw, fn):
    shape = draw(shapes(min_dims=1))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return (lambda x: fn(x, axis=axis)), (draw(tensor(shape, st.floats(-5, 5))),)


@st.composite
def cross_entropy(draw):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    targets = draw(int_array((n,), c))
    return (lambda x: F.cross_entropy(x, targets)), (draw(tensor((n, c), st.floats(-5, 5))),)


@st.composite
def embedding_cross_entropy(draw):
    r, v = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    shape = draw(shapes(max_dims=2, empty=False))  # (no ids: an error, test_functional.py)
    idx, targets = draw(int_array(shape, r)), draw(int_array(shape, v))
    return (lambda w: F.embedding_cross_entropy(idx, w, targets)), (draw(tensor((r, v), st.floats(-5, 5))),)


@st.composite
def embedding(draw):
    v, c = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    idx = draw(int_array(draw(shapes(max_dims=3)), v))
    return (lambda w: F.embedding(idx, w)), (draw(tensor((v, c))),)


@st.composite
def layer_norm(draw):
    shape = draw(shapes(min_dims=1, max_side=5).filter(lambda s: s[-1] > 1))
    x = draw(tensor(shape, st.floats(-3, 3)))
    weight, bias = draw(tensor(shape[-1:])), draw(tensor(shape[-1:]))
    if draw(st.booleans()):
        return (lambda x, w, b: F.layer_norm(x, w, b)), (x, weight, bias)
    return (lambda x, w: F.layer_norm(x, w)), (x, weight)


@st.composite
def dropout(draw):
    p, seed = draw(st.floats(0.0, 0.9)), draw(st.integers(0, 100))
    return (lambda x: F.dropout(x, p, True, rng=FixedRandom(seed))), (draw(tensor(draw(shapes()))),)


@st.composite
def concat(draw):
    """One to four tensors that agree except along `axis`, where each has its own size (0 too)."""
    shape = draw(shapes(min_dims=1, max_dims=3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    sizes = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4))
    xs = []
    for n in sizes:
        s = list(shape)
        s[axis] = n
        xs.append(draw(tensor(tuple(s))))
    return (lambda *xs: F.concat(list(xs), axis=axis)), tuple(xs)


@st.composite
def stack(draw):
    shape = draw(shapes(max_dims=3))
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    xs = tuple(draw(tensor(shape)) for _ in range(draw(st.integers(1, 3))))
    return (lambda *xs: F.stack(list(xs), axis=axis)), xs


@st.composite
def where(draw):
    """cond, a and b each broadcasting against the others: a (3, 1), b (1, 4), cond (4,) say."""
    cond_shape, a_shape, b_shape = draw(broadcast_shapes(3))
    cond = draw(hnp.arrays(np.bool_, cond_shape))
    return (lambda a, b: F.where(cond, a, b)), (draw(tensor(a_shape)), draw(tensor(b_shape)))


@st.composite
def masked_fill(draw):
    shape = draw(shapes())
    mask, value = draw(mask_for(shape)), draw(st.floats(-3, 3))
    return (lambda x: F.masked_fill(x, mask, value)), (draw(tensor(shape)),)


@st.composite
def attention(draw):
    B, nh, hs = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Tk = draw(st.integers(1, 4))
    Tq = draw(st.integers(1, Tk))
    causal = draw(st.booleans())
    q = draw(tensor((B, nh, Tq, hs)))
    k, v = draw(tensor((B, nh, Tk, hs))), draw(tensor((B, nh, Tk, hs)))
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)), (q, k, v)


@st.composite
def self_attention(draw):
    B, T, nh, hs = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dropout_p, seed = draw(st.sampled_from([0.0, 0.3])), draw(st.integers(0, 100))
    qkv = draw(tensor((B, T, 3 * nh * hs)))
    return (lambda x: F.self_attention(x, nh, is_causal=True, dropout_p=dropout_p, rng=FixedRandom(seed))), (qkv,)
