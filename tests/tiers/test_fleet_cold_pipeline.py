"""Cold deploy as a pipeline on real SSH hosts: model downloads run detached while the other tiers run.

The example workflows' model files come from the local Hugging Face-compatible server paced
per connection (a WAN link), so the download lasts seconds and the other tiers can be seen
running inside it. Times are the host's own: the download job's ``started.json`` /
``status.json`` and the node pack's files, on the host's data root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.devkit.cli_process import run_cli
from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.ship_fleet import REAL_COMFYUI_SKIPS, ShipFleet
from comfyfleet.operations import downloads
from comfyfleet.runner import RunResult, run
from tiers.helpers import HOSTSIDE

pytestmark = pytest.mark.fleet

MODEL_BYTES = 6 * 2**20  # per placeholder file (checkpoint, LoRA): under the ranged-download size
RATE = 0.5e6  # bytes/s per connection: ~13 s per file, longer than the node install
CHECKPOINT = "checkpoints/v1-5-pruned-emaonly-fp16.safetensors"


@pytest.fixture(scope="module")
def cold(
    fleet: Fleet, start_host: Callable[..., Host], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A bootstrapped host with nothing of the workflows on it, paced model upstreams."""
    root = tmp_path_factory.mktemp("cold")
    env = ShipFleet(fleet, root, model_bytes=MODEL_BYTES)
    env.up.connection_rate = RATE
    env.start()
    host = start_host(name="coldhost")
    try:
        inventory = env.inventory([host], root / "inventory.py")
        env.bootstrap(inventory)
        yield {"env": env, "host": host, "inventory": inventory, "state": root / "state", "root": root}
    finally:
        fleet.remove_host("coldhost")
        env.stop()


def cli(ctx: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, state_dir=ctx["state"])


def job_dir(host: Host) -> Path:
    return Path(host.data_root) / ".comfyfleet" / "model-job"


def job_files(host: Host) -> dict[str, Any]:
    job = job_dir(host)
    out = json.loads((job / "started.json").read_text())
    if (job / "status.json").exists():
        out.update(json.loads((job / "status.json").read_text()))
    return out


def job_processes(host: Host) -> list[int]:
    """Processes (runner and downloader) of the host's download job: their argv names its folder."""
    needle = str(job_dir(host)).encode()
    plan = needle + b"/plan.json"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv or plan in argv:
            pids.append(int(entry.name))
    return pids


def task(ctx: dict[str, Any], name: str, workflow: str = "lora_txt2img") -> RunResult:
    return run(str(ctx["inventory"]), name, data={"workflow": str(ctx["env"].workflows / f"{workflow}.json")})


def test_deploy_all_downloads_models_while_nodes_install(cold: dict[str, Any]) -> None:
    host: Host = cold["host"]
    t0 = time.time()
    done = cli(cold, "common", str(cold["inventory"]), "--deploy-all")
    assert done.returncode == 0, done.stdout + done.stderr
    job = job_files(host)
    assert job["rc"] == 0
    pack = Path(host.data_root) / "custom_nodes" / "ComfyUI-KJNodes"
    # The pack's files as its install left them (ComfyUI's import adds __pycache__ later).
    pack_done = max(p.stat().st_mtime for p in pack.rglob("*") if "__pycache__" not in p.parts)
    # Host clock: the download started first, the node pack was installed while it ran.
    assert t0 < job["started"] < pack_done < job["finished"], (job, pack_done)
    # Every stream's progress was shown while it ran (bytes of total, rate).
    lines = [ln for ln in done.stderr.splitlines() if "] models: " in ln]
    assert any(CHECKPOINT in ln and f"/{MODEL_BYTES / 1e6:.0f} MB" in ln and "MB/s" in ln for ln in lines), (
        done.stderr
    )
    assert (Path(host.data_root) / "models" / CHECKPOINT).stat().st_size == MODEL_BYTES


