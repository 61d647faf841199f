"""Data parallelism on the CPU: the batch is split over processes, a slice each.

Why it pays: BLAS already spreads a matrix product over every core, but NumPy runs all the
element-wise work (GELU, LayerNorm, softmax, the residual adds...) on one core. With the batch
split, every core works on every op, and BLAS is held to one thread per process (the
processes are the parallelism, and idle BLAS threads spin on the cores they need).

Why processes and not threads: NumPy releases the GIL inside its loops, so threads do run at
once, but each of the ~600 NumPy calls of a step must take the lock back afterwards, often
while the other thread's Python holds it. On the 2-core machine here a half-batch baby step
took 26-29 ms alone and 33-36 ms beside a second thread, but 27.7 and 30.3 ms beside a
second process, against 26.3 and 28.7 ms alone (benchmarks/RESULTS.md).

How: the calling process trains on the first slice itself, on the model. Each other slice
goes to a worker process that holds a copy of the model, sent once when it starts. Weights
and gradients cross in shared memory: before each call the model's current weights are
copied into a block that the workers' parameters view (given the optimizer, only those it
does not hold: see below), and each worker writes its gradient
into a block of its own, which the caller adds to the model's .grad in worker order (a seeded
run repeats exactly). The loss is a mean over the batch, so the gradient of the whole batch
is the slices' gradients weighted by their sizes: slice i starts its backward from n_i / N.

The optimizer step, given the optimizer: its flat buffers (weights, moments, gradient) move
into shared memory, the workers' parameters view those weights (nothing to copy per call),
and each process updates an equal part of them at once, where the caller alone would update
everything while the workers wait: the optimizer's update took 2.8 ms of a 30 ms training
step at the baby model's size, and 28 ms of 210 at width 384, 7.1M parameters (now 2.3 and
16 ms; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any, NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_info

from . import backend, optim
from .function import is_grad_enabled, no_grad
from .nn.module import Module, Parameter
from .tensor import Tensor

_blas_controller = None  # made on first use: it inspects the libraries loaded by then (BLAS)


def _one_blas_thread() -> Any:
    """A context in which BLAS uses one thread (threadpoolctl; NumPy has no API for it)."""
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def default_workers() -> int:
    """One worker per thread that BLAS would use: one per core, unless OPENBLAS_NUM_THREADS or
    OMP_NUM_THREADS says otherwise."""
    counts = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    return max(counts, default=os.cpu_count() or 1)


def _wait_for_all(futures: list[Future], give_up: Callable[[], None]) -> None:
    """Wait until every worker has answered, even if Ctrl-C arrives meanwhile (then raised
    afterwards): no worker may still be writing gradients once the call is over, and every
    answer must be read before the next call's. A second Ctrl-C while waiting calls give_up
    (which stops the workers, so a hung one cannot hold the program) and raises at once."""
    interrupted = False
    while True:
        try:
            wait(futures)
            break
        except KeyboardInterrupt:
            if interrupted:
                give_up()
                raise
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


class _Task(NamedTuple):
    """One slice's work: run here for the first slice, pickled to a worker for the others."""

    loss_fn: Callable[..., Tensor]
    part: tuple  # this slice of each batch array
    seed: int | None  # its dropout stream; None in eval mode
    share: float  # its fraction of the batch: its loss and gradient are scaled by it
    backward: bool
    training: bool  # the caller's model.training
    requires_grad: list[bool]  # the caller's, per parameter
    grad_enabled: bool  # False under the caller's no_grad() (evaluation)
    float_errors: dict[str, str]  # the caller's np.geterr(): a worker warns of what the caller would


def _run_task(model: Module, task: _Task) -> float:
    """One slice: its loss times its share, and (backward) that loss's gradient added to the
    model's .grad. Dropout draws from the slice's own stream, seeded by the caller."""
    rng = contextlib.nullcontext() if task.seed is None else backend.thread_generator(np.random.default_rng(task.seed))
    with rng:
        loss = task.loss_fn(model, *task.part)
        if task.backward:
            loss.backward(np.full(loss.shape, task.share))  # d(share * loss) = share * d(loss)
    return loss.item() * task.share


