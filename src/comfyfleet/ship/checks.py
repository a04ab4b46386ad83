"""The checks a ship (and a schedule) makes against a host's API service, through comfyui_api.client.

Hosts are reached through an SSH tunnel (:mod:`comfyfleet.tunnel`): the Bearer key never
crosses plain HTTP off the host. Only an ``api_url`` with https:// (a TLS proxy in front)
is called directly; a plain-HTTP ``api_url`` to another machine is refused.

``health``: /health, then /ready judged for the shipped workflow; ``generate``: one real
generation with the workflow's defaults, every output file downloaded and non-empty. The
client's errors become the pipeline's: :class:`~comfyui_api.client.ApiUnavailable` (not
reachable, starting, busy) is retried, any other answer fails the host with the service's
words.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from comfyui_api.client import ApiClient, ApiError, ApiUnavailable, secure_url

from comfyfleet.errors import BadInput, HostFailure
from comfyfleet.inventory import validate_host_data
from comfyfleet.ship.pipeline import Backoff, Retryable, ShipContext, Step, each_host
from comfyfleet.tunnel import CONNECT_TIMEOUT, SshRoute, TunnelError, open_tunnel

API_KEY_ENV = "COMFYFLEET_API_KEY"
T = TypeVar("T")
_counter_lock = threading.Lock()


def api_base_for(name: str, data: Mapping[str, Any]) -> str:
    """Where the operator's machine reaches a host's API service.

    ``api_url`` in the host's data wins (a proxy or TLS in front); otherwise the host's
    SSH address (``ssh_hostname``, else its inventory name) and ``api_port``.
    """
    explicit = data.get("api_url")
    if isinstance(explicit, str) and explicit:
        if not explicit.startswith(("http://", "https://")):
            raise BadInput(f"host {name}: api_url must start with http:// or https:// (got {explicit!r})")
        return explicit.rstrip("/")
    cfg = validate_host_data(name, dict(data))
    address = str(data.get("ssh_hostname") or name)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{cfg.api_port}"


def api_route_for(name: str, data: Mapping[str, Any]) -> SshRoute | None:
    """How ship's checks reach a host's API: through SSH, or None for an https:// ``api_url``.

    A plain-HTTP ``api_url`` to another machine would carry the API key in clear text: BadInput.
    """
    explicit = api_base_for(name, data) if data.get("api_url") else None
    if explicit is not None:
        if secure_url(explicit):
            return None
        raise BadInput(
            f"host {name}: api_url {explicit} is plain HTTP to another machine and would carry the API key "
            "in clear text: use an https:// address, or leave api_url out (ship then tunnels through SSH)"
        )
    if name.startswith("@") and not name.startswith("@ssh/"):
        return None  # pyinfra's @local (this machine) and other connectors without SSH
    cfg = validate_host_data(name, dict(data))
    return SshRoute.for_host(name, data, cfg.api_local_address, cfg.api_port)


def read_api_key(path: str | Path, host: str) -> str:
    """The first key of an API key file (`KEY` or `KEY admin` per line, '#' comments), for one host."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise BadInput(f"host {host}: api_keys_file {path}: {exc.strerror or exc}") from None
    key = next((ln.split()[0] for ln in lines if ln.strip() and not ln.strip().startswith("#")), "")
    if not key:
        raise BadInput(f"host {host}: api_keys_file {path} holds no key: put one key per line")
    return key


@contextmanager
def api_client(ctx: ShipContext, host: str, cap: float) -> Iterator[ApiClient]:
    """A client for one host's API service, its timeout bounded by the step's budget.

    Through the host's SSH tunnel (``ctx.data["ssh_routes"]``), opened here and closed when
    the block ends; without a route (an https:// endpoint, Modal) directly. The key: the
    host's key file (read now, so a scheduled check sees a rotated key), else
    $COMFYFLEET_API_KEY; none on a loopback-only service.
    """
    key_file = usable_key_files(ctx).get(host)
    key = read_api_key(key_file, host) if key_file else ctx.data.get("api_key")
    route: SshRoute | None = (ctx.data.get("ssh_routes") or {}).get(host)
    with ExitStack() as stack:
        if route is None:
            base, transport = ctx.endpoints[host], None
            if key and not secure_url(base):
                raise HostFailure(
                    f"{base} is plain HTTP to another machine and the API key must not cross it: ship the "
                    "deployment again (ship then records how to reach the host through SSH), or use https://"
                )
        else:
            try:
                tunnel = stack.enter_context(open_tunnel(route, min(CONNECT_TIMEOUT, ctx.remaining(cap))))
            except TunnelError as exc:
                raise (Retryable(str(exc)) if exc.retry else HostFailure(str(exc))) from None
            base, transport = tunnel.base_url, tunnel.transport
        yield stack.enter_context(ApiClient(base, key, timeout=ctx.remaining(cap), transport=transport))


