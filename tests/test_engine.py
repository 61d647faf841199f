"""The engine: accumulation, deep graphs, numerics, dtypes, no_grad, and its error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanograd import Tensor, no_grad
from nanograd import functional as F


def leaf(values, dtype=np.float64) -> Tensor:
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


# ---- gradient accumulation ---------------------------------------------------------------------
def test_reused_tensor_accumulates():
    x = leaf([2.0, -3.0])
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [4.0, -6.0])


def test_diamond_accumulates():
    x = leaf([1.5, 0.5])
    a, b = x * 2, x + 1  # L = sum(2x (x + 1)) -> dL/dx = 4x + 2
    (a * b).sum().backward()
    np.testing.assert_allclose(x.grad, 4 * x.data + 2)


def test_backward_twice_accumulates_into_leaves():
    x = leaf([3.0])
    (x * x).sum().backward()
    (x * 5).sum().backward()
    np.testing.assert_allclose(x.grad, [11.0])


def test_retain_graph_allows_a_second_backward_that_accumulates():
    x = leaf([1.0, 2.0])
    loss = (x * x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * 3 * x.data**2)


def test_deep_graph_does_not_hit_the_recursion_limit():
    x = leaf([1.0])
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001**5000])


def test_broadcast_input_gets_a_gradient_of_its_own_shape():
    a, b = leaf(np.ones((3, 1))), leaf(np.ones((2, 1, 4)))
    (a * b).sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (2, 1, 4)
    np.testing.assert_allclose(a.grad, np.full((3, 1), 8.0))
    np.testing.assert_allclose(b.grad, np.full((2, 1, 4), 3.0))


def test_explicit_upstream_gradient():
    x = leaf([1.0, 2.0, 3.0])
    (x * 2).backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_allclose(x.grad, [2.0, 0.0, -2.0])


def test_intermediate_tensors_keep_no_grad_but_leaves_do():
    x = leaf([1.0])
    y = x * 3
    (y * y).sum().backward()
    assert y.grad is None and x.grad is not None
    x.zero_grad()
    assert x.grad is None


# ---- numerics ----------------------------------------------------------------------------------
def test_softmax_rows_sum_to_one():
    x = Tensor(np.random.default_rng(0).standard_normal((5, 7)) * 10)
    np.testing.assert_allclose(F.softmax(x).data.sum(axis=-1), 1.0)
    np.testing.assert_allclose(F.softmax(x, axis=0).data.sum(axis=0), 1.0)


@pytest.mark.parametrize("C", [1, 2, 65, 1000])
def test_cross_entropy_of_equal_logits_is_log_C(C):
    loss = F.cross_entropy(Tensor(np.full((4, C), 3.7)), np.arange(4) % C)
    assert abs(loss.item() - math.log(C)) < 1e-6


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_softmax_family_is_finite_for_huge_logits(scale):
    data = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]]) * scale
    for dtype in (np.float32, np.float64):
        for fn in (F.softmax, F.log_softmax, lambda x: F.cross_entropy(x, np.array([1, 2]))):
            x = Tensor(data.astype(dtype), requires_grad=True)
            out = fn(x)
            out.sum().backward()
            assert np.isfinite(out.data).all() and np.isfinite(x.grad).all()
    ce = F.cross_entropy(Tensor(data), data.argmin(axis=1))
    assert 1e3 < ce.item() < np.inf  # the least likely class: a huge, finite loss, not inf or nan


@pytest.mark.parametrize("fn", [
    lambda x: x * 0.5 + 1, lambda x: x**2, lambda x: 2 / (x + 3), lambda x: x.exp().log(), lambda x: F.gelu(x),
    lambda x: F.softmax(x), lambda x: F.log_softmax(x), lambda x: (x * x + 1).sqrt(),
    lambda x: F.layer_norm(x, Tensor(np.ones(4, dtype=np.float32))), lambda x: x.mean(axis=0),
    lambda x: F.cross_entropy(x, np.array([0, 1, 2])), lambda x: x @ x.T, lambda x: x.max(axis=1).tanh(),
])
def test_float32_stays_float32_forward_and_backward(fn):
    x = Tensor(np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    out = fn(x)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32


def test_python_numbers_and_lists_become_float32_and_float64_stays():
    assert Tensor(3).dtype == np.float32 and Tensor([1, 2]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert Tensor(np.arange(3)).dtype.kind == "i"  # token ids stay integers


def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    assert (x * 2).requires_grad  # recording is back on afterwards


# ---- errors ------------------------------------------------------------------------------------
def test_mismatched_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        Tensor(np.ones((2, 3))) + Tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))


def test_backward_on_a_non_scalar_needs_a_gradient():
    with pytest.raises(RuntimeError, match=r"scalar.*\(2,\)"):
        (leaf([1.0, 2.0]) * 2).backward()


def test_second_backward_through_a_freed_graph_is_refused():
    x = leaf([1.0])
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="int"):
        Tensor(np.array([1, 2]), requires_grad=True)


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Tensor([1.0]).to("tpu")


def test_reshape_error_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape(4, 2)


# ---- fused ops against plain references ---------------------------------------------------------
def test_embedding_backward_accumulates_repeated_ids():
    rng = np.random.default_rng(2)
    weight = Tensor(rng.standard_normal((5, 3)), requires_grad=True)
    idx = np.array([[0, 3, 3], [3, 1, 0]])
    g = rng.standard_normal((2, 3, 3))
    F.embedding(idx, weight).backward(g)
    onehot = np.eye(5)[idx.reshape(-1)]  # (6, 5)
    np.testing.assert_allclose(weight.grad, onehot.T @ g.reshape(-1, 3))


def test_layer_norm_normalises_rows():
    x = Tensor(np.random.default_rng(3).standard_normal((6, 16)) * 5 + 2)
    y = F.layer_norm(x, Tensor(np.ones(16))).data
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=-1), 1, atol=1e-4)


def test_attention_matches_a_naive_reference_and_is_causal():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    scores = q @ k.swapaxes(-1, -2) / 2.0 + np.triu(np.full((5, 5), -np.inf), k=1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    expected = weights / weights.sum(-1, keepdims=True) @ v
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data
    np.testing.assert_allclose(out, expected, atol=1e-12)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 3:], v2[:, :, 3:] = 9.0, -9.0  # change the future of position 2
    out2 = F.scaled_dot_product_attention(Tensor(q), Tensor(k2), Tensor(v2)).data
    np.testing.assert_allclose(out2[:, :, :3], out[:, :, :3], atol=1e-12)


def test_self_attention_equals_split_heads_attention():
    rng = np.random.default_rng(5)
    B, T, nh, hs = 2, 5, 3, 4
    qkv = Tensor(rng.standard_normal((B, T, 3 * nh * hs)))
    heads = qkv.reshape(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(heads[0], heads[1], heads[2]).transpose(1, 2).reshape(B, T, nh * hs)
    np.testing.assert_allclose(F.self_attention(qkv, nh).data, expected.data, atol=1e-12)


def test_dropout():
    x = Tensor(np.ones((200, 100)))
    assert F.dropout(x, 0.3, training=False) is x
    y = F.dropout(x, 0.3, training=True).data
    assert abs((y == 0).mean() - 0.3) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.7)
    with pytest.raises(ValueError):
        F.dropout(x, 1.0)
