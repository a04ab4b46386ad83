"""ComfyUI stand-in: `python main.py --listen ADDR --port N ...`, started exactly like real ComfyUI.

Serves ComfyUI's HTTP and websocket API (see shared/COMFYUI_API.md) with aiohttp and the
standard library only, so it runs wherever Debian's python3-aiohttp is installed.

Knobs for tests, by environment (real ComfyUI ignores them):
  COMFYUI_STANDIN_NODE_DELAY=SECONDS       each executed node takes this long (KSampler spreads
                                           it over its steps, with progress frames)
  COMFYUI_STANDIN_MISSING_NODE=invalid_prompt
                                           answer a missing node class as 0.8.0 does
                                           (default: missing_node_type, as recent builds do)
  COMFYUI_STANDIN_FAIL_START=MESSAGE       exit with status 1 at start, printing MESSAGE
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

import folder_paths  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The flags of ComfyUI's comfy/cli_args.py that deployments use; unknown ones are refused as there."""
    p = argparse.ArgumentParser()
    p.add_argument(
        "--listen",
        type=str,
        default="127.0.0.1",
        metavar="IP",
        nargs="?",
        const="0.0.0.0,::",
        help="Comma-separated IP addresses to listen on (no value: 0.0.0.0,::).",
    )
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--tls-keyfile", type=str)
    p.add_argument("--tls-certfile", type=str)
    p.add_argument("--enable-cors-header", type=str, default=None, metavar="ORIGIN", nargs="?", const="*")
    p.add_argument("--max-upload-size", type=float, default=100)
    p.add_argument("--base-directory", type=str, default=None)
    p.add_argument(
        "--extra-model-paths-config", type=str, default=None, metavar="PATH", nargs="+", action="append"
    )
    p.add_argument("--output-directory", type=str, default=None)
    p.add_argument("--temp-directory", type=str, default=None)
    p.add_argument("--input-directory", type=str, default=None)
    p.add_argument("--user-directory", type=str, default=None)
    p.add_argument("--auto-launch", action="store_true")
    p.add_argument("--disable-auto-launch", action="store_true")
    p.add_argument("--cuda-device", type=int, default=None, metavar="DEVICE_ID")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--lowvram", action="store_true")
    p.add_argument("--highvram", action="store_true")
    p.add_argument("--preview-method", type=str, default="none")
    p.add_argument("--cache-classic", action="store_true")
    p.add_argument("--cache-none", action="store_true")
    p.add_argument("--disable-all-custom-nodes", action="store_true")
    p.add_argument("--whitelist-custom-nodes", type=str, nargs="+", default=[])
    p.add_argument("--disable-api-nodes", action="store_true")
    p.add_argument("--multi-user", action="store_true")
    p.add_argument(
        "--verbose",
        type=str,
        default="INFO",
        const="DEBUG",
        nargs="?",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    p.add_argument("--log-stdout", action="store_true")
    p.add_argument("--dont-print-server", action="store_true")
    p.add_argument("--quick-test-for-ci", action="store_true")
    p.add_argument("--front-end-version", type=str, default="comfyanonymous/ComfyUI@latest")
    p.add_argument("--front-end-root", type=str, default=None)
    p.add_argument("--database-url", type=str, default=None)
    for flag in (
        "--normalvram",
        "--novram",
        "--gpu-only",
        "--disable-smart-memory",
        "--force-fp16",
        "--force-fp32",
        "--fp16-vae",
        "--bf16-vae",
        "--fp32-vae",
        "--cpu-vae",
        "--use-sage-attention",
        "--use-pytorch-cross-attention",
        "--use-split-cross-attention",
        "--use-quad-cross-attention",
        "--use-flash-attention",
        "--disable-xformers",
        "--windows-standalone-build",
        "--disable-metadata",
        "--enable-compress-response-body",
        "--cuda-malloc",
        "--disable-cuda-malloc",
        "--deterministic",
        "--cache-ram",
        "--async-offload",
        "--disable-async-offload",
        "--disable-pinned-memory",
        "--disable-mmap",
        "--mmap-torch-files",
    ):
        p.add_argument(
            flag, action="store_true", help="accepted for compatibility; no effect in the stand-in"
        )
    p.add_argument("--reserve-vram", type=float, default=None)
    p.add_argument("--preview-size", type=int, default=512)
    p.add_argument("--cache-lru", type=int, default=0)
    p.add_argument("--default-device", type=int, default=None)
    p.add_argument("--fast", nargs="*", default=None)
    p.add_argument("--enable-manager", action="store_true")
    p.add_argument("--disable-manager-ui", action="store_true")
    p.add_argument("--enable-manager-legacy-ui", action="store_true")
    return p


def _parse_extra_paths_yaml(text: str) -> dict:
    """extra_model_paths.yaml: PyYAML when present, else the two-level subset ComfyUI's examples use."""
    try:
        import yaml

        return yaml.safe_load(text) or {}
    except ImportError:
        pass
    out: dict = {}
    section: dict | None = None
    block_key: str | None = None
    block_indent = 0
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if block_key is not None and section is not None and indent > block_indent:
            section[block_key] = (section[block_key] + "\n" + line.strip()).strip()
            continue
        block_key = None
        key, _, value = line.strip().partition(":")
        value = value.strip().strip("'\"")
        if indent == 0:
            section = {}
            out[key] = section
        elif section is not None:
            if value in ("|", ">"):
                section[key] = ""
                block_key, block_indent = key, indent
            else:
                section[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def load_extra_path_config(yaml_path: str) -> None:
    """Add each folder listed in an extra_model_paths.yaml, relative to its base_path."""
    with open(yaml_path, encoding="utf-8") as stream:
        config = _parse_extra_paths_yaml(stream.read())
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    for _, conf in (config or {}).items():
        if not isinstance(conf, dict):
            continue
        base_path = None
        if "base_path" in conf:
            base_path = os.path.expandvars(os.path.expanduser(str(conf.pop("base_path"))))
            if not os.path.isabs(base_path):
                base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
        is_default = bool(conf.pop("is_default", False))
        for x, value in conf.items():
            for y in str(value).split("\n"):
                if not y.strip():
                    continue
                full_path = y.strip()
                if base_path:
                    full_path = os.path.join(base_path, full_path)
                elif not os.path.isabs(full_path):
                    full_path = os.path.abspath(os.path.join(yaml_dir, y))
                logging.info(f"Adding extra search path {x} {os.path.normpath(full_path)}")
                folder_paths.add_model_folder_path(x, os.path.normpath(full_path), is_default)


def apply_directories(args: argparse.Namespace) -> None:
    if args.base_directory:
        folder_paths.set_base_path(args.base_directory)
    if args.output_directory:
        folder_paths.set_output_directory(os.path.abspath(args.output_directory))
    if args.input_directory:
        folder_paths.set_input_directory(os.path.abspath(args.input_directory))
    if args.temp_directory:
        folder_paths.set_temp_directory(os.path.join(os.path.abspath(args.temp_directory), "temp"))
    if args.user_directory:
        folder_paths.set_user_directory(os.path.abspath(args.user_directory))
    # ComfyUI also reads extra_model_paths.yaml next to main.py when present.
    default_extra = os.path.join(os.path.dirname(os.path.realpath(__file__)), "extra_model_paths.yaml")
    if os.path.isfile(default_extra):
        load_extra_path_config(default_extra)
    for group in args.extra_model_paths_config or []:
        for config_path in group:
            load_extra_path_config(config_path)
    for d in (
        folder_paths.get_output_directory(),
        folder_paths.get_input_directory(),
        folder_paths.get_temp_directory(),
        folder_paths.get_user_directory(),
    ):
        os.makedirs(d, exist_ok=True)


async def run(server, addresses: list[str], port: int, verbose: bool) -> None:
    from aiohttp import web

    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    for addr in addresses:
        site = web.TCPSite(runner, addr, port)
        await site.start()
    if verbose:
        logging.info("Starting server\n")
        for addr in addresses:
            shown = "127.0.0.1" if addr == "0.0.0.0" else (f"[{addr}]" if ":" in addr else addr)
            logging.info(f"To see the GUI go to: http://{shown}:{port}")
    await server.publish_loop()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.verbose),
        format="%(message)s",
        stream=sys.stdout if args.log_stdout else sys.stderr,
    )
    if os.environ.get("COMFYUI_STANDIN_FAIL_START"):
        logging.error(os.environ["COMFYUI_STANDIN_FAIL_START"])
        sys.exit(1)
    from comfyui_version import __version__

    logging.info(f"ComfyUI version: {__version__} (stand-in)")
    apply_directories(args)
    if args.enable_manager:
        import importlib.util

        if importlib.util.find_spec("comfyui_manager") is None:
            logging.warning("ComfyUI-Manager is not installed: pip install -r manager_requirements.txt")
        else:
            logging.info("[ComfyUI-Manager] enabled")
    import execution
    import nodes
    import server as server_module

    if not args.disable_all_custom_nodes:
        nodes.init_external_custom_nodes()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = server_module.PromptServer(loop)
    q = execution.PromptQueue(server)
    threading.Thread(target=execution.prompt_worker, daemon=True, args=(q, server)).start()
    addresses = [a.strip() for a in args.listen.split(",") if a.strip()]
    try:
        loop.run_until_complete(run(server, addresses, args.port, not args.dont_print_server))
    except KeyboardInterrupt:
        logging.info("\nStopped server")


if __name__ == "__main__":
    main()
