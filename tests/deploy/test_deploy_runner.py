"""The runner's contract with the CLI: bad input propagates (exit 2), a stopped run is never ok (exit 1).

These run real pyinfra operations on the ``@local`` connector against a temporary folder,
so they need no SSH fleet; the known_hosts test at the end does.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import QuoteString, StringCommand, deploy, operation
from pyinfra.operations import server

from comfyfleet.errors import BadInput
from comfyfleet.runner import RunOptions, run


def touch(marker: Path) -> None:
    server.shell(name="touch marker", commands=[StringCommand("touch", QuoteString(str(marker)))])


def test_runner_bad_input_raised_by_a_task_propagates_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    @deploy("refuses its input")
    def refusing() -> None:
        touch(marker)  # an operation added before the refusal must not run either
        raise BadInput("workflows/x.json: node 4: model name 'a;b' contains shell metacharacters")

    with pytest.raises(BadInput, match=r"workflows/x\.json: node 4"):
        run("@local", refusing)
    assert not marker.exists()


@operation()
def refuse_at_execution() -> Generator[Any, None, None]:
    """An operation that only finds out at execution time that its input is unusable."""
    raise BadInput("host @local: the plan names a folder outside the data root")
    yield  # pragma: no cover - makes this a generator, as pyinfra operations are


def test_runner_bad_input_raised_while_executing_propagates(tmp_path: Path) -> None:
    @deploy("refuses later")
    def refusing_later() -> None:
        refuse_at_execution()

    with pytest.raises(BadInput, match="outside the data root"):
        run("@local", refusing_later)


def test_runner_stopped_dry_run_is_not_ok(tmp_path: Path) -> None:
    """A run cut short by an unexpected error exits 1 even when no host reported a failure."""
    marker = tmp_path / "ran"

    @deploy("crashes")
    def crashing() -> None:
        touch(marker)
        raise RuntimeError("a bug in a task")

    result = run("@local", crashing, options=RunOptions(dry_run=True))
    assert "unexpected error: RuntimeError: a bug in a task" in result.stopped
    assert [h.status for h in result.hosts] == ["would change"]  # the host itself looked fine
    assert not result.ok and result.exit_code == 1
    assert not marker.exists()


def test_runner_refuses_serial_with_parallel() -> None:
    with pytest.raises(BadInput, match="--serial and --parallel contradict"):
        run("@local", "status", options=RunOptions(serial=True, parallel=2))


@pytest.mark.fleet
def test_runner_sees_hosts_added_to_a_shared_known_hosts_file_after_an_earlier_run(
    fleet: Any, fleet_hosts: dict[str, Any], write_inventory: Callable[..., Path], tmp_path: Path
) -> None:
    """One process, one ~/.ssh/known_hosts-style file shared by every host, a key added between runs.

    pyinfra memoizes a known_hosts file's content per process; without the runner
    forgetting it, the second host would be refused by strict host key checking.
    """
    first, second = fleet_hosts["lambda1"], fleet_hosts["dc1"]
    shared = tmp_path / "known_hosts"
    shared.write_text(first.known_hosts.read_text())
    shared.chmod(0o600)
    inv = write_inventory([first, second], tmp_path / "inventory.py", ssh_known_hosts_file=str(shared))
    marker = f"/tmp/cf-known-hosts-{tmp_path.name}"

    @deploy("touch a file")
    def touch_on_host() -> None:
        server.shell(name="touch", commands=[StringCommand("touch", QuoteString(marker))])

    result = run(f"{inv}:lambda1", touch_on_host)
    assert result.hosts[0].status == "changed", result.hosts[0].reason
    with shared.open("a") as fh:
        fh.write(second.known_hosts.read_text())
    result = run(f"{inv}:dc1", touch_on_host)
    assert result.hosts[0].status == "changed", result.hosts[0].reason
    assert second.exec(f"test -f {marker} && rm -f {marker}", user="root").returncode == 0
    first.exec(f"rm -f {marker}", user="root")
