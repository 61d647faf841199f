"""Every differentiable op's hand-written backward, checked against finite differences.

One test walks a table of ops; for each, hypothesis draws shapes (with size-1 axes and
broadcasting) and values, and nanograd.gradcheck compares the analytic gradient of
sum(op(inputs) * R), for a random R, with central differences in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanograd import Tensor, gradcheck
from nanograd import functional as F
from tests.strategies import away_from_zero, broadcast_pair, distinct_tensor, shapes, tensor


def binary(fn, right=None):
    """An op of two broadcasting tensors; `right` overrides the values of the second."""

    @st.composite
    def draw(draw_):
        a_shape, b_shape = draw_(broadcast_pair())
        a = draw_(tensor(a_shape))
        b = draw_(tensor(b_shape, right) if right is not None else tensor(b_shape))
        return fn, (a, b)

    return draw()


def unary(fn, elements=None, shape=None):
    @st.composite
    def draw(draw_):
        x_shape = draw_(shape or shapes())
        x = draw_(tensor(x_shape, elements) if elements is not None else tensor(x_shape))
        return fn, (x,)

    return draw()


@st.composite
def reduction(draw, method):
    shape = draw(shapes())
    x = draw(distinct_tensor(shape) if method == "max" else tensor(shape))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.just(tuple(range(len(shape))))))
    keepdims = draw(st.booleans())
    return (lambda x: getattr(x, method)(axis=axis, keepdims=keepdims)), (x,)


@st.composite
def movement(draw):
    shape = draw(shapes(min_dims=2))
    x = draw(tensor(shape))
    kind = draw(st.sampled_from(["reshape", "transpose", "permute", "slice", "int-array"]))
    if kind == "reshape":
        return (lambda x: x.reshape(-1, shape[-1]).reshape(shape[::-1])), (x,)
    if kind == "transpose":
        return (lambda x: x.transpose(0, -1)), (x,)
    if kind == "permute":
        axes = draw(st.permutations(list(range(len(shape)))))
        return (lambda x: x.permute(*axes)), (x,)
    if kind == "slice":
        return (lambda x: x[..., ::2][:1]), (x,)
    picks = draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=6))  # repeats accumulate
    return (lambda x: x[np.array(picks)]), (x,)


@st.composite
def matmul(draw):
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch_a, batch_b = draw(broadcast_pair(max_dims=2))
    kind = draw(st.sampled_from(["2d", "batched", "batched@2d", "vector@matrix", "matrix@vector", "dot"]))
    a_shape, b_shape = {"2d": ((n, k), (k, m)), "batched": (batch_a + (n, k), batch_b + (k, m)),
                        "batched@2d": (batch_a + (n, k), (k, m)), "vector@matrix": ((k,), (k, m)),
                        "matrix@vector": (batch_a + (n, k), (k,)), "dot": ((k,), (k,))}[kind]
    return (lambda a, b: a @ b), (draw(tensor(a_shape)), draw(tensor(b_shape)))


@st.composite
def softmaxes(draw, fn):
    shape = draw(shapes())
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return (lambda x: fn(x, axis=axis)), (draw(tensor(shape, st.floats(-5, 5))),)


@st.composite
def cross_entropy(draw):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    targets = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return (lambda x: F.cross_entropy(x, targets)), (draw(tensor((n, c), st.floats(-5, 5))),)


@st.composite
def embedding(draw):
    v, c = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    idx_shape = draw(shapes(max_dims=2))
    idx = np.array(draw(st.lists(st.integers(0, v - 1), min_size=int(np.prod(idx_shape)),
                                 max_size=int(np.prod(idx_shape))))).reshape(idx_shape)
    return (lambda w: F.embedding(idx, w)), (draw(tensor((v, c))),)


@st.composite
def layer_norm(draw):
    shape = draw(shapes(max_side=5).filter(lambda s: s[-1] > 1))
    x = draw(tensor(shape, st.floats(-3, 3)))
    weight, bias = draw(tensor(shape[-1:])), draw(tensor(shape[-1:]))
    if draw(st.booleans()):
        return (lambda x, w, b: F.layer_norm(x, w, b)), (x, weight, bias)
    return (lambda x, w: F.layer_norm(x, w)), (x, weight)


class FixedRandom:
    """A stand-in generator that returns the same uniform numbers each call, so dropout's mask
    is the same in the analytic pass and in every finite-difference evaluation."""

    def __init__(self, seed):
        self.seed = seed

    def random(self, shape, dtype):
        return np.random.default_rng(self.seed).random(shape).astype(dtype)


@st.composite
def dropout(draw):
    p, seed = draw(st.floats(0.0, 0.9)), draw(st.integers(0, 100))
    return (lambda x: F.dropout(x, p, True, rng=FixedRandom(seed))), (draw(tensor(draw(shapes()))),)


@st.composite
def join(draw, fn):
    shape = draw(shapes(max_dims=3))
    axis = draw(st.integers(0, len(shape) - 1))
    xs = [draw(tensor(shape)) for _ in range(draw(st.integers(1, 3)))]
    return (lambda *xs: fn(list(xs), axis=axis)), tuple(xs)


@st.composite
def where(draw, masked_fill=False):
    shape = draw(shapes())
    cond = draw(st.lists(st.booleans(), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    cond = np.array(cond).reshape(shape)
    if masked_fill:
        return (lambda x: F.masked_fill(x, cond, -1.5)), (draw(tensor(shape)),)
    return (lambda a, b: F.where(cond, a, b)), (draw(tensor(shape)), draw(tensor(shape[-1:])))


@st.composite
def attention(draw):
    B, nh, hs = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Tk = draw(st.integers(1, 4))
    Tq = draw(st.integers(1, Tk))
    causal = draw(st.booleans())
    q = draw(tensor((B, nh, Tq, hs)))
    k, v = draw(tensor((B, nh, Tk, hs))), draw(tensor((B, nh, Tk, hs)))
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal)), (q, k, v)


@st.composite
def self_attention(draw):
    B, T, nh, hs = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dropout_p, seed = draw(st.sampled_from([0.0, 0.3])), draw(st.integers(0, 100))
    qkv = draw(tensor((B, T, 3 * nh * hs)))
    return (lambda x: F.self_attention(x, nh, dropout=dropout_p, rng=FixedRandom(seed))), (qkv,)


OPS = {
    "add": binary(lambda a, b: a + b),
    "sub": binary(lambda a, b: a - b),
    "mul": binary(lambda a, b: a * b),
    "div": binary(lambda a, b: a / b, right=away_from_zero()),
    "scalar-ops": unary(lambda x: (2 - x) * 3 + 1 / (x + 5) - x / 4),
    "neg": unary(lambda x: -x),
    "pow": unary(lambda x: x**3 + x**2),
    "pow-fractional": unary(lambda x: x**0.5, st.floats(0.2, 3)),
    "exp": unary(lambda x: x.exp()),
    "log": unary(lambda x: x.log(), st.floats(0.2, 3)),
    "tanh": unary(lambda x: x.tanh()),
    "sqrt": unary(lambda x: x.sqrt(), st.floats(0.2, 3)),
    "relu": unary(lambda x: x.relu(), away_from_zero()),
    "F.relu": unary(F.relu, away_from_zero()),
    "gelu": unary(F.gelu, st.floats(-4, 4)),
    "sum": reduction("sum"),
    "mean": reduction("mean"),
    "max": reduction("max"),
    "movement": movement(),
    "matmul": matmul(),
    "softmax": softmaxes(F.softmax),
    "log_softmax": softmaxes(F.log_softmax),
    "cross_entropy": cross_entropy(),
    "embedding": embedding(),
    "layer_norm": layer_norm(),
    "dropout": dropout(),
    "concat": join(F.concat),
    "stack": join(F.stack),
    "where": where(),
    "masked_fill": where(masked_fill=True),
    "scaled_dot_product_attention": attention(),
    "self_attention": self_attention(),
}


@pytest.mark.parametrize("name", list(OPS))
# the device fixture only names a backend, so sharing it across examples is safe
@settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_gradient_matches_finite_differences(name, device, data):
    fn, inputs = data.draw(OPS[name], label=name)
    assert gradcheck(fn, *(x.to(device) for x in inputs))


def test_gradcheck_catches_a_wrong_gradient_and_names_the_element():
    x = Tensor(np.array([[0.5, -1.0], [2.0, 0.3]]), requires_grad=True)
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    # detach() hides x's second use from the graph: the analytic gradient misses a term
    with pytest.raises(AssertionError, match=r"input 0 .*shape \(2, 2\).*element \(\d, \d\).*analytic .* numerical"):
        gradcheck(lambda x, w: x * x.detach() * w, x, w)


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2, Tensor(np.ones(3, dtype=np.float32), requires_grad=True))