class SharedMemoryTooSmall(RuntimeError):
    """The system's shared memory has no room for the weight and gradient blocks (and the
    optimizer's flat buffers, when it is shared)."""


def _check_shared_memory(needed: int) -> None:
    """Raise SharedMemoryTooSmall where /dev/shm (Linux) has less room than needed: writing
    past its end would kill the process (SIGBUS) instead of raising. A container's /dev/shm
    is 64 MB unless it is given more (docker run --shm-size)."""
    try:
        stats = os.statvfs("/dev/shm")
    except (OSError, AttributeError):  # not Linux: shared memory is not such a file system
        return
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise SharedMemoryTooSmall(f"DataParallel needs {needed / 2**20:.1f} MiB of shared memory, "
                                   f"and /dev/shm has {free / 2**20:.1f} MiB free")


Layout = list[tuple[tuple[int, ...], Any]]  # (shape, dtype) of each array in a shared block


def _layout(arrays: list[Any]) -> Layout:
    return [(a.shape, a.dtype) for a in arrays]


def _block_layout(layout: Layout) -> tuple[list[int], int]:
    """(where each array starts in a shared block, the block's size in bytes). Each array
    starts on a 64-byte boundary, as NumPy's own allocations are aligned for SIMD loads; the
    size is at least 64 because SharedMemory refuses 0 bytes."""
    offsets, size = [], 0
    for shape, dtype in layout:
        offsets.append(size)
        size += -(-math.prod(shape) * np.dtype(dtype).itemsize // 64) * 64  # rounded up to a multiple of 64
    return offsets, max(size, 64)


class _SharedArrays:
    """One block of shared memory holding an array of each (shape, dtype) of a layout, made
    by the caller, or opened by name in a worker."""

    def __init__(self, layout: Layout, name: str | None = None):
        offsets, size = _block_layout(layout)
        self.block = SharedMemory(name=name, create=name is None, size=size if name is None else 0)
        if name is None:  # the caller's arrays hold the buffer: the mapping outlives any view (release)
            self.arrays = [np.frombuffer(self.block.buf, dtype, math.prod(shape), offset).reshape(shape)
                           for (shape, dtype), offset in zip(layout, offsets)]
        else:  # a worker's last as long as the process
            self.arrays = [np.ndarray(shape, dtype, buffer=self.block.buf, offset=offset)
                           for (shape, dtype), offset in zip(layout, offsets)]

    def release(self) -> None:
        """Remove the block from the system and close it (the caller's, once the workers are
        gone). If a view of it is still alive elsewhere (an array from p.numpy(), a graph that
        saved a weight), closing would pull the memory from under it: the mapping is then left
        to that view, and goes with the last one."""
        self.arrays = []
        try:
            self.block.close()
        except BufferError:  # views remain: drop the block's own references (CPython's
            self.block._buf = self.block._mmap = None  # SharedMemory), so that close() at exit has nothing to do
        self.block.unlink()


class _Update(NamedTuple):
    """A worker's piece of an AdamW step: for each flat group (its index among the
    optimizer's flat groups, the update's numbers), piece `part` of `parts` (optim.adamw_update)."""

    groups: list[tuple[int, optim.AdamWHyper]]
    part: int
    parts: int
    float_errors: dict[str, str]  # as _Task's


def _serve(conn: Any, model: Module, weights_name: str, gradients_name: str,
           flat_blocks: list[tuple[str, Layout]], places: list[tuple[int, int] | None]) -> None:
    """A worker process: run each task it is sent, until the caller closes the pipe.

    A parameter that the caller's optimizer holds (places[i] = (flat group, start)) views that
    group's shared weights, which the processes update in place; any other views the shared
    weight block, which the caller refreshes before every task. The gradient of each slice
    goes into this worker's shared block. Messages: a _Task (a slice: forward and backward) or
    an _Update (a piece of the optimizer's step). Replies: ("ready",) once, then per _Task
    ("ok", weighted loss, which parameters got a gradient), per _Update ("ok",), or
    ("error", message) for either (("memory", message) for a MemoryError). Ctrl-C is the
    caller's to handle, so SIGINT is ignored: on POSIX from birth (inherited through
    _spawning), on Windows, whose new processes do not inherit it, from here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    backend.keep_freed_memory()
    params = model.parameters()
    copied = [p for p, place in zip(params, places) if place is None]
    weights, gradients = _SharedArrays(_layout(copied), weights_name), _SharedArrays(_layout(params), gradients_name)
    flats = [_SharedArrays(layout, name) for name, layout in flat_blocks]  # each: SHARED_FLAT
    # this process's own scratch per group (full length, for simple indexing: a piece uses its part)
    scratch = [np.empty_like(flat.arrays[0]) for flat in flats]
    for p, shared in zip(copied, weights.arrays):
        p.data = shared
    for p, place in zip(params, places):
        if place is not None:
            group, start = place
            group_weights = flats[group].arrays[0]  # (data, the first of SHARED_FLAT)
            p.data = group_weights[start : start + p.size].reshape(p.shape)
    for p, shared in zip(params, gradients.arrays):
        p.grad_buffer = shared  # backward writes each gradient straight into shared memory
    conn.send(("ready",))
    with _one_blas_thread():
        while True:
            try:
                message = conn.recv_bytes()
            except EOFError:  # the caller is gone or closed the pool
                return
            try:  # unpickled here, so that a loss_fn this process cannot import is one error
                task = pickle.loads(message)
                with np.errstate(**task.float_errors):  # warn (or not) of what the caller would
                    if isinstance(task, _Update):
                        for group, hyper in task.groups:
                            arrays = optim.FlatArrays(*flats[group].arrays, scratch[group])
                            optim.adamw_update(arrays, hyper, task.part, task.parts)
                        conn.send(("ok",))
                        continue
                    model.train(task.training)
                    for p, needs in zip(params, task.requires_grad):
                        p.grad, p.requires_grad = None, needs
                    with contextlib.nullcontext() if task.grad_enabled else no_grad():
                        loss = _run_task(model, task)
            except MemoryError as exc:  # raised as MemoryError by the caller too: not a bug
                conn.send(("memory", str(exc)))
                continue
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                continue
            has_grad = [p.grad is not None for p in params]
            for p, shared in zip(params, gradients.arrays):
                if p.grad is not None and p.grad is not shared:  # not written there by backward
                    shared[...] = p.grad
            conn.send(("ok", loss, has_grad))


# For the spawned workers: one BLAS thread from the moment BLAS loads, also where threadpoolctl
# cannot limit it later (Apple's Accelerate reads only VECLIB_MAXIMUM_THREADS).
_ONE_THREAD_ENVIRONMENT = {name: "1" for name in (
    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}


@contextlib.contextmanager
def _spawning() -> Iterator[None]:
    """While workers start: their environment asks for one BLAS thread, and SIGINT is ignored,
    so that a Ctrl-C meant for the caller (stop and save) does not kill a worker still
    starting (POSIX processes inherit the ignored signal; on Windows _serve ignores it
    itself). Only the main thread may change signal handlers."""
    saved_environment = {name: os.environ.get(name) for name in _ONE_THREAD_ENVIRONMENT}
    os.environ.update(_ONE_THREAD_ENVIRONMENT)
    try:
        with _sigint_ignored():
            yield
    finally:
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C ignored for a moment (in the main thread: only it may change signal handlers)."""
    main_thread = threading.current_thread() is threading.main_thread()
    saved_handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        yield
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, saved_handler)


