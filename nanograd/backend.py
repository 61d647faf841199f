"""The one place that decides between NumPy (CPU) and CuPy (CUDA GPU).

Every op asks `array_module(x)` for the module that owns its input arrays and calls only
that module, so the same op code runs on either device. Nothing in nanograd's ops calls
NumPy directly on tensor data (tests/test_backend.py checks this).
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import threadpoolctl

try:  # CuPy is optional: installed by the cuda12 / cuda13 extras.
    import cupy as _cupy
except Exception as exc:  # ImportError, or a CUDA library that fails to load
    _cupy = None
    _CUPY_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _CUPY_IMPORT_ERROR = ""

DEVICES = ("cpu", "cuda")


def cuda_status() -> tuple[bool, str]:
    """(True, '') when CuPy is importable and sees a CUDA device, else (False, the reason)."""
    if _cupy is None:
        return False, f"CuPy is not installed (pip install -e '.[cuda12]' or '.[cuda13]'); {_CUPY_IMPORT_ERROR}"
    try:
        n = _cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"CuPy found no usable CUDA device ({type(exc).__name__}: {exc})"
    if n == 0:
        return False, "CuPy is installed but there is no CUDA device"
    return True, ""


def check_device(device: str) -> str:
    """Normalise a device name ('cpu', 'cuda', 'cuda:0' -> 'cuda') or raise a one-line ValueError."""
    name = str(device).split(":")[0].lower()
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if name == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise RuntimeError(f"--device cuda is not available: {why}")
    return name


def array_module(*arrays: Any) -> ModuleType:
    """numpy or cupy: the module that owns these arrays (numpy for plain Python values)."""
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return np


def device_of(array: Any) -> str:
    return "cuda" if array_module(array) is not np else "cpu"


def to_device(array: Any, device: str) -> Any:
    """Copy an array to 'cpu' (NumPy) or 'cuda' (CuPy); returns it unchanged if already there."""
    device = check_device(device)
    if device == "cpu":
        return _cupy.asnumpy(array) if device_of(array) == "cuda" else np.asarray(array)
    return _cupy.asarray(array)


def to_numpy(array: Any) -> np.ndarray:
    return to_device(array, "cpu")


def wait_for(result: Any) -> None:
    """Return once the work that produces result (an array, or a tuple of arrays and other
    values) is done. A GPU runs kernels after the call that queued them has returned; a CPU
    has nothing to wait for."""
    arrays = result if isinstance(result, tuple) else (result,)
    if any(device_of(a) == "cuda" for a in arrays if a is not None):
        _cupy.cuda.get_current_stream().synchronize()


ONE_HOT_MAX_ELEMENTS = 1 << 20  # V * N above this: scatter_add_rows sorts (NumPy) or uses add.at (CuPy)


def scatter_add_rows(out: Any, rows: Any, values: Any) -> None:
    """out[rows[i]] += values[i] for every i, with repeated rows accumulating.

    out: (V, C), rows: (N,) ints, values: (N, C). Plain `out[rows] += values` would keep only
    one of the repeats, and np.add.at is correct but slow (an unbuffered per-element loop).
    Small tables (a character vocabulary, the positions): one matrix product with the one-hot
    matrix of the rows, onehot (V, N) @ values (N, C). Large ones, where that matrix would be
    big: on NumPy, sort the rows, sum each run of equal ids with one add.reduceat and add once
    per id; on CuPy, cupy.add.at, an atomic add on the GPU.
    """
    if len(rows) == 0:
        return
    xp = array_module(out)
    if out.shape[0] * len(rows) <= ONE_HOT_MAX_ELEMENTS:
        onehot = xp.zeros((out.shape[0], len(rows)), dtype=values.dtype)  # (V, N)
        onehot[rows, xp.arange(len(rows))] = 1  # onehot[v, n] = 1 where rows[n] == v
        out += onehot @ values
        return
    if xp is not np:
        xp.add.at(out, rows, values)  # atomic adds on the GPU
        return
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    # start index of each run of equal ids in the sorted list
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    out[sorted_rows[starts]] += np.add.reduceat(values[order], starts, axis=0)


# About 256 KB of float32 per array: a few such arrays fit in a core's L2 cache together.
BLOCK_ELEMENTS = 1 << 16


def in_blocks(fn: Callable[..., None], *arrays: Any) -> None:
    """Call fn(*blocks) on matching blocks of same-shaped arrays, about BLOCK_ELEMENTS numbers each.

    The blocks are 2-D views (rows, last axis), cut between rows so that a row-wise op still
    sees whole rows; a 1-D array is cut into runs of BLOCK_ELEMENTS numbers. An element-wise formula
    written as a dozen in-place NumPy passes streams each whole array through memory a dozen
    times; run block by block, the passes find their block still in the core's cache. On a
    GPU there is no such cache to fit, and each call is a kernel launch: one call there.
    """
    block = BLOCK_ELEMENTS
    if (array_module(*arrays) is not np or arrays[0].size <= block
            or not all(a.flags.c_contiguous for a in arrays)):  # a reshaped copy would drop the writes
        fn(*arrays)
        return
    width = arrays[0].shape[-1] if arrays[0].ndim > 1 else 1
    rows = [a.reshape(-1, width) for a in arrays]  # views, as the arrays are contiguous
    step = max(1, block // width)
    for start in range(0, rows[0].shape[0], step):
        fn(*(r[start : start + step] for r in rows))


def index_add(out: Any, index: Any, values: Any) -> None:
    """out[index] += values for any advanced index, repeats accumulating: ufunc.at, correct
    but an unbuffered per-element loop on NumPy (scatter_add_rows is faster for table rows)."""
    array_module(out).add.at(out, index, values)


def sum_leading_axes(x: Any, n: int) -> Any:
    """x summed over its first n axes: (d1, ..., dn, *rest) -> rest (a bias's gradient from
    (B, T, C) is the sum over B and T).

    One matrix-vector product ones (N,) @ x (N, M), N = d1 ... dn, M the rest: BLAS does it
    several times faster than a reduction over the leading axes, on both devices
    (benchmarks/RESULTS.md).
    """
    rows = x.reshape(math.prod(x.shape[:n]), math.prod(x.shape[n:]))  # (N, M)
    total = array_module(x).ones(rows.shape[0], dtype=x.dtype) @ rows  # (M,)
    return total.reshape(x.shape[n:])


def keep_freed_memory() -> bool:
    """Ask the C library's malloc to keep freed memory for reuse instead of returning it to
    the OS. Returns whether it could (glibc only: Linux; elsewhere nothing changes).

    Every training step allocates and frees the same tens of MB of activations. By default
    glibc gives large blocks back to the kernel when they are freed and maps them again at the
    next step, paying a page fault per 4 KiB touched, a large part of a small model's step
    (benchmarks/RESULTS.md). With this, the process keeps its high-water mark of
    memory instead. It is process-wide, so it helps every library in the process alike.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
    # blocks up to 32 MiB (glibc's maximum) come from the heap, never mmap; the heap is
    # trimmed only when 1 GiB sits free at its top
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def blas_threads() -> int:
    """How many threads NumPy's BLAS uses: one per core, unless OPENBLAS_NUM_THREADS or
    OMP_NUM_THREADS says otherwise (read from the loaded library, through threadpoolctl)."""
    counts = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    return max(counts, default=os.cpu_count() or 1)