def usable_key_files(ctx: ShipContext) -> dict[str, str]:
    """Each host's key file: its ``api_keys_file``, or the key ship fetched from it once that arrived."""
    fetched = ctx.data.get("fetched_key_files") or {}
    return {
        h: p
        for h, p in (ctx.data.get("api_key_files") or {}).items()
        if h not in fetched or Path(p).is_file()
    }


@contextmanager
def _judged(what: str) -> Iterator[None]:
    """The client's errors as the pipeline's: unavailable is retried, any other answer fails the host."""
    try:
        yield
    except ApiUnavailable as exc:
        raise Retryable(_cause(what, exc)) from None
    except ApiError as exc:
        if exc.status in (401, 403):
            raise HostFailure(
                f"{what} answered {exc.status}: no valid API key; set api_keys_file in the host's data "
                f"(the keys update-binary installs) or {API_KEY_ENV}"
            ) from None
        raise HostFailure(_cause(what, exc)) from None


def _cause(what: str, exc: ApiError) -> str:
    if exc.status == 0:
        return f"{what}: {exc.detail}"
    if exc.status == 503 and isinstance(exc.body, Mapping) and isinstance(exc.body.get("checks"), Mapping):
        return f"{what}: {exc.detail}"  # /ready judged for the workflow: the judgement says it all
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    detail = detail.strip().replace("\n", " ")
    return f"{what} answered {exc.status}" + (f": {detail[:300]}" if detail else "")


def judged(what: str, fn: Callable[[], T]) -> T:
    """``fn()`` (a client call), its errors as the pipeline's (see :func:`_judged`)."""
    with _judged(what):
        return fn()


def count_generation(ctx: ShipContext) -> None:
    """Count one finished generation (hosts run in parallel threads)."""
    with _counter_lock:
        ctx.data["generations"] = int(ctx.data.get("generations", 0)) + 1


def check_health(ctx: ShipContext, host: str) -> None:
    """GET /health, then /ready, on one host (503 while starting is retried by the step)."""
    with api_client(ctx, host, 15) as api:
        judged("GET /health", lambda: api.health(timeout=ctx.remaining(15)))
        judged("GET /ready", lambda: api.ready(ctx.workflow, timeout=ctx.remaining(15)))


def check_generation(ctx: ShipContext, host: str) -> None:
    """One generation with the workflow's defaults on one host; an output file must arrive."""
    what = f"POST /workflows/{ctx.workflow}"
    with api_client(ctx, host, 600) as api:
        try:
            result = api.run(ctx.workflow, timeout=ctx.remaining())
        except ApiError as exc:
            if exc.status == 504:
                # Past the service's sync timeout (it cancelled the job): no retry, the host is too slow.
                raise HostFailure(_cause(what, exc)) from None
            with _judged(what):
                raise
        count_generation(ctx)
        if not result.outputs:
            raise HostFailure(f"{what} finished but returned no output file")
        sizes = []
        for output in result.outputs:
            data = judged(f"GET {output.url}", lambda o=output: api.download(o, timeout=ctx.remaining(60)))
            if not data:
                raise HostFailure(f"output file {output.filename} is empty")
            sizes.append((output.filename, len(data)))
    with _counter_lock:
        ctx.data.setdefault("outputs", {})[host] = sizes


def health_step(timeout: float = 180, attempts: int = 8) -> Step:
    """/health and /ready on every host, retried while the service (re)starts."""
    return Step("health", each_host(check_health), timeout, Backoff(attempts, 1.0, 2.0, 15.0))


def generate_step(timeout: float = 600, attempts: int = 3) -> Step:
    """One real generation per host with the workflow's defaults."""
    return Step("generate", each_host(check_generation), timeout, Backoff(attempts, 2.0, 2.0, 20.0))
