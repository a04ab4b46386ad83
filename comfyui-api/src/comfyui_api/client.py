"""The one Python client of a comfyui-api service (sync, httpx).

Used by comfyfleet's ship pipeline, schedules, Modal deploy and endpoint verification, and by
anyone calling a deployed workflow from Python::

    with ApiClient("https://gpu-1.example:3000", api_key) as api:
        api.ready("txt2img")                       # raises while starting or broken
        result = api.run("txt2img", {"prompt": "a cat"})
        for output in result.outputs:
            api.save(output, "out/")

Errors: :class:`ApiError` (the service answered with an error: ``status``, ``detail``) and its
subclass :class:`ApiUnavailable` (not reachable, starting, busy: worth another try later).
"""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from comfyui_api.webhooks import redact_url
from comfyui_api.webhooks import verify as verify_webhook

__all__ = ["ApiClient", "ApiError", "ApiUnavailable", "Output", "Result", "verify_webhook"]

FINAL = frozenset({"completed", "failed", "cancelled"})
RETRYABLE = frozenset({429, 502, 503, 504})


class ApiError(Exception):
    """The service answered with an error: its HTTP ``status`` and ``detail`` (its JSON ``detail`` or text)."""

    def __init__(self, status: int, detail: Any, body: Any = None) -> None:
        self.status = status
        self.detail = detail
        self.body = body
        text = detail if isinstance(detail, str) else repr(detail)
        super().__init__(f"{status}: {text}" if status else text)


class ApiUnavailable(ApiError):
    """Not reachable, starting, or busy (connection error, 429, 502, 503, 504): try again later.

    ``status`` is 0 when no HTTP answer came; ``retry_after`` is the service's hint in seconds.
    """

    def __init__(self, status: int, detail: Any, body: Any = None, retry_after: float | None = None) -> None:
        super().__init__(status, detail, body)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Output:
    """One output file of a job: inline bytes (``outputs="base64"``) or a download URL."""

    filename: str
    url: str | None = None
    data: bytes | None = None
    content_type: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class Result:
    """A job as the service reports it (``POST /workflows/{name}``, ``GET /jobs/{id}``)."""

    id: str
    workflow: str
    status: str
    outputs: list[Output] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    progress: Any = None
    error: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Result:
        return cls(
            id=str(body.get("id", "")),
            workflow=str(body.get("workflow", "")),
            status=str(body.get("status", "")),
            outputs=parse_outputs(body.get("outputs")),
            values=[o["value"] for o in _items(body.get("outputs")) if "value" in o and "filename" not in o],
            progress=body.get("progress"),
            error=body.get("error"),
            raw=dict(body),
        )


