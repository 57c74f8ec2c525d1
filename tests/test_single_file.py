"""Original-layout (LDM/SGM) single-file checkpoints: written by loratui, read back by diffusers, trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.runner import run_training
from loratui.events import Event, Finished
from loratui.models.single_file import (
    SingleFileError,
    clip_to_original,
    openclip_to_original,
    save_pipeline_single_file,
    vae_to_original,
)
from loratui.project import ProjectPaths
from tests.unet_probe import unet_probe_output

torch.set_num_threads(1)

SAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "sample_project"
CONFIGS = Path(__file__).parent / "data" / "real_configs"
FAMILIES = {"tiny-sd": ("sd1", "epsilon"), "tiny-sd2": ("sd2", "v_prediction"), "tiny-sdxl": ("sdxl", "epsilon")}


def _folder(name: str) -> Path:
    from loratui.models.builtin import ensure_builtin

    return ensure_builtin(name)


def _pipeline_class(name: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if name == "tiny-sdxl" else StableDiffusionPipeline


def _load_folder(name: str, folder: Path | None = None):
    kwargs = {} if name == "tiny-sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    return _pipeline_class(name).from_pretrained(str(folder or _folder(name)), local_files_only=True, **kwargs)


def _unet_output(pipe) -> torch.Tensor:
    return unet_probe_output(pipe.unet, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_written_file_loads_with_from_single_file_and_is_detected(tmp_path: Path, name: str) -> None:
    from loratui.models.probe import probe_model

    family, pred = FAMILIES[name]
    folder = _folder(name)
    pipe = _load_folder(name)
    path = save_pipeline_single_file(pipe, tmp_path / f"{name}.safetensors", family=family, dtype=torch.float32)
    loaded = _pipeline_class(name).from_single_file(str(path), config=str(folder), local_files_only=True)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours = getattr(pipe, component, None)
        if ours is None:
            continue
        theirs = getattr(loaded, component).state_dict()
        assert theirs.keys() == ours.state_dict().keys()
        assert all(torch.equal(theirs[k], v) for k, v in ours.state_dict().items()), component
    # Every weight is equal to the bit (above); the outputs up to summation order, because the converted
    # tensors may sit in memory with other strides, which picks other CPU kernels.
    torch.testing.assert_close(_unet_output(loaded), _unet_output(pipe), rtol=1e-5, atol=1e-5)
    assert loaded.scheduler.config.prediction_type == pred

    # Family from the file's keys alone; SD2's v-prediction from its v_pred marker.
    info = probe_model(str(path))
    assert (info.source_kind, info.family, info.prediction_type) == ("single_file", family, pred)
    with safe_open(str(path), "pt") as f:
        assert ("v_pred" in set(f.keys())) == (pred == "v_prediction")
    # With a config folder, its scheduler says the prediction type.
    assert probe_model(str(path), config_source=str(folder)).prediction_type == pred


def test_a_v_pred_marker_makes_an_sdxl_file_v_prediction_and_settings_override(tmp_path: Path) -> None:
    from loratui.models.loader import load_model
    from loratui.models.probe import probe_model

    pipe = _load_folder("tiny-sdxl")
    path = save_pipeline_single_file(pipe, tmp_path / "xl-v.safetensors", family="sdxl",
                                     prediction_type="v_prediction", dtype=torch.float32)
    folder = str(_folder("tiny-sdxl"))
    # The file's own marker beats the epsilon scheduler in the config folder.
    assert probe_model(str(path), config_source=folder).prediction_type == "v_prediction"
    model = load_model(str(path), config_source=folder)
    assert (model.family, model.prediction_type) == ("sdxl", "v_prediction")
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    model = load_model(str(path), config_source=folder, prediction_type="epsilon")
    assert model.prediction_type == "epsilon" == model.sample_scheduler.config.prediction_type


def test_a_model_with_lora_layers_is_refused(tmp_path: Path) -> None:
    from loratui.lora import inject_lora

    pipe = _load_folder("tiny-sd")
    inject_lora(pipe.unet, component="unet", family="sd1", preset="attention", rank=2, alpha=2)
    with pytest.raises(SingleFileError, match="merge them into the weights first"):
        save_pipeline_single_file(pipe, tmp_path / "x.safetensors", family="sd1")
    assert not (tmp_path / "x.safetensors").exists()


# -- real architectures, built on the meta device --------------------------------------------------

_SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
           "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
           "up_block_types": ["UpDecoderBlock2D"] * 4}


def _clip(name: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    raw = json.loads((CONFIGS / name).read_text())
    cls = CLIPTextModelWithProjection if raw.pop("architectures") == ["CLIPTextModelWithProjection"] else CLIPTextModel
    with torch.device("meta"):
        return cls(CLIPTextConfig(**raw))


def test_sd_vae_names_and_shapes_are_the_original_ones() -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with torch.device("meta"):
        vae = AutoencoderKL(**_SD_VAE)
    original = vae_to_original(vae.state_dict(), len(_SD_VAE["up_block_types"]))
    assert len(original) == 248  # the SD 1.x/2.x/XL autoencoder's tensor count
    shapes = {k: tuple(v.shape) for k, v in original.items()}
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)  # 1x1 convs, as in LDM
    assert shapes["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["first_stage_model.decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert shapes["first_stage_model.encoder.down.3.block.1.conv2.weight"] == (512, 512, 3, 3)
    assert "first_stage_model.decoder.norm_out.weight" in shapes and "first_stage_model.quant_conv.weight" in shapes
    back = convert_ldm_vae_checkpoint(original, _SD_VAE)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in vae.state_dict().items()}


def test_sdxl_openclip_names_and_shapes_are_the_original_ones() -> None:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    te2 = _clip("sdxl_text_encoder_2.json")
    prefix = "conditioner.embedders.1.model."
    original = openclip_to_original(te2, prefix)
    shapes = {k[len(prefix):]: tuple(v.shape) for k, v in original.items()}
    assert shapes["transformer.resblocks.31.attn.in_proj_weight"] == (3 * 1280, 1280)
    assert shapes["transformer.resblocks.0.mlp.c_fc.weight"] == (5120, 1280)
    assert shapes["text_projection"] == (1280, 1280)
    assert shapes["positional_embedding"] == (77, 1280)
    assert shapes["token_embedding.weight"] == (49408, 1280)
    assert len(shapes) == 32 * 12 + 5  # 12 tensors per resblock, plus embeddings, ln_final and the projection
    back = convert_open_clip_checkpoint(te2, original, prefix=prefix)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in te2.state_dict().items()}


def test_sd15_text_encoder_keeps_the_hugging_face_names() -> None:
    te = _clip("sd15_text_encoder.json")
    keys = set(clip_to_original(te, "cond_stage_model.transformer."))
    assert "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.bias" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert len(keys) == len(te.state_dict())


# -- training on a single file ---------------------------------------------------------------------------


def _train(project: Path, steps: int) -> list[Event]:
    seen: list[Event] = []
    run_training(project, emit=seen.append, commands=CommandChannel(), max_steps=steps)
    return seen


@pytest.mark.parametrize("name", list(FAMILIES))
def test_training_on_a_single_file_base_model(tmp_path: Path, name: str) -> None:
    family, pred = FAMILIES[name]
    path = save_pipeline_single_file(_load_folder(name), tmp_path / f"{name}.safetensors", family=family,
                                     dtype=torch.float16)
    project = tmp_path / "p"
    shutil.copytree(SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py"))
    cfg = load_config(project)
    for item in (f"model.base={path}", f"model.config_source={_folder(name)}", "save.every_n_steps=0",
                 "sample.every_n_steps=0"):
        apply_override(cfg, item)
    save_config(project, cfg)
    events = _train(project, 2)
    assert isinstance(events[-1], Finished)
    started = next(e for e in events if type(e).__name__ == "Started")
    assert started.family == family
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_base_model_version"] == {"sd1": "sd_v1", "sd2": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}[family]
    assert keys and all(k.startswith("lora_unet_") for k in keys)
