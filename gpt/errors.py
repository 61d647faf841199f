"""User-facing errors, and the one place that turns them into a message and an exit status."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (a file, a flag, a checkpoint): printed as 'error: ...', exit 2."""


def exit_status(run: Callable[[], object]) -> int:
    """Call run(); 0 if it returns, 2 (after one 'error: ...' line on stderr) on a UserError."""
    try:
        run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