def _stopped(process: Any) -> tuple:
    """The answer that stands for a worker that is gone."""
    process.join(timeout=1)  # reaped, so that its exit code is known
    killed = process.exitcode == -getattr(signal, "SIGKILL", 9)  # what Linux's out-of-memory killer sends
    return ("error", f"the worker process stopped (exit code {process.exitcode}"
                     + ("; killed, as when the system runs out of memory)" if killed else ")"))


def _receive(conn: Any, process: Any) -> tuple:
    """A worker's next answer."""
    try:
        return conn.recv()
    except (EOFError, OSError):  # closed, or reset when it died with our message unread
        return _stopped(process)


def _ask(conn: Any, process: Any, task: _Task) -> tuple:
    """Send one task to one worker and wait for its answer (runs in a messenger thread)."""
    try:
        conn.send(task)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:  # nothing was sent
        return ("error", f"could not send the slice to the worker ({exc}): loss_fn must be "
                         "a function that a new Python process can import")
    except OSError:  # the pipe is broken: the worker is gone
        return _stopped(process)
    return _receive(conn, process)


SHARED_FLAT = optim.FlatArrays._fields[:4]  # data, m, v, grad: shared; each process has its own scratch
_shared_optimizers: weakref.WeakSet = weakref.WeakSet()  # those whose buffers a DataParallel holds now


