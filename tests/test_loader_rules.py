"""ComfyUI and diffusers-format files: what its key map really takes, in every family."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from loratui.cli import main
from loratui.lora.fileformat import save_diffusers, save_kohya
from loratui.lora.inject import inject_lora
from loratui.lora.loader_rules import comfyui_skipped_modules, diffusers_modules_of

FAMILY = {"tiny-sd": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}


def _comfy_diffusers_keys(unet_keys: list[str]) -> set[str]:
    """ComfyUI's model_lora_keys_unet for diffusers-format keys: 'unet.' + the path, attention
    projections only in the old processor spelling (``.processor.to_q``, ``.processor.to_out``)."""
    out = set()
    for k in unet_keys:
        if not k.endswith(".weight"):
            continue
        key = "unet." + k[:-len(".weight")].replace(".to_", ".processor.to_")
        out.add(key[:-2] if key.endswith(".to_out.0") else key)
    return out


def _unet(name: str):
    from diffusers import UNet2DConditionModel

    from loratui.models.builtin import ensure_builtin

    return UNet2DConditionModel.from_pretrained(str(ensure_builtin(name)), subfolder="unet")


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_comfyui_skips_exactly_the_attention_projections_of_a_diffusers_file(name: str, tmp_path: Path) -> None:
    unet = _unet(name)
    keys = list(unet.state_dict())
    net = inject_lora(unet, component="unet", family=FAMILY[name], preset="all", rank=2, alpha=2)
    save_diffusers(tmp_path / "d.safetensors", {"unet": net}, {})
    with safe_open(str(tmp_path / "d.safetensors"), "pt") as f:
        modules = diffusers_modules_of(f.keys())
    comfy = _comfy_diffusers_keys(keys)
    not_loaded = sorted(m for m in modules if m not in comfy)
    assert not_loaded == comfyui_skipped_modules(modules)
    assert not_loaded and all(m.endswith(("to_q", "to_k", "to_v", "to_out.0")) for m in not_loaded)
    print(f"{name}: ComfyUI would skip {len(not_loaded)} of {len(modules)} UNet modules of a diffusers-format file")


def test_export_and_convert_to_diffusers_say_so(tmp_path: Path, capsys) -> None:
    unet = _unet("tiny-sd")
    net = inject_lora(unet, component="unet", family="sd1", preset="attention", rank=2, alpha=2)
    save_kohya(tmp_path / "k.safetensors", {"unet": net}, {})
    assert main(["convert", str(tmp_path / "k.safetensors"), str(tmp_path / "d.safetensors"), "--to", "diffusers"]) == 0
    err = capsys.readouterr().err
    assert "ComfyUI does not load the attention projections" in err and "use the kohya file" in err
    assert main(["convert", str(tmp_path / "d.safetensors"), str(tmp_path / "k2.safetensors"), "--to", "kohya"]) == 0
    assert "ComfyUI" not in capsys.readouterr().err
