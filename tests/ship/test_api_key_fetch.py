"""A first ship with the defaults: the key a host generated reaches the operator's machine over SSH.

The fetch is a real pyinfra operation run on pyinfra's @local connector (the same
`run_shell_command` path the SSH connector takes); the ship steps around it use the recorded
runner of the other ship tests.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.operation import add_op

from comfyfleet import pyinfra_compat as compat
from comfyfleet.context import report
from comfyfleet.operations.api import fetch_api_key
from comfyfleet.registry import Registry
from comfyfleet.ship import prepare_ship, standard_steps

ROOT = Path(__file__).resolve().parents[2]
KEY = "k3y-" + "9" * 40


def run_local(remote: Path, local: Path) -> tuple[bool, list[str]]:
    inventory = Inventory((["@local"], {"_sudo": False}))
    state = State(inventory, Config())
    compat.connect_all(state)
    (host,) = list(inventory)
    add_op(state, fetch_api_key, remote_path=str(remote), local_path=str(local))
    try:
        compat.run_ops(state)
    except Exception:  # a failed operation fails its only host: pyinfra raises "No hosts remaining"
        pass
    compat.disconnect_all(state)
    return host not in state.failed_hosts, report(host).notes


def test_the_generated_key_is_copied_owner_only_and_never_shown(tmp_path: Path) -> None:
    remote = tmp_path / "host" / "api-keys"
    remote.parent.mkdir()
    remote.write_text(f"# generated on the host\n{KEY}\nsecond-key\n")
    local = tmp_path / "state" / "api-keys" / "gpu-1.key"
    ok, notes = run_local(remote, local)
    assert ok
    assert local.read_text() == KEY + "\n"
    assert stat.S_IMODE(local.stat().st_mode) == 0o600 and stat.S_IMODE(local.parent.stat().st_mode) == 0o700
    assert any(str(local) in n for n in notes) and not any(KEY in n for n in notes)


def test_a_host_without_a_key_fails_and_writes_nothing(tmp_path: Path) -> None:
    local = tmp_path / "state" / "gpu-1.key"
    ok, notes = run_local(tmp_path / "nothing-here", local)
    assert not ok and not local.exists()
    assert any("no API key could be read" in n for n in notes)


def test_ship_plans_the_fetch_for_hosts_without_api_keys_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYFLEET_STATE_DIR", str(tmp_path / "state"))
    keys = tmp_path / "keys"
    keys.write_text("operator-key\n")
    registry = Registry(tmp_path / "registry.sqlite3")
    workflow = ROOT / "workflows" / "txt2img.json"
    ctx = prepare_ship(
        workflow,
        "inventory/test.py",
        "dev",
        None,
        registry,
        resolve=lambda target: [("gpu-1", {}), ("gpu-2", {"api_keys_file": str(keys)})],
    )
    fetched = ctx.data["fetched_key_files"]
    assert list(fetched) == ["gpu-1"] and fetched["gpu-1"].startswith(str(tmp_path / "state" / "api-keys"))
    assert ctx.data["api_key_files"] == {"gpu-1": fetched["gpu-1"], "gpu-2": str(keys.resolve())}
    api = next(s for s in standard_steps(ctx, registry, check_tasks=lambda names: None) if s.name == "api")
    assert api.name == "api"  # the fetch is the api step's last deploy (after update-binary and serving)
