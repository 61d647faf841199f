"""User-facing errors, and the one place that turns them into a message and an exit status."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (a file, a flag, a checkpoint): printed as 'error: ...', exit 2."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that was handled (say, by saving a checkpoint): its message says what was kept."""


def every_rank(exc: BaseException) -> BaseException:
    """Mark exc as raised by every rank of a run at the same point (from numbers the ranks
    agreed on, or by gpt.ranks.together), so that rank 0 alone reports it."""
    exc.every_rank = True
    return exc


def exit_status(run: Callable[[], object], interrupted: str = "interrupted", rank: int = 0, ranks: int = 1) -> int:
    """Call run() and turn how it ended into an exit status, with at most one line on stderr:

    0 if it returns; 2 on a UserError, on a file that cannot be read or written (a directory
    that is a file, no permission...) or on running out of memory (sizes too large); 130 on
    Ctrl-C (printing an Interrupted's own message, else `interrupted`); 1, silently, when the
    reader of stdout went away (`python -m gpt.sample | head`).

    One of several ranks (MPI processes of one run) reports an error that every rank raised
    (every_rank) through rank 0 alone. Any other error, a bug's traceback included, stops
    this rank at once, saying which rank it was: mpiexec then ends the other ranks, which
    would otherwise wait for this one forever in their next collective call.
    """
    try:
        run()
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so that Python's exit flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except (UserError, OSError, MemoryError, KeyboardInterrupt) as exc:
        status, message = _status(exc, interrupted)
        if ranks == 1 or getattr(exc, "every_rank", False):  # every rank stops here: rank 0 says why
            if rank == 0:
                print(message, file=sys.stderr)
            return status
        # this rank alone says so (but a Ctrl-C, which mpiexec gives every rank, is rank 0's to report)
        if not isinstance(exc, KeyboardInterrupt):
            print(f"{message} (rank {rank} of {ranks})", file=sys.stderr)
        elif rank == 0:
            print(message, file=sys.stderr)
        _stop_now(status)
    except Exception:
        if ranks == 1:
            raise
        traceback.print_exc()  # a bug, on this rank alone
        print(f"(rank {rank} of {ranks})", file=sys.stderr)
        _stop_now(1)
    return 0


def _status(exc: BaseException, interrupted: str) -> tuple[int, str]:
    """The exit status and the line that report an error (see exit_status)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130, str(exc) if isinstance(exc, Interrupted) else interrupted
    if isinstance(exc, MemoryError):
        return 2, f"error: out of memory ({str(exc) or 'no details'}); try smaller sizes"
    return 2, f"error: {exc}"


def _stop_now(status: int) -> None:
    """End this process at once, without the exit handlers: MPI's would wait for the other ranks."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
