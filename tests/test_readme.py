"""README.md's first two code blocks are what a person runs first: they must keep working."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from comfyfleet.devkit.fleet.images import comfyui_checkout
from comfyfleet.devkit.ship_fleet import REAL_COMFYUI_SKIPS, cpu_examples
from comfyfleet.inventory import DEFAULT_COMFYUI_REF, DEFAULT_NVIDIA_TOOLKIT_VERSION, DEFAULT_RUNTIME_IMAGE

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


def test_sandbox_examples_are_the_ones_a_real_comfyui_runs_on_cpu() -> None:
    """The sandbox ships an upscaler with a real model file and a core-nodes-only workflow; the SD1.5
    examples (2 GB of weights) stay documented examples outside the sandbox run, and README says so."""
    assert cpu_examples() == ["swatch", "upscale"]
    assert set(REAL_COMFYUI_SKIPS) == {"txt2img", "lora_txt2img"}
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`txt2img` and `lora_txt2img` are not part of the sandbox run" in readme


def test_readme_names_the_default_versions_and_how_to_move_a_fleet() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    for key, value in (
        ("comfyui_ref", DEFAULT_COMFYUI_REF),
        ("runtime_image", DEFAULT_RUNTIME_IMAGE),
        ("nvidia_toolkit_version", DEFAULT_NVIDIA_TOOLKIT_VERSION),
    ):
        assert f"`{value}` (`{key}`" in readme, f"README must name the default {key} {value}"
    assert f"--update-comfyui-core {DEFAULT_COMFYUI_REF} --rolling 1" in readme


@pytest.mark.fleet
def test_readme_main_job_runs_end_to_end_on_a_sandbox_host() -> None:
    main_job = code_blocks()[0]
    # The sandbox runs the stand-in, or the real ComfyUI that COMFYFLEET_TEST_COMFYUI names.
    real = comfyui_checkout() is not None
    for command in main_job[1:]:  # set-up already ran: this suite runs from its venv
        done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900)  # noqa: S602 - the README's own text
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        # The end state an operator is promised: every sandbox workflow generated, status shown.
        for workflow in cpu_examples():
            assert re.search(rf"{workflow}\s+│ yes\s+│ 200", done.stdout), workflow
        for workflow in REAL_COMFYUI_SKIPS:
            assert not re.search(rf"\b{workflow}\s+│", done.stdout), f"{workflow} is not a sandbox workflow"
        assert "healthy" in done.stdout and "containers" in done.stdout
        # Honest labels: "stand-in" only when it is the stand-in.
        if real:
            assert "(real, from COMFYFLEET_TEST_COMFYUI)" in done.stdout and "stand-in" not in done.stdout
        else:
            assert "ComfyUI stand-in (tests/standin/comfyui)" in done.stdout
