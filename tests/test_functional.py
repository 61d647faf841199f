"""nanograd.functional against plain NumPy references: values, numerics, dtypes, and the
properties (normalisation, causality, dropout rates) that gradient checks cannot see."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanograd import Tensor, backend, gradcheck
from nanograd import functional as F
from nanograd.ops import attention as attention_ops
from tests.strategies import FixedRandom


def randn(*shape, seed=0, scale=1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * scale


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- softmax, log_softmax, cross_entropy -------------------------------------------------------
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_rows_sum_to_one_and_match_numpy(axis):
    x = randn(5, 7, 3, scale=10)
    y = F.softmax(Tensor(x), axis=axis).data
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(y, np_softmax(x, axis), rtol=1e-10)


def test_log_softmax_is_the_log_of_softmax():
    x = randn(4, 6)
    np.testing.assert_allclose(F.log_softmax(Tensor(x)).data, np.log(np_softmax(x)), atol=1e-12)


def test_cross_entropy_matches_the_mean_negative_log_likelihood():
    logits, targets = randn(5, 4), np.array([0, 3, 3, 1, 2])
    expected = -np.log(np_softmax(logits)[np.arange(5), targets]).mean()
    assert F.cross_entropy(Tensor(logits), targets).item() == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n():
    logits, targets = randn(3, 4, seed=1), np.array([2, 0, 2])
    x = Tensor(logits, requires_grad=True)
    F.cross_entropy(x, targets).backward()
    np.testing.assert_allclose(x.grad, (np_softmax(logits) - np.eye(4)[targets]) / 3, atol=1e-12)


@settings(deadline=None, max_examples=30)
@given(data=st.data())
def test_embedding_cross_entropy_is_a_lookup_then_cross_entropy(data):
    """The fused bigram loss (one log softmax per table row, gradient from counts) gives the
    values and gradients of embedding followed by cross_entropy, repeated ids included."""
    R, V = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    shape = data.draw(st.sampled_from([(1,), (7,), (3, 5), (4, 16)]))
    id_dtypes = st.sampled_from([np.int64, np.int32, np.uint8, np.uint64])
    idx = data.draw(hnp.arrays(data.draw(id_dtypes), shape, elements=st.integers(0, R - 1)))
    targets = data.draw(hnp.arrays(data.draw(id_dtypes), shape, elements=st.integers(0, V - 1)))
    dtype = data.draw(st.sampled_from([np.float64, np.float32]))
    table = randn(R, V, seed=data.draw(st.integers(0, 99)), scale=4).astype(dtype)
    fused, reference = Tensor(table, requires_grad=True), Tensor(table, requires_grad=True)
    loss = F.embedding_cross_entropy(idx, fused, targets)
    expected = F.cross_entropy(F.embedding(idx, reference).reshape(idx.size, V), targets.reshape(-1))
    (loss * 3.0).backward()
    (expected * 3.0).backward()
    assert loss.dtype == fused.grad.dtype == dtype
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    assert loss.item() == pytest.approx(expected.item(), rel=tolerance, abs=tolerance)  # (a loss of 0 if V is 1)
    np.testing.assert_allclose(fused.grad, reference.grad, rtol=tolerance, atol=tolerance)


@pytest.mark.filterwarnings("error")  # and no warning for it either
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_embedding_cross_entropy_ignores_rows_that_no_id_reads(bad):
    """Like a lookup, which never touches them: a row no id reads changes neither the loss
    nor the other rows' gradients, and gets a zero gradient, whatever it holds."""
    table = randn(4, 3, seed=5)
    table[2] = bad
    idx, targets = np.array([0, 1, 3, 3]), np.array([2, 0, 1, 1])
    fused = Tensor(table, requires_grad=True)
    loss = F.embedding_cross_entropy(idx, fused, targets)
    loss.backward()
    clean = Tensor(np.delete(table, 2, axis=0), requires_grad=True)
    expected = F.embedding_cross_entropy(np.array([0, 1, 2, 2]), clean, targets)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(np.delete(fused.grad, 2, axis=0), clean.grad, atol=1e-12)
    assert (fused.grad[2] == 0).all()


