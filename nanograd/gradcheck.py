"""Finite-difference gradient check: the proof that a hand-written backward is right."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .function import no_grad
from .tensor import Tensor


def gradcheck(
    fn: Callable[..., Tensor],
    *inputs: Tensor,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> bool:
    """Check the analytic gradient of fn against central differences, for every input that
    requires a gradient. Returns True, or raises AssertionError naming the input and element.

    fn may return a tensor of any shape: the check uses L = sum(fn(*inputs) * R) for a fixed
    random R, so that a mistake in any single output element shows. For each input element
    x_i the numerical derivative is (L(x_i + eps) - L(x_i - eps)) / (2 eps), accurate to
    O(eps^2); that needs float64 (in float32 the rounding error ~1e-7 / eps would swamp it),
    so float32 inputs are refused. An element passes when
        |analytic - numerical| <= atol + rtol * |numerical|     (PyTorch's rule and defaults).
    `names` (one per input) label the inputs in the error message.

        >>> x = Tensor(np.random.randn(3, 4), requires_grad=True, dtype=np.float64)
        >>> gradcheck(lambda x: (x * x).sum(axis=1), x)
        True
    """
    label = [f"input {i} ({names[i]})" if names else f"input {i}" for i in range(len(inputs))]
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires a gradient (use Tensor(..., requires_grad=True))")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(
                f"gradcheck: {label[i]} is {inputs[i].dtype}; finite differences need float64 "
                "(build it with Tensor(data, requires_grad=True, dtype=np.float64))"
            )
    weights = np.random.default_rng(seed).standard_normal(fn(*inputs).shape)  # R

    def loss() -> float:
        with no_grad():
            return float((fn(*inputs).numpy() * weights).sum())

    analytic = _analytic_gradients(fn, inputs, checked, weights)
    for i in checked:
        if analytic[i] is None:
            raise AssertionError(f"gradcheck: {label[i]} got no gradient (is it used by fn?)")
        a = Tensor(analytic[i]).numpy().astype(np.float64)
        numerical = _central_differences(loss, inputs[i].data, eps)
        excess = np.abs(a - numerical) - (atol + rtol * np.abs(numerical))
        if excess.size and (np.isnan(excess).any() or excess.max() > 0):
            worst = np.unravel_index(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)), a.shape)
            raise AssertionError(
                f"gradcheck failed for {label[i]} (shape {a.shape}) at element {tuple(map(int, worst))}: "
                f"analytic {a[worst]:.8g}, numerical {numerical[worst]:.8g}, "
                f"|difference| {abs(a[worst] - numerical[worst]):.3g} > "
                f"atol {atol} + rtol {rtol} * |numerical|"
            )
    return True


def _analytic_gradients(fn: Callable[..., Tensor], inputs: Sequence[Tensor], checked: list[int],
                        weights: np.ndarray) -> dict[int, object]:
    """dL/dx for each checked input from one backward pass of L = sum(fn(*inputs) * R); the
    inputs' own .grad are left as they were."""
    saved_grads = [inputs[i].grad for i in checked]
    for i in checked:
        inputs[i].grad = None
    out = fn(*inputs)
    (out * Tensor(weights).to(out.device)).sum().backward()
    analytic = {i: inputs[i].grad for i in checked}
    for i, g in zip(checked, saved_grads):
        inputs[i].grad = g
    return analytic


def _central_differences(loss: Callable[[], float], x: np.ndarray, eps: float) -> np.ndarray:
    """(L(x_i + eps) - L(x_i - eps)) / (2 eps) for every element x_i of the array x, which
    loss() reads (x is moved one element at a time and put back)."""
    numerical = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        original = x[idx].item()
        x[idx] = original + eps
        plus = loss()
        x[idx] = original - eps
        minus = loss()
        x[idx] = original
        numerical[idx] = (plus - minus) / (2 * eps)
    return numerical
