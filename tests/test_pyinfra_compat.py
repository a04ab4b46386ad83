"""The pyinfra internals comfyfleet relies on, checked against the installed pyinfra.

Everything comfyfleet reads from outside pyinfra's documented API goes through
comfyfleet.pyinfra_compat; these tests run a real pyinfra run on the @local connector and
fail, naming the internal, when a pyinfra upgrade moves one.
"""

from __future__ import annotations

import pyinfra
from pyinfra.api import Config, Inventory, State
from pyinfra.api.operation import add_op
from pyinfra.connectors.sshuserclient.client import get_host_keys
from pyinfra.operations import files, server

from comfyfleet import pyinfra_compat as compat
from comfyfleet.context import host_run, report
from comfyfleet.inventory import run_data


def test_a_real_local_run_exposes_what_comfyfleet_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    compat.connect_all(state)
    (host,) = list(inventory)
    marker = tmp_path / "marker"
    add_op(state, server.shell, name="changes", commands=[f"touch {marker}"])
    add_op(state, server.shell, name="conditional", commands=["true"], _if=lambda: True)
    assert compat.changes_so_far(host) == 0, "OperationMeta.is_complete/did_change before the run"
    compat.run_ops(state)
    compat.disconnect_all(state)
    assert marker.exists()
    hashes = state.get_op_order()
    assert compat.changes_so_far(host) == 2, "state.ops[host][hash].operation_meta after the run"
    assert compat.all_ops_complete(state, host)
    assert compat.op_meta(state, host, hashes[0]).did_change()
    assert "_if" in compat.op_arguments(state, host, hashes[1]), "OperationData.global_arguments"
    # The `host` proxy resolves to the real Host (ContextObject._get_module).
    with compat.ctx_host.use(host):
        assert compat.real_host(pyinfra.host) is host
        assert host_run(pyinfra.host) is host_run(host)
        report(pyinfra.host).note("seen")
    assert host_run(host).report.notes == ["seen"]


def test_known_hosts_memo_and_inner_generators_are_where_comfyfleet_looks() -> None:
    assert isinstance(getattr(get_host_keys, "cache", None), dict), "get_host_keys.cache (known_hosts memo)"
    get_host_keys.cache["probe"] = "x"
    compat.forget_known_hosts()
    assert "probe" not in get_host_keys.cache
    assert callable(getattr(files.put, "_inner", None)), "@operation keeps the generator as _inner"
    commands = list(compat.inner_commands(server.shell, commands=["echo one", "echo two"]))
    assert [str(c) for c in commands] == ["echo one", "echo two"]


def test_sudo_from_host_data_reaches_every_operation_that_does_not_pass_it() -> None:
    # comfyfleet sets `_sudo` once per host (inventory.run_data) and never passes it (ARCHITECTURE.md):
    # pyinfra's pop_global_arguments must keep taking a missing global argument from host data.
    data = run_data("@local", {"ssh_user": "ubuntu"})
    assert data["_sudo"] is True
    inventory = Inventory(([("@local", data)], {}))
    state = State(inventory, Config())
    compat.connect_all(state)
    (host,) = list(inventory)
    add_op(state, server.shell, name="privileged", commands=["true"])
    add_op(state, server.shell, name="as the ssh user", commands=["true"], _sudo=False)
    first, second = state.get_op_order()
    assert compat.op_arguments(state, host, first)["_sudo"] is True, "host data `_sudo` as the default"
    assert compat.op_arguments(state, host, second)["_sudo"] is False, "an explicit argument wins"
    compat.disconnect_all(state)


def test_argument_types_cached_are_pyinfras_own() -> None:
    """The cached global-argument types equal what pyinfra computes, in both places that read them."""
    from typing import get_type_hints

    from pyinfra.api import arguments
    from pyinfra.api import facts as pyinfra_facts

    compat.cache_argument_types()
    compat.cache_argument_types()  # idempotent
    want = list(get_type_hints(arguments.AllArguments).items())
    assert arguments.all_global_arguments() == want
    assert pyinfra_facts.all_global_arguments() == want
    assert getattr(arguments.all_global_arguments, "comfyfleet_cached", False)
    arguments.all_global_arguments().clear()  # a caller mutating its copy changes nothing
    assert arguments.all_global_arguments() == want
