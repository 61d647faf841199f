"""User-facing errors, Ctrl-C, and the one place that turns them into a message and an exit status."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """Bad input from the user (a file, a flag, a checkpoint): printed as 'error: ...', exit 2."""


class RunStops(UserError):
    """A reason for a training run to stop that every process of it meets at the same point,
    from numbers they all hold alike (a loss summed over them, weights that the same update
    keeps equal, timings they averaged): each raises it, and one says why."""


class Diverged(RunStops):
    """A loss, weights or optimizer moments that are no longer finite."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that was handled (say, by saving a checkpoint): its message says what was kept."""


def attempt(run: Callable[[], T], interrupted: str = "interrupted") -> tuple[int | None, T | None]:
    """(None, run()), or, where run raised what a user can cause, (its exit status, None) after
    one line on stderr: 2 on a UserError, on a file that cannot be read or written (a directory
    that is a file, no permission...) or on running out of memory (sizes too large); 130 on
    Ctrl-C (an Interrupted's own message, else `interrupted`); 1, silently, when the reader of
    stdout went away (`python -m gpt.sample | head`); argparse's own status after --help."""
    try:
        return None, run()
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so that Python's exit flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1, None
    except SystemExit as exc:  # (argparse's --help)
        return exc.code if isinstance(exc.code, int) else 2, None
    except (UserError, OSError, MemoryError, KeyboardInterrupt) as exc:
        status, message = error_line(exc, interrupted)
        print(message, file=sys.stderr)
        return status, None


def exit_status(run: Callable[[], object], interrupted: str = "interrupted", world: Any = None) -> int:
    """run()'s exit status: 0 where it returns, else as attempt() reports it.

    With several MPI ranks (world, a nanograd.distributed.World), an error that every rank
    raises at once (RunStops, Interrupted) is reported by rank 0. Any
    other is this rank's alone: it says so, naming the rank, and ends the whole job from here
    (World.abort, as mpi4py's runner does), or the other ranks would wait for it forever."""
    if world is None or world.size == 1:
        return attempt(run, interrupted)[0] or 0
    try:
        run()
        return 0
    except (RunStops, Interrupted) as exc:
        status, message = error_line(exc)
        if world.rank == 0:
            print(message, file=sys.stderr)
        return status
    except BaseException as exc:
        if isinstance(exc, (UserError, OSError, MemoryError, KeyboardInterrupt)):
            status, message = error_line(exc, interrupted)
        else:  # a bug
            status, message = 1, traceback.format_exc().rstrip()
        print(f"{message} (rank {world.rank} of {world.size})", file=sys.stderr)
        world.abort(status)
        raise  # (abort does not return)


def error_line(exc: BaseException, interrupted: str = "interrupted") -> tuple[int, str]:
    """The exit status and the one line that report an error (see attempt)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130, str(exc) if isinstance(exc, Interrupted) else interrupted
    if isinstance(exc, MemoryError):
        return 2, f"error: out of memory ({str(exc) or 'no details'}); try smaller sizes"
    return 2, f"error: {exc}"


@contextlib.contextmanager
def ctrl_c_sets_a_flag() -> Iterator[Callable[[], bool]]:
    """While inside, a first Ctrl-C only sets a flag, which the function yielded reads: the
    training loop then stops between steps, never leaving a half-updated model to save. A
    second Ctrl-C interrupts at once (the last checkpoint written stays whole)."""
    pressed = False

    def on_ctrl_c(signum: int, frame: Any) -> None:
        nonlocal pressed
        if pressed:
            raise KeyboardInterrupt
        pressed = True

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, previous)
