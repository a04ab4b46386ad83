"""Host data: what each GPU host of an inventory may set, with defaults, checked before any command.

Host data comes from pyinfra inventories (``inventory/*.py`` and ``group_data/*.py``),
from ``--data key=value`` on pyinfra's CLI and from ``--inventory-data`` on ours. It
is untrusted in the sense that a typo must not reach a shell: :func:`host_config`
validates every key this module knows and raises :class:`~comfyfleet.errors.BadInput`
naming the host and the key. This is the one schema of host data: every key a tier, ship or
the CLI reads is a field here, and any other key is refused before a command runs, with the
closest known key as a suggestion (``api_prot`` → "did you mean api_port?"). pyinfra's own
keys pass: connector settings (``ssh_*``, ...) and global arguments (``_sudo``, ...). ``_sudo``
itself is set once per host from its config (:func:`validate_inventory`, :func:`run_data`): pyinfra
takes a global argument missing from an operation call from host data, so no call passes it.
URLs (apt, pip index, HF, CivitAI) must be http(s); ``hf_endpoint`` and the like lose a trailing ``/``.

Keys and defaults (provider defaults in :data:`PROVIDER_DEFAULTS` apply first):

=====================  ==========================================  =============================================
key                    default                                     meaning
=====================  ==========================================  =============================================
provider               ``generic``                                 ``lambda`` | ``datacrunch`` | ``generic``
ssh_user               lambda ``ubuntu``, datacrunch ``root``      pyinfra's login user; non-root uses sudo
data_root              lambda ``/home/ubuntu/comfyfleet``,          everything comfyfleet writes on the host
                       datacrunch ``/mnt/data/comfyfleet``,
                       generic ``/opt/comfyfleet``
block_device           datacrunch ``auto``, others none             block volume: ``auto`` (the one unmounted
                                                                   disk without partitions) or ``/dev/...``
block_mount            ``/mnt/data``                               mount point of the block volume
gpu                    ``auto``                                    ``auto`` (nvidia-smi present) | true | false
comfyui_repo           ComfyUI's GitHub repository                 git URL (https, ssh, file or a local path)
comfyui_ref            :data:`DEFAULT_COMFYUI_REF`                 tag, branch or commit to check out
comfyui_listen         ``127.0.0.1``                               address ComfyUI binds (``--listen``)
comfyui_port           ``8188``                                    ComfyUI's port
api_port               ``3000``                                    comfyui-api's port
runtime_image          :data:`DEFAULT_RUNTIME_IMAGE`               image with python3 + torch for ComfyUI
container_prefix       ``""``                                      prefix of container names (several
                                                                   instances on one docker engine)
health_timeout         ``300``                                     seconds to wait for ``/system_stats``
docker_apt_url         ``https://download.docker.com/linux``       Docker's apt repository (or a mirror)
nvidia_apt_url         NVIDIA's libnvidia-container repository     NVIDIA's apt repository (or a mirror)
nvidia_toolkit_version :data:`DEFAULT_NVIDIA_TOOLKIT_VERSION`      pinned nvidia-container-toolkit version
component              ``comfyui``                                 ``restart``: comfyui | api | all
ref                    ``comfyui_ref``                             ``update-comfyui-core``: the ref to move to
log_lines              ``200``                                     ``logs``: lines per container
export_dir             none                                        ``logs``: local folder, one file per host
api_binary             ``dist/comfyui-api.pyz``                    tier 1: the artifact ``scripts/build-binary`` builds
workflows_dir          ``workflows``                               local folder whose workflows the API serves
api_listen             ``0.0.0.0``                                 address the API binds on the host
api_keys_file          none (a key is generated on the host)       local file of API keys to install
api_url                ``http://<ssh address>:<api_port>``         the endpoint URL; checks call https:// directly, else via SSH
verify_timeout         ``600``                                     ``verify-endpoints``: seconds for /ready, each generation
deploy_api             ``auto``                                    ``deploy-all`` runs tier 1: auto | true | false
git_mirrors            none                                        tier 2: ``{url prefix: mirror prefix}`` (or ``a=b,c=d``)
pip_index_url          none                                        tier 2: ``--index-url`` for packs' requirements
node_install_via       ``auto``                                    tier 2: ``auto`` (cm-cli when usable) | ``git``
hf_endpoint            none                                        tier 3: Hugging Face endpoint (a mirror)
civitai_endpoint       none                                        tier 3: CivitAI API base (a mirror)
models_parallel        ``3``                                       tier 3: files downloaded at once per host (1-16)
lock_file              ``<workflows_dir>/comfyfleet.lock.yaml``    tier 3: where computed hashes are recorded
task                   ``status``                                  the task a run executes (``--data task=...``)
workflow               none                                        a workflow file or folder the task works on
update                 none                                        ``update``: comfyui | nodes | manager | api
yes                    ``false``                                   ``cleanup-models``: really delete
cleanup_plan           none                                        ``cleanup-models``: the reviewed plan id to delete
object_store_file      none                                        local JSON file: outputs to an S3-compatible bucket
gpu_slots              ``1``                                       gateway: generations a host runs at once
gateway_address        ``ssh_hostname``                            gateway: where it reaches this host's API
gateway_backend_group  ``gpu``                                     gateway host: group whose hosts it serves
gateway_backends       from the inventory                          gateway host: set by ``comfyfleet gateway``
gateway_listen         ``0.0.0.0``                                 gateway host: address it binds
gateway_port           ``8443``                                    gateway host: HTTPS (or HTTP) port
gateway_cert_file      none (plain HTTP)                           gateway host: one PEM, chain + key
gateway_max_queue      ``64``                                      gateway host: requests waiting, then 503
gateway_queue_timeout  ``120``                                     gateway host: seconds a request may wait
gateway_retry_after    ``5``                                       gateway host: Retry-After of a 503
gateway_job_timeout    ``900``                                     gateway host: seconds a generation may take
gateway_plain_http     ``false``                                   gateway host: keys may cross plain HTTP to hosts
=====================  ==========================================  =============================================
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from comfyfleet.context import host_run
from comfyfleet.errors import BadInput

if TYPE_CHECKING:
    from pyinfra.api import Host, Inventory

Provider = Literal["lambda", "datacrunch", "generic"]

DEFAULT_COMFYUI_REPO = "https://github.com/comfyanonymous/ComfyUI.git"
DEFAULT_COMFYUI_REF = "v0.8.0"
# torch 2.9.1 built for CUDA 12.8 (Blackwell GPUs need CUDA >= 12.8 builds); ComfyUI's
# requirements go into a venv on top.
DEFAULT_RUNTIME_IMAGE = "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"
DEFAULT_NVIDIA_TOOLKIT_VERSION = "1.18.2-1"
DEFAULT_NVIDIA_APT_URL = "https://nvidia.github.io/libnvidia-container/stable/deb"

PROVIDER_DEFAULTS: dict[str, dict[str, Any]] = {
    "lambda": {"ssh_user": "ubuntu", "data_root": "/home/ubuntu/comfyfleet", "block_device": None},
    "datacrunch": {
        "ssh_user": "root",
        "data_root": "/mnt/data/comfyfleet",
        "block_device": "auto",
        "block_mount": "/mnt/data",
    },
    "generic": {"ssh_user": "root", "data_root": "/opt/comfyfleet", "block_device": None},
}

_ABS_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]*$")
_GIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_REPO = re.compile(r"^(https?://|ssh://|git@|file://|/)[A-Za-z0-9._~:/?#@%+=,-]+$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_.-]*$|^$")


def git_mirrors(value: Any) -> dict[str, str]:
    """``git_mirrors`` host data as a dict (accepts a dict or ``a=b,c=d`` text)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = [p.split("=", 1) for p in str(value).split(",") if "=" in p]
    return {k.strip(): v.strip() for k, v in pairs}


