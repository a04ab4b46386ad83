"""The generated Modal app: golden file, imports with the real modal 1.6.4, matches the manifest, quotes safely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import modal
import pytest
from modal_helpers import GOLDEN, REPO, app_layout, hand_inputs, import_app

from comfyfleet.analysis import analyze_paths
from comfyfleet.errors import BadInput
from comfyfleet.manifest import ModelRef, NodePack
from comfyfleet.modal_target.deploy import module_constants, read_app_facts
from comfyfleet.modal_target.generate import generate_app, py_literal, render_app
from comfyfleet.modal_target.options import ModalOptions

WORKFLOWS = REPO / "workflows"
SHA = "ab" * 32


def golden_text() -> str:
    return generate_app([WORKFLOWS], ModalOptions(), GOLDEN, write=False).text


def test_golden_app_file_matches_generator_output() -> None:
    """Review changes to the generated app like code: COMFYFLEET_REGEN_GOLDEN=1 rewrites the file."""
    text = golden_text()
    if os.environ.get("COMFYFLEET_REGEN_GOLDEN"):
        GOLDEN.write_text(text)
    assert GOLDEN.read_text() == text, (
        "generated app changed: review, then rerun with COMFYFLEET_REGEN_GOLDEN=1"
    )


def test_generated_app_matches_the_manifest_the_hosts_get() -> None:
    """Acceptance: same packs at the same versions and folders, same model files, URLs and hashes.

    The expected values come from the host tiers' own functions (deploys.nodes / deploys.models),
    fed with the same analysis of workflows/.
    """
    from comfyfleet.deploys.models import needed_models
    from comfyfleet.deploys.nodes import clone_url, needed_packs, pack_dir

    manifests = analyze_paths([WORKFLOWS]).manifests
    host_packs, _core = needed_packs(manifests)
    host_models = needed_models(manifests)
    consts = module_constants(GOLDEN)
    assert consts["COMFYUI_REF"] == ModalOptions().comfyui_ref
    assert host_packs, "the example workflows need at least one node pack"
    assert sorted((p["repo"], p["version"], p["dir"]) for p in consts["NODE_PACKS"]) == sorted(
        (clone_url(p.repo, {}), p.version, pack_dir(p)) for p in host_packs
    )
    assert sorted((m["folder"], m["filename"], m["url"], m["sha256"]) for m in consts["MODELS"]) == sorted(
        (m.folder, m.filename, m.url, m.sha256) for m in host_models
    )
    assert sorted(consts["WORKFLOWS"]) == sorted(m.workflow for m in manifests)
    # Every shipped file exists where the app file says, relative to itself.
    shipped = [
        *consts["WORKFLOW_FILES"].values(),
        consts["API_SOURCE"],
        consts["FETCH_MODELS_SOURCE"],
        consts["INSTALL_NODES_SOURCE"],
    ]
    for rel in shipped:
        assert (GOLDEN.parent / rel).exists(), rel


def test_image_build_steps_follow_the_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """At modal's own API: the base image, ComfyUI's ref and one build step per pack, as the golden file declares."""
    steps: list[tuple[str, dict]] = []
    bases: list[str] = []
    real_run, real_registry = modal.Image.run_function, modal.Image.from_registry

    def spy_run(self, raw_f, **kwargs):  # type: ignore[no-untyped-def]
        steps.append((raw_f.__name__, kwargs.get("kwargs", {})))
        return real_run(self, raw_f, **kwargs)

    def spy_registry(tag, *args, **kwargs):  # type: ignore[no-untyped-def]
        bases.append(tag)
        return real_registry(tag, *args, **kwargs)

    monkeypatch.setattr(modal.Image, "run_function", spy_run)
    monkeypatch.setattr(modal.Image, "from_registry", spy_registry)
    module = import_app(GOLDEN)
    options = ModalOptions()
    assert bases == [options.base_image]
    assert steps[0] == ("install_comfyui", {"repo": options.comfyui_repo, "ref": options.comfyui_ref})
    assert [name for name, _ in steps[1:]] == ["install_node_packs"] * len(module.NODE_PACKS)
    assert [kw["packs"] for _, kw in steps[1:]] == [[p] for p in module.NODE_PACKS]


def test_generated_app_imports_offline_and_defines_app_functions_volume() -> None:
    module = import_app(GOLDEN)
    assert isinstance(module.app, modal.App)
    assert module.app.name == "comfyfleet"
    layout = app_layout(module)
    assert set(layout["functions"]) == {"download_models", "ComfyUIService.*"}
    assert set(layout["classes"]) == {"ComfyUIService"}
    assert layout["web_endpoints"] == ["ComfyUIService.api"]
    assert isinstance(module.models_volume, modal.Volume)
    assert isinstance(module.image, modal.Image)
    service = layout["functions"]["ComfyUIService.*"]._spec_
    assert service.gpus == "L40S"
    # The spec holds modal's internal objects: compare them by what they name.
    assert {k: repr(v) for k, v in service.volumes.items()} == {
        "/models": "modal.Volume.from_name('comfyfleet-models')"
    }
    download = layout["functions"]["download_models"]._spec_
    assert download.gpus is None, "downloading models needs no GPU"
    assert {k: repr(v) for k, v in download.volumes.items()} == {"/models": repr(module.models_volume)}


def test_options_reach_modal_decorators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU, scaledown, containers, concurrency, timeout and memory snapshots arrive at the real decorators."""
    seen: dict[str, dict] = {}
    real_cls, real_concurrent = modal.App.cls, modal.concurrent

    def spy_cls(self, **kwargs):  # type: ignore[no-untyped-def]
        seen["cls"] = kwargs
        return real_cls(self, **kwargs)

    def spy_concurrent(**kwargs):  # type: ignore[no-untyped-def]
        seen["concurrent"] = kwargs
        return real_concurrent(**kwargs)

    monkeypatch.setattr(modal.App, "cls", spy_cls)
    monkeypatch.setattr(modal, "concurrent", spy_concurrent)
    options = ModalOptions(
        app_name="gpu-test",
        gpu="H100:2",
        scaledown_window=60,
        max_containers=5,
        max_concurrent_requests=3,
        request_timeout=900,
        memory_snapshot=True,
    )
    out = tmp_path / "app.py"
    out.write_text(render_app(hand_inputs(tmp_path), options, out))
    module = import_app(out)
    assert seen["cls"]["gpu"] == "H100:2"
    assert seen["cls"]["scaledown_window"] == 60
    assert seen["cls"]["max_containers"] == 5
    assert seen["cls"]["timeout"] == 900
    assert seen["cls"]["enable_memory_snapshot"] is True
    assert seen["cls"]["experimental_options"] == {"enable_gpu_snapshot": True}
    assert seen["concurrent"] == {"max_inputs": 3}
    assert module.models_volume is not None and module.MODELS_VOLUME == "gpu-test-models"


