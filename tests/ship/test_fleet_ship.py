"""`comfyfleet ship` and `deployments` on the SSH test fleet: real pyinfra, docker, git, HTTP.

Acceptance of issue 7: ship → list → stop → start → delete works for each example
workflow, history shows every step; a ship whose model cannot be resolved stops before
touching a host; a ship to a host whose ComfyUI fails to start reports the step and the
host and leaves the previous deployment in place; a schedule fires and records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyfleet.devkit.cli_process import run_cli
from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.ship_fleet import CRASHING_BODY, REAL_COMFYUI_SKIPS, ROOT, ShipFleet
from comfyfleet.registry import Registry

pytestmark = pytest.mark.fleet

EXAMPLES = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def shipping(
    fleet: Fleet, start_host: Callable[..., Host], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A fresh, bootstrapped host, the example workflows' upstreams and a private state dir."""
    root = tmp_path_factory.mktemp("ship")
    env = ShipFleet(fleet, root).start()
    host = start_host(name="shiphost")
    try:
        inventory = env.inventory([host], root / "inventory.py")
        env.bootstrap(inventory)
        yield {"env": env, "host": host, "inventory": inventory, "state": root / "state"}
    finally:
        fleet.remove_host("shiphost")
        env.stop()


def cli(ctx: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, state_dir=ctx["state"], timeout=1200)


def registry(ctx: dict[str, Any]) -> Registry:
    return Registry(ctx["state"] / "deployments.sqlite3")


def api(host: Host) -> str:
    return f"http://127.0.0.1:{host.api_port}"


def generate(ctx: dict[str, Any], workflow: str) -> httpx.Response:
    key = ctx["env"].api_keys.read_text().strip()
    return httpx.post(
        f"{api(ctx['host'])}/workflows/{workflow}",
        json={"outputs": "url"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )


def generate_once_reconnected(ctx: dict[str, Any], workflow: str, within_s: float = 90) -> httpx.Response:
    """Generate, retrying only the API's 503 + Retry-After while it reconnects to a restarted
    ComfyUI (a real ComfyUI takes seconds to come back; callers are told to retry)."""
    deadline = time.monotonic() + within_s
    while True:
        response = generate(ctx, workflow)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))


SHIPPED: list[str] = []


@pytest.mark.parametrize("name", EXAMPLES)
def test_ship_each_example_first_time(shipping: dict[str, Any], name: str) -> None:
    comfyui = shipping["env"].fleet.comfyui
    if comfyui is not None and comfyui.real and name in REAL_COMFYUI_SKIPS:
        pytest.skip(f"real ComfyUI: {name} {REAL_COMFYUI_SKIPS[name]}")
    host: Host = shipping["host"]
    workflows: Path = shipping["env"].workflows
    shipped = cli(
        shipping, "ship", str(workflows / f"{name}.json"), "--to", str(shipping["inventory"]), "--env", "prod"
    )
    assert shipped.returncode == 0, f"{name}: {shipped.stdout}\n{shipped.stderr}"
    assert f"serving http://127.0.0.1:{host.api_port}/workflows/{name}" in shipped.stdout
    assert "Traceback" not in shipped.stderr and "Exception ignored" not in shipped.stderr
    hist = registry(shipping).history(name, "prod")[0]
    assert hist.ok and all(s.attempts == 1 for s in hist.steps), hist  # first attempt, every step
    assert [s.step for s in hist.steps] == [
        "analyze",
        "install",
        "api",
        "models",
        "health",
        "generate",
        "record",
    ]
    SHIPPED.append(name)