@pytest.mark.parametrize("idx_dtype, targets_dtype", [
    (np.uint8, np.uint8), (np.int8, np.uint64), (np.uint64, np.int32), (np.int64, np.uint64),
])
def test_embedding_cross_entropy_takes_any_integer_ids(idx_dtype, targets_dtype):
    """Narrow ids of a 65-character table (the flat pair index, up to 65 * 65, must not wrap
    round) and mixed signed and unsigned ones (int64 + uint64 would make floats in NumPy)."""
    table = randn(65, 65, seed=3)
    idx, targets = np.array([64, 3, 64], dtype=idx_dtype), np.array([63, 64, 0], dtype=targets_dtype)
    loss = F.embedding_cross_entropy(idx, Tensor(table), targets).item()
    expected = -np.log(np_softmax(table)[idx, targets]).mean()
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("idx, targets, message", [
    (np.array([0, 3]), np.array([0, 1]), "ids must lie in"),
    (np.array([0, 1]), np.array([0, -1]), "targets: ids must lie in"),
    (np.array([0, 1]), np.array([[0, 1]]), "targets of shape"),
    (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), "no ids"),
])
def test_embedding_cross_entropy_refuses_bad_ids(idx, targets, message):
    with pytest.raises(ValueError, match=message):
        F.embedding_cross_entropy(idx, Tensor(randn(3, 4), requires_grad=True), targets)


@pytest.mark.parametrize("C", [1, 2, 65, 1000])
def test_cross_entropy_of_equal_logits_is_log_C(C):
    loss = F.cross_entropy(Tensor(np.full((4, C), 3.7)), np.arange(4) % C)
    assert loss.item() == pytest.approx(math.log(C), abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize("name, fn", [
    ("softmax", F.softmax), ("log_softmax", F.log_softmax),
    ("cross_entropy", lambda x: F.cross_entropy(x, np.array([1, 2]))),
    ("embedding_cross_entropy", lambda x: F.embedding_cross_entropy(np.array([0, 1, 1]), x, np.array([1, 2, 0]))),
])
def test_softmax_family_is_finite_for_huge_logits(name, fn, scale, dtype):
    x = Tensor((np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]]) * scale).astype(dtype), requires_grad=True)
    out = fn(x)
    (out * Tensor(np.ones(out.shape, dtype=dtype))).sum().backward()
    assert np.isfinite(out.data).all(), name
    assert np.isfinite(x.grad).all(), name


def test_softmax_family_matches_numpy_and_passes_gradcheck():
    x, targets = randn(4, 6, seed=2, scale=3), np.array([0, 5, 2, 2])
    p = np_softmax(x)
    np.testing.assert_allclose(F.softmax(Tensor(x)).data, p, atol=1e-12)
    np.testing.assert_allclose(F.log_softmax(Tensor(x)).data, np.log(p), atol=1e-12)
    loss = F.cross_entropy(Tensor(x), targets).item()
    assert loss == pytest.approx(-np.log(p[np.arange(4), targets]).mean(), abs=1e-12)
    for fn in (F.softmax, F.log_softmax, lambda t: F.cross_entropy(t, targets)):
        assert gradcheck(fn, Tensor(x, requires_grad=True))


def test_rows_far_apart_each_get_an_exact_float32_softmax():
    """Each row is shifted by its own max before exp: a row 100 below another (whose exps
    would underflow against the other row's max) is as exact as the other."""
    row = np.array([10.0, 11.0, 12.0])
    x = np.stack([row, row - 100]).astype(np.float32)
    expected = np_softmax(row)
    bound = 4 * float(np.finfo(np.float32).eps)  # (pytest.approx takes Python floats)
    probs, log_probs = F.softmax(Tensor(x)).data, F.log_softmax(Tensor(x)).data
    assert probs.dtype == log_probs.dtype == np.float32
    np.testing.assert_allclose(probs, [expected, expected], rtol=bound)
    np.testing.assert_allclose(log_probs, np.log([expected, expected]), rtol=bound)
    loss = F.cross_entropy(Tensor(x), np.array([0, 2])).item()
    assert loss == pytest.approx(-(np.log(expected[0]) + np.log(expected[2])) / 2, rel=bound)


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax], ids=["softmax", "log_softmax"])
def test_softmax_over_an_empty_axis_is_empty(fn):
    x = Tensor(np.zeros((2, 0)), requires_grad=True)
    out = fn(x, axis=-1)
    assert out.shape == (2, 0)
    out.sum().backward()
    assert x.grad.shape == (2, 0)


def test_cross_entropy_of_no_rows_is_an_error():
    with pytest.raises(ValueError, match="no rows"):
        F.cross_entropy(Tensor(np.zeros((0, 5), np.float32), requires_grad=True), np.zeros(0, np.int64))


