"""Read-only operations that gather what an operator asked to see and put it in the host's report.

They change nothing: each reads one fact (one round trip), fills the per-host report
(:func:`comfyfleet.runner.report`) and yields no command, so a status run reports
"no change" on every healthy host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import operation

from comfyfleet.context import report
from comfyfleet.facts.comfyui import ScriptSections
from comfyfleet.inventory import HostConfig

ERROR_LINE = re.compile(r"error|exception|traceback|failed|cannot import|no module named", re.IGNORECASE)

_STATUS_SCRIPT = r"""
echo '@@containers@@'
docker ps -a --format '{{.Names}}	{{.Image}}	{{.Status}}' 2>&1
echo '@@system_stats@@'
curl -s -m 5 "$1/system_stats" || true
echo
echo '@@api@@'
curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$2/health" || true
echo
echo '@@gpu@@'
nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits 2>/dev/null || true
echo '@@disk@@'
df -P -B1 "$3" 2>/dev/null | tail -n 1
echo '@@models@@'
du -sb "$3/models" 2>/dev/null | cut -f1
echo '@@memory@@'
free -b | awk '/^Mem:/ {print $2, $3, $7}'
echo '@@processes@@'
ps -eo pid,pcpu,pmem,rss,comm --sort=-pcpu | sed -n '2,6p'
"""

_LOGS_SCRIPT = r"""
for name in "$2" "$3"; do
  echo "@@$name@@"
  if docker inspect --type container "$name" >/dev/null 2>&1; then
    docker logs --tail "$1" --timestamps "$name" 2>&1
  else
    echo "(no container $name on this host)"
  fi
done
"""


def _size(n: str | int | None) -> str:
    try:
        value = float(n or 0)
    except ValueError:
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


@operation()
def status(cfg: HostConfig) -> Generator[Any, None, None]:
    """Containers, ComfyUI version and health, GPU, disk, memory and busiest processes, into the report.

    + cfg: the host's validated config
    """
    lay = cfg.layout
    out = host.get_fact(ScriptSections, body=_STATUS_SCRIPT, args=(cfg.comfyui_url, cfg.api_port, lay.root))
    rep = report(host)
    ours = {lay.comfyui_container, lay.api_container}
    rows = [line.split("\t") for line in out.get("containers", []) if line.split("\t")[0] in ours]
    rep.table("containers", ["name", "image", "status"], rows or [["-", "-", "no comfyfleet containers"]])

    health: list[list[str]] = []
    try:
        stats = json.loads("".join(out.get("system_stats", [])) or "null")
    except json.JSONDecodeError:
        stats = None
    if stats:
        system = stats.get("system", {})
        health.append(
            [
                "ComfyUI",
                "healthy",
                f"version {system.get('comfyui_version', '?')}, "
                f"python {str(system.get('python_version', '?')).split()[0]}",
            ]
        )
        for dev in stats.get("devices", []):
            health.append(["device", dev.get("name", "?"), f"vram free {_size(dev.get('vram_free'))}"])
    else:
        health.append(["ComfyUI", "DOWN", f"{cfg.comfyui_url}/system_stats does not answer"])
    api_code = "".join(out.get("api", [])).strip()
    health.append(
        [
            "comfyui-api",
            "healthy" if api_code == "200" else "not running",
            f"port {cfg.api_port}: HTTP {api_code or 'none'}",
        ]
    )
    rep.table("health", ["service", "state", "detail"], health)

    gpus = [line.split(", ") for line in out.get("gpu", []) if line.strip()]
    rep.table(
        "gpu",
        ["index", "name", "util %", "mem used MiB", "mem total MiB"],
        gpus or [["-", "no NVIDIA GPU (nvidia-smi not found)", "", "", ""]],
    )

    disk = (out.get("disk") or [""])[0].split()
    mem = (out.get("memory") or [""])[0].split()
    usage = []
    if len(disk) >= 5:
        usage.append(
            ["data root", lay.root, f"{_size(disk[2])} used of {_size(disk[1])}, {_size(disk[3])} free"]
        )
    usage.append(["models", lay.models, _size((out.get("models") or ["0"])[0])])
    if len(mem) == 3:
        usage.append(["memory", "", f"{_size(mem[1])} used of {_size(mem[0])}, {_size(mem[2])} available"])
    rep.table("usage", ["what", "where", "amount"], usage)

    procs = [line.split(None, 4) for line in out.get("processes", []) if line.strip()]
    rep.table("processes", ["pid", "cpu %", "mem %", "rss KiB", "command"], procs)
    host.noop("status collected")
    yield from ()


@operation()
def logs(cfg: HostConfig, lines: int = 200, export_dir: str | None = None) -> Generator[Any, None, None]:
    """Recent ComfyUI and comfyui-api container logs into the report; optionally one local file per host.

    + cfg: the host's validated config
    + lines: lines per container
    + export_dir: folder on the operator's machine; ``<dir>/<host>.log`` is written
    """
    lay = cfg.layout
    out = host.get_fact(
        ScriptSections, body=_LOGS_SCRIPT, args=(lines, lay.comfyui_container, lay.api_container)
    )
    rep = report(host)
    for name in (lay.comfyui_container, lay.api_container):
        text = "\n".join(out.get(name, []))
        rep.text(f"logs {name}", text, highlight=ERROR_LINE.pattern)
        errors = [line for line in out.get(name, []) if ERROR_LINE.search(line)]
        if errors:
            rep.note(f"{name}: {len(errors)} error lines, last: {errors[-1][-160:]}")
    if export_dir:
        folder = Path(export_dir)
        folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", host.name)
        target = folder / f"{safe}.log"
        target.write_text(
            "".join(
                f"===== {name} (last {lines} lines) =====\n" + "\n".join(out.get(name, [])) + "\n"
                for name in (lay.comfyui_container, lay.api_container)
            )
        )
        rep.note(f"logs written to {target}")
    host.noop("logs collected")
    yield from ()
