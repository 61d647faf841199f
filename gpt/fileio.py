"""Writing files atomically, so a crash or Ctrl-C mid-write never leaves a half-written file, and
claiming a run's directory, so two runs never write into one."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _umask() -> int:
    """The process's umask, read from /proc on Linux (setting it to read it, the only portable
    way, would briefly change it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(f) on a temporary file beside path, flush it to disk, then rename it over path.

    The rename is atomic (POSIX and Windows), so readers see either the old file or the new
    one, whole; if write fails, the temporary file is removed and the old file is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


LOCK_NAME = "train.lock"


@contextlib.contextmanager
def claim_directory(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on directory/train.lock while the block runs, so that a second
    run started in the same directory is refused (a UserError naming the first run's pid)
    instead of silently replacing its checkpoints and interleaving its log.

    The kernel drops an flock when its process ends, however it ends (a crash, SIGKILL), so a
    lock file left behind by a dead run never blocks the next one. Without fcntl (Windows)
    nothing is claimed."""
    if fcntl is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another run (pid {_lock_holder(fd)}) is training in {directory}: wait for it to "
                            "finish, or choose another --out-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # (closing it drops the lock)


def _lock_holder(fd: int) -> str:
    """The pid that the lock's holder wrote into the lock file. It writes it just after taking
    the lock, so an empty file may only mean that it has not yet: wait a moment for it."""
    for _ in range(100):
        pid = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.01)
    return "unknown"
