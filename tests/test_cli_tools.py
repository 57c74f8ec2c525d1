"""The one-shot commands on a trained sample project: the file loads in diffusers, sample, export, inspect, check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageChops

from loratui.cli import main
from loratui.project import ProjectPaths

torch.set_num_threads(1)
SAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "sample_project"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("trained") / "p"
    shutil.copytree(SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", "*.py"))
    assert main(["train", str(project), "--headless", "--max-steps", "4", "--set", "sample.every_n_steps=0",
                 "--set", "save.every_n_steps=0"]) == 0
    return project


def test_diffusers_loads_the_trained_file_and_matches_our_unet(trained: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from loratui.cli_tools import _load_for_inference
    from loratui.models.builtin import ensure_builtin

    lora = ProjectPaths(trained).output / "zxc_toy.safetensors"
    _, ours, networks, _, _ = _load_for_inference(trained, lora, use_lora=True)
    assert len(networks["unet"]) == 192  # attention+ff on the SD1.5 layout: the same 192 modules kohya writes
    pipe = StableDiffusionPipeline.from_pretrained(ensure_builtin("tiny-sd"), safety_checker=None)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 16, generator=gen)
    hidden = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=gen)
    t = torch.tensor([500])
    with torch.no_grad():
        base = pipe.unet(sample, t, encoder_hidden_states=hidden).sample
        pipe.load_lora_weights(str(lora))
        theirs = pipe.unet(sample, t, encoder_hidden_states=hidden).sample
        mine = ours.unet(sample, t, encoder_hidden_states=hidden).sample
    print(f"max |diffusers - ours| = {(theirs - mine).abs().max():.2e}; "
          f"max |with LoRA - base| = {(theirs - base).abs().max():.2e}")
    assert torch.allclose(theirs, mine, atol=1e-4, rtol=1e-3)
    assert not torch.allclose(theirs, base, atol=1e-4)


def test_sample_at_scale_zero_is_the_base_model(trained: Path, tmp_path: Path) -> None:
    common = ["sample", str(trained), "--prompt", "zxc toy, red ball", "--seed", "3", "--steps", "2"]
    assert main([*common, "--out", str(tmp_path / "lora.png")]) == 0
    assert main([*common, "--scale", "0", "--out", str(tmp_path / "zero.png")]) == 0
    assert main([*common, "--no-lora", "--out", str(tmp_path / "base.png")]) == 0
    lora, zero, base = (Image.open(tmp_path / f"{n}.png") for n in ("lora", "zero", "base"))
    assert ImageChops.difference(zero, base).getbbox() is None
    assert ImageChops.difference(lora, base).getbbox() is not None
    assert "seed: 3" in (tmp_path / "lora.txt").read_text()


def test_export_both_formats_and_inspect_them(trained: Path, tmp_path: Path, capsys) -> None:
    from loratui.lora.fileformat import load_lora_file

    assert main(["export", str(trained), "--format", "diffusers", "--out", str(tmp_path / "d.safetensors")]) == 0
    assert main(["export", str(trained), "--out", str(tmp_path / "k.safetensors")]) == 0
    d = load_lora_file(tmp_path / "d.safetensors")
    k = load_lora_file(tmp_path / "k.safetensors")
    assert d.format == "diffusers" and k.format == "kohya"
    assert d.modules.keys() == k.modules.keys()
    for name in k.modules:
        assert torch.equal(d.modules[name].up, k.modules[name].up)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "k.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "SD 1.x" in out and "192 (UNet 192)" in out and "matches metadata" in out
    assert main(["convert", str(tmp_path / "d.safetensors"), str(tmp_path / "c.safetensors"), "--to", "kohya"]) == 0


def test_check_reports_problems_and_exit_codes(tmp_path: Path, capsys) -> None:
    from loratui.project import create_project

    project = tmp_path / "p"
    create_project(project)
    assert main(["check", str(project)]) == 2  # nothing usable
    Image.new("RGB", (128, 128), "red").save(project / "images" / "a.png")
    (project / "images" / "a.txt").write_text("a red square")
    assert main(["check", str(project)]) == 0
    (project / "images" / "broken.png").write_bytes(b"not a png at all")
    assert main(["check", str(project)]) == 1
    out = capsys.readouterr().out
    assert "broken.png" in out
