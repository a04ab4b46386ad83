"""Shell scripts with untrusted values passed as positional parameters, never spliced in.

``script(BODY, a, b)`` becomes ``sh -c 'BODY' comfyfleet 'a' 'b'``: the body is a
constant written in this package and every value reaches it as ``"$1"``, ``"$2"``,
each one quoted by pyinfra's :class:`QuoteString`. A value such as ``$(rm -rf /)``
stays a literal string.
"""

from __future__ import annotations

from pyinfra.api import QuoteString, StringCommand


def script(body: str, *args: object) -> StringCommand:
    """A ``sh -c`` command running the constant ``body`` with ``args`` as ``$1``, ``$2``, ..."""
    return StringCommand("sh", "-c", QuoteString(body), "comfyfleet", *(QuoteString(str(a)) for a in args))


def fail(message: str) -> StringCommand:
    """A command that prints ``message`` to stderr and fails the operation on this host.

    Operations yield this instead of raising: an exception inside an operation at
    execution time would stop every host, a failing command stops only this one and
    its message becomes the host's reason in the summary.
    """
    return script('printf "%s\\n" "$1" >&2; exit 1', message)
