"""Shared pieces of the benchmarks: optional PyTorch, thread counts, the matmul peak, timers.

Every script puts this folder on sys.path and imports from here, so it runs from anywhere
as `python benchmarks/<script>.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

from gpt.errors import UserError
from nanograd import backend

TORCH_MISSING = "PyTorch is not installed: nanograd only (pip install -e '.[bench]' for the comparison)"


def torch_or_none() -> ModuleType | None:
    """PyTorch if installed (the optional `bench` extra), else None. Only benchmarks/ imports it."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def blas_threads() -> int:
    """How many threads NumPy's BLAS uses: PyTorch is given the same number, for a fair race."""
    return backend.blas_threads()


def setup_torch(device: str) -> ModuleType | None:
    """PyTorch with NumPy's thread count, or None (after one line saying why) when it cannot run."""
    torch = torch_or_none()
    if torch is None:
        print(TORCH_MISSING, file=sys.stderr)
        return None
    if device == "cuda" and not torch.cuda.is_available():
        print("PyTorch has no CUDA device here: nanograd only", file=sys.stderr)
        return None
    torch.set_num_threads(blas_threads())
    return torch


def usable_device(device: str) -> str:
    """The device's normal name, or a UserError (one line, exit 2, from the scripts' exit_status)
    when it cannot be used (no CuPy, no GPU)."""
    try:
        return backend.check_device(device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from None


def synchronize(device: str) -> None:
    """GPU work is queued, not done, when a call returns: wait for it before reading the clock."""
    if device != "cuda":
        return
    import cupy

    cupy.cuda.Device().synchronize()
    if "torch" in sys.modules:  # only if a script already imported it: never import it here
        sys.modules["torch"].cuda.synchronize()


def matmul_peak_flops(device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """The float32 matmul rate this machine reaches (FLOP/s): the best of a few n x n products.
    MFU is measured against this rather than a datasheet figure that a 2-core VM never sees."""
    a = backend.to_device(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), device)
    seconds = best_time(lambda: a @ a, repeats, device)
    return 2 * n**3 / seconds  # n^2 outputs, each n multiplies and n adds


def time_calls(fn: Callable[[], object], calls: int, device: str = "cpu") -> float:
    """Seconds per call of fn, over `calls` calls back to back."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / calls


def best_time(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """The fastest of `repeats` single calls, after one warm-up call: the noise-free cost of fn
    (interruptions only ever add time, so the minimum is the best estimate of it)."""
    fn()
    return min(time_calls(fn, 1, device) for _ in range(repeats))


SETTLE_S = 0.5  # see alternate


def alternate(fns: dict[str, Callable[[], object]], rounds: int, calls: int,
              device: str = "cpu", wait: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (round 1: a, b; round 2: a, b;
    ...) so that drift in the machine's speed (other load, clock changes) hits all alike.

    Before each round, a pause of SETTLE_S: thread pools keep their threads spinning for a
    while after their last call (OpenBLAS about 0.1 s, OpenMP less), and without the pause
    they take the cores from the start of the other implementation's round. Measured here:
    PyTorch's baby step took 40 ms right after nanograd's rounds with a two-thread OpenBLAS,
    and 30 ms after rounds that left no thread spinning. wait() runs before that pause: the
    ranks of an MPI run wait there for each other (World.barrier), so that none starts a
    round while rank 0 is still timing PyTorch alone.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            wait()
            time.sleep(SETTLE_S)
            times[name].append(time_calls(fn, calls, device))
    return {name: statistics.median(t) for name, t in times.items()}
