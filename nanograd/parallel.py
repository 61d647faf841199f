"""Data parallelism on the CPU: the batch is split over worker threads, a slice each.

Why it pays: BLAS already spreads a matrix product over every core, but NumPy runs all the
element-wise work (GELU, LayerNorm, softmax, the residual adds...) on one core. With the batch
split, every core works on every op. NumPy releases the GIL inside its array loops and matrix
products, so the threads really do run at once; BLAS is held to one thread per worker meanwhile
(the workers are the parallelism, and idle BLAS threads spin on the cores the workers need).

Each worker runs forward and backward through its own replica of the model: its own Parameter
objects, and so its own .grad, over the same weight arrays. The loss is a mean over the batch,
so the whole batch's gradient is the mean of the slices' gradients weighted by their sizes:
worker i starts its backward from n_i / N instead of 1, and the replicas' gradients are summed
in worker order, so a run gives the same numbers every time.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from typing import Any

import numpy as np

from . import backend
from .nn.module import Module, Parameter
from .tensor import Tensor

_blas_controller = None


def _one_blas_thread() -> Any:
    """A context in which BLAS uses one thread (threadpoolctl; NumPy has no API for it)."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def default_workers() -> int:
    """One worker per thread that BLAS would use: one per core, unless OPENBLAS_NUM_THREADS or
    OMP_NUM_THREADS says otherwise."""
    from threadpoolctl import threadpool_info

    counts = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    return max(counts, default=os.cpu_count() or 1)


def _wait_for_all(futures: list[Future]) -> None:
    """Wait until every worker is done, even if one fails or Ctrl-C arrives meanwhile (then
    raised afterwards): no worker may still be writing gradients, or calling BLAS after its
    one-thread limit is lifted, once the step is over."""
    interrupted = False
    while True:
        try:
            wait(futures)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


class DataParallel:
    """Run `loss_fn(model, *batch)` on slices of the batch (split along axis 0) in worker threads.

    workers=1 runs it in the calling thread on the model itself, exactly as a plain call would.
    Only for models on the CPU: a GPU already runs each op on all its cores.
    """

    def __init__(self, model: Module, workers: int):
        if workers < 1:
            raise ValueError(f"DataParallel: workers must be at least 1, got {workers}")
        self.model, self.workers = model, workers
        self.params = model.parameters()  # fixed objects: an optimizer swaps their .data, not them
        self.replicas: list[Module] = []  # none for one worker: it uses the model itself
        self.replica_params: list[list[Parameter]] = []  # per replica, in model.parameters() order
        self.pool = None
        if workers > 1:
            shared = {id(p.data): p.data for p in self.params}  # deepcopy keeps these, not copies
            self.replicas = [copy.deepcopy(model, memo=dict(shared)) for _ in range(workers)]
            self.replica_params = [r.parameters() for r in self.replicas]
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="nanograd-worker")

    def loss(self, loss_fn: Callable[..., Tensor], *batch: Any, backward: bool = False) -> float:
        """The mean loss over the batch; with backward=True its gradient is also added to the
        model's .grad (as loss.backward() would)."""
        n = len(batch[0])
        workers = min(self.workers, n)
        if workers == 1:
            loss = loss_fn(self.model, *batch)
            if backward:
                loss.backward()
            return loss.item()
        if self.params[0].device != "cpu":
            raise ValueError("DataParallel with several workers runs on the CPU only")
        bounds = np.linspace(0, n, workers + 1).astype(int)  # (workers + 1,) slice edges, sizes within 1
        slices = [tuple(b[lo:hi] for b in batch) for lo, hi in zip(bounds[:-1], bounds[1:])]
        # dropout: a stream per worker, seeded from the model's generator so a seeded run repeats
        seeds = backend.generator("cpu").integers(2**63, size=workers) if self.model.training else [None] * workers
        self._sync(workers)
        with _one_blas_thread():
            futures = [self.pool.submit(self._worker, replica, loss_fn, part, seed, len(part[0]) / n, backward)
                       for replica, part, seed in zip(self.replicas, slices, seeds)]
            _wait_for_all(futures)
        losses = [f.result() for f in futures]  # in order; re-raises a worker's exception
        if backward:
            self._gather_gradients(workers)
        return float(sum(losses))

    @staticmethod
    def _worker(replica: Module, loss_fn: Callable[..., Tensor], part: tuple, seed: int | None,
                weight: float, backward: bool) -> float:
        """One slice: its loss times weight (its share of the batch), and that loss's gradient."""
        rng = nullcontext() if seed is None else backend.thread_generator(np.random.default_rng(seed))
        with rng:
            loss = loss_fn(replica, *part)
            if backward:
                loss.backward(np.full(loss.shape, weight))  # d(weight * loss) = weight * d(loss)
        return loss.item() * weight

    def _sync(self, workers: int) -> None:
        """Point the first `workers` replicas at the model's current arrays, mode and frozen
        parameters (an optimizer may have swapped in views of its own buffer, the model may be
        in eval mode now, or some parameters no longer require a gradient)."""
        for replica, replica_params in zip(self.replicas[:workers], self.replica_params):
            for mine, theirs in zip(replica_params, self.params):
                mine.data, mine.grad, mine.requires_grad = theirs.data, None, theirs.requires_grad
            replica.train(self.model.training)

    def _gather_gradients(self, workers: int) -> None:
        """model .grad += the sum of the first `workers` replicas' .grad, added in worker order;
        the replicas let go of theirs (no copies of the gradients stay alive between steps)."""
        for i, p in enumerate(self.params):
            grads = [params[i].grad for params in self.replica_params[:workers] if params[i].grad is not None]
            for params in self.replica_params[:workers]:
                params[i].grad = None
            if not grads:
                continue
            total = grads[0]  # a replica's own array, free to reuse
            for g in grads[1:]:
                total += g
            p.grad = total if p.grad is None else p.grad + total
