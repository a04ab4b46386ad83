"""Development tooling shipped with the package: the local SSH test fleet, local upstreams, the stand-in launcher.

Used by the test suite, the benchmarks and ``scripts/sandbox.py``; never by a deployment.
It works from a source checkout: the stand-in ComfyUI's source tree stays in
``tests/standin/comfyui`` as data, found through :data:`REPO`.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
"""The source checkout this package runs from (editable install)."""
STANDIN_DIR = REPO / "tests" / "standin" / "comfyui"
"""The stand-in ComfyUI's source tree (data, run as a process)."""
