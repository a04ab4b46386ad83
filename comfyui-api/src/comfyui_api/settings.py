"""Configuration of one API service, as a plain object (the CLI and Modal both build it)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from comfyui_api.object_store import ObjectStore


class ConfigError(Exception):
    """A setting that cannot work; the message says which and what to do."""


@dataclass
class Settings:
    """Everything create_app needs; defaults suit a GPU host with ComfyUI on 127.0.0.1:8188."""

    comfyui_url: str = "http://127.0.0.1:8188"
    workflows_dir: Path = Path("workflows")
    # A file named <workflow> in this folder stops serving that workflow (re-read each second, no restart).
    disabled_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 3000
    db_path: Path | None = Path("comfyui-api.sqlite3")
    api_keys: list[str] = field(default_factory=list)
    # Keys that may also send raw /prompt graphs and see every caller's jobs and executions.
    admin_keys: list[str] = field(default_factory=list)
    # None: required exactly when listening beyond loopback.
    require_api_key: bool | None = None
    rate_limit_per_minute: int = 120
    rate_limit_burst: int = 30
    max_body_bytes: int = 32 * 1024 * 1024
    sync_timeout_s: float = 600.0
    queue_limit: int = 64
    retry_after_s: int = 5
    output_mode: str = "base64"
    # Where ComfyUI writes outputs; when set (same host), files are read directly, else via /view.
    comfyui_output_dir: Path | None = None
    public_url: str = ""
    webhook_secret: str = ""
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 10.0
    allow_url_inputs: bool = True
    max_input_image_bytes: int = 32 * 1024 * 1024
    warmup: bool = False
    resubmit_after_restart: int = 1
    job_retention: int = 1000
    # Addresses whose X-Forwarded-For is believed (a reverse proxy in front); others' is ignored.
    trusted_proxies: list[str] = field(default_factory=list)
    # Networks image URLs and webhooks may reach although not public (e.g. "10.0.0.0/8").
    allow_outbound: list[str] = field(default_factory=list)
    max_jobs_per_key: int = 8
    max_fetches_per_key: int = 4
    fetch_deadline_s: float = 20.0
    max_steps: int = 150
    max_batch: int = 16
    max_pixels: int = 4096 * 4096
    # Wrong keys one address may send per minute before it is answered 429 for a while.
    auth_failures_per_minute: int = 10
    # Served outputs (under <output dir>/api/) older than this are deleted; 0 keeps them.
    output_retention_hours: float = 24.0
    db_busy_timeout_s: float = 5.0
    build_info: dict[str, str] = field(default_factory=dict)
    # Job ids start with this (a gateway routes /jobs/<id> to the host that ran it).
    job_id_prefix: str = ""
    # Set: output files go to this S3-compatible bucket and their URLs are returned.
    object_store: ObjectStore | None = None

    def auth_required(self) -> bool:
        """Bearer keys are required when configured, and by default whenever listening beyond loopback."""
        if self.require_api_key is not None:
            return self.require_api_key
        return bool(self.api_keys) or not is_loopback(self.host)

    def check(self) -> None:
        """Refuse settings that cannot work, with the fix in the message."""
        if self.output_mode not in ("base64", "url"):
            raise ConfigError(f"output mode {self.output_mode!r}: use 'base64' or 'url'")
        if self.auth_required() and not self.api_keys:
            raise ConfigError(
                f"listening on {self.host} needs API keys: pass --api-key-file FILE (one key per line), "
                "or --allow-unauthenticated to accept anyone who can reach the port"
            )
        if self.job_id_prefix and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", self.job_id_prefix):
            raise ConfigError(f"job id prefix {self.job_id_prefix!r}: use up to 32 of a-z, 0-9 and '-'")
        try:
            parse_networks(self.allow_outbound)
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"--allow-outbound / --trusted-proxy: {exc}") from None
        if self.webhook_secret and not self.webhook_secret.startswith("whsec_"):
            raise ConfigError("webhook secret must look like 'whsec_<base64>' (Standard Webhooks)")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> list[Network]:
    """CIDRs or single addresses (--allow-outbound, --trusted-proxy); ValueError names a bad entry."""
    out: list[Network] = []
    for e in entries:
        try:
            out.append(ipaddress.ip_network(e.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{e!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)") from None
    return out


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_key_file(path: Path) -> list[tuple[str, str]]:
    """(key, scope) per line: `KEY` (a caller) or `KEY admin`; blank lines and '#' comments ignored.

    A caller's key sees only its own jobs, inputs, outputs and executions; an admin key also
    sends raw /prompt graphs and sees everyone's. Files of one key per line keep working.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read API key file ({exc.strerror or exc})") from None
    keys: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        scope = parts[1] if len(parts) > 1 else "user"
        if len(parts) > 2 or scope not in ("user", "admin"):
            raise ConfigError(f"{path}:{n}: expected 'KEY' or 'KEY admin'")
        if len(parts[0]) < 16:
            raise ConfigError(f"{path}:{n}: every API key must be at least 16 characters")
        keys.append((parts[0], scope))
    if not keys:
        raise ConfigError(f"{path}: no API keys in file; put one key per line")
    return keys