class _Workers:
    """The worker processes, their pipes and shared blocks, and the threads that talk to them
    (a thread waits for each answer, so a Ctrl-C in the caller never cuts a message in half).
    With an optimizer, its flat groups (SHARED_FLAT) move into shared memory too, for as long
    as the workers run: each process then updates a part of them, and the weights they hold
    need no copying to the workers; each process keeps its own scratch."""

    def __init__(self, model: Module, params: list[Parameter], count: int, optimizer: optim.AdamW | None):
        self.conns, self.processes = [], []
        self.weights, self.gradients, self.flat_blocks = None, [], []  # the shared blocks
        self.copied_weights, self.shared_weight_views = [], []
        self.optimizer = optimizer
        self.flats = [flat for _, flat in optimizer.flat] if optimizer is not None else []
        self.messengers = ThreadPoolExecutor(count, thread_name_prefix="nanograd-worker")
        try:  # a failure part way (the model cannot be pickled, a worker cannot start) cleans up
            # each parameter's place in the optimizer's flat groups, (group, start), or None
            place_of = {id(p): (g, start) for g, flat in enumerate(self.flats)
                        for p, start in zip(flat.params, flat.starts)}
            places = [place_of.get(id(p)) for p in params]
            copied = [p for p, place in zip(params, places) if place is None]
            flat_layouts = [_layout([getattr(flat, name) for name in SHARED_FLAT]) for flat in self.flats]
            _check_shared_memory(_block_layout(_layout(copied))[1]  # the weights the optimizer does not hold,
                                 + count * _block_layout(_layout(params))[1]  # a gradient block per worker,
                                 + sum(_block_layout(layout)[1] for layout in flat_layouts))  # the optimizer's
            self.weights = _SharedArrays(_layout(copied))
            self.copied_weights = list(zip(copied, self.weights.arrays))  # (parameter, its copy), per call
            self.gradients = [_SharedArrays(_layout(params)) for _ in range(count)]
            for flat, layout in zip(self.flats, flat_layouts):
                self.flat_blocks.append(_SharedArrays(layout))
                flat.move_to(dict(zip(SHARED_FLAT, self.flat_blocks[-1].arrays)))
            if optimizer is not None:
                _shared_optimizers.add(optimizer)
            # (parameter, the shared view it must keep): a new array there would part the processes
            self.shared_weight_views = [(p, p.data) for p, place in zip(params, places) if place is not None]
            flat_block_specs = [(block.block.name, layout) for block, layout in zip(self.flat_blocks, flat_layouts)]
            context = multiprocessing.get_context("spawn")
            with _spawning():
                for gradients in self.gradients:
                    mine, theirs = context.Pipe()
                    self.conns.append(mine)
                    process = context.Process(target=_serve, daemon=True, args=(
                        theirs, model, self.weights.block.name, gradients.block.name, flat_block_specs, places))
                    process.start()
                    self.processes.append(process)
                    theirs.close()
            for conn, process in zip(self.conns, self.processes):
                answer = _receive(conn, process)
                if answer[0] == "error":
                    raise RuntimeError(f"DataParallel: a worker could not start: {answer[1]}")
        except BaseException:
            self.close()
            raise

    def refresh_weights(self) -> None:
        """Before a call: the weights that the workers do not already share, copied over."""
        for p, shared in self.shared_weight_views:
            if p.data is not shared:
                raise RuntimeError("DataParallel: a parameter's array was replaced (p.data = ...) while "
                                   "the workers share it; write into it instead (p.data[...] = ...)")
        for p, shared in self.copied_weights:
            shared[...] = p.data

    def kill(self) -> None:
        """Stop the workers at once, mid-task (their pipes then report them stopped)."""
        for process in self.processes:
            process.kill()

    def close(self) -> None:
        with _sigint_ignored():  # a second Ctrl-C must not leave workers or shared blocks behind
            for conn in self.conns:
                conn.close()  # the workers read end-of-file and return
            for process in self.processes:
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
            self.messengers.shutdown()
            for flat, block in zip(self.flats, self.flat_blocks):  # the optimizer goes on in private memory
                flat.move_to({name: np.empty_like(a) for name, a in zip(SHARED_FLAT, block.arrays)})
            if self.optimizer is not None:
                _shared_optimizers.discard(self.optimizer)
            self.copied_weights, self.shared_weight_views = [], []  # views of the blocks, which go now
            for shared in [self.weights, *self.gradients, *self.flat_blocks]:
                if shared is not None:
                    shared.release()


