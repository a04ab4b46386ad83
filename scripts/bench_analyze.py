#!/usr/bin/env python3
"""Benchmark: analyze the whole comfyui-workflow-templates-json corpus in one process.

Prints total seconds and workflows/s (index load, reading and parsing the JSON files
included). Target: the corpus in under 2 s.
Last line says which targets were met or missed; exit 1 when one was missed.
"""

from __future__ import annotations

import json
import sys
import time

from comfyfleet.analysis import analyze_data
from comfyfleet.analysis.corpus import templates_dir
from comfyfleet.analysis.index import default_index

TARGET_SECONDS = 2.0


def main() -> int:
    directory = templates_dir()
    if directory is None:
        print("comfyui-workflow-templates-json is not installed (pip install -e '.[test]')")
        print("targets: missed (no corpus)")
        return 1
    started = time.perf_counter()
    index = default_index()
    loaded = time.perf_counter()
    workflows = nodes = models = 0
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            continue
        manifest = analyze_data(data, path.stem, str(path), index=index)
        workflows += 1
        nodes += len(data["nodes"])
        models += len(manifest.models)
    total = time.perf_counter() - started
    print(f"index load: {loaded - started:.3f} s")
    print(f"workflows: {workflows}, top-level nodes: {nodes}, model refs: {models}")
    print(f"total: {total:.3f} s, {workflows / total:.0f} workflows/s")
    met = total < TARGET_SECONDS
    print(f"targets: {'met' if met else 'missed'}: corpus in {total:.2f} s (target < {TARGET_SECONDS:.0f} s)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
