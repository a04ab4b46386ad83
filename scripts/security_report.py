#!/usr/bin/env python3
"""Run the attack catalogue (tests/security) and print handled/total per category.

Each tests/security/test_<category>.py holds one test per attack; a passing test is an
attack handled, anything else (failed, error, skipped) is not. A category without a file
yet is listed as "not covered" and counts as a miss. Ends with one line: targets met or
missed (exit 1 on a miss). The secrets category includes attacks over the real SSH test fleet
(``-m fleet``: tunnels, a ship to an API not reachable directly); they run here like the rest.

    .venv/bin/python scripts/security_report.py            # the whole catalogue
    .venv/bin/python scripts/security_report.py -k ssrf    # extra arguments go to pytest
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "tests" / "security"
# Every category issue 11 names, by file: tests/security/test_<category>.py.
CATEGORIES = [
    "tenancy",
    "ssrf",
    "resources",
    "execlog",
    "input",
    "modal_names",
    "trusted_packs",
    "volumes",
    "downloads",
    "secrets",
]


def category_of(classname: str) -> str | None:
    for part in classname.split("."):
        if part.startswith("test_"):
            return part[len("test_") :]
    return None


def run(extra: list[str]) -> tuple[dict[str, list[tuple[str, str]]], int]:
    """(category -> [(test, outcome)]), pytest's exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "report.xml"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(CATALOGUE),
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
                *extra,
            ],
            cwd=ROOT,
        )
        results: dict[str, list[tuple[str, str]]] = defaultdict(list)
        if xml.exists():
            for case in ET.parse(xml).iter("testcase"):
                cat = category_of(case.get("classname", ""))
                if cat is None:
                    continue
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = child.tag
                results[cat].append((case.get("name", "?"), outcome))
    return results, done.returncode


def main() -> int:
    results, code = run(sys.argv[1:])
    present = sorted(p.stem[len("test_") :] for p in CATALOGUE.glob("test_*.py"))
    categories = CATEGORIES + [c for c in present if c not in CATEGORIES]
    print()
    print(f"{'category':<16} {'handled':>8} {'total':>6}  not handled")
    misses = 0
    handled_all = total_all = 0
    for cat in categories:
        rows = results.get(cat, [])
        if not rows:
            status = "not covered" if cat not in present else "no results (collection failed?)"
            print(f"{cat:<16} {'-':>8} {'-':>6}  {status}")
            misses += 1
            continue
        handled = sum(1 for _, o in rows if o == "passed")
        handled_all += handled
        total_all += len(rows)
        bad = [f"{name} ({o})" for name, o in rows if o != "passed"]
        print(f"{cat:<16} {handled:>8} {len(rows):>6}  {', '.join(bad)}")
        misses += handled != len(rows)
    print()
    if misses == 0 and code == 0:
        print(
            f"security targets met: {handled_all}/{total_all} attacks handled in {len(categories)} categories"
        )
        return 0
    print(
        f"security targets missed: {handled_all}/{total_all} attacks handled; "
        f"{misses} of {len(categories)} categories incomplete or not covered"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
