"""Shared pieces of the benchmarks: the matmul peak, timers, optional PyTorch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from nanograd import backend


def torch_or_none():
    """PyTorch if installed (the optional `bench` extra), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def blas_threads() -> int:
    """How many threads NumPy's BLAS uses (PyTorch is given the same number)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 1
    counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return max(counts) if counts else 1


def synchronize(device: str) -> None:
    """GPU work is asynchronous: wait for it before reading the clock."""
    if device == "cuda":
        import cupy

        cupy.cuda.Device().synchronize()


def matmul_peak_flops(device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """The float32 matmul rate this machine reaches (FLOP/s): best of a few n x n products."""
    xp = np if device == "cpu" else __import__("cupy")
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=xp.float32)
    a @ a  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        a @ a
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def time_steps(step: Callable[[], None], steps: int, device: str = "cpu") -> float:
    """Seconds per call of step, averaged over `steps` calls."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def alternate(steps: dict[str, Callable[[], None]], rounds: int, steps_per_round: int,
              device: str = "cpu") -> dict[str, float]:
    """Median seconds per step of each implementation, timed in alternating rounds so that
    drift in the machine's speed (other load, clock changes) hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, steps_per_round, device))
    return {name: statistics.median(t) for name, t in times.items()}


def cuda_or_exit(device: str) -> None:
    """One clear line, and exit 2, when --device cuda cannot run."""
    try:
        backend.check_device(device)
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
