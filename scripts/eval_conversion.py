"""How well comfyui_api.graph converts UI workflows: against ComfyUI's own frontend, over every template.

    .venv/bin/python scripts/eval_conversion.py            # live: headless Chromium oracle
    .venv/bin/python scripts/eval_conversion.py --cached /work/oracle-out

The corpus is every UI workflow of the template packages ComfyUI 0.8.0 pins (read from the installed
packages) plus this repository's workflows/*.json. The reference is the prompt ComfyUI's frontend
1.35.9 builds for each file (app.loadGraphData + app.graphToPrompt, in a real browser, against the
recorded /object_info of a real ComfyUI 0.8.0), compared node by node on every input /object_info
declares. --cached reads those prompts from DIR/<name>.json ({"prompt": ..., "refused": ...}).

Prints agreed / differ / refused counts, each difference, the time our conversion takes for the
whole corpus (min/median of 3) next to the frontend's, and ONE final line: targets met / missed.
Targets: 100% agreement on every file whose node types are all in the recorded /object_info;
0 files refused that the frontend converts; converting the whole corpus < 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from comfyui_api.graph import GraphError, ui_to_api

from comfyfleet.devkit.oracle.compare import compare_prompts
from comfyfleet.devkit.oracle.frontend import (
    FrontendOracle,
    Refusal,
    load_object_info,
    repo_workflows,
    templates,
)

TARGET_SECONDS = 1.0


def corpus() -> list[tuple[str, dict[str, Any]]]:
    """(name, UI workflow) for every template and every UI-format workflow of this repository."""
    out = []
    # Named as the oracle's cache names them: template id, or repo-<stem> for this repository's files.
    for name, path in [*templates(), *((f"repo-{stem}", p) for stem, p in repo_workflows())]:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            out.append((name, data))
    return out


def reference(
    files: list[tuple[str, dict[str, Any]]], cached: Path | None, object_info: dict[str, Any]
) -> tuple[dict[str, dict[str, Any] | None], float | None]:
    """The frontend's prompt per file (None where it refused), and its seconds per file when run live."""
    out: dict[str, dict[str, Any] | None] = {}
    if cached is not None:
        for name, _data in files:
            path = cached / f"{name}.json"
            if not path.exists():
                sys.exit(f"{path}: no cached frontend output for {name}; run without --cached")
            out[name] = json.loads(path.read_text(encoding="utf-8")).get("prompt")
        return out, None
    started = time.perf_counter()
    with FrontendOracle(object_info) as oracle:
        for name, data in files:
            result = oracle.prompt_for(data)
            out[name] = None if isinstance(result, Refusal) else result
    return out, (time.perf_counter() - started) / max(len(files), 1)


def ours(files: list[tuple[str, dict[str, Any]]], object_info: dict[str, Any]) -> dict[str, Any]:
    """Our prompt per file, or the GraphError message."""
    out: dict[str, Any] = {}
    for name, data in files:
        try:
            out[name] = ui_to_api(data, object_info, name)
        except GraphError as exc:
            out[name] = str(exc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached", type=Path, help="folder of recorded frontend outputs (<name>.json)")
    args = parser.parse_args(argv)
    object_info = load_object_info()
    files = corpus()
    theirs, oracle_seconds = reference(files, args.cached, object_info)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        mine = ours(files, object_info)
        timings.append(time.perf_counter() - started)

    agreed, differ, refused, frontend_refused, unknown = [], [], [], [], []
    for name, _data in files:
        reference_prompt, our_prompt = theirs[name], mine[name]
        if reference_prompt is None:
            frontend_refused.append(name)
            continue
        if not all(node.get("class_type") in object_info for node in reference_prompt.values()):
            unknown.append(name)  # a node of a pack (or a type ComfyUI 0.8.0 lacks): not measured
            continue
        if isinstance(our_prompt, str):
            refused.append((name, our_prompt))
            continue
        differences = compare_prompts(our_prompt, reference_prompt, object_info)
        (differ if differences else agreed).append((name, differences))

    measured = len(agreed) + len(differ) + len(refused)
    print(
        f"corpus: {len(files)} UI workflows ({measured} measured; {len(unknown)} use node types outside "
        f"the recorded /object_info; {len(frontend_refused)} refused by the frontend)"
    )
    print(
        f"agreed {len(agreed)}  differ {len(differ)}  refused {len(refused)}  "
        f"({100 * len(agreed) / max(measured, 1):.1f}% agreement)"
    )
    for name, differences in differ:
        print(f"  DIFFER {name}:")
        for line in differences[:10]:
            print(f"    {line}")
    for name, message in refused:
        print(f"  REFUSED {name}: {message}")
    for name in frontend_refused:
        print(
            f"  frontend refused {name}: ours {'refused too' if isinstance(mine[name], str) else 'converted'}"
        )
    print(
        f"our conversion of all {len(files)} files: min {min(timings):.3f} s, median "
        f"{statistics.median(timings):.3f} s (3 runs)"
        + (f"; the frontend in Chromium: {oracle_seconds * 1000:.0f} ms per file" if oracle_seconds else "")
    )

    missed = []
    if differ:
        missed.append(f"{len(differ)} files differ")
    if refused:
        missed.append(f"{len(refused)} files refused that the frontend converts")
    if min(timings) >= TARGET_SECONDS:
        missed.append(f"conversion {min(timings):.2f} s >= {TARGET_SECONDS} s")
    print("targets met" if not missed else "targets missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
