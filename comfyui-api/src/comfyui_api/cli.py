"""`python3 comfyui-api.pyz --comfyui-url URL --workflows DIR --host H --port P --db PATH ...`."""

from __future__ import annotations

import argparse
import json
import logging
import pkgutil
import sys
from dataclasses import fields
from pathlib import Path

from comfyui_api import __version__, object_store, verify
from comfyui_api.settings import ConfigError, Settings, read_key_file


def build_info() -> dict[str, str]:
    """What scripts/build-binary recorded (version, commit, build time), or a dev marker."""
    try:
        raw = pkgutil.get_data("comfyui_api", "_build_info.json")
    except (OSError, FileNotFoundError):
        raw = None
    if raw:
        return json.loads(raw)
    return {"version": __version__, "build": "development"}


# (flag, Settings field, help): the option sets that field, and its default is the field's default
# (its type too). Settings is the one definition; the other options are converted in settings_from_args.
FIELDS = [
    ("--comfyui-url", "comfyui_url", "ComfyUI's base URL"),
    ("--workflows", "workflows_dir", "folder of workflow JSON files"),
    ("--host", "host", "address to listen on (beyond loopback needs API keys)"),
    ("--port", "port", "port to listen on"),
    ("--db", "db_path", "SQLite execution log"),
    ("--rate-limit", "rate_limit_per_minute", "requests per minute per API key"),
    ("--rate-burst", "rate_limit_burst", "requests a key may send at once"),
    ("--sync-timeout", "sync_timeout_s", "seconds a sync request waits (504 beyond)"),
    ("--queue-limit", "queue_limit", "jobs in flight before 429"),
    ("--retry-after", "retry_after_s", "Retry-After seconds on 503/429"),
    ("--webhook-attempts", "webhook_max_attempts", "deliveries tried per webhook"),
    ("--webhook-backoff", "webhook_backoff_s", "first retry delay in seconds (doubles)"),
    ("--max-jobs-per-key", "max_jobs_per_key", "jobs one key may have in flight (429 beyond)"),
    ("--max-fetches-per-key", "max_fetches_per_key", "image URL downloads one key may run at once"),
    ("--fetch-deadline", "fetch_deadline_s", "seconds one image URL download may take"),
    ("--max-steps", "max_steps", "largest 'steps' a caller may ask for"),
    ("--max-batch", "max_batch", "largest 'batch_size' a caller may ask for"),
    ("--max-pixels", "max_pixels", "largest width x height a caller may ask for"),
    ("--auth-failures-per-minute", "auth_failures_per_minute", "wrong keys one address may send per minute "
     "before it is answered 429"),
    ("--output-retention-hours", "output_retention_hours", "delete served outputs (ComfyUI's output/api/) "
     "older than this; 0 keeps them (needs --comfyui-output-dir)"),
    ("--job-id-prefix", "job_id_prefix", "start every job id with this (a gateway routes by it)"),
]  # fmt: skip
PATHS = [
    ("--disabled-dir", "disabled_dir", "folder of stop markers: a file named <workflow> here makes that "
     "endpoint answer 404 (checked each second, no restart needed)"),
    ("--comfyui-output-dir", "comfyui_output_dir", "ComfyUI's output folder, read directly when on this host"),
]  # fmt: skip
LISTS = [
    ("--allow-outbound", "allow_outbound", "let image URLs and webhooks reach this non-public network too"),
    ("--trusted-proxy", "trusted_proxies", "believe X-Forwarded-For from this reverse proxy address"),
]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="comfyui-api",
        description="Serve every workflow in a folder as POST /workflows/<name> in front of ComfyUI. "
        "`comfyui-api verify --help`: check a running service from its host.",
        epilog="example: python3 comfyui-api.pyz --comfyui-url http://127.0.0.1:8188 --workflows ./workflows "
        "--host 0.0.0.0 --port 3000 --db ./api.sqlite3 --api-key-file ./api-keys",
    )
    defaults = Settings()
    for flag, name, text in FIELDS:
        default = getattr(defaults, name)
        p.add_argument(flag, dest=name, type=type(default), default=default, help=text)
    for flag, name, text in PATHS:
        p.add_argument(flag, dest=name, type=Path, help=text)
    for flag, name, text in LISTS:
        p.add_argument(
            flag, dest=name, action="append", default=[], metavar="CIDR", help=text + " (repeatable)"
        )
    p.add_argument(
        "--outputs",
        dest="output_mode",
        choices=["base64", "url"],
        default=defaults.output_mode,
        help="default output mode",
    )
    p.add_argument("--public-url", default=defaults.public_url, help="base URL used in output download links")
    p.add_argument(
        "--warmup", action="store_true", help="run every workflow once at start; /ready waits for it"
    )
    # Converted: read from files, inverted, scaled.
    p.add_argument(
        "--api-key-file",
        type=Path,
        help="file with one API key per line; 'KEY admin' also allows raw /prompt and all callers' jobs",
    )
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve beyond loopback without API keys (not recommended)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=defaults.max_body_bytes / 2**20,
        help="largest request body (413 beyond)",
    )
    p.add_argument("--webhook-secret-file", type=Path, help="file holding the whsec_... signing secret")
    p.add_argument("--no-url-inputs", action="store_true", help="refuse image inputs given as URLs")
    p.add_argument(
        "--object-store", type=Path, help="JSON file: S3-compatible bucket for outputs (holds credentials)"
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--version", action="version", version=f"comfyui-api {__version__}")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed options: every option named after a field as given, the rest converted."""
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    scoped = read_key_file(args.api_key_file) if args.api_key_file else []
    secret = ""
    if args.webhook_secret_file:
        try:
            secret = args.webhook_secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{args.webhook_secret_file}: cannot read webhook secret ({exc.strerror or exc})"
            ) from None
    converted = dict(
        api_keys=[k for k, _ in scoped],
        admin_keys=[k for k, scope in scoped if scope == "admin"],
        require_api_key=False if args.allow_unauthenticated else None,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        public_url=args.public_url.rstrip("/"),
        webhook_secret=secret,
        allow_url_inputs=not args.no_url_inputs,
        build_info=build_info(),
        object_store=object_store.load(args.object_store) if args.object_store else None,
    )
    return Settings(**{**given, **converted})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        sys.exit(verify.main(argv[1:]))
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = settings_from_args(args)
        from comfyui_api.app import create_app

        app = create_app(settings)
    except ConfigError as exc:
        print(f"comfyui-api: {exc}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="h11",
        loop="asyncio",
        ws="none",
        lifespan="on",
        access_log=False,
        log_level=args.log_level.lower(),
        timeout_keep_alive=30,
        # X-Forwarded-For is the middleware's call (--trusted-proxy), not uvicorn's.
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
