"""Bad workflow files: one line naming the file and the problem; other files still analyzed."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.analysis import analyze_file, analyze_paths
from comfyfleet.analysis.workflow import MAX_WORKFLOW_BYTES
from comfyfleet.errors import BadInput

GOOD = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "file is empty"),
        (b"{not json", "invalid JSON at line 1"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "top-level JSON is a list"),
        (b'"just a string"', "top-level JSON is a str"),
        (b"{}", "not a ComfyUI workflow"),
        (b'{"hello": "world"}', "not a ComfyUI workflow"),
        (b'{"nodes": {"1": {}}}', "'nodes' must be a list"),
        (b'{"nodes": [42]}', "a node entry is a int"),
        (b'{"nodes": [{"id": 3, "type": 7}]}', "node 3: 'type' must be a non-empty string"),
        (b'{"5": {"class_type": 12, "inputs": {}}}', "node 5: class_type must be a non-empty string"),
        (b'{"5": {"class_type": "X", "inputs": [1, 2]}}', "node 5: inputs must be an object"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (
            b'{"nodes": [{"id": 4, "type": "0b0c9a3e-3f0e-4c39-9a51-2f0d1b6c7e11"}]}',
            "node 4 is a subgraph (0b0c9a3e-3f0e-4c39-9a51-2f0d1b6c7e11) missing from definitions.subgraphs",
        ),
    ],
)
def test_bad_files_give_one_line_naming_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(BadInput) as caught:
        analyze_file(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message


def test_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:
        fh.truncate(MAX_WORKFLOW_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(BadInput, match=r"huge\.json: file is \d+ MiB, over the 64 MiB limit"):
        analyze_file(path)


def test_other_files_are_still_analyzed(tmp_path: Path, write_json) -> None:
    write_json("a_good.json", GOOD)
    (tmp_path / "b_bad.json").write_text("{oops")
    write_json("c_good.json", GOOD)
    result = analyze_paths([tmp_path, tmp_path / "missing.json"])
    assert [m.workflow for m in result.manifests] == ["a_good", "c_good"]
    assert len(result.errors) == 2
    assert result.errors[0].startswith(f"{tmp_path / 'missing.json'}: no such file")
    assert result.errors[1].startswith(f"{tmp_path / 'b_bad.json'}: invalid JSON")
    assert set(result.lock.workflows) == {"a_good", "c_good"}


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    result = analyze_paths([tmp_path])
    assert result.manifests == [] and result.errors == [
        f"{tmp_path}: no workflow .json files in this directory"
    ]
