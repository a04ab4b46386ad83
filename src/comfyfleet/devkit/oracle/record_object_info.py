"""Record a running real ComfyUI's /object_info as test data (gzip JSON + a JSON sidecar naming its source).

Usage (ComfyUI started with /work/start-comfyui.sh or `python main.py --cpu --listen 127.0.0.1`):

    python -m comfyfleet.devkit.oracle.record_object_info --url http://127.0.0.1:8188 \
        --out tests/data/comfyui-0.8.0/object_info.json.gz \
        --source "ComfyUI v0.8.0, fork pollockjj/ComfyUI commit fc0cb10b" [--pack REPO@COMMIT ...]

The file keeps ComfyUI's own key order (never sorted: the frontend takes widget order and dynamic
combos from the order of each node's inputs) and a fixed gzip mtime, so that recording the same server
twice gives the same bytes. Model-file lists in combo inputs are whatever the server's models/ folders held
(an empty checkout: none).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import sys
import urllib.request
from pathlib import Path


def fetch_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - a loopback URL given by the developer
        return json.load(resp)


def write_gz_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, separators=(",", ":")).encode()
    with (
        open(path, "wb") as fh,
        gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(raw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--source", required=True, help="what server this is: version, repository, commit")
    ap.add_argument("--pack", action="append", default=[], help="custom node pack installed: REPO@COMMIT")
    ap.add_argument("--note", default="", help="anything else a reader must know")
    args = ap.parse_args(argv)
    base = args.url.rstrip("/")
    object_info = fetch_json(base + "/object_info")
    stats = fetch_json(base + "/system_stats")
    assert isinstance(object_info, dict) and isinstance(stats, dict)
    write_gz_json(args.out, object_info)
    system = stats.get("system", {})
    sidecar = {
        "file": args.out.name,
        "source": args.source,
        "comfyui_version": system.get("comfyui_version"),
        "required_frontend_version": system.get("required_frontend_version"),
        "required_templates_version": system.get("required_templates_version"),
        "python_version": system.get("python_version"),
        "pytorch_version": system.get("pytorch_version"),
        "argv": system.get("argv"),
        "custom_node_packs": args.pack,
        "node_count": len(object_info),
        "recorded_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recorded_with": "comfyfleet.devkit.oracle.record_object_info (GET /object_info and /system_stats)",
        "note": args.note,
    }
    side = args.out.with_name(args.out.name.removesuffix(".gz").removesuffix(".json") + ".source.json")
    side.write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"{args.out}: {len(object_info)} node types ({args.out.stat().st_size} bytes); {side}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
