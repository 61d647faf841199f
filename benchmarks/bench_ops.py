"""Forward and backward time of each nanograd op at the baby GPT's sizes, beside PyTorch.

    python benchmarks/bench_ops.py              # beside PyTorch, if installed
    python benchmarks/bench_ops.py --no-torch   # nanograd alone

B=12, T=64, C=128, nh=4, V=65. Validate, then time (as llm.c's dev/cuda benchmarks do): each
op's output is first checked against a plain NumPy version of its formula and, with PyTorch
installed, its output and input gradients against PyTorch's. Only then is it timed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, setup_torch, time_calls  # noqa: E402

import nanograd  # noqa: E402
from gpt.errors import exit_status  # noqa: E402
from nanograd import Tensor  # noqa: E402
from nanograd import functional as F  # noqa: E402

B, T, C, NH, V = 12, 64, 128, 4, 65
HS = C // NH
rng = np.random.default_rng(0)
IDS = rng.integers(0, V, (B, T))
TARGETS = rng.integers(0, V, B * T)
CAUSAL = np.triu(np.ones((T, T), dtype=bool), k=1)  # True above the diagonal: the future


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ---- the NumPy references: each op's formula, forward only ------------------------------------
def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    scores = np.where(CAUSAL, -np.inf, q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]))
    return np_softmax(scores) @ v


def np_self_attention(qkv: np.ndarray) -> np.ndarray:
    """(B, T, 3C) -> (B, T, C): split q, k, v and the heads, attend, merge the heads again."""
    q, k, v = (a.reshape(B, T, NH, HS).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    return np_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, C)


def np_layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b


def np_gelu(x: np.ndarray) -> np.ndarray:  # the tanh approximation, as GPT-2
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def np_cross_entropy(x: np.ndarray) -> np.ndarray:
    logsumexp = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    return (logsumexp - x[np.arange(len(x)), TARGETS]).mean()


def torch_self_attention(t: ModuleType, qkv: Any) -> Any:
    q, k, v = (a.view(B, T, NH, HS).transpose(1, 2) for a in qkv.split(C, dim=-1))
    y = t.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)


@dataclass
class Op:
    name: str
    inputs: list[np.ndarray]  # the float inputs, which all get gradients
    ours: Callable[..., Tensor]  # nanograd: Tensors -> Tensor
    reference: Callable[..., np.ndarray]  # NumPy: arrays -> array (forward only)
    theirs: Callable[..., Any]  # PyTorch: (torch, *tensors) -> tensor


OPS = [
    Op("matmul (B,T,C)@(C,4C)", [randn(B, T, C), randn(C, 4 * C)],
       lambda x, w: x @ w, lambda x, w: x @ w, lambda t, x, w: x @ w),
    Op("layer_norm (B,T,C)", [randn(B, T, C), randn(C), randn(C)],
       F.layer_norm, np_layer_norm, lambda t, x, w, b: t.nn.functional.layer_norm(x, (C,), w, b)),
    Op("gelu (B,T,4C)", [randn(B, T, 4 * C)],
       F.gelu, np_gelu, lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
    Op("softmax (B,nh,T,T)", [randn(B, NH, T, T)],
       F.softmax, np_softmax, lambda t, x: x.softmax(-1)),
    Op("cross_entropy (B*T,V)", [randn(B * T, V)],
       lambda x: F.cross_entropy(x, TARGETS), np_cross_entropy,
       lambda t, x: t.nn.functional.cross_entropy(x, t.from_numpy(TARGETS))),
    Op("embedding (B,T)->(B,T,C)", [randn(V, C)],
       lambda w: F.embedding(IDS, w), lambda w: w[IDS], lambda t, w: t.nn.functional.embedding(t.from_numpy(IDS), w)),
    Op("attention (B,nh,T,hs)", [randn(B, NH, T, HS) for _ in range(3)],
       lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), np_attention,
       lambda t, q, k, v: t.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)),
    # what the model calls: the fused c_attn output split into heads inside one op
    Op("self_attention (B,T,3C)", [randn(B, T, 3 * C)],
       lambda qkv: F.self_attention(qkv, NH, is_causal=True), np_self_attention, torch_self_attention),
]


def median_time(fn: Callable[[], object], min_seconds: float = 0.05, repeats: int = 5) -> float:
    """Seconds per call: the median of `repeats` batches of calls, each batch >= min_seconds."""
    calls = max(1, math.ceil(min_seconds / time_calls(fn, 1)))  # the first call also warms up
    return statistics.median(time_calls(fn, calls) for _ in range(repeats))


Run = tuple[np.ndarray, list[np.ndarray], Callable[[], object], Callable[[], object]]


def run_nanograd(op: Op, grad_out: np.ndarray) -> Run:
    """(output, input gradients, forward call, backward call): results to check, calls to time."""
    xs = [Tensor(a, requires_grad=True) for a in op.inputs]
    out = op.ours(*xs)
    out.backward(grad_out, retain_graph=True)  # kept, so that backward can be timed again and again
    # the forward takes requires_grad inputs, so it records the graph exactly as in training
    return (out.data.copy(), [x.grad.copy() for x in xs],
            lambda: op.ours(*xs), lambda: out.backward(grad_out, retain_graph=True))


def run_torch(torch: ModuleType, op: Op, grad_out: np.ndarray) -> Run:
    xs = [torch.from_numpy(a.copy()).requires_grad_() for a in op.inputs]
    g = torch.from_numpy(grad_out)
    out = op.theirs(torch, *xs)
    out.backward(g, retain_graph=True)
    return (out.detach().numpy().copy(), [x.grad.numpy().copy() for x in xs],
            lambda: op.theirs(torch, *xs), lambda: out.backward(g, retain_graph=True))


def check(name: str, actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Float32 agreement, relative to the array's scale (sums over hundreds of terms round)."""
    atol = 1e-4 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=atol, err_msg=f"{name}: {what}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-torch", action="store_true", help="check and time nanograd alone")
    args = p.parse_args(argv)
    nanograd.backend.keep_freed_memory()  # as gpt.train does: the same allocator for both implementations
    torch = None if args.no_torch else setup_torch("cpu")
    head = f"{'op':<26} {'fwd ms':>8} {'bwd ms':>8}"
    print(f"B={B} T={T} C={C} nh={NH} V={V}, float32, BLAS threads: {blas_threads()}")
    print(head + (f" | {'torch fwd':>9} {'torch bwd':>9} | {'ratio':>6}" if torch else ""))
    for op in OPS:
        expected = op.reference(*op.inputs)
        # the upstream gradient: random, since ones would hide errors (softmax's backward of ones is 0)
        grad_out = np.random.default_rng(1).standard_normal(np.shape(expected)).astype(np.float32)
        out, grads, *ours = run_nanograd(op, grad_out)
        check(op.name, out, expected, "forward vs NumPy")
        runs = [ours]
        if torch is not None:
            ref_out, ref_grads, *theirs = run_torch(torch, op, grad_out)
            check(op.name, out, ref_out, "forward vs torch")
            for i, (g, r) in enumerate(zip(grads, ref_grads)):
                check(op.name, g, r, f"gradient of input {i} vs torch")
            runs.append(theirs)
        # validated: now time (seconds per forward, per backward) of each implementation
        (fwd, bwd), *rest = [[median_time(fn) for fn in run] for run in runs]
        line = f"{op.name:<26} {fwd * 1e3:8.3f} {bwd * 1e3:8.3f}"
        for t_fwd, t_bwd in rest:
            line += f" | {t_fwd * 1e3:9.3f} {t_bwd * 1e3:9.3f} | {(t_fwd + t_bwd) / (fwd + bwd):5.2f}x"
        print(line, flush=True)
    print("every op's output (and, with torch, gradients) checked before timing; "
          "fwd: with the graph recorded, as in training")
    if torch is not None:
        print("ratio: torch / nanograd time of forward + backward (above 1: nanograd is faster)")


if __name__ == "__main__":
    sys.exit(exit_status(main))  # a bad flag or file: one line, exit 2 (gpt.errors)
