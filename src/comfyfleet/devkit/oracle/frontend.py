"""ComfyUI's real frontend as the oracle for UI→API conversion, in headless Chromium.

    with FrontendOracle(object_info) as oracle:
        result = oracle.prompt_for(workflow)   # dict (the API prompt) or Refusal

For each workflow the page runs `await app.loadGraphData(wf)` then `(await app.graphToPrompt()).output`:
exactly the prompt the frontend would queue, before any widget's `beforeQueued` / `afterQueued`
hook. ComfyUI's frontend (1.35.9) applies `control_after_generate` (randomize / increment /
decrement) in `afterQueued`, i.e. after the prompt was sent, so the first queued prompt carries the
saved values; only the non-default setting `Comfy.WidgetControlMode = "before"` changes values in
`beforeQueued`, before graphToPrompt. The oracle calls graphToPrompt alone, so the saved values are
what it reports (checked by test_frontend_oracle.py::test_control_widgets_keep_saved_values).

The frontend is `comfyui_frontend_package` (PyPI) served by the stand-in backend in backend.py with a
recorded /object_info; Chromium is Debian's /usr/bin/chromium driven by Playwright (PyPI).
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from comfyfleet.devkit import REPO
from comfyfleet.devkit.oracle.backend import BackendProcess
from comfyfleet.devkit.oracle.compare import compare_prompts

__all__ = [
    "DATA_DIR",
    "FrontendOracle",
    "OracleResult",
    "Refusal",
    "compare_prompts",
    "load_object_info",
    "repo_workflows",
    "templates",
]

REPO_ROOT = REPO
DATA_DIR = REPO_ROOT / "tests" / "data"
OBJECT_INFO = DATA_DIR / "comfyui-0.8.0" / "object_info.json.gz"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TEMPLATE_BUNDLES = {
    "media-api": "comfyui_workflow_templates_media_api",
    "media-video": "comfyui_workflow_templates_media_video",
    "media-image": "comfyui_workflow_templates_media_image",
    "media-other": "comfyui_workflow_templates_media_other",
}


@dataclass(frozen=True)
class Refusal:
    """The frontend produced no prompt for the file; `reason` is what it said (one line)."""

    reason: str


@dataclass
class OracleResult:
    prompt: dict[str, Any] | None
    refused: str | None
    missing_nodes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "refused": self.refused,
            "missing_nodes": self.missing_nodes,
            "errors": self.errors,
        }


def load_object_info(path: Path = OBJECT_INFO) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def frontend_static_dir() -> Path:
    spec = find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("comfyui-frontend-package is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def templates() -> list[tuple[str, Path]]:
    """The UI workflows that comfyui-workflow-templates ships: (template id, path), sorted by id.

    The core package's manifest lists every template with its bundle; each bundle is a media package
    holding `templates/<id>.json`. The manifest also lists the template browser's catalogue
    (index*.json) and its search settings (fuse_options.json): not workflows, left out.
    """
    manifest = json.loads(
        resources.files("comfyui_workflow_templates_core").joinpath("manifest.json").read_text()
    )
    out = []
    for entry in manifest["templates"]:
        name = entry["id"]
        package = TEMPLATE_BUNDLES[entry["bundle"]]
        path = Path(str(resources.files(package).joinpath("templates", f"{name}.json")))
        doc = json.loads(path.read_text())
        if (
            isinstance(doc, dict) and "nodes" in doc
        ):  # not index*.json nor fuse_options.json (search settings)
            out.append((name, path))
    return sorted(out)


def repo_workflows() -> list[tuple[str, Path]]:
    """This repository's workflows/*.json (UI or API format), (stem, path)."""
    return [(p.stem, p) for p in sorted((REPO_ROOT / "workflows").glob("*.json"))]


