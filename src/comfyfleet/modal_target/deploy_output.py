"""Read what `modal deploy` prints: the web endpoint URLs and the dashboard link.

The shape changed over modal releases and Rich wraps long lines inside its tree, so
the parser accepts all of these (samples in tests/modal/samples/):

    └── 🔨 Created web function api => https://ws--app-api.modal.run          (<= 0.7x)
    ├── 🔨 Created web endpoint for Model.web =>
    │   https://ws--generate.modal.run                                        (wrapped)
    ├── ✓ Created function ComfyUIService.*.
    │   └── api -> https://ws--app.modal.run (unauthenticated)                 (1.x classes)
    ├── ✓ Created web function health
    │   └── https://ws--app-health.moda
    │       l.run 🔑                                                          (1.x, folded)
    View Deployment: https://modal.com/apps/ws/main/deployed/app
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)")
# Tree guides, spinners and check marks Rich puts before a line's text.
_LEAD = re.compile(r"^[\s│├└─┬┼╰╭┃┣┗━|`+✓✔🔨⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]*")
_URL_CHARS = r"[A-Za-z0-9._~%/:?#\[\]@!$&'*+,;=-]"
_URL = re.compile(rf"https?://{_URL_CHARS}+")
_ANNOTATION = r"(\s+(\(label truncated\)|\(label stolen\)|\(unauthenticated\)|🔑))*"
_CONTINUATION = re.compile(rf"^({_URL_CHARS}+){_ANNOTATION}\s*$")
_NAMED = re.compile(
    r"(?:Created (?:web function|web endpoint for|Web Function URL for|function)\s+|^)([A-Za-z_][\w.*]*)\s*(?:=>|->)\s*$"
)


@dataclass(frozen=True)
class WebEndpoint:
    """One web URL `modal deploy` reported, with the function or method it belongs to."""

    name: str
    url: str


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _lines(output: str) -> list[str]:
    """Logical lines: tree guides removed, URLs folded over several lines joined again."""
    raw = [_LEAD.sub("", strip_ansi(line)).strip() for line in output.splitlines()]
    out: list[str] = []
    i = 0
    while i < len(raw):
        line = raw[i]
        # "name =>" / "name ->" with the URL on the next line.
        if re.search(r"(=>|->)$", line) and i + 1 < len(raw) and raw[i + 1].startswith("http"):
            i += 1
            line = f"{line} {raw[i]}"
        # A URL that runs to the end of the line continues on the next line when that line
        # is nothing but URL characters (Rich folds long URLs without a marker).
        while _URL.search(line) and re.search(rf"https?://{_URL_CHARS}+$", line) and i + 1 < len(raw):
            nxt = _CONTINUATION.match(raw[i + 1])
            if not nxt or raw[i + 1].startswith("http") or not raw[i + 1]:
                break
            i += 1
            line = line + raw[i]
        out.append(line)
        i += 1
    return out


def parse_web_endpoints(output: str) -> list[WebEndpoint]:
    """Web URLs the deploy announced: *.modal.run hosts, and custom domains on endpoint lines.

    Links to modal.com itself (dashboard, docs) are not endpoints.
    """
    found: list[WebEndpoint] = []
    current = ""
    for line in _lines(output):
        created = re.search(
            r"Created (?:web function|web endpoint for|Web Function URL for|function)\s+([A-Za-z_][\w.*]*)",
            line,
        )
        if created:
            current = created.group(1).rstrip(".")
        for match in _URL.finditer(line):
            url = match.group(0).rstrip(".,;")
            host = url.split("/")[2].split(":")[0].lower()
            if host == "modal.com" or host.endswith(".modal.com"):
                continue
            before = line[: match.start()].strip()
            named = _NAMED.search(before)
            announced = bool(named) or before.startswith("Custom domain") or (not before and bool(current))
            if not (host.endswith(".modal.run") or announced):
                continue
            name = named.group(1) if named else current
            found.append(WebEndpoint(name=name.rstrip("."), url=url.rstrip("/")))
    return found


def parse_endpoint_url(output: str, app_name: str | None = None, method: str = "api") -> str | None:
    """The API service's URL: the endpoint labelled after the app, else the one named method."""
    endpoints = parse_web_endpoints(output)
    if app_name:
        for endpoint in endpoints:
            host = endpoint.url.split("/")[2]
            if host.endswith((f"--{app_name}.modal.run", f"--{app_name}-dev.modal.run")):
                return endpoint.url
    for endpoint in endpoints:
        if endpoint.name == method or endpoint.name.endswith(f".{method}"):
            return endpoint.url
    return endpoints[0].url if len(endpoints) == 1 else None


def parse_dashboard_url(output: str) -> str | None:
    """The 'View Deployment' link (https://modal.com/apps/<workspace>/<env>/deployed/<app>)."""
    lines = _lines(output)
    for i, line in enumerate(lines):
        if line.startswith("View Deployment"):
            for candidate in (line, lines[i + 1] if i + 1 < len(lines) else ""):
                match = _URL.search(candidate)
                if match:
                    return match.group(0)
    return None