class ApiClient:
    """Calls to one comfyui-api service.

    ``api_key`` is sent as a Bearer token, and only over HTTPS or to a loopback address (an SSH
    tunnel's local end): a key over plain HTTP to another host raises ``ValueError`` unless
    ``allow_plain_http=True`` is given on purpose.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        allow_plain_http: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if api_key and not allow_plain_http and not secure_url(self.base_url):
            raise ValueError(
                f"{self.base_url}: an API key is only sent over https:// or to a loopback address "
                "(an SSH tunnel); not over plain HTTP to another host"
            )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Modal answers a request running past 150 s with a redirect to its result: follow it
        # (httpx drops the Authorization header when a redirect leaves the origin).
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- service state -------------------------------------------------------------------

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        """GET /health: the service process is up (says nothing about ComfyUI or models)."""
        return _json(self._send("GET", "/health", timeout=timeout))

    def ready(self, workflow: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """GET /ready: the body when ready; :class:`ApiUnavailable` while starting.

        /ready speaks for every workflow the service has. With ``workflow`` given only what
        concerns that one decides (another workflow's missing pack is not its failure), and a
        problem waiting cannot fix (its models missing, it failed to load, warmup failed)
        raises :class:`ApiError` with status 503 instead.
        """
        resp = self._request("GET", "/ready", timeout=timeout)
        if resp.status_code != 503:
            return _json(_checked(resp))
        body = _body(resp)
        checks = body.get("checks") if isinstance(body, dict) else None
        if not isinstance(checks, Mapping):
            raise _error(resp)
        if workflow is None:
            raise ApiUnavailable(503, not_ready_detail(checks), body, _retry_after(resp))
        return ready_for(workflow, checks, body)

    def openapi(self) -> dict[str, Any]:
        """GET /openapi.json: the service's OpenAPI document (a path per served workflow)."""
        return _json(self._send("GET", "/openapi.json"))

    def workflows(self) -> dict[str, Any]:
        """GET /workflows: each served workflow's summary, input schema and output nodes."""
        return _json(self._send("GET", "/workflows"))

    # -- jobs ----------------------------------------------------------------------------

    def run(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        outputs: str = "url",
        timeout: float | None = None,
    ) -> Result:
        """POST /workflows/{workflow} and wait for its answer (the service's sync timeout applies).

        A job that failed or was cancelled raises :class:`ApiError` (500/409, ``detail`` the job's
        error, ``body`` the job). 504: the job ran past the service's sync timeout and the
        service cancelled it (``body["id"]`` names it); long jobs go through :meth:`submit`. A
        caller that hangs up (a client timeout, Ctrl-C) has its job cancelled the same way.
        """
        resp = self._request(
            "POST", f"/workflows/{workflow}", json=_envelope(inputs, outputs), timeout=timeout
        )
        if resp.status_code == 504:
            raise ApiError(504, _detail_of(resp), _body(resp))
        body = _json(_checked(resp))
        return Result.from_json(body)

    def submit(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        webhook: str | None = None,
        *,
        outputs: str = "url",
    ) -> str:
        """POST /workflows/{workflow} with ``async: true``: the job id (202)."""
        payload = {**_envelope(inputs, outputs), "async": True}
        if webhook:
            payload["webhook"] = webhook
        return str(_json(self._send("POST", f"/workflows/{workflow}", json=payload))["id"])

    def job(self, job_id: str) -> Result:
        """GET /jobs/{id}: the job now (a failed or cancelled job is returned, not raised)."""
        resp = self._request("GET", f"/jobs/{job_id}")
        if resp.status_code in (409, 500) and isinstance(_body(resp), dict) and "status" in _body(resp):
            return Result.from_json(_body(resp))
        return Result.from_json(_json(_checked(resp)))

    def wait(
        self,
        job_id: str,
        timeout: float = 600.0,
        on_progress: Callable[[Result], None] | None = None,
        *,
        poll: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Result:
        """Poll a job until it is completed, failed or cancelled; ``TimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.job(job_id)
            if result.done:
                return result
            if on_progress is not None:
                on_progress(result)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {result.status} after {timeout:g}s")
            sleep(poll)

    def cancel(self, job_id: str) -> Result:
        """DELETE /jobs/{id}: the job as cancelled (409 :class:`ApiError` when it already finished)."""
        return Result.from_json(_json(self._send("DELETE", f"/jobs/{job_id}")))

    def download(self, output: Output, timeout: float | None = None) -> bytes:
        """The bytes of an output: inline data, or fetched from the URL the service gave."""
        if output.data is not None:
            return output.data
        if not output.url:
            raise ApiError(0, f"output {output.filename} has neither data nor a download URL")
        url = httpx.URL(output.url)
        if url.is_absolute_url and _origin(url) != _origin(self._http.base_url):
            return self._fetch_elsewhere(url, timeout)
        return self._send("GET", output.url, timeout=timeout).content

    def _fetch_elsewhere(self, url: httpx.URL, timeout: float | None) -> bytes:
        """An output on another origin (the deployment's bucket, presigned): fetched without the API
        key, and not through this client's transport (an SSH tunnel reaches the service only)."""
        where = redact_url(str(url))
        try:
            with httpx.Client(timeout=self._http.timeout, follow_redirects=True) as other:
                resp = other.get(url, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        except httpx.HTTPError as exc:
            raise ApiUnavailable(0, f"GET {where}: {type(exc).__name__}") from exc
        return _checked(resp).content

    def save(self, output: Output, directory: str | Path) -> Path:
        """Write an output into ``directory`` under its own base name; the path written."""
        name = Path(output.filename).name
        if name in ("", ".", ".."):
            raise ApiError(0, f"output file name {output.filename!r} is not a file name")
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.download(output))
        return path

    # -- plumbing ------------------------------------------------------------------------

    def _request(
        self, method: str, url: str, *, json: Any = None, timeout: float | None = None
    ) -> httpx.Response:
        try:
            return self._http.request(
                method, url, json=json, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
            )
        except httpx.HTTPError as exc:
            raise ApiUnavailable(0, f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    def _send(
        self, method: str, url: str, *, json: Any = None, timeout: float | None = None
    ) -> httpx.Response:
        return _checked(self._request(method, url, json=json, timeout=timeout))


def secure_url(url: str) -> bool:
    """True for https:// URLs and for plain http:// to a loopback address (localhost, 127/8, ::1)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ready_for(workflow: str, checks: Mapping[str, Any], body: Any = None) -> dict[str, Any]:
    """Judge /ready's checks for one workflow: the body when ready, else raise (see :meth:`ApiClient.ready`)."""
    comfy = checks.get("comfyui") or {}
    if not comfy.get("ok", False):
        raise ApiUnavailable(503, f"ComfyUI not reachable yet ({comfy.get('error') or 'starting'})", body)
    loaded = checks.get("workflows") or {}
    if workflow not in (loaded.get("served") or []):
        own = [
            e
            for e in loaded.get("errors") or []
            if f"/{workflow}.json" in str(e) or str(e).startswith(workflow)
        ]
        if own:
            raise ApiError(503, f"workflow {workflow} not served: {own[0]}", body)
        raise ApiUnavailable(503, f"workflow {workflow} not loaded yet", body)
    missing = [m for m in (checks.get("models") or {}).get("missing") or [] if m.get("workflow") == workflow]
    if missing:
        files = ", ".join(f"{m.get('file')} (node {m.get('node')})" for m in missing)
        raise ApiError(503, f"models missing for {workflow}: {files}", body)
    warm = checks.get("warmup") or {}
    if not warm.get("ok", True):
        if warm.get("state") in ("pending", "running"):
            raise ApiUnavailable(503, f"warmup {warm.get('state')}", body)
        raise ApiError(503, f"warmup {warm.get('state') or 'failed'}: see the API log", body)
    return body if isinstance(body, dict) else {"ready": True, "checks": dict(checks)}


def not_ready_detail(checks: Mapping[str, Any]) -> str:
    """The failing checks of a 503 from /ready, in one line."""
    failing = [
        f"{k}: {v.get('error') or v.get('state') or v}"
        for k, v in checks.items()
        if isinstance(v, Mapping) and not v.get("ok", True)
    ]
    return "not ready: " + ("; ".join(failing) if failing else "starting")[:400]


def parse_outputs(raw: Any) -> list[Output]:
    """Output files of a job answer: a list of ``{filename, url|base64}`` (ComfyUI's per-node dict too)."""
    out: list[Output] = []
    for f in _items(raw):
        name = f.get("filename") or f.get("name")
        if not name:
            continue  # a plain value a node returned (text, numbers), not a file
        encoded = f.get("base64") or f.get("data")
        out.append(
            Output(
                filename=str(name),
                url=f.get("url"),
                data=base64.b64decode(encoded) if isinstance(encoded, str) else None,
                content_type=f.get("content_type"),
                node=f.get("node"),
            )
        )
    return out


def _items(raw: Any) -> list[Mapping[str, Any]]:
    items: list[Mapping[str, Any]] = []
    if isinstance(raw, Mapping):
        for per_node in raw.values():
            if isinstance(per_node, Mapping):
                for v in per_node.values():
                    if isinstance(v, list):
                        items.extend(i for i in v if isinstance(i, Mapping))
            elif isinstance(per_node, list):
                items.extend(i for i in per_node if isinstance(i, Mapping))
    elif isinstance(raw, list):
        items.extend(i for i in raw if isinstance(i, Mapping))
    return items


def _envelope(inputs: Mapping[str, Any] | None, outputs: str) -> dict[str, Any]:
    body: dict[str, Any] = {"outputs": outputs}
    if inputs:
        body["input"] = dict(inputs)
    return body


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _detail_of(resp: httpx.Response) -> Any:
    body = _body(resp)
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    if isinstance(body, dict) and body.get("error") is not None:
        return body["error"]
    text = resp.text.strip().replace("\n", " ")
    return text[:1000] or resp.reason_phrase


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _error(resp: httpx.Response) -> ApiError:
    if resp.status_code in RETRYABLE:
        return ApiUnavailable(resp.status_code, _detail_of(resp), _body(resp), _retry_after(resp))
    return ApiError(resp.status_code, _detail_of(resp), _body(resp))


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _checked(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        raise _error(resp)
    return resp


def _json(resp: httpx.Response) -> dict[str, Any]:
    body = _body(resp)
    if body is None:
        raise ApiError(
            resp.status_code,
            f"{resp.request.method} {resp.request.url.path} answered non-JSON: {resp.text[:200].strip()}",
        )
    return body if isinstance(body, dict) else {"value": body}
