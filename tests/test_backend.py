"""The NumPy/CuPy backend: device errors, the static guard for the GPU path, and NumPy vs
CuPy agreement (these skip, with the reason, where CuPy or a GPU is missing)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import nanograd
from nanograd import Tensor, backend
from nanograd import functional as F

NANOGRAD = Path(nanograd.__file__).parent
# Files whose code touches tensor data: they must reach NumPy or CuPy only through
# backend.array_module(...), never by importing numpy, or the GPU path silently breaks.
DEVICE_AGNOSTIC = sorted(NANOGRAD.glob("ops/*.py")) + [NANOGRAD / "functional.py", NANOGRAD / "optim.py"]


@pytest.mark.parametrize("path", DEVICE_AGNOSTIC, ids=lambda p: str(p.relative_to(NANOGRAD)))
def test_ops_never_import_numpy_directly(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        offenders = [n for n in names if n.split(".")[0] in ("numpy", "cupy")]
        assert not offenders, (
            f"{path.name}:{node.lineno} imports {offenders[0]}; use backend.array_module(x) instead"
        )


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Tensor([1.0]).to("tpu")


def test_cuda_without_cupy_or_gpu_says_which():
    ok, why = backend.cuda_status()
    if ok:
        pytest.skip("a GPU is present: nothing is missing")
    with pytest.raises(RuntimeError, match="CuPy|CUDA"):
        Tensor([1.0]).to("cuda")
    assert why


def test_device_names_are_normalised():
    assert backend.check_device("CPU") == "cpu"
    assert Tensor([1.0]).device == "cpu"


@pytest.mark.parametrize("shape", [(5,), (7, 3), (2, 3, 4)])
@pytest.mark.parametrize("block", [1, 4, 6, 1000])
def test_in_blocks_covers_every_element_once_with_whole_rows(monkeypatch, shape, block):
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", block)
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    out = np.zeros_like(x)
    widths = set()

    def double(src, dst):
        widths.add(src.shape[-1] if src.ndim > 1 else 1)
        dst += 2 * src

    backend.in_blocks(double, x, out)
    np.testing.assert_array_equal(out, 2 * x)
    assert widths == {shape[-1] if len(shape) > 1 else 1} or x.size <= block


def test_in_blocks_runs_once_on_a_non_contiguous_array(monkeypatch):
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", 2)
    out = np.zeros((4, 3)).T  # a transposed view: reshaping it would copy, and the writes be lost
    calls = []
    backend.in_blocks(lambda o: (calls.append(o.shape), o.fill(1.0)), out)
    assert calls == [(3, 4)] and (out == 1).all()


@pytest.mark.parametrize("one_hot_max", [backend.ONE_HOT_MAX_ELEMENTS, 0], ids=["one-hot", "sorted"])
def test_scatter_add_rows_accumulates_repeats_like_add_at(monkeypatch, one_hot_max):
    monkeypatch.setattr(backend, "ONE_HOT_MAX_ELEMENTS", one_hot_max)  # both strategies
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 5, 40)
    values = rng.standard_normal((40, 3))
    expected = np.zeros((5, 3))
    np.add.at(expected, rows, values)
    out = np.zeros((5, 3))
    backend.scatter_add_rows(out, rows, values)
    np.testing.assert_allclose(out, expected)


def _small_gpt_loss_and_grads(device: str):
    from gpt.model import GPT, GPTConfig

    nanograd.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)).to(device)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 13, (3, 8)), rng.integers(0, 13, (3, 8))
    _, loss = model(backend.to_device(x, device), backend.to_device(y, device))
    loss.backward()
    return loss.item(), {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()}


def test_numpy_and_cupy_give_the_same_gpt_loss_and_gradients(cuda):
    loss_cpu, grads_cpu = _small_gpt_loss_and_grads("cpu")
    loss_gpu, grads_gpu = _small_gpt_loss_and_grads("cuda")
    assert abs(loss_cpu - loss_gpu) < 1e-5
    for name in grads_cpu:
        np.testing.assert_allclose(grads_gpu[name], grads_cpu[name], rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("op", [
    lambda x: F.softmax(x), lambda x: F.log_softmax(x), lambda x: F.gelu(x), lambda x: (x * x).sum(axis=1),
    lambda x: F.layer_norm(x, Tensor(np.ones(x.shape[-1], dtype=np.float64), requires_grad=True).to(x.device)),
], ids=["softmax", "log_softmax", "gelu", "square-sum", "layer_norm"])
def test_ops_agree_across_backends(cuda, op):
    data = np.random.default_rng(2).standard_normal((4, 6))
    x_cpu = Tensor(data, requires_grad=True)
    x_dev = Tensor(backend.to_device(data, cuda), requires_grad=True)
    out_cpu, out_dev = op(x_cpu), op(x_dev)
    np.testing.assert_allclose(backend.to_numpy(out_dev.data), out_cpu.data, rtol=1e-10, atol=1e-12)
    out_cpu.sum().backward()
    out_dev.sum().backward()
    np.testing.assert_allclose(backend.to_numpy(x_dev.grad), x_cpu.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape, n", [((4, 3, 5), 2), ((4, 3, 5), 1), ((6,), 1), ((0, 3), 1), ((2, 0), 1)])
def test_sum_leading_axes_matches_a_plain_sum(device, shape, n):
    """The bias-gradient sum (a matrix-vector product, on either device) against NumPy's sum."""
    data = np.random.default_rng(3).standard_normal(shape)
    total = backend.sum_leading_axes(backend.to_device(data, device), n)
    assert total.shape == shape[n:]
    np.testing.assert_allclose(backend.to_numpy(total), data.sum(axis=tuple(range(n))), rtol=1e-12, atol=1e-12)


def test_dropout_takes_a_numpy_generator_on_any_device(device):
    """A seeded NumPy generator gives the same mask whatever the tensor's device."""
    x = Tensor(np.ones((3, 8)), requires_grad=True).to(device)
    y = F.dropout(x, 0.5, True, rng=np.random.default_rng(4))
    expected = (np.random.default_rng(4).random((3, 8)) >= 0.5) * 2.0
    np.testing.assert_array_equal(backend.to_numpy(y.data), expected)
