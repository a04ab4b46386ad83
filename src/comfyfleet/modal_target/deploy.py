"""Deploy a generated app to Modal and prove it works: secrets, deploy, models, /health, generations.

One function per step so the CLI, `comfyfleet ship` and tests can run them alone:
:func:`read_app_facts` → :func:`sync_secrets` → :func:`fill_models_volume` →
:func:`deploy_app` (``modal deploy`` + endpoint URL) → :func:`verify_endpoint`.
:func:`deploy` runs them in order.
"""

from __future__ import annotations

import ast
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from comfyui_api.client import ApiClient, ApiError, ApiUnavailable, not_ready_detail

from comfyfleet.errors import BadInput, HostFailure
from comfyfleet.modal_target.deploy_output import parse_dashboard_url, parse_endpoint_url
from comfyfleet.modal_target.modal_cli import Echo, ModalCli
from comfyfleet.secrets import load_tokens

API_KEY_ENV = "COMFYFLEET_API_KEY"  # the key callers send as Bearer (same variable as `comfyfleet ship`)
SERVICE_CLASS = "ComfyUIService"

# Secret (by the variable the app reads) -> the operator's environment variable holding its value.
_TOKEN_SOURCES = {
    "CIVITAI_API_TOKEN": "CIVITAI_API_TOKEN",
    "HF_TOKEN": "HF_TOKEN",
    "COMFYUI_API_KEYS": API_KEY_ENV,
}


@dataclass(frozen=True)
class AppFacts:
    """What a generated app file declares, read without importing it."""

    path: Path
    app_name: str
    workflows: list[str]
    api_secret: str
    model_secrets: dict[str, str]  # secret name -> the variable it must hold
    node_packs: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def secrets(self) -> dict[str, str]:
        return {self.api_secret: "COMFYUI_API_KEYS", **self.model_secrets}


def module_constants(path: Path) -> dict[str, Any]:
    """Top-level NAME = <literal> assignments of a Python file (ast.literal_eval: nothing runs)."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except OSError as exc:
        raise BadInput(
            f"{path}: cannot read the Modal app file ({exc.strerror}); run comfyfleet modal generate"
        ) from None
    except SyntaxError as exc:
        raise BadInput(
            f"{path}:{exc.lineno}: not valid Python; regenerate it with comfyfleet modal generate"
        ) from None
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def read_app_facts(path: Path) -> AppFacts:
    """The app name, workflows and secrets a generated app file declares."""
    consts = module_constants(path)
    missing = [k for k in ("APP_NAME", "WORKFLOWS", "API_SECRET", "MODEL_SECRETS") if k not in consts]
    if missing:
        raise BadInput(f"{path}: not an app file from comfyfleet modal generate (no {', '.join(missing)})")
    return AppFacts(
        path=path,
        app_name=str(consts["APP_NAME"]),
        workflows=[str(w) for w in consts["WORKFLOWS"]],
        api_secret=str(consts["API_SECRET"]),
        model_secrets={str(k): str(v) for k, v in dict(consts["MODEL_SECRETS"]).items()},
        node_packs=list(consts.get("NODE_PACKS", [])),
        models=list(consts.get("MODELS", [])),
    )


def sync_secrets(
    facts: AppFacts, cli: ModalCli, environ: dict[str, str] | None = None, echo: Echo | None = None
) -> list[str]:
    """Create or refresh the app's Modal secrets from the operator's tokens; BadInput when one is missing.

    A secret whose value the operator has (COMFYFLEET_API_KEY, CIVITAI_API_TOKEN, HF_TOKEN,
    also from COMFYFLEET_SECRETS_FILE) is written with --force; one the operator lacks must
    already exist in Modal. Returns the names written.
    """
    env = dict(os.environ if environ is None else environ)
    tokens = load_tokens(env).values
    written: list[str] = []
    existing: set[str] | None = None
    for name, variable in facts.secrets.items():
        source = _TOKEN_SOURCES.get(variable, variable)
        value = env.get(source) if source == API_KEY_ENV else tokens.get(source)
        if source == API_KEY_ENV and value is not None and len(value) < 16:
            raise BadInput(f"{API_KEY_ENV}: the API key must be at least 16 characters")
        if value:
            cli.create_secret(name, {variable: value})
            written.append(name)
            if echo:
                echo(f"secret {name}: {variable} set from {source}")
            continue
        if existing is None:
            existing = cli.secret_names()
        if name not in existing:
            raise BadInput(
                f"Modal secret {name!r} does not exist: set {source} and run again (comfyfleet creates it), "
                f"or create it yourself with `modal secret create {name} {variable}=...`"
            )
    return written


@dataclass
class Deployed:
    """Where the app answers after `modal deploy`."""

    url: str
    dashboard_url: str | None
    output: str


def deploy_app(facts: AppFacts, cli: ModalCli, echo: Echo | None = None, timeout: float = 3600) -> Deployed:
    """`modal deploy FILE`, then the API's URL from its output (or from `modal function info`)."""
    result = cli.deploy(facts.path, echo=echo, timeout=timeout)
    url = parse_endpoint_url(result.output, facts.app_name)
    if url is None:
        # Some modal releases print only the dashboard link; the function's info has the URL.
        urls = cli.function_web_urls(f"{facts.app_name}/{SERVICE_CLASS}")
        url = urls[0] if urls else None
    if url is None:
        raise HostFailure(
            f"modal deploy {facts.path} succeeded but reported no web endpoint for {SERVICE_CLASS}.api"
        )
    return Deployed(url=url, dashboard_url=parse_dashboard_url(result.output), output=result.output)