def _abs_path(value: str, what: str) -> str:
    if not _ABS_PATH.match(value) or "/../" in f"{value}/" or "//" in value:
        raise ValueError(f"{what} must be an absolute path of letters, digits and ._+@- (got {value!r})")
    return value.rstrip("/") or "/"


class HostConfig(BaseModel):
    """Validated comfyfleet data of one host (see the module docstring for every key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider = "generic"
    ssh_user: str = "root"
    data_root: str = "/opt/comfyfleet"
    block_device: str | None = None
    block_mount: str = "/mnt/data"
    gpu: Literal["auto"] | bool = "auto"
    comfyui_repo: str = DEFAULT_COMFYUI_REPO
    comfyui_ref: str = DEFAULT_COMFYUI_REF
    comfyui_listen: str = "127.0.0.1"
    comfyui_port: int = Field(default=8188, ge=1, le=65535)
    api_port: int = Field(default=3000, ge=1, le=65535)
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    container_prefix: str = ""
    health_timeout: int = Field(default=300, ge=5, le=3600)
    docker_apt_url: str = "https://download.docker.com/linux"
    nvidia_apt_url: str = DEFAULT_NVIDIA_APT_URL
    nvidia_toolkit_version: str = DEFAULT_NVIDIA_TOOLKIT_VERSION
    component: Literal["comfyui", "api", "all"] = "comfyui"
    ref: str | None = None
    log_lines: int = Field(default=200, ge=1, le=100000)
    export_dir: str | None = None
    # Tier 1, the API service, and how the operator's machine reaches it (comfyfleet.deploys.api).
    api_binary: str | None = None
    workflows_dir: str = "workflows"
    api_listen: str = "0.0.0.0"
    api_keys_file: str | None = None
    api_url: str | None = None
    verify_timeout: int = Field(default=600, ge=1, le=86400)
    deploy_api: Literal["auto"] | bool = "auto"
    # Tiers 2-3: node packs and models (comfyfleet.deploys.nodes, comfyfleet.deploys.models).
    git_mirrors: dict[str, str] = Field(default_factory=dict)
    pip_index_url: str | None = None
    node_install_via: Literal["auto", "git"] = "auto"
    hf_endpoint: str | None = None
    civitai_endpoint: str | None = None
    models_parallel: int = Field(default=3, ge=1, le=16)
    lock_file: str | None = None
    # What one run was asked to do (set by `comfyfleet common`, ship, or --data on pyinfra's CLI).
    task: str | None = None
    workflow: str | None = None
    update: Literal["comfyui", "nodes", "manager", "api"] | None = None
    yes: bool = False
    cleanup_plan: str | None = None
    # Outputs in an S3-compatible bucket (comfyfleet.deploys.object_store).
    object_store_file: str | None = None
    # The fleet gateway (comfyfleet.deploys.gateway checks the ranges and files): on GPU hosts
    # how they sit behind it, on the gateway host how it serves.
    gpu_slots: int = Field(default=1, ge=1, le=64)
    gateway_address: str | None = None
    gateway_backend_group: str = "gpu"
    gateway_backends: list[dict[str, Any]] | None = None
    gateway_listen: str = "0.0.0.0"
    gateway_port: int = Field(default=8443, ge=1, le=65535)
    gateway_cert_file: str | None = None
    gateway_max_queue: int = Field(default=64, ge=1, le=100000)
    gateway_queue_timeout: int = Field(default=120, ge=1, le=86400)
    gateway_retry_after: int = Field(default=5, ge=1, le=3600)
    gateway_job_timeout: int = Field(default=900, ge=1, le=86400)
    gateway_plain_http: bool = False

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_-]*$", v):
            raise ValueError(f"must be a unix user name (got {v!r})")
        return v

    @field_validator("data_root", "block_mount")
    @classmethod
    def _paths(cls, v: str) -> str:
        v = _abs_path(v, "path")
        if v == "/":
            raise ValueError("must not be /")
        return v

    @field_validator("block_device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v in (None, "", "none"):
            return None
        if v == "auto":
            return v
        if not re.match(r"^/dev/[A-Za-z0-9/_.-]+$", v) or ".." in v:
            raise ValueError(f"must be 'auto' or a /dev/... path (got {v!r})")
        return v

    @field_validator("git_mirrors", mode="before")
    @classmethod
    def _mirrors(cls, v: Any) -> Any:
        return git_mirrors(v)

    @field_validator("comfyui_repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not _REPO.match(v):
            raise ValueError(
                f"must be a git URL (https://, ssh://, git@, file://) or an absolute path (got {v!r})"
            )
        return v

    @field_validator("comfyui_ref", "ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _GIT_REF.match(v) or ".." in v or v.endswith((".lock", "/", ".")) or len(v) > 200:
            raise ValueError(f"must be a git tag, branch or commit (got {v!r})")
        return v

    @field_validator("comfyui_listen", "api_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"must be an IP address such as 127.0.0.1 or 0.0.0.0 (got {v!r})") from None
        return v

    @field_validator("runtime_image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not _IMAGE.match(v):
            raise ValueError(f"must be a docker image reference (got {v!r})")
        return v

    @field_validator("container_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX.match(v):
            raise ValueError(f"must be lower-case letters, digits and ._- (got {v!r})")
        return v

    @field_validator("docker_apt_url", "nvidia_apt_url", "pip_index_url", "hf_endpoint", "civitai_endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https?://[A-Za-z0-9._~:/%+-]+$", v):
            raise ValueError(f"must be an http(s) URL (got {v!r})")
        return v.rstrip("/")

    @field_validator("nvidia_toolkit_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not re.match(r"^[0-9][A-Za-z0-9.+~-]*$", v):
            raise ValueError(f"must be a Debian package version such as 1.17.8-1 (got {v!r})")
        return v

    @model_validator(mode="after")
    def _volume_holds_root(self) -> HostConfig:
        if self.block_device and not (self.data_root + "/").startswith(self.block_mount + "/"):
            raise ValueError(
                f"data_root {self.data_root} must be under block_mount {self.block_mount} "
                "so the data lives on the block volume"
            )
        if self.comfyui_port == self.api_port:
            raise ValueError("comfyui_port and api_port must differ")
        return self

    def given(self, key: str) -> bool:
        """The host data (or the provider's defaults) set ``key``: it is not the field's default."""
        return key in self.model_fields_set

    @property
    def lock_path(self) -> str:
        """Where tier 3 records computed hashes: ``lock_file``, else the workflows folder's lock."""
        return self.lock_file or str(Path(self.workflows_dir) / "comfyfleet.lock.yaml")

    @property
    def sudo(self) -> bool:
        """Privileged commands go through sudo unless pyinfra logs in as root."""
        return self.ssh_user != "root"

    @property
    def layout(self) -> Layout:
        return Layout.for_root(self.data_root, self.container_prefix)

    @property
    def comfyui_url(self) -> str:
        """Where ComfyUI answers, seen from the host itself."""
        return _local_url(self.comfyui_listen, self.comfyui_port)

    @property
    def api_local_address(self) -> str:
        """The address the API service answers on, seen from the host itself (an SSH tunnel's far end)."""
        return _local_address(self.api_listen)

    @property
    def api_local_url(self) -> str:
        """Where the API service answers, seen from the host itself."""
        return _local_url(self.api_listen, self.api_port)


@dataclass(frozen=True)
class Layout:
    """Paths on the host (also the paths inside the containers: mounts keep them identical)."""

    root: str
    comfyui: str
    models: str
    custom_nodes: str
    input: str
    output: str
    user: str
    venv: str
    state: str
    comfyui_container: str
    api_container: str

    @classmethod
    def for_root(cls, root: str, prefix: str = "") -> Layout:
        return cls(
            root=root,
            comfyui=f"{root}/ComfyUI",
            models=f"{root}/models",
            custom_nodes=f"{root}/custom_nodes",
            input=f"{root}/input",
            output=f"{root}/output",
            user=f"{root}/user",
            venv=f"{root}/venv",
            state=f"{root}/.comfyfleet",
            comfyui_container=f"{prefix}comfyui",
            api_container=f"{prefix}comfyui-api",
        )

    @property
    def directories(self) -> list[str]:
        """Folders the bootstrap creates (the checkout and venv are made by their own steps)."""
        return [self.root, self.models, self.custom_nodes, self.input, self.output, self.user, self.state]


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be an SSH host (an IP, a host name or an ssh_config alias), or None.

    pyinfra connectors (``@local``, ``@docker/...``) pass. A dotted number that is not
    an IPv4 address (``999.1.1.1``) is refused here rather than sent to DNS.
    """
    if address.startswith("@"):
        return None
    bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            return "is not a valid IPv6 address"
        return None
    if re.fullmatch(r"[0-9.]+", bare):
        try:
            ipaddress.IPv4Address(bare)
        except ValueError:
            return "is not a valid IPv4 address (four numbers 0-255, such as 203.0.113.7)"
        return None
    labels = bare.removesuffix(".").split(".")
    if len(bare) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "is not a valid host name (letters, digits, - _ and dots, such as gpu1.example.com)"
    return None


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_KNOWN = set(HostConfig.model_fields)
# Keys that look like ours; a misspelt one (comfyui_prot) should fail, not silently default.
_OUR_PREFIXES = (
    "comfyui_",
    "block_",
    "nvidia_",
    "docker_apt",
    "runtime_",
    "container_",
    "data_",
    "health_",
    "api_",
    "models_",
    "verify_",
    "workflows_",
    "gateway_",
    "object_store",
)
# pyinfra's own host data: connector settings and global operation arguments (``_sudo``...).
_PYINFRA_PREFIXES = ("ssh_", "_", "winrm_", "docker_", "chroot_", "vagrant_", "terraform_", "local_")


def validate_host_data(name: str, data: dict[str, Any], provider: str | None = None) -> HostConfig:
    """Validate one host's data dict; raise BadInput naming the host and the key."""
    named = data.get("provider")
    if provider and named and named != provider:
        raise BadInput(
            f"host {name}: provider is {named!r} in the host data but the {provider} deploy was run"
        )
    prov = provider or named or "generic"
    if prov not in PROVIDER_DEFAULTS:
        raise BadInput(f"host {name}: provider {prov!r} is unknown: use lambda, datacrunch or generic")
    for key in data:
        if key in _KNOWN or (key.startswith(_PYINFRA_PREFIXES) and not key.startswith(_OUR_PREFIXES)):
            continue
        close = difflib.get_close_matches(key, sorted(_KNOWN), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "see comfyfleet.inventory for the keys"
        raise BadInput(f"host {name}: unknown key {key!r}: {hint}")
    _check_connection_data(name, data)
    merged: dict[str, Any] = dict(PROVIDER_DEFAULTS[prov])
    merged.update({k: v for k, v in data.items() if k in _KNOWN and v is not None})
    if provider or named:
        merged["provider"] = prov  # unnamed, it stays a default: HostConfig.given("provider") is False
    try:
        return HostConfig(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "data"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise BadInput(f"host {name}: {key}: {msg}") from None


def _check_connection_data(name: str, data: dict[str, Any]) -> None:
    """pyinfra's own SSH keys, checked so a typo gives one line instead of a connector traceback."""
    address = data.get("ssh_hostname")
    if address is not None and not isinstance(address, str):
        raise BadInput(f"host {name}: ssh_hostname must be a string such as 203.0.113.7 (got {address!r})")
    problem = address_problem(address or name)
    if problem:
        what = f"ssh_hostname {address!r}" if address else f"address {name!r}"
        raise BadInput(f"host {name}: {what} {problem}")
    port = data.get("ssh_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise BadInput(f"host {name}: ssh_port must be a whole number from 1 to 65535 (got {port!r})")


def host_config(host: Host, provider: str | None = None) -> HostConfig:
    """The validated config of a pyinfra host (kept in the run's context, see :mod:`comfyfleet.context`)."""
    run = host_run(host)
    cfg = run.config
    if cfg is None or (provider and cfg.provider != provider):
        cfg = run.config = validate_host_data(host.name, host.data.dict(), provider)
    return cfg


def validate_inventory(inventory: Inventory, provider: str | None = None) -> dict[str, HostConfig]:
    """Validate every host of an inventory before anything connects or runs.

    Each host's ``_sudo`` is set here, once, from its config (pyinfra takes host data as the
    default of every operation's global arguments), so no operation call passes it.
    """
    configs = {host.name: host_config(host, provider) for host in inventory}
    for host in inventory:
        if host.data.get("_sudo") is None:
            host.data._sudo = configs[host.name].sudo
    return configs


def run_data(name: str, data: dict[str, Any], provider: str | None = None) -> dict[str, Any]:
    """One host's data as a run gives it to pyinfra: validated, with ``_sudo`` set from its config."""
    cfg = validate_host_data(name, data, provider)
    return {**data, "_sudo": data["_sudo"] if data.get("_sudo") is not None else cfg.sudo}


@contextmanager
def pyinfra_cli_errors() -> Iterator[None]:
    """In deploy files run by pyinfra's own CLI: show BadInput as a one-line pyinfra error, not a traceback."""
    from pyinfra.api.exceptions import InventoryError

    try:
        yield
    except BadInput as exc:
        raise InventoryError(str(exc)) from None


def _local_address(listen: str) -> str:
    """The address a service bound to ``listen`` answers on from the host itself."""
    return "127.0.0.1" if listen in ("0.0.0.0", "::") else listen


def _local_url(listen: str, port: int) -> str:
    addr = _local_address(listen)
    return f"http://[{addr}]:{port}" if ":" in addr else f"http://{addr}:{port}"