def test_huge_logits_give_the_exact_softmax_and_a_huge_finite_loss():
    x = np.array([[1.0, -1.0, 0.5]]) * 1e4
    np.testing.assert_allclose(F.softmax(Tensor(x)).data, [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(F.log_softmax(Tensor(x)).data, [[0.0, -2e4, -0.5e4]])
    assert F.cross_entropy(Tensor(x), np.array([1])).item() == pytest.approx(2e4)


# ---- embedding ---------------------------------------------------------------------------------
def test_embedding_picks_rows_with_the_ids_shape():
    weight = randn(5, 3)
    idx = np.array([[[0, 4]], [[2, 2]]])
    out = F.embedding(idx, Tensor(weight))
    assert out.shape == (2, 1, 2, 3)
    np.testing.assert_array_equal(out.data, weight[idx])


def test_embedding_backward_accumulates_repeated_ids():
    weight = Tensor(randn(5, 3, seed=2), requires_grad=True)
    idx = np.array([[0, 3, 3], [3, 1, 0]])
    g = randn(2, 3, 3, seed=3)
    F.embedding(idx, weight).backward(g)
    onehot = np.eye(5)[idx.reshape(-1)]  # (6, 5): the dense equivalent, onehot @ weight
    np.testing.assert_allclose(weight.grad, onehot.T @ g.reshape(-1, 3), atol=1e-12)
    assert not weight.grad[[2, 4]].any()  # ids never used get no gradient


@pytest.mark.parametrize("V, n_ids", [(10, 50), (5000, 400)], ids=["small-table", "large-table"])
def test_embedding_backward_matches_a_scatter_add(V, n_ids):
    rng = np.random.default_rng(4)
    weight = Tensor(rng.standard_normal((V, 4)), requires_grad=True)
    idx = rng.integers(0, min(V, 40), size=(2, n_ids // 2))  # few distinct ids: many repeats
    g = rng.standard_normal((2, n_ids // 2, 4))
    F.embedding(idx, weight).backward(g)
    expected = np.zeros((V, 4))
    np.add.at(expected, idx.reshape(-1), g.reshape(-1, 4))
    np.testing.assert_allclose(weight.grad, expected, atol=1e-12)


# ---- layer_norm, gelu --------------------------------------------------------------------------
def test_layer_norm_normalises_rows_with_the_default_weight():
    x = Tensor(randn(6, 16, seed=3) * 5 + 2)
    y = F.layer_norm(x, Tensor(np.ones(16))).data
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=-1), 1, atol=1e-4)


def test_layer_norm_scales_and_shifts_over_the_last_axis():
    x, w, b = randn(2, 3, 4), randn(4, seed=1), randn(4, seed=2)
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    out = F.layer_norm(Tensor(x), Tensor(w), Tensor(b)).data
    np.testing.assert_allclose(out, normed * w + b, atol=1e-12)


def test_gelu_is_the_tanh_approximation():
    x = np.linspace(-5, 5, 41)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, expected, atol=1e-12)


def test_gelu_block_by_block_matches_one_piece_and_passes_gradcheck(monkeypatch):
    """On the CPU, GELU runs in blocks of rows (backend.in_blocks): made 2 rows of 4 here."""
    x = randn(3, 5, 4, seed=3, scale=2)
    g = randn(3, 5, 4, seed=4)

    def run():
        t = Tensor(x, requires_grad=True)
        y = F.gelu(t)
        (y * Tensor(g)).sum().backward()
        return y.data, t.grad

    whole = run()
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", 8)
    blocked = run()
    for a, b in zip(blocked, whole):
        np.testing.assert_array_equal(a, b)
    assert gradcheck(F.gelu, Tensor(x, requires_grad=True))


# ---- attention ---------------------------------------------------------------------------------
def naive_attention(q, k, v, causal=True):
    Tq, Tk = q.shape[-2], k.shape[-2]
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if causal:  # query i sees keys j <= i + Tk - Tq
        scores = scores + np.triu(np.full((Tq, Tk), -np.inf), k=Tk - Tq + 1)
    return np_softmax(scores) @ v


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_a_naive_reference(causal):
    q, k, v = randn(2, 3, 5, 4, seed=4), randn(2, 3, 5, 4, seed=5), randn(2, 3, 5, 4, seed=6)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=causal).data
    assert out.shape == (2, 3, 5, 4)
    np.testing.assert_allclose(out, naive_attention(q, k, v, causal), atol=1e-12)


def test_attention_takes_pytorchs_defaults_not_causal_and_no_dropout():
    q, k, v = randn(2, 3, 5, 4, seed=4), randn(2, 3, 5, 4, seed=5), randn(2, 3, 5, 4, seed=6)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data
    np.testing.assert_array_equal(out, F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data)
    np.testing.assert_allclose(out, naive_attention(q, k, v, causal=False), atol=1e-12)
    with pytest.raises(TypeError):  # PyTorch's fourth argument is attn_mask: ours are keyword-only
        F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), 0.1)