def test_without_memory_snapshot_no_snapshot_options(tmp_path: Path) -> None:
    out = tmp_path / "app.py"
    out.write_text(render_app(hand_inputs(tmp_path), ModalOptions(), out))
    text = out.read_text()
    assert "enable_memory_snapshot" not in text and "snap=True" not in text
    import_app(out)


def test_secrets_follow_the_models(tmp_path: Path) -> None:
    """A CivitAI model attaches the CivitAI secret (required key checked by Modal); none otherwise."""
    civitai = ModelRef(
        filename="lora.safetensors", folder="loras", url="https://civitai.com/api/download/models/123"
    )
    out = tmp_path / "app.py"
    out.write_text(render_app(hand_inputs(tmp_path, models=[civitai]), ModalOptions(hf_secret="my-hf"), out))
    facts = read_app_facts(out)
    assert facts.model_secrets == {"comfyfleet-civitai": "CIVITAI_API_TOKEN", "my-hf": "HF_TOKEN"}
    module = import_app(out)
    spec = app_layout(module)["functions"]["download_models"]._spec_
    assert len(spec.secrets) == 2


HOSTILE = [
    "https://example.com/a\"b'c.safetensors?x=\"+__import__('os').system('touch${IFS}PWNED')+\"",
    "https://example.com/'''\\\"\"\"/x.safetensors",
    "https://example.com/{APP_NAME}/%s/${HOME}/$(touch${IFS}PWNED)/`id`/x.safetensors",
]