def test_list_stop_start_delete_each_shipped_example(shipping: dict[str, Any]) -> None:
    if not SHIPPED:
        pytest.skip("no example shipped in this session")
    host: Host = shipping["host"]
    listing = cli(shipping, "deployments", "list", "--active", "--env", "prod")
    assert all(name in listing.stdout for name in SHIPPED), listing.stdout
    for name in SHIPPED:
        assert generate(shipping, name).status_code == 200
        stopped = cli(shipping, "deployments", "stop", name)
        assert stopped.returncode == 0, stopped.stderr
        assert generate(shipping, name).status_code == 404
        others = [n for n in SHIPPED if n != name]
        for other in others:  # a soft stop leaves the other endpoints serving
            assert generate(shipping, other).status_code == 200, other
        if others:  # shipping another workflow re-uploads the folder: the stopped one stays stopped
            reship = cli(
                shipping,
                "ship",
                str(shipping["env"].workflows / f"{others[0]}.json"),
                "--to",
                str(shipping["inventory"]),
                "--env",
                "prod",
            )
            assert reship.returncode == 0, reship.stderr
            assert generate(shipping, name).status_code == 404
        assert registry(shipping).get(name).status == "inactive"
        started = cli(shipping, "deployments", "start", name)
        assert started.returncode == 0, started.stderr
        assert generate(shipping, name).status_code == 200
        history = cli(shipping, "deployments", "history", name)
        for step in ("analyze", "install", "api", "models", "health", "generate", "record", "stop", "start"):
            assert step in history.stdout, (name, step)

    name = SHIPPED[0]
    deleted = cli(shipping, "deployments", "delete", name, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert registry(shipping).find(name) is None
    assert generate(shipping, name).status_code == 404
    # A fresh ship brings it back (and clears the host's stop marker).
    again = cli(
        shipping,
        "ship",
        str(shipping["env"].workflows / f"{name}.json"),
        "--to",
        str(shipping["inventory"]),
        "--env",
        "prod",
    )
    assert again.returncode == 0, again.stderr
    assert generate(shipping, name).status_code == 200
    assert host.exec(f"test -e {host.data_root}/api/disabled/{name}", check=False).returncode != 0


def test_unresolvable_model_stops_before_touching_the_host(shipping: dict[str, Any]) -> None:
    host: Host = shipping["host"]
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = "nowhere-to-be-found.safetensors"
    wf = shipping["env"].workflows / "unknown_model.json"  # in the folder the host serves
    wf.write_text(json.dumps(graph))
    snapshot = f"find {host.data_root} -printf '%p %T@ %s\\n' | sort"
    before = host.exec(snapshot).stdout
    try:
        result = cli(shipping, "ship", str(wf), "--to", str(shipping["inventory"]))
    finally:
        wf.unlink()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "step 'analyze' failed" in result.stderr and "nowhere-to-be-found.safetensors" in result.stderr
    after = host.exec(snapshot).stdout
    assert before == after  # not a file on the host changed


def test_host_whose_comfyui_fails_to_start_names_step_and_host_and_keeps_the_previous(
    shipping: dict[str, Any],
) -> None:
    host: Host = shipping["host"]
    env: ShipFleet = shipping["env"]
    workflows = env.workflows
    # The keeper is the upscale example: it generates on the stand-in and on a real ComfyUI alike.
    previous = cli(
        shipping,
        "ship",
        str(workflows / "upscale.json"),
        "--to",
        str(shipping["inventory"]),
        "--name",
        "keeper",
        "--env",
        "dev",
    )
    assert previous.returncode == 0, previous.stderr
    before = registry(shipping).get("keeper", "dev")
    api_container = host.exec(
        f"docker ps -q --filter name=^/{host.container_prefix}comfyui-api$"
    ).stdout.strip()

    env.fleet.make_node_pack_repo(
        "ComfyUI-Crashing", classes={"CrashOnImport": CRASHING_BODY}, owner="testorg"
    )
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["20"] = {"class_type": "CrashOnImport", "inputs": {"text": "x"}}
    crashy = env.add_workflow(
        "crashy",
        json.dumps(graph),
        "nodes:\n  CrashOnImport:\n    repo: https://github.com/testorg/ComfyUI-Crashing\n",
    )
    try:
        result = cli(shipping, "ship", str(crashy), "--to", str(shipping["inventory"]), "--env", "dev")
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"ship failed: step 'install' failed on host {host.name}:" in result.stderr
        assert "put back: node packs the ship added were moved to .comfyfleet/parked-nodes/" in result.stderr
        # The API tier never ran: the same API container, the previous deployment untouched
        # and serving: ComfyUI runs again without the pack that kept it from starting.
        assert registry(shipping).get("keeper", "dev") == before
        assert registry(shipping).find("crashy", "dev") is None
        assert (
            host.exec(f"docker ps -q --filter name=^/{host.container_prefix}comfyui-api$").stdout.strip()
            == api_container
        )
        assert generate_once_reconnected(shipping, "upscale").status_code == 200
        parked = host.exec(f"ls {host.data_root}/.comfyfleet/parked-nodes/*/", user="root").stdout.split()
        assert parked == ["ComfyUI-Crashing"]
        assert "failed" in registry(shipping).history("crashy", "dev")[0].summary
    finally:
        crashy.unlink()
        overrides = workflows / "overrides.yaml"
        overrides.write_text(overrides.read_text().split("\nnodes:\n  CrashOnImport:")[0])
        # Should the put-back have failed, leave a working host for the tests after this one.
        pack = f"{host.data_root}/custom_nodes/ComfyUI-Crashing"
        host.exec(
            f"test ! -e {pack} || {{ rm -rf {pack}; docker restart {host.container_prefix}comfyui; }}",
            user="root",
            check=False,
        )


def test_a_schedule_fires_on_the_fleet_and_records(shipping: dict[str, Any]) -> None:
    reg = registry(shipping)
    name = SHIPPED[-1] if SHIPPED else "upscale"
    if reg.find(name, "prod") is None:
        shipped = cli(
            shipping,
            "ship",
            str(shipping["env"].workflows / f"{name}.json"),
            "--to",
            str(shipping["inventory"]),
            "--env",
            "prod",
        )
        assert shipped.returncode == 0, shipped.stderr
    added = cli(
        shipping, "deployments", "schedule", "add", name, "--env", "prod", "--action", "run", "--every", "1s"
    )
    assert added.returncode == 0, added.stderr
    env = {**os.environ, "COMFYFLEET_STATE_DIR": str(shipping["state"]), "PYTHONUNBUFFERED": "1"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "comfyfleet.cli.main", "watch", "--refresh", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            not any(h.trigger == "schedule" for h in reg.history(name, "prod"))
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        watch.send_signal(signal.SIGTERM)
        stdout, stderr = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        for s in reg.schedules():
            reg.remove_schedule(s.id)
    assert watch.returncode == 0, stderr
    assert f"run {name} (prod): ok" in stdout and stdout.rstrip().endswith("stopped")
    runs = [h for h in reg.history(name, "prod") if h.trigger == "schedule"]
    assert runs and runs[-1].ok and runs[-1].kind == "run", runs
    assert [s.step for s in runs[-1].steps] == ["health", "generate"]


def test_failed_model_download_puts_the_endpoint_back(shipping: dict[str, Any]) -> None:
    """A model the server answers 404 for: a fresh workflow is taken down, an update of a served
    one leaves the previous definition serving (the api step had already served the new one)."""
    host: Host = shipping["host"]
    workflows: Path = shipping["env"].workflows
    good = (ROOT / "workflows" / "upscale.json").read_text()
    # The same graph whose upscale model lives in a repo the HF stand-in does not have (404), and
    # whose scale_by default (in the API's schema) tells the two definitions apart.
    bad = (
        good.replace("Comfy-Org/Real-ESRGAN_repackaged", "rollback14/nowhere")
        .replace("RealESRGAN_x4plus.safetensors", "rollback14-missing.safetensors")
        .replace('"lanczos",\n        0.5\n', '"lanczos",\n        0.25\n')
    )
    assert bad.count("0.25") == 1
    key = shipping["env"].api_keys.read_text().strip()

    def listed() -> dict[str, Any]:
        response = httpx.get(f"{api(host)}/workflows", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        response.raise_for_status()
        return response.json()

    def ship(path: Path) -> subprocess.CompletedProcess[str]:
        return cli(shipping, "ship", str(path), "--to", str(shipping["inventory"]), "--env", "dev")

    fresh, kept = workflows / "rb14_fresh.json", workflows / "rb14_kept.json"
    try:
        fresh.write_text(bad)
        result = ship(fresh)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"ship failed: step 'models' failed on host {host.name}:" in result.stderr
        assert "rollback14-missing.safetensors" in result.stderr
        assert (
            "taken down: /workflows/rb14_fresh is not served until its models are in place" in result.stderr
        )
        assert "rb14_fresh" not in listed()
        assert generate(shipping, "rb14_fresh").status_code == 404
        assert registry(shipping).find("rb14_fresh", "dev") is None
        fresh.unlink()

        kept.write_text(good)
        shipped = ship(kept)
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        previous = listed()["rb14_kept"]
        kept.write_text(bad)
        result = ship(kept)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "rollback14-missing.safetensors" in result.stderr
        assert "put back: /workflows/rb14_kept serves the previous definition again" in result.stderr
        assert listed()["rb14_kept"] == previous
        assert previous["schema"]["properties"]["scale_by"]["default"] == 0.5  # not the new 0.25
        assert generate_once_reconnected(shipping, "rb14_kept").status_code == 200
        on_host = host.exec(f"cat {host.data_root}/api/workflows/rb14_kept.json", user="root").stdout
        assert on_host == good
    finally:
        fresh.unlink(missing_ok=True)
        kept.unlink(missing_ok=True)
        if registry(shipping).find("rb14_kept", "dev") is not None:  # the next tests see the fleet as before
            cli(shipping, "deployments", "delete", "rb14_kept", "--env", "dev", "--yes")