def test_causal_attention_never_looks_at_the_future():
    q, k, v = randn(2, 3, 5, 4, seed=4), randn(2, 3, 5, 4, seed=5), randn(2, 3, 5, 4, seed=6)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True).data
    for t in range(5):
        k2, v2 = k.copy(), v.copy()
        k2[:, :, t + 1:], v2[:, :, t + 1:] = 9.0, -9.0  # change the future of position t
        out2 = F.scaled_dot_product_attention(Tensor(q), Tensor(k2), Tensor(v2), is_causal=True).data
        np.testing.assert_allclose(out2[:, :, : t + 1], out[:, :, : t + 1], atol=1e-12)
        if t < 4:
            assert not np.allclose(out2[:, :, t + 1:], out[:, :, t + 1:])  # the future did change


@pytest.mark.parametrize("Tq, Tk", [(5, 5), (7, 7), (4, 9)], ids=["uneven-blocks", "longer", "cached-keys"])
def test_causal_attention_in_chunks_matches_the_naive_reference(monkeypatch, Tq, Tk):
    """Long causal attention runs in chunks of queries (QUERY_CHUNK); made tiny here so that
    small shapes have several: the same values as the reference, the same gradients as one
    chunk."""
    q, k, v = randn(2, 3, Tq, 4, seed=4), randn(2, 3, Tk, 4, seed=5), randn(2, 3, Tk, 4, seed=6)

    def run(chunk: int):
        monkeypatch.setattr(attention_ops, "QUERY_CHUNK", chunk)
        tensors = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*tensors, is_causal=True)
        (out * Tensor(randn(*out.shape, seed=7))).sum().backward()
        return out.data, [t.grad for t in tensors], len(attention_ops._query_chunks(Tq, Tk, True))

    chunked, chunked_grads, chunks = run(2)
    _, whole_grads, one = run(1000)
    assert chunks == -(-Tq // 2) and one == 1
    np.testing.assert_allclose(chunked, naive_attention(q, k, v), atol=1e-12)
    for a, b in zip(chunked_grads, whole_grads):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_causal_attention_is_exact_beside_a_huge_score_in_the_future():
    """A score of 5e3 that the mask hides: the shift before exp is each row's max over the keys
    its query sees, not the hidden 5e3 (which would leave exp(visible - 5e3) = 0 everywhere
    in the row, and 0 / 0)."""
    q, k, v = randn(1, 2, 4, 4, seed=4), randn(1, 2, 4, 4, seed=5), randn(1, 2, 4, 4, seed=6)
    q[..., 0, :], k[..., 3, :] = 50.0, 50.0  # query 0 against key 3 (its future): q.k = 1e4, / sqrt(4)
    for dtype in (np.float32, np.float64):
        out = F.scaled_dot_product_attention(*(Tensor(a.astype(dtype)) for a in (q, k, v)), is_causal=True).data
        np.testing.assert_allclose(out, naive_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spread", [50.0, 200.0], ids=["one-shift", "a-shift-per-row"])
def test_attention_stays_accurate_when_the_rows_of_scores_sit_far_apart(spread):
    """Every score of query 1 sits `spread` below query 0's. Softmax ignores a row's constant,
    so the output is the naive one's; in float32 it stays within 1e-5 of float64, whether
    attention shifts all the scores by one number (a spread under 60) or each row by its max."""
    q, k, v = randn(1, 2, 2, 4, seed=1), randn(1, 2, 3, 4, seed=2), randn(1, 2, 3, 4, seed=3)
    k[..., 0], q[..., 1, 0] = 1.0, -2 * spread  # q.k / sqrt(4) gains -spread in every score of query 1
    out = F.scaled_dot_product_attention(*(Tensor(a.astype(np.float32)) for a in (q, k, v))).data
    np.testing.assert_allclose(out, naive_attention(q, k, v, causal=False), rtol=1e-5, atol=1e-5)


def test_attention_in_chunks_passes_gradcheck_with_dropout(monkeypatch):
    monkeypatch.setattr(attention_ops, "QUERY_CHUNK", 2)
    qkv = Tensor(randn(2, 5, 3 * 2 * 3, seed=8), requires_grad=True)
    assert gradcheck(lambda x: F.self_attention(x, 2, is_causal=True, dropout_p=0.3, rng=FixedRandom(1)), qkv)


def test_self_attention_equals_split_heads_attention():
    B, T, nh, hs = 2, 5, 3, 4
    qkv = Tensor(randn(B, T, 3 * nh * hs, seed=5))
    heads = qkv.reshape(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)
    for causal in (True, False):
        attention = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=causal)
        expected = attention.transpose(1, 2).reshape(B, T, nh * hs)
        np.testing.assert_allclose(F.self_attention(qkv, nh, is_causal=causal).data, expected.data, atol=1e-12)


# ---- dropout -----------------------------------------------------------------------------------
def test_dropout_is_the_identity_in_eval_mode_and_for_p_0():
    x = Tensor(randn(20, 10))
    np.testing.assert_array_equal(F.dropout(x, 0.3, training=False).data, x.data)
    np.testing.assert_array_equal(F.dropout(x, 0.0, training=True).data, x.data)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_zeros_about_p_and_scales_the_rest(p):
    x = Tensor(np.ones((200, 100)), requires_grad=True)
    out = F.dropout(x, p, training=True)
    y = out.data
    assert abs((y == 0).mean() - p) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p))
    out.sum().backward()
    np.testing.assert_allclose(x.grad, y)  # d(out)/dx is the same mask times 1/(1-p)


