"""`python3 comfyui-api.pyz --comfyui-url URL --workflows DIR --host H --port P --db PATH ...`."""

from __future__ import annotations

import argparse
import json
import logging
import pkgutil
import sys
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="comfyui-api",
        description="Serve every workflow in a folder as POST /workflows/<name> in front of ComfyUI. "
        "`comfyui-api verify --help`: check a running service from its host.",
        epilog="example: python3 comfyui-api.pyz --comfyui-url http://127.0.0.1:8188 --workflows ./workflows "
        "--host 0.0.0.0 --port 3000 --db ./api.sqlite3 --api-key-file ./api-keys",
    )
    p.add_argument("--comfyui-url", default="http://127.0.0.1:8188", help="ComfyUI's base URL")
    p.add_argument("--workflows", type=Path, default=Path("workflows"), help="folder of workflow JSON files")
    p.add_argument(
        "--disabled-dir",
        type=Path,
        help="folder of stop markers: a file named <workflow> here makes that endpoint answer 404 "
        "(checked each second, no restart needed)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (beyond loopback needs API keys)"
    )
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--db", type=Path, default=Path("comfyui-api.sqlite3"), help="SQLite execution log")
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
    p.add_argument("--rate-limit", type=int, default=120, help="requests per minute per API key")
    p.add_argument("--rate-burst", type=int, default=30, help="requests a key may send at once")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (413 beyond)")
    p.add_argument(
        "--sync-timeout", type=float, default=600.0, help="seconds a sync request waits (504 beyond)"
    )
    p.add_argument("--queue-limit", type=int, default=64, help="jobs in flight before 429")
    p.add_argument("--retry-after", type=int, default=5, help="Retry-After seconds on 503/429")
    p.add_argument("--outputs", choices=["base64", "url"], default="base64", help="default output mode")
    p.add_argument(
        "--comfyui-output-dir", type=Path, help="ComfyUI's output folder, read directly when on this host"
    )
    p.add_argument("--public-url", default="", help="base URL used in output download links")
    p.add_argument("--webhook-secret-file", type=Path, help="file holding the whsec_... signing secret")
    p.add_argument("--webhook-attempts", type=int, default=5)
    p.add_argument(
        "--webhook-backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)"
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
        action="append",
        default=[],
        metavar="CIDR",
        help="believe X-Forwarded-For from this reverse proxy address (repeatable)",
    )
    p.add_argument(
        "--max-jobs-per-key", type=int, default=8, help="jobs one key may have in flight (429 beyond)"
    )
    p.add_argument(
        "--max-fetches-per-key", type=int, default=4, help="image URL downloads one key may run at once"
    )
    p.add_argument(
        "--fetch-deadline", type=float, default=20.0, help="seconds one image URL download may take"
    )
    p.add_argument("--max-steps", type=int, default=150, help="largest 'steps' a caller may ask for")
    p.add_argument("--max-batch", type=int, default=16, help="largest 'batch_size' a caller may ask for")
    p.add_argument(
        "--max-pixels", type=int, default=4096 * 4096, help="largest width x height a caller may ask for"
    )
    p.add_argument(
        "--auth-failures-per-minute",
        type=int,
        default=10,
        help="wrong keys one address may send per minute before it is answered 429",
    )
    p.add_argument(
        "--output-retention-hours",
        type=float,
        default=24.0,
        help="delete served outputs (ComfyUI's output/api/) older than this; 0 keeps them "
        "(needs --comfyui-output-dir)",
    )
    p.add_argument(
        "--warmup", action="store_true", help="run every workflow once at start; /ready waits for it"
    )
    p.add_argument(
        "--job-id-prefix", default="", help="start every job id with this (a gateway routes by it)"
    )
    p.add_argument(
        "--object-store", type=Path, help="JSON file: S3-compatible bucket for outputs (holds credentials)"
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--version", action="version", version=f"comfyui-api {__version__}")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    scoped = read_key_file(args.api_key_file) if args.api_key_file else []
    keys = [k for k, _ in scoped]
    secret = ""
    if args.webhook_secret_file:
        try:
            secret = args.webhook_secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{args.webhook_secret_file}: cannot read webhook secret ({exc.strerror or exc})"
            ) from None
    return Settings(
        comfyui_url=args.comfyui_url,
        workflows_dir=args.workflows,
        disabled_dir=args.disabled_dir,
        host=args.host,
        port=args.port,
        db_path=args.db,
        api_keys=keys,
        require_api_key=False if args.allow_unauthenticated else None,
        rate_limit_per_minute=args.rate_limit,
        rate_limit_burst=args.rate_burst,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        sync_timeout_s=args.sync_timeout,
        queue_limit=args.queue_limit,
        retry_after_s=args.retry_after,
        output_mode=args.outputs,
        comfyui_output_dir=args.comfyui_output_dir,
        public_url=args.public_url.rstrip("/"),
        webhook_secret=secret,
        webhook_max_attempts=args.webhook_attempts,
        webhook_backoff_s=args.webhook_backoff,
        allow_url_inputs=not args.no_url_inputs,
        warmup=args.warmup,
        build_info=build_info(),
        admin_keys=[k for k, scope in scoped if scope == "admin"],
        allow_outbound=args.allow_outbound,
        trusted_proxies=args.trusted_proxy,
        max_jobs_per_key=args.max_jobs_per_key,
        max_fetches_per_key=args.max_fetches_per_key,
        fetch_deadline_s=args.fetch_deadline,
        max_steps=args.max_steps,
        max_batch=args.max_batch,
        max_pixels=args.max_pixels,
        auth_failures_per_minute=args.auth_failures_per_minute,
        output_retention_hours=args.output_retention_hours,
        job_id_prefix=args.job_id_prefix,
        object_store=object_store.load(args.object_store) if args.object_store else None,
    )


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
