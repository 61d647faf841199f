"""Training on several MPI ranks (nanograd.distributed): starting them, and keeping them
together when something goes wrong.

`python -m gpt.train` starts itself under mpiexec where more than one process pays
(TrainConfig.data_parallel_workers), so that the quick start uses every core with no extra
step. Started by hand (`mpiexec -n N python -m gpt.train ...`), it runs as it is told.

The ranks meet in collective calls (the gradients' Allreduce at every step): a rank that
stopped alone would leave the others waiting for it forever. So wherever the ranks could
part, they first agree: `together` runs a piece of work on every rank and has every rank
raise the first rank's error, if any rank had one; `from_rank0` and `rank0_first` do the
same for work that rank 0 does first or alone (reading a checkpoint, tokenizing the corpus,
claiming the run's directory). An error that strikes one rank alone later on (running out of
memory, a checkpoint that cannot be written) ends that rank at once (gpt.errors.exit_status),
and the launcher then ends the others.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

from nanograd.distributed import World

from .errors import UserError, every_rank

T = TypeVar("T")

NO_MPI = "MPI is not installed (pip install mpi4py mpich): training in one process"


def together(world: World, fn: Callable[[], T]) -> T:
    """fn() on every rank. If it raised a UserError, an OSError or a MemoryError on any rank,
    every rank raises the error of the first such rank, marked as raised on every rank (so
    rank 0 alone reports it); otherwise each rank returns its own result."""
    try:
        result, error = fn(), None
    except (UserError, OSError, MemoryError) as exc:
        result, error = None, exc
    world.barrier()  # (asleep while a rank is still at work)
    raised = [e for e in world.gather(error) if e is not None]
    if raised:
        raise every_rank(raised[0])
    return result


def from_rank0(world: World, fn: Callable[[], T]) -> T:
    """fn() on rank 0 alone, its result sent to every rank (its errors raised on every rank)."""
    return world.broadcast(together(world, fn if world.rank == 0 else lambda: None))


def rank0_first(world: World, fn: Callable[[], T]) -> T:
    """fn() on rank 0, then, once it has returned, on the other ranks: for work that leaves
    files that the others then read instead of making them again (a tokenized corpus)."""
    first = together(world, fn if world.rank == 0 else lambda: None)
    return together(world, (lambda: first) if world.rank == 0 else fn)


@contextlib.contextmanager
def on_rank0(world: World, context: contextlib.AbstractContextManager) -> Iterator[None]:
    """The block runs inside context on rank 0 (outside it on the others); an error entering it
    is raised on every rank."""
    with contextlib.ExitStack() as stack:
        together(world, (lambda: stack.enter_context(context)) if world.rank == 0 else lambda: None)
        yield


@contextlib.contextmanager
def silent_unless(speaks: bool) -> Iterator[None]:
    """stdout and stderr dropped in this block, unless speaks: every rank parses the flags,
    and rank 0 alone says what is wrong with them (or prints --help)."""
    if speaks:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def find_mpiexec() -> str | None:
    """The mpiexec that starts ranks of the MPI that mpi4py loads, or None without mpi4py or
    an mpiexec. The mpich wheel installs mpiexec beside this Python (a virtual environment's
    bin/) and the MPI library in that environment's lib/, where mpi4py looks first; a system
    MPI's mpiexec is found on the PATH."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


# What MPICH's mpiexec (hydra) prints on stdout of its own: Ctrl-C forwarded, and a banner of
# ten lines when a rank is killed. The trainer says each in one line instead.
_HYDRA_NOTICE = re.compile(r"\[mpiexec@[^\]]*\] (Sending Ctrl-C to processes as requested|Press Ctrl-C again)")
_BANNER_LINE = re.compile(r"=+$|=   |YOUR APPLICATION TERMINATED WITH|This typically refers to a problem|"
                          r"Please see the FAQ page")
_KILLED = re.compile(r"=   PID (\d+) RUNNING AT (\S+)|EXIT STRING: .*\(signal (\d+)\)")


def run_under_mpiexec(mpiexec: str, processes: int, command: list[str], after_kill: str) -> int:
    """Run command as `processes` ranks under mpiexec, passing their output on, and return the
    exit status of the job.

    mpiexec runs in its own session, so that a Ctrl-C at the terminal reaches it once, from
    here (it passes it on to every rank), rather than twice, which it would take as a request
    to kill them. A rank that is killed (by the system's out-of-memory killer, or kill -9)
    ends the job; mpiexec's banner about it is replaced by one line ending in after_kill, and
    the status is then 128 + the signal, as a shell reports a killed process."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1",  # the ranks' lines as they are written
                   "COLUMNS": str(shutil.get_terminal_size().columns)}  # the progress bar's width, through pipes
    process = subprocess.Popen([mpiexec, "-n", str(processes), *command], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment,
                               start_new_session=True)
    killed: dict[str, str] = {}
    copies = [threading.Thread(target=_copy_output, args=(process.stdout, sys.stdout, killed)),
              threading.Thread(target=_copy_output, args=(process.stderr, sys.stderr, None))]
    for copy in copies:
        copy.start()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: process.send_signal(signal.SIGINT)) \
        if main_thread else None
    try:
        status = process.wait()
        for copy in copies:
            copy.join()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if "signal" not in killed:
        return status
    where = f" (pid {killed['pid']} on {killed['host']})" if "pid" in killed else ""
    signum = int(killed["signal"])
    why = ", as the system does when it runs out of memory" if signum == signal.SIGKILL else ""
    print(f"error: a training process{where} was killed ({signal.Signals(signum).name}{why}); {after_kill}",
          file=sys.stderr)
    return 128 + signum


def _copy_output(source: BinaryIO, sink: TextIO, killed: dict[str, str] | None) -> None:
    """Pass a rank stream on to sink as it comes. With `killed` (mpiexec's stdout), line by line,
    leaving out mpiexec's own notices and banner, whose pid, host and signal go into killed."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two reads
    partial, held = "", ""  # (killed only) the text after the last newline; blank lines held back
    for chunk in iter(lambda: os.read(source.fileno(), 1 << 16), b""):
        text = decoder.decode(chunk)
        if killed is None:
            sink.write(text)
        else:
            *lines, partial = (partial + text).split("\n")
            for line in lines:
                held = _filter_line(line, held, sink, killed)
        sink.flush()
    if killed is not None and held + partial:
        sink.write(held + partial)
        sink.flush()


def _filter_line(line: str, held: str, sink: TextIO, killed: dict[str, str]) -> str:
    """Write line unless it is mpiexec's, and return the blank lines now held back: a banner
    opens with one, which goes with the banner."""
    if _HYDRA_NOTICE.match(line):
        return held
    if _BANNER_LINE.match(line):
        sink.write(held[:-1])  # the rank's blank lines: all but the one that opens the banner
        for match in _KILLED.finditer(line):
            pid, host, signum = match.groups()
            killed.update({k: v for k, v in (("pid", pid), ("host", host), ("signal", signum)) if v})
        return ""
    if not line:
        return held + "\n"
    sink.write(held + line + "\n")
    return ""