def fill_models_volume(
    facts: AppFacts, cli: ModalCli, echo: Echo | None = None, timeout: float = 6 * 3600
) -> None:
    """`modal run FILE::download_models`: fetch what the volume lacks (present files are kept)."""
    if facts.models:
        cli.run_function(facts.path, "download_models", echo=echo, timeout=timeout)


@dataclass
class Check:
    """One verification step and its outcome."""

    name: str
    ok: bool
    detail: str
    seconds: float


def verify_endpoint(
    url: str,
    workflows: list[str],
    api_key: str | None,
    health_timeout: float = 900,
    generation_timeout: float = 1800,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Check]:
    """/health until the container is up (cold start), /ready, then one generation per workflow with its defaults.

    Through :mod:`comfyui_api.client`, which follows Modal's redirect of a request running
    past 150 s to its result.
    """
    checks: list[Check] = []
    with ApiClient(url, api_key, timeout=60.0, transport=transport) as api:
        deadline = time.monotonic() + health_timeout
        for name, call in (("health", api.health), ("ready", api.ready)):
            check = _wait_for(name, call, deadline, sleep)
            checks.append(check)
            if not check.ok:
                return checks
        for workflow in workflows:
            checks.append(_generate(api, workflow, api_key, generation_timeout, sleep))
    return checks


def _wait_for(name: str, call: Callable[[], Any], deadline: float, sleep: Callable[[float], None]) -> Check:
    """Call until it answers 200 (503 means starting: ComfyUI, models, warmup) or the deadline passes."""
    started = time.monotonic()
    last = "no answer"
    pause = 1.0
    while True:
        try:
            call()
            return Check(name, True, "200", time.monotonic() - started)
        except ApiError as exc:
            last = f"{exc.status} {_detail(exc)}" if exc.status else _detail(exc)
        if time.monotonic() >= deadline:
            return Check(name, False, last, time.monotonic() - started)
        sleep(pause)
        pause = min(pause * 2, 10.0)


