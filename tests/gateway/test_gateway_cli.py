"""`comfyfleet gateway` refuses bad input with one line and exit 2, before any host is contacted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from comfyfleet.deploys.gateway import backend_for, gateway_settings, plain_http_problem
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


@pytest.mark.parametrize("address", ["203.0.113.7", "gpu1.example.com", "2001:db8::7"])
def test_keys_never_cross_an_unvouched_network_in_plain_http(tmp_path: Path, address: str) -> None:
    """HAProxy passes every request's API key on to the hosts over plain HTTP: a public address or a
    host name is refused before any host is contacted, unless the operator vouches for the network."""
    gpu = {**HOST, "gateway_address": address}
    inv = write(tmp_path, f"gpu = [('g1', {gpu!r})]\ngateway = [('gw', {HOST!r})]\n")
    code, out = invoke("gateway", "deploy", str(inv))
    assert code == 2, out
    assert f"host g1: the gateway would send API keys to {address}:3000 in plain HTTP" in out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
    vouched = {**HOST, "gateway_plain_http": True}
    inv = write(tmp_path, f"gpu = [('g1', {gpu!r})]\ngateway = [('gw', {vouched!r})]\n")
    code, out = invoke("gateway", "deploy", str(inv))
    # Now the gateway host is contacted (and is not there: port 1), the address is not the problem.
    assert code == 1 and "plain HTTP" not in out, out


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "172.20.0.5", "192.168.1.9", "100.101.1.2", "fd7a::1"]
)
def test_loopback_and_private_networks_need_no_vouching(address: str) -> None:
    assert plain_http_problem([backend_for("g1", {"gateway_address": address})], allowed=False) is None
