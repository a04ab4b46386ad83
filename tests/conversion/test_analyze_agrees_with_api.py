"""`comfyfleet analyze` and the API read workflows the same way (they share comfyui_api.graph).

Over ComfyUI 0.8.0's official templates and the recorded /object_info of that ComfyUI:
- a template that analysis finds needs nothing but ComfyUI core (no node pack, nothing
  unresolved) becomes an endpoint;
- a template the API refuses is one for which analysis reports the missing piece: the refused
  node's class is a custom pack's or unresolved, never silently "core".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from comfyui_api.workflows import WorkflowError, build_endpoint

from comfyfleet.analysis import analyze_data
from comfyfleet.analysis.index import default_index
from comfyfleet.analysis.workflow import read_workflow_json
from comfyfleet.devkit.oracle.frontend import load_object_info, repo_workflows, templates

NOT_INSTALLED = re.compile(r"node (\S+) \((.+)\) is not installed in ComfyUI")


def test_analysis_and_endpoints_agree_on_every_template(tmp_path: Path) -> None:
    object_info = load_object_info()
    index = default_index()
    files = [path for _name, path in templates() + repo_workflows()]
    assert len(files) > 200
    built = refused_by_api = 0
    problems: list[str] = []
    for path in files:
        data = read_workflow_json(path)
        if "nodes" not in data:  # the packages also ship the template browser's search settings
            continue
        manifest = analyze_data(data, path.stem, str(path), index=index)
        needs_packs = {c for pack in manifest.custom_nodes for c in pack.provides}
        unresolved = {u.class_type for u in manifest.unresolved.nodes}
        # A user drops the file into workflows/ under a name that can be a URL path segment.
        served = tmp_path / (re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:64] + ".json")
        served.write_bytes(path.read_bytes())
        try:
            build_endpoint(served, object_info)
            built += 1
        except WorkflowError as exc:
            refused_by_api += 1
            missing = NOT_INSTALLED.search(str(exc))
            if missing is None:
                problems.append(f"{path.name}: API refused, not for a missing node: {exc}")
            elif missing.group(2) not in needs_packs | unresolved:
                problems.append(f"{path.name}: API lacks {missing.group(2)} but analysis did not report it")
            continue
        for ctype in manifest.core_classes:
            if ctype not in object_info:
                problems.append(f"{path.name}: analysis calls {ctype} core, ComfyUI 0.8.0 has no such node")
    assert not problems, "\n".join(problems[:20])
    assert built > 150, (built, refused_by_api)


@pytest.mark.parametrize("name", ["txt2img", "lora_txt2img"])
def test_repository_workflows_become_endpoints(name: str) -> None:
    path = dict(repo_workflows())[name]
    endpoint = build_endpoint(path, load_object_info())
    assert endpoint.output_nodes


@pytest.mark.parametrize(
    "template, expected",
    [
        # proxyWidgets [[27, text], [13, height], [13, width], [3, seed], ...] on subgraph instance 83
        (
            "01_get_started_text_to_image",
            [("text", "83:27"), ("height", "83:13"), ("width", "83:13"), ("seed", "83:3")],
        ),
        # input "text" labelled "Positive" (promoted, ["-1", "text"]), then inner widgets of 58 and 3
        (
            "image_qwen_image",
            [("positive", "76:6"), ("width", "76:58"), ("height", "76:58"), ("seed", "76:3")],
        ),
    ],
)
def test_template_endpoints_take_the_widgets_shown_on_the_subgraph(
    tmp_path: Path, template: str, expected: list[tuple[str, str]]
) -> None:
    served = tmp_path / "wf.json"
    served.write_bytes(dict(templates())[template].read_bytes())
    endpoint = build_endpoint(served, load_object_info())
    assert [(name, p.node_id) for name, p in endpoint.params.items()] == expected