@pytest.mark.parametrize("url", HOSTILE)
def test_untrusted_values_stay_data(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quotes, braces and shell syntax in workflow values come back as the same string, never as code."""
    monkeypatch.chdir(tmp_path)
    model = ModelRef(filename="x.safetensors", folder="checkpoints", url=url, sha256=SHA)
    pack = NodePack(id="p\"'", repo="https://github.com/o/Pack-1", version='1.0.0+"x', resolved_by="override")
    with pytest.raises(BadInput, match="version"):
        render_app(hand_inputs(tmp_path, packs=[pack]), ModalOptions(), tmp_path / "app.py")
    pack = NodePack(id="p\"'{x}", repo="https://github.com/o/Pack-1", version="1.0.0", resolved_by="override")
    out = tmp_path / "app.py"
    out.write_text(render_app(hand_inputs(tmp_path, packs=[pack], models=[model]), ModalOptions(), out))
    module = import_app(out)
    assert module.MODELS[0]["url"] == url
    assert module.NODE_PACKS[0]["id"] == "p\"'{x}"
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ModelRef(filename="../../etc/x.safetensors", folder="checkpoints", url="https://h/x"), "file name"),
        (ModelRef(filename="a;rm -rf.safetensors", folder="checkpoints", url="https://h/x"), "file name"),
        (ModelRef(filename="x.safetensors", folder="../up", url="https://h/x"), "folder"),
        (ModelRef(filename="x.safetensors", folder="checkpoints", url=None), "no download URL"),
        (ModelRef(filename="x.safetensors", folder="checkpoints", url="file:///etc/passwd"), "URL"),
        (ModelRef(filename="x.safetensors", folder="checkpoints", url="https://h/x\nimport os"), "URL"),
        (ModelRef(filename="x.safetensors", folder="checkpoints", url="https://h/x", sha256="zz"), "sha256"),
    ],
)
def test_unsafe_models_are_refused(tmp_path: Path, model: ModelRef, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        render_app(hand_inputs(tmp_path, models=[model]), ModalOptions(), tmp_path / "app.py")


@pytest.mark.parametrize(
    "repo",
    ["http://github.com/o/p", "https://github.com/o/p;id", "https://github.com/o/..", "--upload-pack=x"],
)
def test_unsafe_pack_repos_are_refused(tmp_path: Path, repo: str) -> None:
    pack = NodePack(id="p", repo=repo, version="1.0.0", resolved_by="override")
    with pytest.raises(BadInput, match="node pack"):
        render_app(hand_inputs(tmp_path, packs=[pack]), ModalOptions(), tmp_path / "app.py")


def test_workflow_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="workflow name"):
        from comfyfleet.manifest import Manifest
        from comfyfleet.modal_target.generate import workflow_files_of

        workflow_files_of([Manifest(workflow="a b;c", source=str(tmp_path / "a b;c.json"), format="api")])


@pytest.mark.parametrize(
    "value", ["plain", "it's", 'say "hi"', "both ' and \"", "back\\slash", "\u2028x", "é🙂", ""]
)
def test_py_literal_round_trips(value: str) -> None:
    import ast

    assert ast.literal_eval(py_literal({"k": [value, None, 3, True]})) == {"k": [value, None, 3, True]}


def test_generated_app_passes_ruff(tmp_path: Path) -> None:
    out = tmp_path / "app.py"
    model = ModelRef(filename="sub/x.safetensors", folder="loras", url="civitai:42", sha256=SHA, size=10)
    pack = NodePack(id="p", repo="https://github.com/o/p.git", version="0" * 40, resolved_by="override")
    out.write_text(
        render_app(
            hand_inputs(tmp_path, packs=[pack], models=[model]), ModalOptions(memory_snapshot=True), out
        )
    )
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "check", "--config", str(REPO / "pyproject.toml"), str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout


def test_cli_generate_writes_the_app_and_rejects_bad_options(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("comfyfleet")
    out = tmp_path / "deploy" / "app.py"
    done = subprocess.run(
        [
            str(exe),
            "modal",
            "generate",
            str(WORKFLOWS),
            "--out",
            str(out),
            "--gpu",
            "A100-80GB",
            "--app",
            "my-fleet",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    consts = module_constants(out)
    assert consts["GPU"] == "A100-80GB" and consts["APP_NAME"] == "my-fleet"
    bad = subprocess.run(
        [str(exe), "modal", "generate", str(WORKFLOWS), "--out", str(out), "--gpu", "L4; rm"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--gpu" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run(
        [str(exe), "modal", "generate", str(tmp_path / "nope.json"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "nope.json" in missing.stderr


def test_no_build_step_after_runtime_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """modal refuses (at deploy time) a build step after add_local_*(copy=False): check the order offline."""
    calls: list[tuple[str, bool]] = []
    for method in ("apt_install", "run_function", "run_commands", "env", "add_local_file", "add_local_dir"):
        real = getattr(modal.Image, method)

        def spy(self, *args, __real=real, __name=method, **kwargs):  # type: ignore[no-untyped-def]
            calls.append((__name, bool(kwargs.get("copy", False))))
            return __real(self, *args, **kwargs)

        monkeypatch.setattr(modal.Image, method, spy)
    import_app(GOLDEN)
    runtime = [i for i, (name, copy) in enumerate(calls) if name.startswith("add_local") and not copy]
    builds = [i for i, (name, _) in enumerate(calls) if not name.startswith("add_local")]
    assert runtime and builds and max(builds) < min(runtime), calls
    # The installer the build steps run is baked in; workflows and the downloader are mounted at start.
    assert ("add_local_file", True) in calls and ("add_local_dir", True) in calls
