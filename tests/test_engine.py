"""The engine: the Tensor API, accumulation, deep graphs, dtypes, no_grad, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from nanograd import Function, Tensor, no_grad
from nanograd import functional as F


def leaf(values, dtype=np.float64) -> Tensor:
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


# ---- the Tensor API ----------------------------------------------------------------------------
def test_python_numbers_and_lists_become_float32_and_float64_stays():
    assert Tensor(3).dtype == np.float32 and Tensor(2.5).dtype == np.float32
    assert Tensor([1, 2]).dtype == np.float32 and Tensor([[1.0], [2.0]]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert Tensor(np.zeros(2, dtype=np.float32)).dtype == np.float32
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64


def test_numpy_scalars_with_an_integer_tensor_follow_numpy_and_never_wrap_round():
    assert (Tensor(np.array([1], np.int32)) + np.int64(2**31)).data.tolist() == [2**31 + 1]
    assert (Tensor(np.array([3], np.uint8)) * np.int64(-1)).data.tolist() == [-3]
    assert (Tensor(np.array([True, False])) + np.int64(2)).data.tolist() == [3, 2]


def test_tensor_attributes():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert x.shape == (2, 3) and x.ndim == 2 and x.device == "cpu" and x.requires_grad
    assert x.grad is None
    assert isinstance(x.numpy(), np.ndarray)
    np.testing.assert_array_equal(x.numpy(), np.arange(6.0).reshape(2, 3))
    assert x.sum().item() == 15.0 and isinstance(x.sum().item(), float)
    assert not Tensor(np.ones(2)).requires_grad


def test_detach_cuts_the_graph():
    x = leaf([1.0, 2.0])
    d = (x * 3).detach()
    assert not d.requires_grad
    np.testing.assert_array_equal(d.data, [3.0, 6.0])
    y = (d * x).sum()  # only the path through x (not through d) reaches x
    y.backward()
    np.testing.assert_allclose(x.grad, [3.0, 6.0])


@pytest.mark.parametrize("leaf_dtype, other_dtype", [(np.float32, np.float32), (np.float64, np.float64),
                                                     (np.float32, np.float64)])
def test_a_leaf_gradient_keeps_the_leaf_shape_and_dtype_also_when_it_accumulates(leaf_dtype, other_dtype):
    """A float64 operand makes the gradient float64 on its way down to a float32 leaf."""
    x = Tensor(np.array([[1.0, 2.0]], leaf_dtype), requires_grad=True)
    w = Tensor(np.array([[0.5, 0.25]], other_dtype))
    for total in (1, 2):
        (x * w).sum().backward()
        assert x.grad.shape == (1, 2) and x.grad.dtype == leaf_dtype
        np.testing.assert_allclose(x.grad, total * w.data)


# ---- gradient values against hand computation ---------------------------------------------------
def test_reused_tensor_accumulates():
    x = leaf([2.0, -3.0])
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [4.0, -6.0])


def test_diamond_accumulates():
    x = leaf([1.5, 0.5])
    a, b = x * 2, x + 1  # L = sum(2x (x + 1)) -> dL/dx = 4x + 2
    (a * b).sum().backward()
    np.testing.assert_allclose(x.grad, [8.0, 4.0])


def test_scalars_on_the_left():
    x = leaf([2.0, 4.0])
    y = 2 - x  # dy/dx = -1
    z = 1 / x  # dz/dx = -1/x^2
    w = 3 * x + 1  # dw/dx = 3
    np.testing.assert_allclose(y.data, [0.0, -2.0])
    np.testing.assert_allclose(z.data, [0.5, 0.25])
    (y + z + w).sum().backward()
    np.testing.assert_allclose(x.grad, -1 - 1 / x.data**2 + 3)


def test_pow_with_a_scalar_exponent():
    x = leaf([2.0, 3.0])
    (x**3).sum().backward()
    np.testing.assert_allclose(x.grad, [12.0, 27.0])


def test_broadcast_input_gets_a_gradient_of_its_own_shape():
    a, b = leaf(np.ones((3, 1))), leaf(np.ones((2, 1, 4)))
    (a * b).sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (2, 1, 4)
    np.testing.assert_allclose(a.grad, np.full((3, 1), 8.0))
    np.testing.assert_allclose(b.grad, np.full((2, 1, 4), 3.0))


def test_bias_broadcast_over_rows_sums_the_row_gradients():
    x, b = leaf(np.zeros((3, 2))), leaf([0.0, 0.0])
    ((x + b) * np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])).sum().backward()
    np.testing.assert_allclose(b.grad, [9.0, 12.0])


def test_repeated_integer_indices_accumulate():
    x = leaf([10.0, 20.0, 30.0])
    x[np.array([0, 0, 2, 0])].sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 0.0, 1.0])


def test_max_routes_the_gradient_to_the_maximum_only():
    x = leaf([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 1, 0], [1, 0, 0]])


def test_max_shares_the_gradient_equally_between_tied_maxima():
    x = leaf([[1.0, 5.0, 5.0], [7.0, 7.0, 7.0], [0.0, 2.0, 1.0]])
    x.max(axis=1).backward(np.array([4.0, 3.0, 2.0]))  # (not all 1: g times the share, not g over it)
    np.testing.assert_allclose(x.grad, [[0, 2, 2], [1, 1, 1], [0, 2, 0]])
    y = leaf([[3.0, -1.0], [3.0, 3.0]])
    y.max().backward(np.array(6.0))
    np.testing.assert_allclose(y.grad, [[2, 0], [2, 2]])


def test_the_max_of_nothing_is_refused_as_in_numpy():
    with pytest.raises(ValueError, match="zero-size array"):
        Tensor(np.ones((2, 0))).max(axis=1)


def test_reductions_over_a_tuple_of_axes():
    x = leaf(np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_allclose(x.sum(axis=(0, 2)).data, x.data.sum(axis=(0, 2)))
    np.testing.assert_allclose(x.mean(axis=(0, -1), keepdims=True).data, x.data.mean(axis=(0, 2), keepdims=True))
    x.mean(axis=(0, 2)).sum().backward()
    np.testing.assert_allclose(x.grad, np.full((2, 3, 4), 1 / 8))


def test_explicit_upstream_gradient():
    x = leaf([1.0, 2.0, 3.0])
    (x * 2).backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_allclose(x.grad, [2.0, 0.0, -2.0])


def test_backward_twice_on_two_graphs_accumulates_into_leaves():
    x = leaf([3.0])
    (x * x).sum().backward()
    (x * 5).sum().backward()
    np.testing.assert_allclose(x.grad, [11.0])


def test_only_leaves_keep_a_gradient_and_zero_grad_clears_it():
    x = leaf([1.0])
    y = x * 3
    (y * y).sum().backward()
    assert y.grad is None
    np.testing.assert_allclose(x.grad, [18.0])
    x.zero_grad()
    assert x.grad is None


@pytest.mark.parametrize("step, expected", [(lambda y: y * 1.0001, 1.0001**5000), (lambda y: y + 0, 1.0)],
                         ids=["mul", "add"])
def test_deep_graph_does_not_hit_the_recursion_limit(step, expected):
    x = leaf([1.0])
    y = x
    for _ in range(5000):
        y = step(y)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [expected])


# ---- no_grad -----------------------------------------------------------------------------------
def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = (x * 2).sum()
        z = F.softmax(x * x)
    assert not y.requires_grad and not z.requires_grad
    np.testing.assert_allclose(y.item(), 6.0)  # the forward still runs
    with pytest.raises(RuntimeError):
        y.backward()
    assert x.grad is None


def test_grad_recording_resumes_after_no_grad_even_after_an_error():
    x = leaf([1.0])
    with pytest.raises(KeyError), no_grad():
        {}["missing"]
    y = (x * 2).sum()
    assert y.requires_grad
    y.backward()
    np.testing.assert_allclose(x.grad, [2.0])


def test_one_no_grad_instance_can_be_nested_inside_itself():
    off = no_grad()
    with off:
        with off:
            pass
        assert not (leaf([1.0]) * 2).requires_grad
    assert (leaf([1.0]) * 2).requires_grad


def test_integer_tensor_times_a_float_is_not_truncated():
    ints = Tensor(np.array([1, 2, 3]))
    np.testing.assert_allclose((ints * 0.5).numpy(), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(ints.mean().item(), 2.0)
    assert (ints + 1).dtype == ints.dtype  # an int keeps the integer dtype


def test_pow_zero_has_a_zero_gradient_even_at_zero():
    x = leaf([0.0, 2.0])
    (x**0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])


@pytest.mark.parametrize("bad", [-1, 3])
def test_ids_out_of_range_are_refused_by_embedding_and_cross_entropy(bad):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.cross_entropy(leaf(np.zeros((2, 3))), Tensor(np.array([0, bad])))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.embedding(Tensor(np.array([bad, 1])), leaf(np.zeros((3, 2))))


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b],
                         ids=["add", "sub", "mul", "div"])
@pytest.mark.parametrize("a, b", [((2, 3), (4,)), ((2, 3, 4), (5, 1, 4)), ((3, 1), (2, 1, 4, 2))])
def test_mismatched_shapes_in_elementwise_ops_name_both_shapes(op, a, b):
    with pytest.raises(ValueError) as info:
        op(Tensor(np.ones(a)), Tensor(np.ones(b)))
    assert str(a) in str(info.value) and str(b) in str(info.value)


@pytest.mark.parametrize("a, b", [((2, 3), (4, 5)), ((3,), (4,)), ((2, 3, 4), (5,)), ((2, 3, 4), (5, 4, 2))],
                         ids=["matrices", "vectors", "matrix-vector", "batch-axes"])
def test_mismatched_shapes_in_matmul_name_both_shapes(a, b):
    with pytest.raises(ValueError) as info:
        Tensor(np.ones(a)) @ Tensor(np.ones(b))
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_backward_on_a_non_scalar_needs_a_gradient():
    with pytest.raises(RuntimeError, match="scalar"):
        (leaf([1.0, 2.0]) * 2).backward()


def test_second_backward_through_a_freed_graph_is_refused():
    x = leaf([1.0])
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError):
        Tensor(np.array([1, 2]), requires_grad=True)


def test_unknown_device():
    with pytest.raises(ValueError, match="tpu"):
        Tensor([1.0]).to("tpu")


def test_reshape_error_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape(4, 2)


# ---- corners found by an API review ------------------------------------------------------------
def test_numpy_integer_axes_reduce_and_differentiate():
    x = leaf(np.arange(6.0).reshape(2, 3))
    (x.sum(axis=np.int64(1)).sum() + x.max(axis=np.int64(0)).sum() + x.mean(axis=np.int64(1)).sum()).backward()
    np.testing.assert_allclose(x.grad, 1 + np.array([[0, 0, 0], [1, 1, 1]]) + 1 / 3)


def test_mean_of_nothing_is_nan_and_a_bad_axis_names_itself():
    assert np.isnan(Tensor(np.ones((2, 0))).mean(axis=1).data).all()
    with pytest.raises(ValueError, match="axis 2"):  # NumPy's AxisError
        Tensor(np.ones((2, 3))).mean(axis=2)


def test_matmul_with_an_empty_inner_axis_gives_zeros():
    a, b = leaf(np.ones((2, 3, 0))), leaf(np.ones((0, 4)))
    out = a @ b
    np.testing.assert_array_equal(out.data, np.zeros((2, 3, 4)))
    out.sum().backward()
    assert a.grad.shape == (2, 3, 0) and b.grad.shape == (0, 4)


def test_transposing_fewer_than_two_axes():
    x = Tensor(np.arange(3.0))
    assert x.T is x and Tensor(1.0).T.shape == ()
    with pytest.raises(ValueError, match="no axes"):
        x.transpose(0, 1)


class Double(Function):
    """z = 2x, with a backward that a test replaces by a wrong one."""

    def forward(self, x):
        return x * 2


@pytest.mark.parametrize("backward, message", [
    (lambda self, g: (g[:1],), r"Double.backward .* shape \(1,\) for an input of shape \(2,\)"),
    (lambda self, g: (2 * g, 2 * g), r"Double.backward returned 2 gradients for 1 inputs"),
], ids=["wrong-shape", "too-many"])
def test_a_backward_that_returns_the_wrong_gradients_is_named(monkeypatch, backward, message):
    monkeypatch.setattr(Double, "backward", backward)
    with pytest.raises(ValueError, match=message):
        Double.apply(leaf([1.0, 2.0])).sum().backward()


def test_no_grad_decorates_without_parentheses():
    @no_grad
    def double(t):
        return t * 2

    assert not double(leaf([1.0])).requires_grad and double.__name__ == "double"


def test_tensors_become_numbers_and_arrays_only_outside_the_graph():
    assert float(Tensor([2.5])) == 2.5
    np.testing.assert_array_equal(np.asarray(Tensor([1.0, 2.0])), [1.0, 2.0])
    assert Tensor([Tensor(1.0), Tensor(2.0)]).shape == (2,)
    with pytest.raises(TypeError, match="requires grad"):
        np.exp(leaf([1.0]))  # would silently leave the graph


# ---- profile -----------------------------------------------------------------------------------
def test_profile_times_each_op_forward_and_backward_and_only_inside_its_block():
    import nanograd

    x = leaf(np.arange(6.0).reshape(2, 3))
    with nanograd.profile() as seconds:
        loss = F.cross_entropy(F.gelu(x * 2.0), np.array([0, 2]))
        loss.backward()
    assert set(seconds) == {f"{op}.{kind}" for op in ("Mul", "Gelu", "CrossEntropy")
                            for kind in ("forward", "backward")}
    assert all(s > 0 for s in seconds.values())
    before = dict(seconds)
    F.gelu(x).sum().backward()  # outside the block: not counted
    assert seconds == before


def test_an_inner_profile_takes_its_ops_and_the_outer_one_the_rest():
    import nanograd

    x = leaf([1.0, 2.0])
    with nanograd.profile() as outer:
        with nanograd.profile() as inner:
            F.gelu(x)
        F.relu(x)
    assert set(inner) == {"Gelu.forward"} and set(outer) == {"Relu.forward"}


def test_an_op_may_take_any_option_name_even_the_profilers_own():
    from nanograd import Function

    class Scale(Function):
        def forward(self, x, method="double"):
            self.factor = 2.0 if method == "double" else 3.0
            return x * self.factor

        def backward(self, g):
            return (g * self.factor,)

    x = leaf([1.0, 2.0])
    y = Scale.apply(x, method="triple")
    y.sum().backward()
    np.testing.assert_array_equal(y.data, [3.0, 6.0])
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])
