"""User-facing errors, and the one place that turns them into a message and an exit status."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (a file, a flag, a checkpoint): printed as 'error: ...', exit 2."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that was handled (say, by saving a checkpoint): its message says what was kept."""


def exit_status(run: Callable[[], object], interrupted: str = "interrupted") -> int:
    """Call run() and turn how it ended into an exit status, with at most one line on stderr:

    0 if it returns; 2 on a UserError, on a file that cannot be read or written (a directory
    that is a file, no permission...) or on running out of memory (sizes too large); 130 on
    Ctrl-C (printing an Interrupted's own message, else `interrupted`); 1, silently, when the
    reader of stdout went away (`python -m gpt.sample | head`).
    """
    try:
        run()
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so that Python's exit flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"error: out of memory ({str(exc) or 'no details'}); try smaller sizes", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(str(exc) if isinstance(exc, Interrupted) else interrupted, file=sys.stderr)
        return 130
    return 0