def test_dropout_with_the_same_seed_drops_the_same_entries():
    x = Tensor(np.ones((10, 10)))
    a = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    b = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    np.testing.assert_array_equal(a, b)


# ---- concat, stack, where, masked_fill ---------------------------------------------------------
def test_stack_matches_numpy():
    a = randn(2, 3)
    np.testing.assert_array_equal(F.stack([Tensor(a), Tensor(a * 2)], axis=1).data, np.stack([a, a * 2], axis=1))


def test_concat_of_several_sizes_sends_each_input_its_slice_of_the_gradient():
    xs = [Tensor(randn(2, n, seed=n), requires_grad=True) for n in (2, 0, 3, 1)]
    out = F.concat(xs, axis=1)
    np.testing.assert_array_equal(out.data, np.concatenate([x.data for x in xs], axis=1))
    g = np.arange(12.0).reshape(2, 6)
    out.backward(g)
    for x, expected in zip(xs, (g[:, 0:2], g[:, 2:2], g[:, 2:5], g[:, 5:6])):
        np.testing.assert_array_equal(x.grad, expected)


def test_where_picks_elementwise_and_sends_each_gradient_to_its_side():
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([-1.0, -2.0, -3.0]), requires_grad=True)
    cond = np.array([True, False, True])
    out = F.where(cond, a, b)
    np.testing.assert_array_equal(out.data, [1.0, -2.0, 3.0])
    out.sum().backward()
    np.testing.assert_array_equal(a.grad, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(b.grad, [0.0, 1.0, 0.0])


def test_masked_fill_with_a_broadcast_mask():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    out = F.masked_fill(x, np.array([False, True, False]), -9.0)
    np.testing.assert_array_equal(out.data, [[0.0, -9.0, 2.0], [3.0, -9.0, 5.0]])
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])


# ---- corners found by an API review ------------------------------------------------------------
def test_float16_softmax_shifts_each_row():
    x = np.array([[0.0, 1.0], [-30.0, -29.0]], np.float16)  # e^-30 underflows in float16
    expected = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    np.testing.assert_allclose(F.softmax(Tensor(x)).data.astype(float), [expected, expected], rtol=1e-3)
    assert np.isfinite(F.log_softmax(Tensor(x)).data).all()
    assert np.isfinite(F.cross_entropy(Tensor(x), [0, 1]).data)


def test_relu_of_minus_infinity_is_zero_and_nan_stays():
    np.testing.assert_array_equal(F.relu(Tensor(np.array([-np.inf, -1.0, 2.0, np.nan]))).data, [0.0, 0.0, 2.0, np.nan])


def test_where_takes_two_numbers_and_names_bad_shapes():
    np.testing.assert_array_equal(F.where(np.array([True, False]), 1.0, 0.0).data, [1.0, 0.0])
    with pytest.raises(ValueError, match="where"):
        F.where(np.array([True, False]), Tensor(np.ones(3)), 0.0)


def test_layer_norm_and_embedding_check_their_parameters():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="bias of shape"):
        F.layer_norm(x, Tensor(np.ones(3)), Tensor(np.ones(4)))
    with pytest.raises(ValueError, match="last axis"):
        F.layer_norm(Tensor(np.ones((2, 0))), Tensor(np.ones(0)))
    with pytest.raises(ValueError, match=r"\(V, C\) table"):
        F.embedding([0, 1], Tensor(np.ones(3), requires_grad=True))
