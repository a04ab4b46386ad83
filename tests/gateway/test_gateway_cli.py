"""`comfyfleet gateway` refuses bad input with one line and exit 2, before any host is contacted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from comfyfleet.deploys.gateway import backend_for, gateway_settings
from comfyfleet.errors import BadInput
from comfyfleet.gateway import inventory_with_gateway

HOST = {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "provider": "lambda"}


def invoke(*args: str) -> tuple[int, str]:
    """The real CLI in a subprocess, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", *args], capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout + done.stderr


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.py"
    path.write_text(text)
    return path


def test_missing_inventory_and_missing_gateway_group(tmp_path: Path) -> None:
    code, out = invoke("gateway", "deploy", str(tmp_path / "nope.py"))
    assert code == 2 and "inventory file" in out and "not found" in out
    inv = write(tmp_path, f"gpu = [('g1', {HOST!r})]\n")
    code, out = invoke("gateway", "status", str(inv))
    assert code == 2 and "no group or host 'gateway'" in out
    assert inventory_with_gateway(f"{inv}:gpu") is None


def test_unknown_host_to_drain(tmp_path: Path) -> None:
    inv = write(tmp_path, f"gpu = [('g1', {HOST!r})]\ngateway = [('gw', {HOST!r})]\n")
    assert inventory_with_gateway(f"{inv}:gpu") == str(inv)
    code, out = invoke("gateway", "drain", str(inv), "g7")
    assert code == 2 and "g7 is not behind the gateway (hosts: g1)" in out


def test_bad_gateway_settings_name_the_host(tmp_path: Path) -> None:
    for data, message in (
        ({"gateway_port": "443"}, "gateway_port must be a whole number"),
        ({"gateway_cert_file": str(tmp_path / "x.pem")}, "gateway_cert_file"),
    ):
        try:
            gateway_settings("gw", data)
        except BadInput as exc:
            assert "gateway host gw" in str(exc) and message in str(exc)
        else:
            raise AssertionError(f"{data} accepted")


@pytest.mark.parametrize("address", ["10.0.0.1:3000\n    external-check command /bin/sh", "gpu 1", "@local"])
def test_a_backend_address_that_is_not_an_ip_or_host_name_is_refused(address: str) -> None:
    """Host data reaches haproxy.cfg: an address carrying config text never gets there."""
    with pytest.raises(BadInput, match="gateway address"):
        backend_for("gpu1", {"gateway_address": address})
