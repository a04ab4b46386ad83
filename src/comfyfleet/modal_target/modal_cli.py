"""The `modal` command line, run as a subprocess: deploy, run, stop, list, secrets.

comfyfleet drives Modal through its CLI rather than its Python API so that the user's
own `modal` install, profile and token are used exactly as when they type the commands,
and so that what comfyfleet does can be repeated by hand. Errors the user can fix (no
`modal` installed, not logged in) become :class:`~comfyfleet.errors.BadInput`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.errors import BadInput, HostFailure
from comfyfleet.modal_target.deploy_output import strip_ansi

# What modal prints when it has no usable token (client.py, token_flow.py in modal 1.6.4,
# and the server's answer to a revoked or mistyped token).
_NOT_LOGGED_IN = re.compile(
    r"Token missing|Could not authenticate client|Token ID and secret must both be configured"
    r"|Token validation failed|invalid (token|credentials)|Modal profile '.*' was not found|UNAUTHENTICATED",
    re.IGNORECASE,
)
LOGIN_HINT = (
    "modal is not logged in: run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET), then retry"
)
INSTALL_HINT = "the `modal` command is not installed: pip install modal==1.6.4, then run `modal token new`"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class CliResult:
    """Exit status and combined output of one modal command."""

    args: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 3) -> str:
        kept = [line.strip() for line in strip_ansi(self.output).splitlines() if line.strip()]
        return " | ".join(kept[-lines:]) or f"exit status {self.returncode}"


def find_modal(path: str | None = None) -> str:
    """The modal executable: $COMFYFLEET_MODAL, else on PATH, else beside this Python; BadInput if none."""
    chosen = os.environ.get("COMFYFLEET_MODAL")
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise BadInput(f"COMFYFLEET_MODAL={chosen}: no executable there; {INSTALL_HINT}")
        return chosen
    found = shutil.which("modal", path=path)
    if found:
        return found
    beside = Path(sys.executable).with_name("modal")
    if path is None and beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise BadInput(INSTALL_HINT)


class ModalCli:
    """Runs modal subcommands; every argument is passed as its own argv element, never through a shell."""

    def __init__(self, executable: str | None = None, env: dict[str, str] | None = None) -> None:
        self.executable = executable or find_modal()
        base = dict(os.environ if env is None else env)
        # A wide, plain console keeps Rich from folding URLs and adding colour codes
        # (the parser copes with folded output too, see deploy_output).
        base["COLUMNS"] = "250"
        base.setdefault("NO_COLOR", "1")
        base.setdefault("PYTHONIOENCODING", "utf-8")
        self.env = base

    def run(
        self, args: Sequence[str], echo: Echo | None = None, timeout: float | None = None, check: bool = True
    ) -> CliResult:
        """Run `modal ARGS...`, echoing each output line; BadInput when modal is not logged in."""
        argv = (self.executable, *args)
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        except FileNotFoundError:
            raise BadInput(INSTALL_HINT) from None
        except PermissionError as exc:
            raise BadInput(f"{self.executable}: cannot run it ({exc.strerror})") from None
        lines: list[str] = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    echo(line.rstrip("\n"))
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HostFailure(f"modal {' '.join(args[:2])} did not finish within {timeout:.0f} s") from None
        result = CliResult(tuple(args), proc.returncode, "".join(lines))
        if not result.ok and _NOT_LOGGED_IN.search(result.output):
            raise BadInput(LOGIN_HINT)
        if check and not result.ok:
            raise HostFailure(f"modal {' '.join(args[:2])} failed: {result.tail()}")
        return result

    def json(self, args: Sequence[str]) -> Any:
        """Run a modal command with --json and parse what it printed."""
        result = self.run([*args, "--json"])
        text = strip_ansi(result.output).strip()
        start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
        try:
            return json.loads(text[start:]) if start >= 0 else None
        except ValueError:
            raise HostFailure(
                f"modal {' '.join(args[:2])} --json printed something else: {result.tail()}"
            ) from None

    # -- the commands comfyfleet uses ------------------------------------------------

    def deploy(self, app_file: Path, echo: Echo | None = None, timeout: float | None = None) -> CliResult:
        return self.run(["deploy", str(app_file)], echo=echo, timeout=timeout)

    def run_function(
        self, app_file: Path, function: str, echo: Echo | None = None, timeout: float | None = None
    ) -> CliResult:
        return self.run(["run", f"{app_file}::{function}"], echo=echo, timeout=timeout)

    def stop_app(self, app_name: str) -> CliResult:
        return self.run(["app", "stop", app_name, "--yes"], check=False)

    def list_apps(self) -> list[dict[str, Any]]:
        data = self.json(["app", "list"])
        return [row for row in data or [] if isinstance(row, dict)]

    def secret_names(self) -> set[str]:
        data = self.json(["secret", "list"])
        return {str(row.get("name")) for row in data or [] if isinstance(row, dict)}

    def function_web_urls(self, ref: str) -> list[str]:
        """Web URLs `modal function info APP/NAME --json` reports (methods of a class included)."""
        data = self.json(["function", "info", ref])
        urls: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "web_url" and isinstance(value, str) and value:
                        urls.append(value)
                    else:
                        walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(data)
        return urls

    def create_secret(self, name: str, values: dict[str, str]) -> None:
        """Create or overwrite a secret from a private temporary JSON file (values never in argv)."""
        with tempfile.TemporaryDirectory(prefix="comfyfleet-secret-") as tmp:
            path = Path(tmp) / "secret.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(values, f)
            result = self.run(["secret", "create", name, "--from-json", str(path), "--force"], check=False)
        if not result.ok:
            redacted = result.tail()
            for value in values.values():
                redacted = redacted.replace(value, "<redacted>")
            raise HostFailure(f"modal secret create {name} failed: {redacted}")
