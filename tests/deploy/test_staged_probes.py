"""Host-side script probes of a no-op run share one python3: each answers as if it ran alone (real sh,
real python3), and one that fails does not hide the others' answers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from comfyfleet.facts.hostside import StagedFiles

SCRIPT = """\
from __future__ import annotations
import dataclasses, json, os, sys

@dataclasses.dataclass
class Row:
    argv: list[str]

def main() -> int:
    print("note on stderr", file=sys.stderr)
    print("CHECK " + json.dumps({"argv": Row(sys.argv[1:]).argv, "file": os.path.basename(__file__)}))
    if "--fail" in sys.argv:
        raise RuntimeError("boom")
    return 3

if __name__ == "__main__":
    sys.exit(main())
"""


def _answer(paths: tuple[str, ...], probes: tuple[tuple[str, ...], ...]) -> dict[str, object]:
    text = StagedFiles().command(paths=paths, probes=probes).get_raw_value()
    out = subprocess.run(["sh", "-c", text], capture_output=True, text=True, check=True, timeout=60)
    return StagedFiles().process(out.stdout.splitlines())


def test_probes_in_one_interpreter_answer_as_each_alone(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b dir" / "b.py"
    b.parent.mkdir()
    a.write_text(SCRIPT)
    b.write_text(SCRIPT)
    probes = (
        ("python3", str(a), "--plan", "x y.json", "--", "check"),
        ("python3", str(b), "--fail"),
        ("sh", "-c", "echo 'JOB {\"ok\": true}'"),
        ("python3", str(a), "status"),
    )
    text = StagedFiles().command(paths=(str(a),), probes=probes).get_raw_value()
    assert text.count("python3") == 1  # the three script probes share one interpreter
    together = _answer((str(a), str(b)), probes)
    alone = {str(i): _answer((), (p,))["probes"]["0"] for i, p in enumerate(probes)}
    assert set(together["hashes"]) == {str(a), str(b)}
    failed = together["probes"].pop("1")
    assert together["probes"] == {k: v for k, v in alone.items() if k != "1"}
    # A failing script: the same answer and exception (the traceback has the runner's frames too).
    assert failed[:3] == alone["1"][:3] and failed[-2] == alone["1"][-1] == "RuntimeError: boom"
    assert failed[-1].startswith("error: ") and "boom" in failed[-1]
    assert together["probes"]["0"][:2] == [
        "note on stderr",
        'CHECK {"argv": ["--plan", "x y.json", "--", "check"], "file": "a.py"}',
    ]
    assert together["probes"]["2"] == ['JOB {"ok": true}']
    assert together["probes"]["3"][1] == 'CHECK {"argv": ["status"], "file": "a.py"}'


def test_probe_bytecode_cache_never_answers_for_an_older_script(tmp_path: Path) -> None:
    """The scripts' bytecode is cached beside them; a re-uploaded script (same size, new content) runs
    its new code, as a host whose scripts were just updated must."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("print('CHECK [1]')\n")
    b.write_text("print('JOB [0]')\n")
    probes = (("python3", str(a)), ("python3", str(b)))
    assert _answer((), probes)["probes"] == {"0": ["CHECK [1]"], "1": ["JOB [0]"]}
    assert list((tmp_path / "__pycache__").glob("a.*.pyc"))
    a.write_text("print('CHECK [2]')\n")  # same size: only the mtime tells
    stat = a.stat()
    os.utime(a, (stat.st_atime + 5, stat.st_mtime + 5))
    assert _answer((), probes)["probes"] == {"0": ["CHECK [2]"], "1": ["JOB [0]"]}
