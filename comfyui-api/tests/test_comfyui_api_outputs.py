"""Output retention on a real folder: whole hours go by name, the boundary hour job by job, nothing else."""

from __future__ import annotations

import calendar
import os
from pathlib import Path

from comfyui_api.outputs import Outputs, job_folder, place


def test_sweep_deletes_only_expired_api_folders(tmp_path: Path) -> None:
    now = calendar.timegm((2026, 12, 3, 12, 30, 0))
    outputs = Outputs(comfy=None, output_dir=tmp_path, retention_hours=1.0)  # type: ignore[arg-type]
    old_hour = tmp_path / job_folder("a" * 32, now - 3 * 3600)
    boundary_old = tmp_path / job_folder("b" * 32, now - 3600 - 60)
    boundary_new = tmp_path / job_folder("c" * 32, now - 3600 + 600)
    recent = tmp_path / job_folder("d" * 32, now - 60)
    foreign = tmp_path / "api" / "not-a-day" / "07" / "job"
    operator = tmp_path / "ComfyUI_00001_.png"
    for folder in (old_hour, boundary_old, boundary_new, recent, foreign):
        folder.mkdir(parents=True)
        (folder / "x_00001_.png").write_bytes(b"png")
    operator.write_bytes(b"png")
    os.utime(operator, (0, 0))
    os.utime(boundary_old, (now - 3600 - 60,) * 2)
    os.utime(boundary_new, (now - 3600 + 600,) * 2)
    assert outputs.sweep(now) == 2
    assert not old_hour.exists() and not old_hour.parent.exists()
    assert not boundary_old.exists() and boundary_new.exists()
    assert recent.exists() and foreign.exists() and operator.exists()


def test_place_moves_every_literal_prefix_under_the_job_folder() -> None:
    graph = {
        "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "../../etc/x", "images": ["2", 0]}},
        "3": {"class_type": "SaveLatent", "inputs": {"filename_prefix": ["4", 0]}},
    }
    place(graph, "j" * 32, calendar.timegm((2026, 12, 3, 5, 0, 0)))
    assert graph["1"]["inputs"]["filename_prefix"] == f"api/2026-12-03/05/{'j' * 32}/etc/x"
    assert graph["3"]["inputs"]["filename_prefix"] == ["4", 0]