class DataParallel:
    """Run `loss_fn(model, *batch)` on slices of the batch (split along axis 0) in `workers`
    processes: this one and workers - 1 others, started here.

    workers=1 runs it in the calling process on the model, exactly as a plain call would.
    loss_fn is sent to the workers by name, so it must be a function that a new Python process
    can import (defined at the top level of a module, not in a notebook or a script's main
    block). The model is sent once, as it is now: its structure must not change afterwards
    (its weights may: they are shared at every call). The workers are spawned (fork is unsafe
    once BLAS has started its threads), so a script that makes a DataParallel needs the usual
    `if __name__ == "__main__":` guard. Only for models on the CPU: a GPU already runs each op
    on all its cores. close(), or the end of a `with` block, stops the workers (garbage
    collection and the end of the program do too).

    Given the model's AdamW, `step(optimizer)` shares its update out: every process updates an
    equal part of each flat buffer at once, instead of this one alone while the others wait.
    For that, the optimizer's buffers (weights, moments, gradient) live in shared memory while
    the workers run, which also saves copying those weights to the workers at every call.
    Write new weights into the arrays (p.data[...] = w), as the checkpoint loader does; a
    parameter whose array is replaced meanwhile is refused at the next call.
    """

    def __init__(self, model: Module, workers: int, optimizer: optim.AdamW | None = None):
        if workers < 1:
            raise ValueError(f"DataParallel: workers must be at least 1, got {workers}")
        if optimizer is not None and not isinstance(optimizer, optim.AdamW):
            raise TypeError(f"DataParallel shares the step of an AdamW optimizer, got {type(optimizer).__name__}")
        if optimizer in _shared_optimizers:
            raise ValueError("DataParallel: this optimizer is already shared by another DataParallel; "
                             "close that one first")
        self.model, self.workers = model, workers
        self.params = model.parameters()  # fixed objects: an optimizer swaps their .data, not them
        self._pool, self._closed = None, False
        if workers > 1:
            if any(p.device != "cpu" for p in self.params):
                raise ValueError("DataParallel with several workers runs on the CPU only")
            self._pool = _Workers(model, self.params, workers - 1, optimizer)
            self._closer = weakref.finalize(self, self._pool.close)

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the running workers (none for one worker, or once closed)."""
        return [] if self._pool is None or self._closed else [p.pid for p in self._pool.processes]

    def close(self) -> None:
        """Stop the worker processes and free their shared memory (a no-op for one worker)."""
        if self._pool is not None:
            self._closer()
        self._closed = True

    def loss(self, loss_fn: Callable[..., Tensor], *batch: Any, backward: bool = False) -> float:
        """The mean loss over the batch; with backward=True its gradient is also added to the
        model's .grad (as loss.backward() would). If any slice fails, .grad is left as it was."""
        n = len(batch[0])
        workers = max(1, min(self.workers, n))
        if workers == 1:
            loss = loss_fn(self.model, *batch)
            if backward:
                loss.backward()
            return loss.item()
        if self._closed:
            raise RuntimeError("DataParallel: the workers were stopped by close()")
        bounds = np.linspace(0, n, workers + 1).astype(int)  # (workers + 1,) slice edges, sizes within 1
        slices = [tuple(b[lo:hi] for b in batch) for lo, hi in zip(bounds[:-1], bounds[1:])]
        earlier = [p.grad for p in self.params]  # what .grad held before: put back on failure
        for p in self.params:
            p.grad = None
        try:
            losses, worker_grads = self._run_slices(loss_fn, slices, n, backward)
        except BaseException:
            for p, grad in zip(self.params, earlier):
                p.grad = grad
            raise
        if backward:
            self._sum_gradients(earlier, worker_grads)
        return float(sum(losses))

    def step(self, optimizer: optim.AdamW) -> None:
        """optimizer.step(). If it is the optimizer given to the constructor, each process
        updates its own part of every flat group, all at the same time (AdamW's update is
        element-wise, so the numbers are those of one process doing it all); any other
        optimizer (or after close()) steps here alone."""
        pool = self._pool
        if pool is None or self._closed or pool.optimizer is not optimizer:
            optimizer.step()
            return
        optimizer.step(run_updates=self._update_in_parts)

    def _update_in_parts(self, updates: optim.Updates) -> None:
        """Run AdamW's updates: piece 0 of each flat group here, piece i in worker i."""
        groups = [(self._pool.flats.index(flat), hyper) for flat, hyper in updates]
        parts = len(self._pool.conns) + 1
        messages = [_Update(groups, part, parts, np.geterr()) for part in range(1, parts)]

        def first_pieces() -> None:
            for flat, hyper in updates:
                optim.adamw_update(flat.arrays(), hyper, 0, parts)

        self._on_all_workers(messages, first_pieces)

    def _on_all_workers(self, messages: list[Any], own: Callable[[], Any]) -> tuple[Any, list[tuple]]:
        """Send messages[i] to worker i + 1 and run own() here meanwhile. Returns (what own
        returned, the workers' answers in order) once every worker has answered; raises
        RuntimeError for the first worker that failed."""
        pool = self._pool
        futures: list[Future] = []
        try:
            for conn, process, message in zip(pool.conns, pool.processes, messages):
                futures.append(pool.messengers.submit(_ask, conn, process, message))
            result = own()
        finally:
            _wait_for_all(futures, give_up=pool.kill)
        answers = [f.result() for f in futures]
        for i, answer in enumerate(answers, start=1):
            if answer[0] == "memory":
                raise MemoryError(f"DataParallel worker {i}: {answer[1]}")
            if answer[0] == "error":
                raise RuntimeError(f"DataParallel worker {i}: {answer[1]}")
        return result, answers

    def _run_slices(self, loss_fn: Callable[..., Tensor], slices: list[tuple], n: int,
                    backward: bool) -> tuple[list[float], list[list[Any]]]:
        """Slice 0 here, the others in the workers: (each slice's weighted loss, each worker's
        gradients as views of its shared block, None where it computed none)."""
        pool = self._pool
        if self.model.training:  # dropout: a stream per slice, seeded from nanograd's CPU generator
            seeds = list(backend.generator("cpu").integers(2**63, size=len(slices)))
        else:
            seeds = [None] * len(slices)
        caller = dict(backward=backward, training=self.model.training, float_errors=np.geterr(),
                      requires_grad=[p.requires_grad for p in self.params], grad_enabled=is_grad_enabled())
        tasks = [_Task(loss_fn, part, seed, len(part[0]) / n, **caller) for part, seed in zip(slices, seeds)]
        pool.refresh_weights()  # the workers see the weights as they are now
        with _one_blas_thread():
            own, answers = self._on_all_workers(tasks[1:], lambda: _run_task(self.model, tasks[0]))
        grads = [[g if present else None for g, present in zip(shared.arrays, answer[2])]
                 for answer, shared in zip(answers, pool.gradients)]
        return [own] + [answer[1] for answer in answers], grads

    def _sum_gradients(self, earlier: list[Any], worker_grads: list[list[Any]]) -> None:
        """.grad = what it held before + this process's slice (now in .grad) + each worker's,
        added in worker order so that a run repeats exactly."""
        for i, (p, before) in enumerate(zip(self.params, earlier)):
            total = p.grad  # this process's own array: free to add into
            for grads in worker_grads:
                if grads[i] is None:
                    continue
                if total is None:
                    total = grads[i].copy()  # a copy: the shared block is rewritten next call
                else:
                    total += grads[i]
            p.grad = total if before is None or total is None else before + total
