"""Errors a user can cause. The CLI turns them into one line and exit code 2."""


class BadInput(Exception):
    """Input the user can fix: names the file / node id / host and what to do.

    The message is printed as one line; keep it actionable.
    """


class HostFailure(Exception):
    """A step failed on a host (exit code 1 at the CLI, other hosts go on)."""
