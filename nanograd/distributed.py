"""Data parallelism over MPI: every process (a rank) holds the whole model and computes the
gradient of its share of the batch; one Allreduce then sums the ranks' gradients, so that
every rank takes the same optimizer step and the models stay equal.

    mpiexec -n 2 python -m gpt.train                 # two ranks on this machine
    mpiexec -f hosts -n 8 python -m gpt.train        # eight, on the machines listed in hosts

MPI is the standard for this: on clusters NumPy codes sum their gradients with MPI's
Allreduce, as Horovod does and as PyTorch's DistributedDataParallel does underneath. The
gradients go into one contiguous buffer first, so that each step sends one message instead
of one per tensor. The sum is a plain sum: each rank scales its loss by its share of the
whole batch before backward, so the sum is the gradient of the whole batch's mean loss,
however the batch was split.

A process that an MPI launcher (mpiexec, srun) did not start is a world of one rank: every
call here then does nothing, and mpi4py is not imported at all. run_as_ranks starts a command
as several ranks under mpiexec, for a program that starts itself that way.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import backend
from .nn.module import Parameter

T = TypeVar("T")

# Set in every process that an MPI launcher starts: MPICH's hydra, Intel MPI and Slurm's PMI
# (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), PMIx (PMIX_RANK), MVAPICH (MV2_COMM_WORLD_SIZE).
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")

BARRIER_POLL_S = 0.001  # see World.barrier


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process (as one of its ranks, perhaps the only one)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


class World:
    """This process's place among the ranks: rank (0 .. size - 1), and local_rank among the
    local_size ranks on this machine. World() is a world of one; World(comm) wraps an mpi4py
    communicator (world() makes the usual one)."""

    def __init__(self, comm: Any = None):
        self.comm = comm
        self.rank, self.size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
        self.local_rank, self.local_size = self.rank, self.size
        if comm is not None:
            from mpi4py import MPI

            local = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this machine's memory
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()

    def share_the_machine(self, device: str) -> None:
        """Give this rank its share of the machine it runs on: the cores, shared out among the
        ranks there as BLAS threads, and on a machine with several GPUs, the GPU of its local rank."""
        if self.local_size > 1:
            backend.limit_blas_threads(max(1, backend.blas_threads() // self.local_size))
            if device == "cuda":
                backend.use_cuda_device(self.local_rank)

    def all_reduce_gradients(self, params: Iterable[Parameter]) -> None:
        """Sum every parameter's .grad over the ranks, in place: afterwards each rank holds the
        same sums. One MPI Allreduce per dtype, on one flat buffer of all the gradients. A
        parameter without a gradient on some ranks gets the sum of the others'; one without a
        gradient on any rank keeps .grad None (so the optimizer leaves it alone, as it would
        in one process). GPU gradients cross through host memory. A no-op for one rank."""
        if self.size == 1:
            return
        from mpi4py import MPI

        params = list(params)
        for dtype in dict.fromkeys(p.dtype for p in params):
            group = [p for p in params if p.dtype == dtype]
            xp = backend.array_module(group[0].data)
            # the gradients end to end, then one number per parameter: 1 where this rank has its gradient
            flat = xp.concatenate([p.grad.reshape(-1) if p.grad is not None else xp.zeros(p.size, dtype) for p in group]
                                  + [xp.asarray([p.grad is not None for p in group], dtype)])
            host = backend.to_numpy(flat)  # (the same array on the CPU)
            self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            flat = backend.to_device(host, backend.device_of(flat))
            start = 0
            for p, ranks_with_grad in zip(group, host[-len(group):]):
                p.grad = flat[start : start + p.size].reshape(p.shape) if ranks_with_grad else None
                start += p.size

    def all_sum(self, array: Any) -> Any:
        """array (NumPy or CuPy) summed over the ranks: a new array on its device."""
        if self.size == 1:
            return array
        from mpi4py import MPI

        host = np.ascontiguousarray(backend.to_numpy(array))
        self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        return backend.to_device(host, backend.device_of(array))

    def sum(self, value: float | Sequence[float]) -> Any:
        """value (a number, or several in one message) summed over the ranks, in float64."""
        if self.size == 1:
            return value
        from mpi4py import MPI

        total = np.array(value, np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        return total.tolist()

    def any(self, flag: bool) -> bool:
        """Whether flag is true on any rank: the ranks decide together (to stop, say)."""
        return self.sum(float(flag)) > 0

    def broadcast(self, value: T) -> T:
        """Rank 0's value, on every rank (any picklable object: sent, never stored)."""
        return value if self.size == 1 else self.comm.bcast(value, root=0)

    def gather(self, value: T) -> list[T]:
        """Every rank's value, in rank order, on every rank."""
        return [value] if self.size == 1 else self.comm.allgather(value)

    def abort(self, status: int) -> None:
        """End every rank of the job now, from this one (MPI_Abort): for a failure on this rank
        alone, which would leave the others waiting for it forever in their next collective call."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            self.comm.Abort(status)
        os._exit(status)

    def barrier(self) -> None:
        """Wait until every rank gets here, asleep between looks: MPI's own Barrier keeps a
        core busy while it waits, which a rank still at work (or another program) may need."""
        if self.size > 1:
            arrived = self.comm.Ibarrier()
            while not arrived.Test():
                time.sleep(BARRIER_POLL_S)


def find_mpiexec() -> str | None:
    """The mpiexec that starts ranks of the MPI that mpi4py loads, or None without mpi4py or an
    mpiexec. The mpich wheel installs mpiexec beside this Python (a virtual environment's bin/)
    and the MPI library in that environment's lib/, where mpi4py looks first; a system MPI's
    mpiexec is found on the PATH."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def run_as_ranks(mpiexec: str, processes: int, command: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run command as `processes` ranks under mpiexec, its output passed through as it is, and
    return mpiexec's exit status. mpiexec runs in a session of its own, so that a Ctrl-C at the
    terminal reaches it once, from here (it passes it on to every rank), not twice (which it
    would take as a request to kill them)."""
    process = subprocess.Popen([mpiexec, "-n", str(processes), *command], stdin=subprocess.DEVNULL,
                               env=env, start_new_session=True)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: process.send_signal(signal.SIGINT))
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def world() -> World:
    """The ranks of this MPI job, or a world of one where no MPI launcher started this process.
    Made once per process (MPI is initialised once)."""
    global _world
    if _world is None:
        if launched_by_mpi():
            from mpi4py import MPI  # (importing it initialises MPI)

            _world = World(MPI.COMM_WORLD)
        else:
            _world = World()
    return _world


_world: World | None = None
