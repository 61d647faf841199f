"""Forward and backward time of each nanograd op at the baby GPT's sizes, beside PyTorch.

    python benchmarks/bench_ops.py

B=12, T=64, C=128, nh=4, V=65. Each op is first checked against PyTorch (output and input
gradients), then timed: forward alone, and forward + backward.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, torch_or_none  # noqa: E402

from nanograd import Tensor  # noqa: E402
from nanograd import functional as F  # noqa: E402

B, T, C, NH, V = 12, 64, 128, 4, 65
rng = np.random.default_rng(0)


def arr(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


IDS = rng.integers(0, V, (B, T))
TARGETS = rng.integers(0, V, B * T)

# name: (inputs, nanograd fn, torch fn); the inputs are the float arrays that get gradients
OPS: dict[str, tuple[list[np.ndarray], Callable, Callable]] = {
    "matmul (B,T,C)@(C,4C)": ([arr(B, T, C), arr(C, 4 * C)], lambda x, w: x @ w, lambda x, w: x @ w),
    "layer_norm (B,T,C)": ([arr(B, T, C), arr(C), arr(C)], F.layer_norm,
                           lambda x, w, b: __import__("torch").nn.functional.layer_norm(x, (C,), w, b)),
    "gelu (B,T,4C)": ([arr(B, T, 4 * C)], F.gelu,
                      lambda x: __import__("torch").nn.functional.gelu(x, approximate="tanh")),
    "softmax (B,nh,T,T)": ([arr(B, NH, T, T)], F.softmax, lambda x: x.softmax(-1)),
    "cross_entropy (B*T,V)": ([arr(B * T, V)], lambda x: F.cross_entropy(x, TARGETS),
                              lambda x: __import__("torch").nn.functional.cross_entropy(
                                  x, __import__("torch").from_numpy(TARGETS))),
    "embedding (B,T)->(B,T,C)": ([arr(V, C)], lambda w: F.embedding(IDS, w),
                                 lambda w: w[__import__("torch").from_numpy(IDS)]),
    "attention (B,nh,T,hs)": ([arr(B, NH, T, C // NH) for _ in range(3)], F.scaled_dot_product_attention,
                              lambda q, k, v: __import__("torch").nn.functional.scaled_dot_product_attention(
                                  q, k, v, is_causal=True)),
}


def time_call(fn: Callable[[], object], min_seconds: float = 0.2) -> float:
    """Median-free but steady: repeat until min_seconds have passed, return seconds per call."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls


def bench_nanograd(inputs, fn):
    tensors = [Tensor(a, requires_grad=True) for a in inputs]
    g = None

    def forward():
        return fn(*tensors)

    def forward_backward():
        nonlocal g
        out = fn(*tensors)
        g = np.ones_like(out.data) if g is None else g
        out.backward(g)

    out = forward()
    out.backward(np.ones_like(out.data))
    return out.data, [t.grad for t in tensors], time_call(forward), time_call(forward_backward)


def bench_torch(torch, inputs, fn):
    tensors = [torch.from_numpy(a.copy()).requires_grad_() for a in inputs]

    def forward_backward():
        out = fn(*tensors)
        out.backward(torch.ones_like(out))

    out = fn(*tensors)
    out.backward(torch.ones_like(out))
    grads = [t.grad.numpy().copy() for t in tensors]
    with torch.no_grad():
        t_forward = time_call(lambda: fn(*tensors))
    return out.detach().numpy(), grads, t_forward, time_call(forward_backward)


def main() -> None:
    torch = torch_or_none()
    if torch is None:
        print("PyTorch is not installed: nanograd only (pip install -e '.[bench]')")
    else:
        torch.set_num_threads(blas_threads())
    print(f"{'op':<26} {'fwd ms':>8} {'fwd+bwd ms':>11}" + (f" {'torch fwd':>10} {'torch f+b':>10} {'ratio':>6}"
                                                            if torch else ""))
    for name, (inputs, ours, theirs) in OPS.items():
        out, grads, t_fwd, t_both = bench_nanograd(inputs, ours)
        line = f"{name:<26} {t_fwd * 1e3:8.3f} {t_both * 1e3:11.3f}"
        if torch is not None:
            ref_out, ref_grads, r_fwd, r_both = bench_torch(torch, inputs, theirs)
            np.testing.assert_allclose(out, ref_out, rtol=1e-3, atol=1e-4, err_msg=name)
            for g, r in zip(grads, ref_grads):
                np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-3, err_msg=name)
            line += f" {r_fwd * 1e3:10.3f} {r_both * 1e3:10.3f} {r_both / t_both:5.2f}x"
        print(line)
    if torch is not None:
        print("ratio: torch time / nanograd time for forward + backward (above 1: nanograd is faster)")


if __name__ == "__main__":
    main()
