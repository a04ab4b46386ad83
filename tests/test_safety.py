"""Model filenames from workflow JSON: what may become an install target on a host."""

import pytest

from comfyfleet.hostside import fetch_models
from comfyfleet.safety import normalize_model_name, unsafe_model_name_reason


@pytest.mark.parametrize(
    "name",
    [
        "sd_xl_base_1.0.safetensors",
        "SDXL/juggernaut v9.safetensors",
        "_private/lora.safetensors",
        "flux1-dev-Q4_K_S.gguf",
        "4x-UltraSharp.pth",
    ],
)
def test_real_model_names_are_accepted(name: str) -> None:
    assert unsafe_model_name_reason(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/abs/model.safetensors",
        "C:/models/x.ckpt",
        "a;rm -rf ~.ckpt",
        "$(id).pt",
        "`id`.pt",
        "x|y.pt",
        "line\nbreak.pt",
        "-rf.ckpt",
        ".hidden.pt",
        "a//b.pt",
        "",
        "x" * 300,
    ],
)
def test_names_that_could_escape_or_reach_a_shell_are_refused(name: str) -> None:
    assert unsafe_model_name_reason(name) is not None


def test_windows_separators_become_subfolders() -> None:
    assert normalize_model_name("SDXL\\base.safetensors") == "SDXL/base.safetensors"
    assert unsafe_model_name_reason("SDXL\\base.safetensors") is None
    assert unsafe_model_name_reason("..\\..\\x.pt") is not None


def test_host_side_copy_of_the_rule_agrees() -> None:
    # fetch_models.py runs on hosts without comfyfleet installed and repeats the rule.
    for name in ["_private/lora.safetensors", "a b.pt", "a;b.pt", "-x.pt", "ok[1].pt"]:
        assert bool(fetch_models._SAFE_PART.match(name.split("/")[0])) == (
            unsafe_model_name_reason(name.split("/")[0]) is None
        ), name