def test_rerun_attaches_to_the_running_download_and_resumes_a_killed_one(cold: dict[str, Any]) -> None:
    host: Host = cold["host"]
    (Path(host.data_root) / "models" / CHECKPOINT).unlink()  # one file to fetch again
    first = task(cold, "models-start")
    assert first.hosts[0].ok and first.hosts[0].changed, first.hosts[0]
    started = job_files(host)
    deadline = time.monotonic() + 10
    while len(running := job_processes(host)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(running) == 2, running  # the detached runner and its downloader

    again = task(cold, "models-start")  # an interrupted pipeline run again: attaches
    assert again.hosts[0].ok, again.hosts[0]
    assert job_files(host) == started and job_processes(host) == running

    part = Path(host.data_root) / ".comfyfleet" / "downloads" / f"{CHECKPOINT}.part"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > MODEL_BYTES // 4) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in running:  # the host "reboots" mid-download
        os.kill(pid, signal.SIGKILL)
    lost = task(cold, "models-wait")
    assert not lost.hosts[0].ok
    assert "model files missing: " + CHECKPOINT in lost.hosts[0].reason
    assert "stopped before the end" in lost.hosts[0].reason and "run again to resume" in lost.hosts[0].reason

    resumed = task(cold, "models-start")
    assert resumed.hosts[0].ok and job_files(host)["started"] > started["started"]
    waited = task(cold, "models-wait")
    assert waited.hosts[0].ok, waited.hosts[0]
    rows = {f"{r['folder']}/{r['filename']}": r for r in resumed_rows(host)}
    assert rows[CHECKPOINT]["bytes_reused"] > 0, rows  # the killed download's bytes were kept

    settled = task(cold, "models-start")
    assert settled.hosts[0].ok and not settled.hosts[0].changed, settled.hosts[0]

    # Another comfyfleet version: the host's scripts are rewritten in the command that would start
    # the job, which first asks the new downloader's --check: every file is in place, no download.
    staged = Path(host.data_root) / ".comfyfleet" / "bin" / "fetch_models.py"
    staged.write_text(staged.read_text() + "\n# an older version\n")
    before = job_files(host)
    upgraded = task(cold, "models-start")
    assert upgraded.hosts[0].ok, upgraded.hosts[0]
    assert staged.read_bytes() == (HOSTSIDE / "fetch_models.py").read_bytes()
    assert job_files(host) == before and not job_processes(host)
    assert task(cold, "models-wait").hosts[0].ok


def resumed_rows(host: Host) -> list[dict[str, Any]]:
    for line in (job_dir(host) / "result").read_text().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError("no RESULT line from the downloader")


@pytest.mark.parametrize("inline", [True, False], ids=["one-command", "plan-too-large"])
def test_models_start_on_a_bare_host_stages_the_scripts_and_starts_the_job(
    cold: dict[str, Any], start_host: Callable[..., Host], monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    if not inline:  # a plan too large for one shell argument: uploaded on its own, then the start
        monkeypatch.setattr(downloads, "STAGE_LIMIT", 0)
    env: ShipFleet = cold["env"]
    host = start_host(name=f"bare{int(inline)}")
    try:
        inventory = env.inventory([host], cold["root"] / f"inventory-{host.name}.py")
        started = run(
            str(inventory), "models-start", data={"workflow": str(env.workflows / "lora_txt2img.json")}
        )
        assert started.hosts[0].ok and started.hosts[0].changed, started.hosts[0]
        state = Path(host.data_root) / ".comfyfleet"
        for name in ("fetch_models.py", "model_job.py"):
            assert (state / "bin" / name).read_bytes() == (HOSTSIDE / name).read_bytes()
            assert (state / "bin" / name).stat().st_mode & 0o777 == 0o644
        plan = json.loads((state / "plans" / "models.json").read_text())
        assert {f"{i['folder']}/{i['filename']}" for i in plan["items"]} >= {CHECKPOINT}
        assert (Path(host.data_root) / "models").is_dir() and (Path(host.data_root) / "custom_nodes").is_dir()
        assert job_files(host)["plan_sha256"]
        deadline = time.monotonic() + 10
        while len(running := job_processes(host)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(running) == 2, running  # the detached runner and its downloader
    finally:
        env.fleet.remove_host(host.name)


def test_ship_bootstrap_to_a_bare_volume_host_downloads_onto_the_mounted_volume(
    cold: dict[str, Any], start_host: Callable[..., Host]
) -> None:
    env: ShipFleet = cold["env"]
    if env.fleet.comfyui is not None and env.fleet.comfyui.real:  # ship's generate step loads the weights
        pytest.skip(f"real ComfyUI: lora_txt2img {REAL_COMFYUI_SKIPS['lora_txt2img']}")
    host = start_host(name="coldvol", provider="datacrunch", volume=True)
    try:
        inventory = env.inventory([host], cold["root"] / "inventory-vol.py")
        shipped = cli(
            cold, "ship", str(env.workflows / "lora_txt2img.json"), "--to", str(inventory), "--bootstrap"
        )
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        assert f"serving http://127.0.0.1:{host.api_port}/workflows/lora_txt2img" in shipped.stdout
        # The volume was mounted before the first byte: the files are on it, not hidden under it.
        assert host.exec(f"mountpoint -q {host.block_mount}", check=False).returncode == 0
        on_volume = host.exec(f"stat -c %s {host.data_root}/models/{CHECKPOINT}", check=False).stdout.strip()
        assert on_volume == str(MODEL_BYTES)
        assert job_files(host)["rc"] == 0
    finally:
        env.fleet.remove_host("coldvol")


def test_failed_download_fails_the_ship_with_the_downloaders_line(cold: dict[str, Any]) -> None:
    workflows: Path = cold["env"].workflows
    overrides = yaml.safe_load((workflows / "overrides.yaml").read_text())
    overrides["models"]["gone.safetensors"] = {
        "folder": "checkpoints",
        "url": "https://huggingface.co/Comfy-Org/no-such-repo/resolve/main/gone.safetensors",
    }
    (workflows / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "gone.safetensors"}}}
    (workflows / "broken.json").write_text(json.dumps(graph))
    shipped = cli(cold, "ship", str(workflows / "broken.json"), "--to", str(cold["inventory"]))
    assert shipped.returncode == 1, shipped.stdout + shipped.stderr
    assert "Traceback" not in shipped.stderr
    failed = [ln for ln in shipped.stderr.splitlines() if ln.startswith("ship failed:")]
    assert len(failed) == 1, shipped.stderr
    assert f"step 'models' failed on host {cold['host'].name}" in failed[0]
    assert "model download failed: " in failed[0] and "gone.safetensors" in failed[0], failed[0]
