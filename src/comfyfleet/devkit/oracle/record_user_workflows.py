"""Record the real frontend's prompts for user workflows that need custom node packs' JS (e.g. KJNodes' Set/Get).

The packs' web folders (from fetched repositories, never committed) are served as frontend extensions,
like ComfyUI serves a pack's WEB_DIRECTORY; /object_info is the recorded one with those packs.

    .venv/bin/python -m oracle.record_user_workflows  (from tests/) \
        --object-info data/comfyui-0.8.0+packs/object_info.json.gz \
        --extension ComfyUI-KJNodes=/work/comfyui-packs/custom_nodes/ComfyUI-KJNodes/web ... \
        --workflow NAME=PATH ... --out data/frontend-recorded

Writes `<out>/<NAME>.workflow.json` (the file as given) and `<out>/<NAME>.prompt.json` =
{"prompt", "refused", "missing_nodes", "errors", "frontend": "comfyui-frontend-package 1.35.9",
"extensions": [...]}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from comfyfleet.devkit.oracle.frontend import FrontendOracle, load_object_info


def _pairs(items: list[str], what: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--{what} {item!r}: expected NAME=PATH")
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--object-info", type=Path, required=True)
    ap.add_argument("--extension", action="append", default=[], help="NAME=WEB_DIRECTORY of a pack")
    ap.add_argument("--workflow", action="append", default=[], help="NAME=PATH of a UI workflow")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    extensions = _pairs(args.extension, "extension")
    workflows = _pairs(args.workflow, "workflow")
    args.out.mkdir(parents=True, exist_ok=True)
    with FrontendOracle(load_object_info(args.object_info), extensions=extensions) as oracle:
        loaded = oracle.eval(
            "() => window.app.extensionManager ? Object.keys(window.comfyAPI || {}).length : 0"
        )
        for name, path in workflows.items():
            wf = json.loads(path.read_text())
            res = oracle.result_for(wf)
            shutil.copyfile(path, args.out / f"{name}.workflow.json")
            doc = {
                **res.as_json(),
                "frontend": "comfyui-frontend-package 1.35.9",
                "extensions": sorted(extensions),
            }
            (args.out / f"{name}.prompt.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            status = "refused: " + res.refused if res.refused else f"{len(res.prompt or {})} nodes"
            print(f"{name}: {status}; missing {res.missing_nodes}; errors {res.errors[:2]}")
        unknown = sorted(set(oracle.backend.unknown))
    print(f"comfyAPI modules {loaded}; 404s: {unknown[:10]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
