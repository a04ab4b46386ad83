"""Every use of pyinfra internals (names outside its documented API) lives here, and only here.

comfyfleet drives pyinfra from Python (:mod:`comfyfleet.runner`) and reads a few things
pyinfra does not publish: the real Host behind the ``host`` proxy, each operation's metadata
while a run executes, the known_hosts memo, the inner generator of a stock operation, and its
SSH client (ssh_config, known hosts, host-key policy) for tunnels.
``tests/test_pyinfra_compat.py`` checks each of these against the installed pyinfra, so an
upgrade that moves one fails there, loudly, naming it, instead of somewhere in a deploy.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra.api import Host, State
from pyinfra.api import arguments as pyinfra_arguments
from pyinfra.api import facts as pyinfra_facts
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_host_op, run_ops
from pyinfra.connectors.sshuserclient.client import SSHClient, get_host_keys
from pyinfra.context import ContextObject, ctx_host, ctx_state
from pyinfra.operations import files

__all__ = [
    "add_deploy",
    "all_ops_complete",
    "cache_argument_types",
    "changes_so_far",
    "connect_all",
    "ctx_host",
    "ctx_state",
    "disconnect_all",
    "forget_known_hosts",
    "inner_commands",
    "put_file_commands",
    "real_host",
    "run_host_op",
    "run_ops",
    "ssh_client",
]


def cache_argument_types() -> None:
    """Read pyinfra's global-argument type hints once per process instead of on every call.

    ``pop_global_arguments`` (every operation and deploy call, per host) and ``get_fact`` call
    ``all_global_arguments()``, which runs ``typing.get_type_hints`` on a class that never changes:
    a few ms of CLI CPU per host per run, for nothing.
    """
    current = pyinfra_arguments.all_global_arguments
    if getattr(current, "comfyfleet_cached", False):
        return
    hints = list(current())

    def cached() -> list[tuple[str, type]]:
        return list(hints)

    cached.comfyfleet_cached = True  # type: ignore[attr-defined]
    pyinfra_arguments.all_global_arguments = cached  # type: ignore[assignment]
    pyinfra_facts.all_global_arguments = cached  # type: ignore[assignment]


def real_host(host: Any) -> Host:
    """The real Host behind pyinfra's ``host`` proxy.

    The proxy is one immortal object hashing as whichever host is current: as a dict or weak
    key it would never expire, and a later Host at a reused address would get this one's values.
    """
    return host._get_module() if isinstance(host, ContextObject) else host


def changes_so_far(host: Host) -> int:
    """How many completed operations changed something on this host so far in its run."""
    state = getattr(host, "state", None)
    if state is None or host not in state.ops:
        return 0
    return sum(
        1
        for op in state.ops[host].values()
        if op.operation_meta.is_complete() and op.operation_meta.did_change()
    )


def op_meta(state: State, host: Host, op_hash: str) -> Any:
    """The OperationMeta of one operation on one host (None when the host does not run it)."""
    op_data = state.ops[host].get(op_hash)
    return None if op_data is None else op_data.operation_meta


def op_arguments(state: State, host: Host, op_hash: str) -> dict[str, Any]:
    """The global arguments (``_if``, ``_ignore_errors``, ...) one operation was added with."""
    op_data = state.ops[host].get(op_hash)
    return {} if op_data is None else dict(op_data.global_arguments)


def all_ops_complete(state: State, host: Host) -> bool:
    """Whether every operation of the host ran (False when it has none)."""
    ops = state.ops[host].values()
    return bool(ops) and all(op.operation_meta.is_complete() for op in ops)


def forget_known_hosts() -> None:
    """Make pyinfra read known_hosts files afresh.

    pyinfra memoizes each known_hosts file's content for the life of the process, so in a
    long-lived process (the scheduler, a test session) a host whose key was added after an
    earlier run, or a rebuilt host with a new key, would fail strict host key checking.
    """
    cache = getattr(get_host_keys, "cache", None)
    if isinstance(cache, dict):
        cache.clear()


def inner_commands(op: Any, *args: Any, **kwargs: Any) -> Generator[Any, None, None]:
    """The commands of an operation (ours or pyinfra's) yielded from inside another operation.

    ``@operation`` keeps the undecorated generator as ``_inner``; calling the operation itself
    there would add a nested operation instead.
    """
    yield from op._inner(*args, **kwargs)


def put_file_commands(src: str, dest: str, mode: str) -> Generator[Any, None, None]:
    """The commands of pyinfra's ``files.put`` inside another operation."""
    yield from inner_commands(files.put, src=src, dest=dest, mode=mode)


def ssh_client(
    hostname: str,
    *,
    port: int | None,
    user: str | None,
    key: str | None,
    key_password: str | None,
    password: str | None,
    known_hosts_file: str | None,
    strict_host_key_checking: str | None,
    config_file: str | None,
    timeout: float,
) -> SSHClient:
    """A paramiko client connected to a host as pyinfra's SSH connector connects to it.

    pyinfra's own client class: the same ssh_config lookup, known_hosts file(s) and
    host-key policy (``accept-new`` when not set, pyinfra's default), the key file
    (then no agent and no key search) or else the agent and ~/.ssh keys. Raises paramiko's
    and the socket's errors; the caller names the host.
    """
    kwargs: dict[str, Any] = {"timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout}
    if port:
        kwargs["port"] = int(port)
    if user:
        kwargs["username"] = user
    if password:
        kwargs["password"] = password
    if key:
        kwargs.update(key_filename=key, passphrase=key_password, allow_agent=False, look_for_keys=False)
    client = SSHClient()
    try:
        client.connect(
            hostname,
            _pyinfra_ssh_config_file=config_file,
            _pyinfra_ssh_known_hosts_file=known_hosts_file,
            _pyinfra_ssh_strict_host_key_checking=strict_host_key_checking or "accept-new",
            **kwargs,
        )
    except BaseException:
        client.close()
        raise
    return client
