"""Write the frontend's prompt for every template and repo workflow as files (a cache for developers).

    .venv/bin/python -m comfyfleet.devkit.oracle.dump --out /work/oracle-out

Writes `<out>/<name>.json` = {"prompt": {...} | null, "refused": null | "reason", "missing_nodes": [...],
"errors": [...]}; templates under their template id, this repo's workflows as `repo-<stem>`; then
`<out>/READY` holding the commit and the counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from comfyfleet.devkit.oracle.frontend import REPO_ROOT, FrontendOracle, repo_workflows, templates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="record the frontend's prompts for all templates")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "READY").unlink(missing_ok=True)
    items = list(templates()) + [(f"repo-{n}", p) for n, p in repo_workflows()]
    refused = missing = 0
    t0 = time.monotonic()
    with FrontendOracle() as oracle:
        t1 = time.monotonic()
        for name, path in items:
            wf = json.loads(path.read_text())
            if "nodes" not in wf:  # an API-format file: nothing for the frontend to convert
                continue
            res = oracle.result_for(wf)
            refused += res.refused is not None
            missing += bool(res.missing_nodes)
            doc = {"source": str(path), **res.as_json()}
            (args.out / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    t2 = time.monotonic()
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    summary = (
        f"commit {commit}\nfiles {len(items)} refused {refused} with_missing_nodes {missing}\n"
        f"startup_s {t1 - t0:.1f} convert_s {t2 - t1:.1f}\n"
    )
    (args.out / "READY").write_text(summary)
    print(summary, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
