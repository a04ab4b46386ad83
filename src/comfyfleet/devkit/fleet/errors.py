"""Errors of the test fleet."""


class FleetUnavailable(RuntimeError):
    """The fleet cannot run on this machine (no engine, not root, no debootstrap); says what to do."""
