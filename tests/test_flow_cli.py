"""``loratui inspect`` and ``loratui convert`` on SD3 and FLUX files from real short runs.

inspect names the family, the layout and the modules as the file holds them
(sd-scripts' FLUX modules fuse diffusers' q/k/v, so it also says how many of
diffusers' layers they cover). convert between sd-scripts' FLUX layout and
diffusers' PEFT keys loses nothing: with alpha = rank (the default, 16/16)
every tensor comes back bit for bit; with another alpha the diffusers layout,
which has no alpha ComfyUI reads, carries alpha/rank folded into the up
matrix, so the way back holds alpha = rank and the same product
up·down·alpha/rank (exactly, for a power-of-two scale as here). SD3 has one
layout that every loader reads; converting rewrites it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratui.cli import main
from loratui.project import ProjectPaths
from tests.test_flow_families import make_project, pipeline, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """FLUX with alpha = rank and with alpha = rank / 2, SD3 with alpha = rank / 2; every linear layer and
    the CLIP encoders trained for two steps."""
    out = {}
    for key, name, alpha in (("flux", "tiny-flux", 8), ("flux_half", "tiny-flux", 4), ("sd3", "tiny-sd3", 4)):
        project = make_project(tmp_path_factory.mktemp(key), f"builtin:{name}", "lora.preset=all",
                               f"lora.alpha={alpha}", "lora.train_text_encoder=true")
        train(project, 2)
        out[key] = ProjectPaths(project).output / "zxc_toy.safetensors"
    return out


def deltas(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each module's up·down·alpha/rank, for either layout (PEFT files carry the scale in lora_B)."""
    out = {}
    for key, down in tensors.items():
        if key.endswith((".lora_down.weight", ".lora_A.weight")):
            module, kind = key.rsplit(".lora_", 1)[0], key.rsplit(".", 2)[-2]
            up = tensors[f"{module}.{'lora_up' if kind == 'lora_down' else 'lora_B'}.weight"]
            alpha = float(tensors[f"{module}.alpha"]) if f"{module}.alpha" in tensors else down.shape[0]
            out[module] = up @ down * (alpha / down.shape[0])
    return out


@pytest.mark.parametrize("key, family, transformer, layers, te", [
    ("flux", "FLUX.1", "transformer 26", "40 in diffusers' layout", "text encoder 1 18"),
    ("sd3", "SD 3.x", "transformer 29", None, "text encoder 1 18, text encoder 2 18"),
])
def test_inspect_names_the_family_and_counts_the_modules(files: dict[str, Path], capsys, key: str, family: str,
                                                         transformer: str, layers: str | None, te: str) -> None:
    t = pipeline("tiny-flux" if key == "flux" else "tiny-sd3").transformer.config
    if key == "flux":
        # sd-scripts' FLUX modules: 10 per double block, 3 per single block; diffusers has 14 and 6.
        assert (t.num_layers, t.num_single_layers) == (2, 2)
    assert main(["inspect", str(files[key])]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert lines["model family"].startswith(family)
    text_modules = 18  # CLIP: 3 layers × (q, k, v, out, fc1, fc2)
    total = int(transformer.split()[-1]) + text_modules * (2 if key == "sd3" else 1)
    assert lines["modules"] == f"{total} ({transformer}, {te})"
    assert lines.get("transformer layers") == layers
    assert lines["text encoder"] == "trained"
    assert main(["inspect", "--json", str(files[key])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == key and summary["modules"] == total


def test_flux_kohya_to_diffusers_and_back_keeps_every_tensor(files: dict[str, Path], tmp_path: Path,
                                                             capsys) -> None:
    original = load_file(str(files["flux"]))
    as_diffusers, back = tmp_path / "d.safetensors", tmp_path / "k.safetensors"
    assert main(["convert", str(files["flux"]), str(as_diffusers), "--to", "diffusers"]) == 0
    assert main(["convert", str(as_diffusers), str(back), "--to", "kohya"]) == 0
    assert "diffusers format, 58 modules, family flux" in " ".join(capsys.readouterr().out.split())
    middle, again = load_file(str(as_diffusers)), load_file(str(back))
    assert any(k.startswith("transformer.single_transformer_blocks.") for k in middle)
    assert again.keys() == original.keys()
    for k in original:
        assert torch.equal(again[k], original[k]), k
    # The diffusers file in between holds each fused module's parts with the same total update.
    fused = deltas(original)
    split = deltas(middle)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    parts = [split[f"transformer.transformer_blocks.0.attn.to_{p}"] for p in "qkv"]
    assert torch.equal(torch.cat(parts), fused[qkv])


def test_flux_with_alpha_below_rank_keeps_every_product(files: dict[str, Path], tmp_path: Path) -> None:
    original = load_file(str(files["flux_half"]))
    as_diffusers, back = tmp_path / "d.safetensors", tmp_path / "k.safetensors"
    assert main(["convert", str(files["flux_half"]), str(as_diffusers), "--to", "diffusers"]) == 0
    assert main(["convert", str(as_diffusers), str(back), "--to", "kohya"]) == 0
    again = load_file(str(back))
    assert again.keys() == original.keys()
    assert float(original["lora_unet_double_blocks_0_img_attn_proj.alpha"]) == 4
    assert float(again["lora_unet_double_blocks_0_img_attn_proj.alpha"]) == 8
    before, after = deltas(original), deltas(again)
    for module in before:
        assert torch.equal(after[module], before[module]), module
    # Down matrices are untouched; only the scale moved into the up matrices.
    for k in original:
        if k.endswith("lora_down.weight"):
            assert torch.equal(again[k], original[k]), k


def test_sd3_convert_rewrites_its_one_layout_unchanged(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    original = load_file(str(files["sd3"]))
    out = tmp_path / "k.safetensors"
    assert main(["convert", str(files["sd3"]), str(out), "--to", "kohya"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "asked for kohya; sd3 files are always written in this layout" in said
    again = load_file(str(out))
    assert again.keys() == original.keys()
    for k in original:
        assert torch.equal(again[k], original[k]), k
