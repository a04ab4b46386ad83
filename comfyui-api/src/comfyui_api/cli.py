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


# Each option's dest is its Settings field and its default that field's default: Settings is the
# one definition. Options that are not a field as given are converted in settings_from_args.
D = Settings()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="comfyui-api",
        description="Serve every workflow in a folder as POST /workflows/<name> in front of ComfyUI. "
        "`comfyui-api verify --help`: check a running service from its host.",
        epilog="example: python3 comfyui-api.pyz --comfyui-url http://127.0.0.1:8188 --workflows ./workflows "
        "--host 0.0.0.0 --port 3000 --db ./api.sqlite3 --api-key-file ./api-keys",
    )
    p.add_argument("--comfyui-url", default=D.comfyui_url, help="ComfyUI's base URL")
    p.add_argument(
        "--workflows",
        dest="workflows_dir",
        type=Path,
        default=D.workflows_dir,
        help="folder of workflow JSON files",
    )
    p.add_argument(
        "--disabled-dir",
        type=Path,
        help="folder of stop markers: a file named <workflow> here makes that endpoint answer 404 "
        "(checked each second, no restart needed)",
    )
    p.add_argument("--host", default=D.host, help="address to listen on (beyond loopback needs API keys)")
    p.add_argument("--port", type=int, default=D.port)
    p.add_argument("--db", dest="db_path", type=Path, default=D.db_path, help="SQLite execution log")
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
        "--rate-limit",
        dest="rate_limit_per_minute",
        type=int,
        default=D.rate_limit_per_minute,
        help="requests per minute per API key",
    )
    p.add_argument(
        "--rate-burst",
        dest="rate_limit_burst",
        type=int,
        default=D.rate_limit_burst,
        help="requests a key may send at once",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=D.max_body_bytes / 1024 / 1024,
        help="largest request body (413 beyond)",
    )
    p.add_argument(
        "--sync-timeout",
        dest="sync_timeout_s",
        type=float,
        default=D.sync_timeout_s,
        help="seconds a sync request waits (504 beyond)",
    )
    p.add_argument("--queue-limit", type=int, default=D.queue_limit, help="jobs in flight before 429")
    p.add_argument(
        "--retry-after",
        dest="retry_after_s",
        type=int,
        default=D.retry_after_s,
        help="Retry-After seconds on 503/429",
    )
    p.add_argument(
        "--outputs",
        dest="output_mode",
        choices=["base64", "url"],
        default=D.output_mode,
        help="default output mode",
    )
    p.add_argument(
        "--comfyui-output-dir", type=Path, help="ComfyUI's output folder, read directly when on this host"
    )
    p.add_argument("--public-url", default=D.public_url, help="base URL used in output download links")
    p.add_argument("--webhook-secret-file", type=Path, help="file holding the whsec_... signing secret")
    p.add_argument(
        "--webhook-attempts", dest="webhook_max_attempts", type=int, default=D.webhook_max_attempts
    )
    p.add_argument(
        "--webhook-backoff",
        dest="webhook_backoff_s",
        type=float,
        default=D.webhook_backoff_s,
        help="first retry delay in seconds (doubles)",
    )
    p.add_argument("--no-url-inputs", action="store_true", help="refuse image inputs given as URLs")
    p.add_argument(
        "--allow-outbound",
        action="append",
        default=[],
        metavar="CIDR",
        help="let image URLs and webhooks reach this non-public network too (repeatable)",
    )
    p.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        default=[],
        metavar="CIDR",
        help="believe X-Forwarded-For from this reverse proxy address (repeatable)",
    )
    p.add_argument(
        "--max-jobs-per-key",
        type=int,
        default=D.max_jobs_per_key,
        help="jobs one key may have in flight (429 beyond)",
    )
    p.add_argument(
        "--max-fetches-per-key",
        type=int,
        default=D.max_fetches_per_key,
        help="image URL downloads one key may run at once",
    )
    p.add_argument(
        "--fetch-deadline",
        dest="fetch_deadline_s",
        type=float,
        default=D.fetch_deadline_s,
        help="seconds one image URL download may take",
    )
    p.add_argument("--max-steps", type=int, default=D.max_steps, help="largest 'steps' a caller may ask for")
    p.add_argument(
        "--max-batch", type=int, default=D.max_batch, help="largest 'batch_size' a caller may ask for"
    )
    p.add_argument(
        "--max-pixels", type=int, default=D.max_pixels, help="largest width x height a caller may ask for"
    )
    p.add_argument(
        "--auth-failures-per-minute",
        type=int,
        default=D.auth_failures_per_minute,
        help="wrong keys one address may send per minute before it is answered 429",
    )
    p.add_argument(
        "--output-retention-hours",
        type=float,
        default=D.output_retention_hours,
        help="delete served outputs (ComfyUI's output/api/) older than this; 0 keeps them "
        "(needs --comfyui-output-dir)",
    )
    p.add_argument(
        "--warmup", action="store_true", help="run every workflow once at start; /ready waits for it"
    )
    p.add_argument(
        "--job-id-prefix",
        default=D.job_id_prefix,
        help="start every job id with this (a gateway routes by it)",
    )
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
