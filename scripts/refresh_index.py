#!/usr/bin/env python3
"""Rebuild comfyfleet's offline analysis index (src/comfyfleet/data/index.json.gz).

Downloads the comfyui-manager and comfyui-workflow-templates-json wheels with
`pip download --no-deps` (PyPI only) unless --wheel-dir has them, and records their
versions in the index. Same as `comfyfleet index refresh`.

Example:
    .venv/bin/python scripts/refresh_index.py --manager-version 4.3 --comfyui-src ../ComfyUI
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from comfyfleet.analysis.index_build import DEFAULT_INDEX_PATH, refresh


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manager-version", help="comfyui-manager version (default: newest on PyPI)")
    parser.add_argument(
        "--templates-version", help="comfyui-workflow-templates-json version (default: newest)"
    )
    parser.add_argument(
        "--comfyui-src", type=Path, help="ComfyUI checkout or bare git dir for core class names"
    )
    parser.add_argument("--wheel-dir", type=Path, help="use wheels already downloaded here")
    parser.add_argument("--out", type=Path, default=DEFAULT_INDEX_PATH)
    args = parser.parse_args(argv)
    try:
        index = refresh(
            args.out, args.manager_version, args.templates_version, args.comfyui_src, args.wheel_dir
        )
    except Exception as exc:  # one line for the operator, no traceback
        print(f"error: index refresh failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: sources {index['sources']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
