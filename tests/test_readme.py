"""README.md's first two code blocks are what a person runs first: they must keep working."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def code_blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [[ln for ln in b.splitlines() if ln.strip() and not ln.startswith("#")] for b in blocks]


def test_readme_starts_with_setup_then_main_job_then_setup_then_tests() -> None:
    main_job, tests = code_blocks()[:2]
    assert main_job[0] == tests[0] == "bash scripts/setup-dev.sh"
    assert tests[1] == ".venv/bin/pytest"
    # .ci/run must run exactly the README's test command.
    assert tests[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.fleet
def test_readme_main_job_runs_end_to_end_on_a_sandbox_host() -> None:
    main_job = code_blocks()[0]
    for command in main_job[1:]:  # set-up already ran: this suite runs from its venv
        done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900)  # noqa: S602 - the README's own text
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        # The end state an operator is promised: every example workflow generated, status shown.
        for workflow in ("txt2img", "upscale", "lora_txt2img"):
            assert re.search(rf"{workflow}\s+│ yes\s+│ 200", done.stdout), workflow
        assert "healthy" in done.stdout and "containers" in done.stdout
