"""Command-level tests of comfyfleet's operations (facts in, commands out, then the idempotent re-run).

Docker's and NVIDIA's apt repositories and GPU drivers cannot be reached here, so these
paths are checked at the command level only; the fleet tests run the rest for real.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from deploy_harness import load_cases, run_op

from comfyfleet.operations.docker import ContainerSpec

CASES = load_cases()


def _prepare(args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    args = dict(args)
    spec_hash = ""
    if isinstance(args.get("spec"), dict):
        raw = dict(args["spec"])
        raw["command"] = tuple(raw.get("command", ()))
        raw["mounts"] = tuple(raw.get("mounts", ()))
        raw["env"] = tuple(tuple(pair) for pair in raw.get("env", ()))
        args["spec"] = ContainerSpec(**raw)
        spec_hash = args["spec"].spec_hash()
    return args, spec_hash


def _fill(value: Any, spec_hash: str) -> Any:
    return json.loads(json.dumps(value).replace("{spec_hash}", spec_hash))


def _check(commands: list[str], expected: list[Any], spec_hash: str) -> None:
    assert len(commands) == len(expected), "\n---\n".join(commands)
    for got, want in zip(commands, expected, strict=True):
        if isinstance(want, str):
            assert got == want.replace("{spec_hash}", spec_hash)
        else:
            for part in want["contains"]:
                assert part.replace("{spec_hash}", spec_hash) in got, f"{part!r} not in:\n{got}"


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_command_level_operation_case(case: dict[str, Any]) -> None:
    args, spec_hash = _prepare(case["args"])
    commands, fake = run_op(case["op"], args, _fill(case.get("facts") or {}, spec_hash))
    joined = "\n".join(commands)
    if "fails_with" in case:
        assert len(commands) == 1 and commands[0].startswith("sh -c"), joined
        assert case["fails_with"] in commands[0] and "exit 1" in commands[0]
    else:
        _check(commands, case["commands"], spec_hash)
    for text in case.get("not_contains", []):
        assert text not in joined
    for text in case.get("noops_contain", []):
        assert any(text in n for n in fake.noops), fake.noops
    if "second_run" in case:
        again, _ = run_op(case["op"], args, _fill(case["second_run"]["facts"], spec_hash))
        _check(again, case["second_run"]["commands"], spec_hash)


def test_command_level_cases_cover_every_operation() -> None:
    """Every custom operation that yields commands has at least one case."""
    covered = {c["op"] for _, c in CASES}
    wanted = {
        "docker.engine",
        "docker.nvidia_toolkit",
        "docker.container",
        "docker.restart",
        "docker.wait_http",
        "block.volume",
        "comfyui.checkout",
        "comfyui.python_env",
        "comfyui.seed_inputs",
        "comfyui.link",
    }
    assert wanted <= covered, wanted - covered


def test_command_level_container_spec_hash_tracks_every_field() -> None:
    """Image, command, env, mounts, gpus each change the hash: any change recreates the container."""
    base = ContainerSpec(name="c", image="i:1", command=("python3",), env=(("A", "1"),), mounts=("/d/m",))
    variants = [
        ContainerSpec(name="c", image="i:2", command=("python3",), env=(("A", "1"),), mounts=("/d/m",)),
        ContainerSpec(name="c", image="i:1", command=("python3", "-u"), env=(("A", "1"),), mounts=("/d/m",)),
        ContainerSpec(name="c", image="i:1", command=("python3",), env=(("A", "2"),), mounts=("/d/m",)),
        ContainerSpec(name="c", image="i:1", command=("python3",), env=(("A", "1"),), mounts=("/d/x",)),
        ContainerSpec(
            name="c", image="i:1", command=("python3",), env=(("A", "1"),), mounts=("/d/m",), gpus=True
        ),
    ]
    hashes = {base.spec_hash(), *(v.spec_hash() for v in variants)}
    assert len(hashes) == 6
    assert base.spec_hash() == ContainerSpec(**base.__dict__).spec_hash()


class _Meta:
    def __init__(self, changed: bool) -> None:
        self.changed = changed

    def is_complete(self) -> bool:
        return True

    def did_change(self) -> bool:
        return self.changed


class _OpData:
    def __init__(self, changed: bool) -> None:
        self.operation_meta = _Meta(changed)


def test_command_level_prefetch_one_round_trip_then_fresh_after_a_change() -> None:
    """Facts are read in one bundle; a later lookup uses it until an operation changed something."""
    from deploy_harness import FakeHost
    from pyinfra.context import ctx_host

    from comfyfleet.facts import prefetch
    from comfyfleet.facts.comfyui import HttpStatus, MissingDirectories

    requests = [
        (MissingDirectories, {"paths": ("/d/a", "/d/b")}),
        (HttpStatus, {"url": "http://127.0.0.1:1/x"}),
    ]
    bundle_cmd = (
        prefetch.FactBundle()
        .command(commands=tuple(cls().command(**kw) for cls, kw in requests))
        .get_raw_value()
    )
    assert (
        bundle_cmd.count("@@cf-rc-") == 2
        and "/d/a /d/b" in bundle_cmd
        and "http://127.0.0.1:1/x" in bundle_cmd
    )
    output = ["@@cf-0@@", "/d/b", "@@cf-rc-0:0@@", "@@cf-1@@", "200", "@@cf-rc-1:0@@"]
    parsed = prefetch.FactBundle().process(output)
    assert parsed == {0: (0, ["/d/b"]), 1: (0, ["200"])}

    fake = FakeHost({"FactBundle": parsed, "MissingDirectories": ["fresh"], "HttpStatus": 0})
    fake.state = type("S", (), {"ops": {fake: {}}})()  # type: ignore[attr-defined]
    with ctx_host.use(fake):
        list(prefetch.prefetch._inner(requests=requests))
        assert prefetch.fact(MissingDirectories, paths=("/d/a", "/d/b")) == ["/d/b"]
        assert prefetch.fact(HttpStatus, url="http://127.0.0.1:1/x") == 200
        assert fake.asked == ["FactBundle"]  # one round trip so far
        fake.state.ops[fake]["op1"] = _OpData(changed=True)  # an operation ran commands
        assert prefetch.fact(MissingDirectories, paths=("/d/a", "/d/b")) == ["fresh"]
        assert fake.asked[-1] == "MissingDirectories"
