"""Every differentiable op's hand-written backward, checked against finite differences.

One test walks a table of ops; for each, hypothesis draws shapes (0 to 4 axes, size-1 and
size-0 axes, operands that broadcast) and values, and nanograd.gradcheck compares the
analytic gradient of sum(op(inputs) * R), for a random R, with central differences in
float64. Two more walk the same table for properties every op shares: float32 stays float32,
and a second backward through a retained graph adds the same gradient again. The strategies
live in tests/strategies.py. The last tests check that gradcheck itself can fail.

Whether these tests catch a wrong backward is itself checked: `python tests/mutate_backward.py`
plants one-token bugs in the ops' backward code and lists the ones no test notices.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanograd import Function, Tensor, gradcheck
from nanograd import functional as F
from tests import strategies as S

OPS = {
    # arithmetic, with broadcasting between the two operands
    "add": S.binary(lambda a, b: a + b),
    "sub": S.binary(lambda a, b: a - b),
    "mul": S.binary(lambda a, b: a * b),
    "div": S.binary(lambda a, b: a / b, right=S.away_from_zero()),
    "neg": S.unary(lambda x: -x),
    # Python numbers on either side
    "scalar-add-sub-mul": S.unary(lambda x: (2 - x) * 3 + (x + 1.5) * 0.5 - 4),
    "scalar-rdiv": S.unary(lambda x: 1 / x, S.away_from_zero()),
    "scalar-div": S.unary(lambda x: x / 4 + 2 / (x + 5)),
    "numpy-scalars": S.unary(lambda x: np.float64(0.5) * x - np.int32(1) + x / np.int64(4)),
    "reused-input": S.unary(lambda x: x * x + (x * 2) * (x + 1)),
    # powers with a scalar exponent
    "pow-integer": S.unary(lambda x: x**3 + x**2 + x**1),
    "pow-fractional": S.unary(lambda x: x**0.5 + x**1.5, S.positive()),
    "pow-negative": S.unary(lambda x: x**-1 + x**-2, S.away_from_zero(0.3, 2.0)),
    # elementwise functions
    "exp": S.unary(lambda x: x.exp()),
    "log": S.unary(lambda x: x.log(), S.positive()),
    "tanh": S.unary(lambda x: x.tanh()),
    "sqrt": S.unary(lambda x: x.sqrt(), S.positive()),
    "relu": S.unary(lambda x: x.relu(), S.away_from_zero()),
    "F.relu": S.unary(F.relu, S.away_from_zero()),
    "gelu": S.unary(F.gelu, st.floats(-4, 4)),
    # reductions over None, an int or a tuple of axes, with and without keepdims
    "sum": S.reduction("sum"),
    "mean": S.reduction("mean"),
    "max": S.reduction("max"),
    # movement
    "reshape": S.reshape(),
    "transpose": S.transpose(),
    "permute": S.permute(),
    "getitem-slices": S.basic_index(),
    "getitem-int-array": S.array_index(),
    "concat": S.concat(),
    "stack": S.stack(),
    # linear algebra
    "matmul": S.matmul(),
    # functional
    "softmax": S.softmaxes(F.softmax),
    "log_softmax": S.softmaxes(F.log_softmax),
    "cross_entropy": S.cross_entropy(),
    "embedding": S.embedding(),
    "embedding_cross_entropy": S.embedding_cross_entropy(),
    "layer_norm": S.layer_norm(),
    "dropout": S.dropout(),
    "where": S.where(),
    "masked_fill": S.masked_fill(),
    "scaled_dot_product_attention": S.attention(),
    "self_attention": S.self_attention(),
}


def leaf(shape, seed=0) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


# Tighter than gradcheck's defaults (atol 1e-5, rtol 1e-3): in float64 with eps = 1e-6 the central
# differences of these ops are good to ~1e-8, so a backward that is off by 0.01% still fails.
TOLERANCE = {"atol": 1e-6, "rtol": 1e-5}


@pytest.mark.parametrize("name", list(OPS))
# the device fixture only names a backend, so sharing it across examples is safe
@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_gradient_matches_finite_differences(name, device, data):
    fn, inputs = data.draw(OPS[name], label=name)
    assert gradcheck(fn, *(x.to(device) for x in inputs), **TOLERANCE)


@pytest.mark.parametrize("name", list(OPS))
@settings(deadline=None, max_examples=5)
@given(data=st.data())
def test_float32_inputs_give_float32_outputs_and_gradients(name, data):
    fn, inputs = data.draw(OPS[name], label=name)
    inputs = [Tensor(x.data.astype(np.float32), requires_grad=True) for x in inputs]
    out = fn(*inputs)
    assert out.dtype == np.float32
    (out * 0.5).sum().backward()
    assert [x.grad.dtype for x in inputs] == [np.float32] * len(inputs)


@pytest.mark.parametrize("name", list(OPS))
@settings(deadline=None, max_examples=5)
@given(data=st.data())
def test_a_second_backward_with_retain_graph_doubles_the_gradient(name, data):
    fn, inputs = data.draw(OPS[name], label=name)
    out = fn(*inputs)
    loss = (out * Tensor(np.random.default_rng(0).standard_normal(out.shape))).sum()
    loss.backward(retain_graph=True)
    first = [x.grad.copy() for x in inputs]
    loss.backward()
    for i, (x, g) in enumerate(zip(inputs, first)):
        np.testing.assert_allclose(x.grad, 2 * g, rtol=1e-12, atol=1e-12, err_msg=f"input {i}")


# Matmul's backward takes a batched product's rows together where one side is a matrix, and
# reduces broadcast batch axes: every axis a size of its own, batches on one side or both.
@pytest.mark.parametrize("a_shape, b_shape", [((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 1, 4, 5), (2, 5, 6))],
                         ids=["batched@batched", "batched@matrix", "broadcast-batches"])
def test_matmul_gradient_with_every_axis_of_its_own_size(a_shape, b_shape):
    assert gradcheck(lambda a, b: a @ b, leaf(a_shape, seed=1), leaf(b_shape, seed=2), **TOLERANCE)


# Attention's backward swaps axes (keys with queries, heads with time): with the small sizes that
# hypothesis draws, two of B, nh, T, hs are often equal or 1, where a swap of the wrong pair
# goes unseen. Here every axis has a size of its own, and the keys outnumber the queries (a cache).
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("Tq, Tk", [(5, 5), (3, 5)], ids=["self", "cached-keys"])
def test_attention_gradient_with_every_axis_of_its_own_size(causal, Tq, Tk):
    B, nh, hs = 2, 3, 4
    q, k, v = leaf((B, nh, Tq, hs), seed=1), leaf((B, nh, Tk, hs), seed=2), leaf((B, nh, Tk, hs), seed=3)
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), q, k, v, **TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_self_attention_gradient_with_every_axis_of_its_own_size(causal):
    B, T, nh, hs = 2, 5, 3, 4
    assert gradcheck(lambda qkv: F.self_attention(qkv, nh, is_causal=causal), leaf((B, T, 3 * nh * hs)), **TOLERANCE)


# ---- gradcheck must be able to fail --------------------------------------------------------------
class TripleWithAWrongGradient(Function):
    """z = 3x, whose backward is right everywhere except at one element, which gets +1."""

    def forward(self, x, wrong_at):
        self.wrong_at = wrong_at
        return 3 * x

    def backward(self, g):
        dx = 3 * g
        dx[self.wrong_at] += 1.0
        return (dx,)


def test_gradcheck_passes_a_right_gradient_and_leaves_the_inputs_alone():
    x = leaf((2, 3))
    before = x.data.copy()
    assert gradcheck(lambda x: (x * x).sum(axis=1), x) is True
    np.testing.assert_array_equal(x.data, before)  # the perturbations were undone
    assert x.grad is None


def test_gradcheck_skips_inputs_that_do_not_require_a_gradient():
    x, constant = leaf((3,)), Tensor(np.array([1.0, -2.0, 0.5]))
    assert gradcheck(lambda x, c: x * c, x, constant) is True
    assert constant.grad is None


def test_gradcheck_names_the_input_and_the_wrong_element():
    x = leaf((2, 3))
    with pytest.raises(AssertionError, match=r"input 0\b.*\(1, 2\).*analytic.*numerical"):
        gradcheck(lambda x: TripleWithAWrongGradient.apply(x, wrong_at=(1, 2)), x)


def test_gradcheck_names_the_second_input_when_only_it_is_wrong():
    a, b = leaf((3,), seed=1), leaf((3,), seed=2)
    with pytest.raises(AssertionError, match=r"input 1\b.*\(2,\)"):
        gradcheck(lambda a, b: a * TripleWithAWrongGradient.apply(b, wrong_at=2), a, b)


def test_gradcheck_catches_a_gradient_missing_through_detach():
    x = Tensor(np.array([[0.5, -1.0], [2.0, 0.3]]), requires_grad=True)
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    # detach() hides x's second use from the graph: the analytic gradient misses a term
    with pytest.raises(AssertionError, match=r"input 0\b.*\(\d, \d\).*analytic.*numerical"):
        gradcheck(lambda x, w: x * x.detach() * w, x, w)


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2, Tensor(np.ones(3, dtype=np.float32), requires_grad=True))