def _detail(exc: ApiError) -> str:
    """What an error answer says: /ready's failing checks, else the start of the service's words."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("checks"), dict):
        return not_ready_detail(body["checks"])[:300]
    return (exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail))[:300].strip()


def _generate(
    api: ApiClient, workflow: str, api_key: str | None, timeout: float, sleep: Callable[[float], None]
) -> Check:
    name = f"generate {workflow}"
    if not api_key:
        return Check(name, False, f"skipped: set {API_KEY_ENV} to the key the app's API secret holds", 0.0)
    started = time.monotonic()
    for _attempt in range(5):
        try:
            result = api.run(workflow, outputs="base64", timeout=timeout)
            break
        except ApiUnavailable as exc:
            if exc.status not in (429, 503):
                return Check(
                    name, False, f"{exc.status or ''} {_detail(exc)}".strip(), time.monotonic() - started
                )
            # Busy or (re)connecting to ComfyUI: the API says when to come back.
            sleep(min(exc.retry_after or 5.0, 30.0))
        except ApiError as exc:
            seconds = time.monotonic() - started
            if exc.status in (401, 403):
                return Check(name, False, f"{exc.status}: the API refused the key in {API_KEY_ENV}", seconds)
            return Check(name, False, f"{exc.status} {_detail(exc)}", seconds)
    else:
        return Check(name, False, "still busy after 5 attempts", time.monotonic() - started)
    seconds = time.monotonic() - started
    if not result.outputs:
        return Check(name, False, "200 but no output file in the answer", seconds)
    return Check(name, True, f"{len(result.outputs)} output file(s)", seconds)


@dataclass
class DeployReport:
    """Everything `comfyfleet modal deploy` did, for the summary table and for ship."""

    facts: AppFacts
    url: str | None = None
    dashboard_url: str | None = None
    secrets_written: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.url is not None and all(c.ok for c in self.checks)


def deploy(
    app_file: Path,
    cli: ModalCli | None = None,
    echo: Echo | None = None,
    models: bool = True,
    verify: bool = True,
    environ: dict[str, str] | None = None,
    health_timeout: float = 900,
) -> DeployReport:
    """The whole path: secrets, the model volume, `modal deploy`, then /health, /ready and one generation per workflow."""
    facts = read_app_facts(app_file)
    cli = cli or ModalCli()
    env = dict(os.environ if environ is None else environ)
    report = DeployReport(facts=facts)
    report.secrets_written = sync_secrets(facts, cli, env, echo)
    if models:
        # Models first: the endpoint never goes live with an empty volume, and a missing token
        # stops the deploy before anything changed.
        fill_models_volume(facts, cli, echo)
    deployed = deploy_app(facts, cli, echo)
    report.url, report.dashboard_url = deployed.url, deployed.dashboard_url
    if verify:
        report.checks = verify_endpoint(deployed.url, facts.workflows, env.get(API_KEY_ENV), health_timeout)
    return report


@dataclass
class AppStatus:
    """One row of `modal app list` for an app name."""

    app_id: str
    state: str
    tasks: str
    created_at: str
    stopped_at: str


def app_status(app_name: str, cli: ModalCli | None = None) -> list[AppStatus]:
    """The app's deployments as `modal app list --json` shows them, newest first."""
    rows = (cli or ModalCli()).list_apps()
    return [
        AppStatus(
            app_id=str(r.get("app_id", "")),
            state=str(r.get("state", "")),
            tasks=str(r.get("tasks", "")),
            created_at=str(r.get("created_at", "")),
            stopped_at=str(r.get("stopped_at") or ""),
        )
        for r in rows
        if r.get("description") == app_name
    ]


def stop_app(app_name: str, cli: ModalCli | None = None) -> str:
    """`modal app stop NAME --yes`; a message saying what happened (already stopped is fine)."""
    result = (cli or ModalCli()).stop_app(app_name)
    if result.ok:
        return f"stopped {app_name}"
    if "already stopped" in result.output:
        return f"{app_name} was already stopped"
    if "not found" in result.output.lower() or "could not find" in result.output.lower():
        raise BadInput(f"no Modal app named {app_name!r} in this workspace/environment")
    raise HostFailure(f"modal app stop {app_name} failed: {result.tail()}")
