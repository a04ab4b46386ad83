"""URL parsing on real `modal deploy` / `modal serve` output.

Samples in samples/: serve_0x_tree.txt and deploy_0x_*.txt are outputs people pasted in
public READMEs, logs and tests (tabby-on-modal guide, lift-sys deployment log, a
vibesys test of Rich's folding); deploy_1_6_4_cls_40cols.txt is what modal 1.6.4's own
output code prints for this app at 40 columns (rendered live below at several widths).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyfleet.modal_target.deploy_output import (
    WebEndpoint,
    parse_dashboard_url,
    parse_endpoint_url,
    parse_web_endpoints,
)

SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_serve_output_of_older_modal() -> None:
    text = sample("serve_0x_tree.txt")
    assert parse_web_endpoints(text) == [
        WebEndpoint("app_serve", "https://GITHUB_USERNAME--tabby-server-app-serve-dev.modal.run")
    ]
    # "View run at" / "View app at" links are the dashboard, not the endpoint.
    assert parse_endpoint_url(text) == "https://GITHUB_USERNAME--tabby-server-app-serve-dev.modal.run"


def test_several_endpoints_some_wrapped_after_arrow() -> None:
    text = sample("deploy_0x_endpoints_wrapped.txt")
    assert parse_web_endpoints(text) == [
        WebEndpoint("health", "https://rand--health.modal.run"),
        WebEndpoint("ConstrainedIRGenerator.web_generate", "https://rand--generate.modal.run"),
        WebEndpoint("ConstrainedIRGenerator.warmup", "https://rand--warmup.modal.run"),
    ]
    assert parse_endpoint_url(text, method="warmup") == "https://rand--warmup.modal.run"
    assert parse_endpoint_url(text) is None, "three endpoints and none is the API: no guessing"
    assert parse_dashboard_url(text) == "https://modal.com/apps/rand/main/deployed/lift-sys-inference"


def test_url_folded_by_rich_inside_the_tree() -> None:
    text = sample("deploy_0x_folded_url.txt")
    assert parse_web_endpoints(text) == [
        WebEndpoint("fastapi_app", "https://vibeserve--vibesys-long-candidate-f51b76.modal.run")
    ]
    assert (
        parse_dashboard_url(text) == "https://modal.com/apps/workspace/main/deployed/vibesys-long-candidate"
    )


def test_deploy_without_web_endpoint() -> None:
    text = sample("deploy_no_web_endpoint.txt")
    assert parse_web_endpoints(text) == []
    assert parse_endpoint_url(text, "my-shared-app") is None
    assert parse_dashboard_url(text) == "https://modal.com/apps/erikbern/main/deployed/my-shared-app"


def test_modal_1_6_4_class_method_endpoint_sample() -> None:
    text = sample("deploy_1_6_4_cls_40cols.txt")
    assert parse_endpoint_url(text, "comfyfleet") == "https://acme-prod--comfyfleet.modal.run"
    assert parse_dashboard_url(text) == "https://modal.com/apps/acme-prod/main/deployed/comfyfleet"


RENDER = r"""
from modal.output import enable_output
from modal._output.manager import OutputManager
from modal._output.status import FunctionCreationStatus
from modal_proto import api_pb2

with enable_output():
    om = OutputManager.get()
    with om.display_object_tree():
        with FunctionCreationStatus("function", "download_models") as s:
            s.set_response(api_pb2.FunctionCreateResponse(function=api_pb2.Function()))
        with FunctionCreationStatus("function", "ComfyUIService.*") as s:
            fn = api_pb2.Function(method_definitions_set=True)
            fn.method_definitions["api"].function_name = "api"
            fn.method_definitions["api"].web_url = "https://acme-prod--comfyfleet-staging.modal.run"
            s.set_response(api_pb2.FunctionCreateResponse(function=fn))
        with FunctionCreationStatus("web function", "health") as s:
            resp = api_pb2.FunctionCreateResponse(function=api_pb2.Function())
            resp.handle_metadata.web_url = "https://acme-prod--comfyfleet-staging-health.modal.run"
            s.set_response(resp)
    om.step_completed("App deployed in 61.274s! 🎉")
    url = "https://modal.com/apps/acme-prod/main/deployed/comfyfleet-staging"
    om.print(f"\nView Deployment: [magenta][link={url}]{url}[/link][/magenta]")
"""


@pytest.mark.parametrize("columns", ["30", "45", "80", "250"])
def test_output_rendered_by_modal_1_6_4_itself(columns: str) -> None:
    """modal's own tree renderer (FunctionCreationStatus) at several terminal widths, folding included."""
    env = {**os.environ, "COLUMNS": columns, "NO_COLOR": "1"}
    text = subprocess.run(
        [sys.executable, "-c", RENDER], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "Created function" in text
    assert parse_endpoint_url(text, "comfyfleet-staging") == "https://acme-prod--comfyfleet-staging.modal.run"
    assert {e.url for e in parse_web_endpoints(text)} == {
        "https://acme-prod--comfyfleet-staging.modal.run",
        "https://acme-prod--comfyfleet-staging-health.modal.run",
    }
    assert parse_dashboard_url(text) == "https://modal.com/apps/acme-prod/main/deployed/comfyfleet-staging"


def test_custom_domain_and_ansi_codes() -> None:
    text = (
        "\x1b[32m✓\x1b[0m Created objects.\n"
        "└── ✓ Created function ComfyUIService.*.\n"
        "    └── api -> \x1b[4mhttps://ws--fleet.modal.run\x1b[0m 🔑\n"
        "        Custom domain: https://comfy.example.org\n"
    )
    assert [e.url for e in parse_web_endpoints(text)] == [
        "https://ws--fleet.modal.run",
        "https://comfy.example.org",
    ]
    assert parse_endpoint_url(text, "fleet") == "https://ws--fleet.modal.run"
