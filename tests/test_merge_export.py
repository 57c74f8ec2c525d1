"""`loratui export --merge`: the base model with the LoRA in its weights, as a folder and as one checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.cli import main
from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.runner import run_training
from loratui.events import Finished
from loratui.project import ProjectPaths
from tests.unet_probe import unet_probe_output

torch.set_num_threads(1)

SAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "sample_project"


def _trained(root: Path, base: str) -> Path:
    project = root / "p"
    shutil.copytree(SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py"))
    cfg = load_config(project)
    # float32 files so "the same output" can be checked tightly; text-encoder LoRA so it is merged too.
    for item in (f"model.base={base}", "save.every_n_steps=0", "sample.every_n_steps=0", "save.precision=fp32",
                 "lora.train_text_encoder=true", "train.text_encoder_lr=0.001"):
        apply_override(cfg, item)
    save_config(project, cfg)
    seen: list = []
    run_training(project, emit=seen.append, commands=CommandChannel(), max_steps=3)
    assert isinstance(seen[-1], Finished)
    return project


def _pipeline(name: str, folder: Path | None = None, single: Path | None = None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from loratui.models.builtin import ensure_builtin

    cls = StableDiffusionXLPipeline if name == "tiny-sdxl" else StableDiffusionPipeline
    kwargs = {} if name == "tiny-sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    if single is not None:
        return cls.from_single_file(str(single), config=str(ensure_builtin(name)), local_files_only=True, **kwargs)
    return cls.from_pretrained(str(folder or ensure_builtin(name)), local_files_only=True, **kwargs)


def _encoders(pipe) -> dict:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return {"te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
    return {"te": pipe.text_encoder}


def _outputs(pipe) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (1, 77), generator=g)
    with torch.no_grad():
        out = {name: te(ids)[0] for name, te in _encoders(pipe).items()}
    out["unet"] = unet_probe_output(pipe.unet, g)
    return out


def _with_lora(name: str, lora: Path, family: str, scale: float) -> dict[str, torch.Tensor]:
    from loratui.lora import inject_from_file, load_lora_file

    pipe = _pipeline(name)
    networks = inject_from_file(load_lora_file(lora, family=family), {"unet": pipe.unet, **_encoders(pipe)})
    for net in networks.values():
        net.set_multiplier(scale)
    return _outputs(pipe)


def _same_model(single_pipe, folder_pipe) -> None:
    """A model read from one file is the folder's model: every weight equal to the bit, and the same
    outputs up to summation order (the converted tensors may sit in memory with other strides,
    which picks other CPU kernels)."""
    for name, module in {"unet": single_pipe.unet, **_encoders(single_pipe)}.items():
        other = {"unet": folder_pipe.unet, **_encoders(folder_pipe)}[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, other[key]), f"{name}.{key}"
    _close(_outputs(single_pipe), _outputs(folder_pipe), 1e-5)


def _close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=key)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return _trained(tmp_path_factory.mktemp("merge-sd1"), "builtin:tiny-sd")


def test_merge_at_scale_one_equals_the_lora_applied_model(sd1: Path, capsys) -> None:
    assert main(["export", str(sd1), "--merge"]) == 0
    assert "wrote" in capsys.readouterr().out
    out = ProjectPaths(sd1).output
    folder, single = out / "zxc_toy-merged", out / "zxc_toy-merged.safetensors"
    assert (folder / "model_index.json").is_file() and single.is_file()
    merged = _outputs(_pipeline("tiny-sd", folder=folder))
    lora = _with_lora("tiny-sd", out / "zxc_toy.safetensors", "sd1", 1.0)
    base = _outputs(_pipeline("tiny-sd"))
    for key in merged:
        assert not torch.allclose(merged[key], base[key], atol=1e-4), f"nothing was merged into {key}"
    _close(merged, lora, 1e-4)

    # The one-file checkpoint is the same model, and says what it is.
    _same_model(_pipeline("tiny-sd", single=single), _pipeline("tiny-sd", folder=folder))
    with safe_open(str(single), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["loratui.merge_scale"] == "1"
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys)


def test_merge_at_other_scales(sd1: Path, tmp_path: Path) -> None:
    lora = ProjectPaths(sd1).output / "zxc_toy.safetensors"
    assert main(["export", str(sd1), "--merge", "--scale", "0", "--out", str(tmp_path / "zero")]) == 0
    _same_model(_pipeline("tiny-sd", single=tmp_path / "zero" / "zxc_toy-merged.safetensors"),
                _pipeline("tiny-sd"))
    # A LoRA file rather than the newest checkpoint, at half strength.
    assert main(["export", str(sd1), "--merge", "--scale", "0.5", "--lora", str(lora),
                 "--out", str(tmp_path / "half")]) == 0
    half = _outputs(_pipeline("tiny-sd", folder=tmp_path / "half" / "zxc_toy-merged"))
    _close(half, _with_lora("tiny-sd", lora, "sd1", 0.5), 1e-4)


def test_merge_option_mistakes_are_reported(sd1: Path, capsys) -> None:
    assert main(["export", str(sd1), "--scale", "0.5"]) == 2
    assert "only apply with --merge" in capsys.readouterr().err
    assert main(["export", str(sd1), "--merge", "--format", "diffusers"]) == 2
    assert "Drop --format" in capsys.readouterr().err
    assert main(["export", str(sd1), "--merge", "--lora", str(sd1 / "nope.safetensors")]) == 2
    assert "no LoRA file or checkpoint folder" in capsys.readouterr().err


def test_sdxl_merge_loads_from_one_file_with_the_lora_in_it(tmp_path: Path) -> None:
    from loratui.engine.merge_export import export_merged

    project = _trained(tmp_path, "builtin:tiny-sdxl")
    folder, single = export_merged(project)
    with safe_open(str(single), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.label_emb.") for k in keys)  # SGM layout
    assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.") for k in keys)
    _same_model(_pipeline("tiny-sdxl", single=single), _pipeline("tiny-sdxl", folder=folder))
    from_file = _outputs(_pipeline("tiny-sdxl", single=single))
    _close(from_file, _with_lora("tiny-sdxl", ProjectPaths(project).output / "zxc_toy.safetensors", "sdxl", 1.0),
           1e-4)