def limit_blas_threads(threads: int) -> None:
    """Have BLAS use at most `threads` threads from now on, in this process. Ranks that share
    a machine share its cores: each BLAS running a thread per core would have them fight over
    the cores (and idle BLAS threads spin on the cores that the other ranks need)."""
    threadpoolctl.threadpool_limits(limits=threads, user_api="blas")


def use_cuda_device(index: int) -> None:
    """Make GPU `index` (counted round the GPUs present) this process's device, before anything
    is allocated: each rank on a machine with several GPUs takes its own."""
    _cupy.cuda.Device(index % _cupy.cuda.runtime.getDeviceCount()).use()


# One random generator per device, reseeded by nanograd.manual_seed: dropout masks and
# parameter initialisation draw from it, so a seeded run is reproducible.
_generators: dict[str, Any] = {}


def manual_seed(seed: int) -> None:
    """Reseed the generators of every device (NumPy's now, CuPy's when it is first used)."""
    _generators.clear()
    _generators["seed"] = seed
    _generators["cpu"] = np.random.default_rng(seed)


def generator(device: str = "cpu") -> Any:
    """The seeded generator of a device: numpy.random.Generator or cupy.random.Generator."""
    if device not in _generators:
        seed = _generators.get("seed", 0)
        xp = np if device == "cpu" else _cupy
        _generators[device] = xp.random.default_rng(seed)
    return _generators[device]

