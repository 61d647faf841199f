"""The one exception type the command-line tools turn into a one-line message."""


class UserError(ValueError):
    """Bad input from the user (a file, a flag, a checkpoint): printed as 'error: ...', exit 2."""
