"""The service's command line is a view of Settings: its defaults are Settings' defaults, its options set fields."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from comfyui_api.cli import parser, settings_from_args
from comfyui_api.settings import Settings


def test_no_options_give_the_settings_defaults() -> None:
    got = asdict(settings_from_args(parser().parse_args([])))
    want = asdict(Settings())
    got.pop("build_info"), want.pop("build_info")
    assert got == want


def test_options_set_their_fields(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k" * 20 + "\n" + "a" * 20 + " admin\n")
    s = settings_from_args(
        parser().parse_args(
            [
                "--workflows",
                "/w",
                "--rate-limit",
                "7",
                "--sync-timeout",
                "2.5",
                "--trusted-proxy",
                "10.0.0.0/8",
            ]
            + ["--disabled-dir", "/d", "--max-body-mb", "1", "--api-key-file", str(keys), "--no-url-inputs"]
        )
    )
    assert (s.workflows_dir, s.rate_limit_per_minute, s.sync_timeout_s) == (Path("/w"), 7, 2.5)
    assert s.trusted_proxies == ["10.0.0.0/8"] and s.disabled_dir == Path("/d")
    assert s.max_body_bytes == 2**20 and not s.allow_url_inputs
    assert s.api_keys == ["k" * 20, "a" * 20] and s.admin_keys == ["a" * 20]