# Runs in the page: load the workflow, then ask for the prompt. Dialogs the frontend would open for
# missing nodes are recorded instead; console.error lines during the call are kept as its words.
_CONVERT_JS = """
async (text) => {
  const wf = JSON.parse(text);
  const app = window.app;
  const errors = [];
  const origError = console.error;
  console.error = (...args) => {
    errors.push(args.map(a => (a && a.message) ? a.message : String(a)).join(' ').split('\\n')[0]);
    origError.apply(console, args);
  };
  let missing = [];
  app.showMissingNodesError = (types) => {
    missing = types.map(t => typeof t === 'string' ? t : `${t.type} (${t.hint || ''})`);
  };
  app.showMissingModelsError = () => {};
  const done = (r) => JSON.stringify({...r, errors, missing});
  window.__oracleConfigured = false;
  try {
    await app.loadGraphData(wf, true, false, null);
    if (!window.__oracleConfigured) {
      // loadGraphData caught an error in graph.configure, showed its "load workflow" error dialog
      // and returned early (afterConfigureGraph never ran): the frontend refuses the file.
      return done({refused: 'loadGraphData: ' + (errors[0] || 'graph not configured')});
    }
    const p = await app.graphToPrompt();
    return done({prompt: p.output});
  } catch (e) {
    return done({refused: String((e && e.message) || e).split('\\n')[0]});
  } finally {
    console.error = origError;
    // Each load opens a new "Unsaved Workflow" tab; close the others as a user would, so that
    // hundreds of loads do not pile up tabs (which slows every later load).
    const store = app.extensionManager.workflow;
    for (const w of [...store.openWorkflows]) {
      if (w !== store.activeWorkflow) await store.closeWorkflow(w, {warnIfUnsaved: false});
    }
  }
}
"""

_READY_JS = "() => !!(window.app && window.app.graph && window.app.vueAppReady)"
# An extension whose afterConfigureGraph hook marks a load that went through to the end.
_PROBE_JS = """() => window.app.registerExtension({
  name: 'comfyfleet.oracle.probe',
  afterConfigureGraph() { window.__oracleConfigured = true; },
})"""


class FrontendOracle:
    """One Chromium, one page with ComfyUI's frontend; convert many workflows in it."""

    def __init__(
        self,
        object_info: Mapping[str, Any] | None = None,
        extensions: Mapping[str, Path] | None = None,
        chromium: str = CHROMIUM,
        timeout_s: float = 60.0,
    ) -> None:
        self.backend = BackendProcess(
            frontend_static_dir(), object_info if object_info is not None else load_object_info(), extensions
        )
        self.chromium = chromium
        self.timeout_ms = timeout_s * 1000
        self.page_errors: list[str] = []
        self._pw: Any = None
        self._context: Any = None
        self._page: Any = None
        self._profile: str | None = None

    def __enter__(self) -> FrontendOracle:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if not Path(self.chromium).exists():
            raise RuntimeError(
                f"{self.chromium} not found: run scripts/setup-dev.sh (installs Debian chromium)"
            )
        url = self.backend.start()
        self._profile = tempfile.mkdtemp(prefix="oracle-chromium-")
        self._pw = sync_playwright().start()
        self._context = self._pw.chromium.launch_persistent_context(
            self._profile,
            executable_path=self.chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        self._page = self._context.pages[0] if self._context.pages else self._context.new_page()
        self._page.on("pageerror", lambda exc: self.page_errors.append(str(exc).split("\n")[0]))
        self._page.on("dialog", lambda d: d.dismiss())  # alert/confirm/prompt never block
        self._page.goto(url + "/", wait_until="domcontentloaded", timeout=self.timeout_ms)
        self._page.wait_for_function(_READY_JS, timeout=self.timeout_ms)
        self._page.evaluate(_PROBE_JS)

    def close(self) -> None:
        for closer in (
            lambda: self._context and self._context.close(),
            lambda: self._pw and self._pw.stop(),
            self.backend.stop,
        ):
            try:
                closer()
            except Exception:  # noqa: S110 - best-effort teardown of a browser we started
                pass
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
        self._context = self._pw = self._page = None

    def result_for(self, workflow: Mapping[str, Any]) -> OracleResult:
        raw = json.loads(self._page.evaluate(_CONVERT_JS, json.dumps(workflow)))
        return OracleResult(
            prompt=raw.get("prompt"),
            refused=raw.get("refused"),
            missing_nodes=list(raw.get("missing") or []),
            errors=list(raw.get("errors") or []),
        )

    def prompt_for(self, workflow: Mapping[str, Any]) -> dict[str, Any] | Refusal:
        """The API prompt the frontend would queue for `workflow`, or a Refusal with its words."""
        res = self.result_for(workflow)
        if res.prompt is None:
            return Refusal(res.refused or "no prompt")
        return res.prompt

    def eval(self, js: str, arg: Any = None) -> Any:
        """Evaluate a JS function expression in the frontend page (for tests and exploration)."""
        return self._page.evaluate(js, arg)
