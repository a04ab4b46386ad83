"""Host data: what each GPU host of an inventory may set, with defaults, checked before any command.

Host data comes from pyinfra inventories (``inventory/*.py`` and ``group_data/*.py``),
from ``--data key=value`` on pyinfra's CLI and from ``--inventory-data`` on ours. It
is untrusted in the sense that a typo must not reach a shell: :func:`host_config`
validates every key this module knows and raises :class:`~comfyfleet.errors.BadInput`
naming the host and the key. Unknown keys are left alone (pyinfra's own ``ssh_*`` and
``_sudo`` keys, and keys other tiers read), except that a key that looks like one of
ours with a typo is refused.

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
=====================  ==========================================  =============================================
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from weakref import WeakKeyDictionary

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


def _abs_path(value: str, what: str) -> str:
    if not _ABS_PATH.match(value) or "/../" in f"{value}/" or "//" in value:
        raise ValueError(f"{what} must be an absolute path of letters, digits and ._+@- (got {value!r})")
    return value.rstrip("/") or "/"


class HostConfig(BaseModel):
    """Validated comfyfleet data of one host (see the module docstring for every key)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

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

    @field_validator("comfyui_repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not _REPO.match(v):
            raise ValueError(f"must be a git URL (https://, ssh://, git@, file://) or an absolute path (got {v!r})")
        return v

    @field_validator("comfyui_ref", "ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _GIT_REF.match(v) or ".." in v or v.endswith((".lock", "/", ".")) or len(v) > 200:
            raise ValueError(f"must be a git tag, branch or commit (got {v!r})")
        return v

    @field_validator("comfyui_listen")
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

    @field_validator("docker_apt_url", "nvidia_apt_url")
    @classmethod
    def _url(cls, v: str) -> str:
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
        addr = "127.0.0.1" if self.comfyui_listen in ("0.0.0.0", "::") else self.comfyui_listen
        if ":" in addr:
            addr = f"[{addr}]"
        return f"http://{addr}:{self.comfyui_port}"


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
_OUR_PREFIXES = ("comfyui_", "block_", "nvidia_", "docker_apt", "runtime_", "container_", "data_", "health_")

_CACHE: WeakKeyDictionary[Any, HostConfig] = WeakKeyDictionary()


def validate_host_data(name: str, data: dict[str, Any], provider: str | None = None) -> HostConfig:
    """Validate one host's data dict; raise BadInput naming the host and the key."""
    prov = provider or data.get("provider") or "generic"
    if prov not in PROVIDER_DEFAULTS:
        raise BadInput(f"host {name}: provider {prov!r} is unknown: use lambda, datacrunch or generic")
    for key in data:
        if key.startswith(_OUR_PREFIXES) and key not in _KNOWN:
            raise BadInput(f"host {name}: unknown key {key!r}: see comfyfleet.inventory for the keys")
    _check_connection_data(name, data)
    merged: dict[str, Any] = dict(PROVIDER_DEFAULTS[prov])
    merged.update({k: v for k, v in data.items() if k in _KNOWN and v is not None})
    merged["provider"] = prov
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
    """The validated config of a pyinfra host (cached per host object)."""
    from pyinfra.context import ContextObject

    if isinstance(host, ContextObject):
        # `from pyinfra import host` is one immortal proxy hashing as the current host: as a
        # weak key it would never expire, and a later Host at a reused address would get
        # this host's config. Key by the real Host.
        host = host._get_module()
    cfg = _CACHE.get(host)
    if cfg is None or (provider and cfg.provider != provider and not host.data.get("provider")):
        cfg = validate_host_data(host.name, host.data.dict(), provider)
        _CACHE[host] = cfg
    return cfg


def validate_inventory(inventory: Inventory, provider: str | None = None) -> dict[str, HostConfig]:
    """Validate every host of an inventory before anything connects or runs."""
    return {host.name: host_config(host, provider) for host in inventory}


@contextmanager
def pyinfra_cli_errors() -> Iterator[None]:
    """In deploy files run by pyinfra's own CLI: show BadInput as a one-line pyinfra error, not a traceback."""
    from pyinfra.api.exceptions import InventoryError

    try:
        yield
    except BadInput as exc:
        raise InventoryError(str(exc)) from None
