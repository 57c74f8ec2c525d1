"""probe_model and load_model on user-supplied paths, and family detection."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loratui.models import builtin
from loratui.models.family import (
    FamilyError,
    family_from_configs,
    family_from_keys,
    native_resolution,
    prediction_from_keys,
    prediction_from_scheduler_config,
)
from loratui.models.loader import ModelLoadError, load_model, probe_model

torch.set_num_threads(1)

# Real models' config values (abridged from the published config.json files).
SD15_UNET = {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768, "in_channels": 4, "sample_size": 64}
SD21_UNET = {
    "_class_name": "UNet2DConditionModel",
    "cross_attention_dim": 1024,
    "in_channels": 4,
    "sample_size": 96,
    "use_linear_projection": True,
}
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "in_channels": 4,
    "sample_size": 128,
    "use_linear_projection": True,
}
SD_INDEX = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
}

# Representative tensor names of original-layout checkpoints.
LDM_UNET = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight"]
SD1_KEYS = LDM_UNET + ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
SD2_KEYS = LDM_UNET + ["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
SDXL_KEYS = LDM_UNET + [
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
]


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORATUI_CACHE_DIR", str(cache))
        return builtin.ensure_builtin("tiny-sd")


def _checkpoint(path: Path, keys: list[str]) -> Path:
    save_file({k: torch.zeros(4 if "input_blocks.0.0" not in k else (2, 4, 1, 1)) for k in keys}, str(path))
    return path


# --- pure detection functions ---------------------------------------------


def test_family_from_real_configs() -> None:
    assert family_from_configs(SD_INDEX, SD15_UNET) == "sd1"
    assert family_from_configs(SD_INDEX, SD21_UNET) == "sd2"
    assert family_from_configs(SDXL_INDEX, SDXL_UNET) == "sdxl"
    # Without the pipeline class, SDXL is still known by its size embedding.
    assert family_from_configs({}, SDXL_UNET) == "sdxl"
    # Non-standard widths fall back to SD2's design traits.
    odd = {"cross_attention_dim": 512, "in_channels": 4}
    assert family_from_configs(SD_INDEX, odd) == "sd1"
    assert family_from_configs(SD_INDEX, {**odd, "use_linear_projection": True}) == "sd2"
    assert family_from_configs(SD_INDEX, odd, {"hidden_act": "gelu"}) == "sd2"
    with pytest.raises(FamilyError, match="inpainting"):
        family_from_configs(SD_INDEX, {**SD15_UNET, "in_channels": 9})


def test_prediction_and_resolution_from_configs() -> None:
    assert prediction_from_scheduler_config({"prediction_type": "v_prediction"}) == "v_prediction"
    assert prediction_from_scheduler_config({}) == "epsilon"
    with pytest.raises(FamilyError, match="sample"):
        prediction_from_scheduler_config({"prediction_type": "sample"})
    assert native_resolution("sd1", "epsilon", SD15_UNET) == 512
    assert native_resolution("sd2", "v_prediction", SD21_UNET) == 768
    assert native_resolution("sdxl", "epsilon", SDXL_UNET) == 1024
    assert native_resolution("sd2", "v_prediction") == 768
    assert native_resolution("sd2", "epsilon") == 512


def test_family_from_checkpoint_keys() -> None:
    assert family_from_keys(SD1_KEYS) == "sd1"
    assert family_from_keys(SD2_KEYS) == "sd2"
    assert family_from_keys(SDXL_KEYS) == "sdxl"
    assert prediction_from_keys(SD1_KEYS, "sd1") == "epsilon"
    assert prediction_from_keys(SDXL_KEYS, "sdxl") == "epsilon"
    assert prediction_from_keys(SDXL_KEYS + ["v_pred"], "sdxl") == "v_prediction"
    assert prediction_from_keys(SD2_KEYS, "sd2") == "v_prediction"
    with pytest.raises(FamilyError, match="LoRA"):
        family_from_keys(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"])
    with pytest.raises(FamilyError, match="inpainting"):
        family_from_keys(SD1_KEYS, {"model.diffusion_model.input_blocks.0.0.weight": [320, 9, 3, 3]})


# --- probing real files ---------------------------------------------------


def test_probe_folder(tiny_sd_folder: Path) -> None:
    info = probe_model(str(tiny_sd_folder))
    assert (info.source_kind, info.family, info.prediction_type) == ("folder", "sd1", "epsilon")
    assert "128 px" in info.description
    assert info.path == tiny_sd_folder


@pytest.mark.parametrize(
    ("keys", "family", "pred"),
    [(SD1_KEYS, "sd1", "epsilon"), (SD2_KEYS, "sd2", "v_prediction"), (SDXL_KEYS + ["v_pred"], "sdxl", "v_prediction")],
)
def test_probe_safetensors_header(tmp_path: Path, keys: list[str], family: str, pred: str) -> None:
    info = probe_model(str(_checkpoint(tmp_path / "model.safetensors", keys)))
    assert (info.source_kind, info.family, info.prediction_type) == ("single_file", family, pred)


def test_probe_single_file_takes_prediction_from_config_source(tmp_path: Path, tiny_sd_folder: Path) -> None:
    path = _checkpoint(tmp_path / "m.safetensors", SD2_KEYS)
    info = probe_model(str(path), config_source=str(tiny_sd_folder))
    assert info.prediction_type == "epsilon"
    assert "128 px" in info.description
    # The file's own v_pred marker wins over the config's scheduler.
    marked = _checkpoint(tmp_path / "v.safetensors", SD1_KEYS + ["v_pred"])
    assert probe_model(str(marked), config_source=str(tiny_sd_folder)).prediction_type == "v_prediction"
    with pytest.raises(ModelLoadError, match="model.config_source") as err:
        probe_model(str(path), config_source=str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(err.value)


def test_truncated_safetensors_is_named(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "cut.safetensors", SD1_KEYS)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(ModelLoadError, match="truncated") as err:
        probe_model(str(path))
    assert str(path) in str(err.value)
    path.write_bytes(data[:5])
    with pytest.raises(ModelLoadError, match=str(path)):
        probe_model(str(path))
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelLoadError, match="damaged"):
        probe_model(str(path))
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")
    with pytest.raises(ModelLoadError, match="damaged"):
        probe_model(str(path))


def test_bad_specs_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        probe_model(str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(ModelLoadError, match="model_index.json") as err:
        probe_model(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelLoadError, match="safetensors"):
        probe_model(str(other))
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2)}, str(lora))
    with pytest.raises(ModelLoadError, match="LoRA"):
        probe_model(str(lora))
    with pytest.raises(ModelLoadError, match="no base model"):
        probe_model("  ")


def test_pickle_checkpoint_needs_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    state = {k: torch.zeros(2) for k in SD2_KEYS}
    torch.save({"state_dict": state, "global_step": 875000}, path)
    with pytest.raises(ModelLoadError, match="model.allow_pickle") as err:
        probe_model(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(ModelLoadError, match="model.allow_pickle"):
        load_model(str(path))
    # Opted in: read with weights_only; SD2's 512-base step count means epsilon.
    info = probe_model(str(path), allow_pickle=True)
    assert (info.family, info.prediction_type) == ("sd2", "epsilon")


def test_load_folder_with_a_cut_short_weight_file(tmp_path: Path, tiny_sd_folder: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelLoadError, match="truncated") as err:
        load_model(str(folder))
    assert str(weights) in str(err.value)


def test_load_folder_and_fingerprint(tmp_path: Path, tiny_sd_folder: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_folder, folder)
    first = load_model(str(folder))
    assert (first.source_kind, first.family) == ("folder", "sd1")
    assert load_model(str(folder)).fingerprint == first.fingerprint
    # Replacing a weight file changes the identity the caches are keyed by.
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert probe_model(str(folder)).family == "sd1"
    assert load_model(str(folder)).fingerprint != first.fingerprint


def test_damaged_config_is_named(tmp_path: Path, tiny_sd_folder: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_folder, folder)
    (folder / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="unet") as err:
        probe_model(str(folder))
    assert str(folder / "unet" / "config.json") in str(err.value)


def test_single_file_goes_through_from_single_file(
    tmp_path: Path, tiny_sd_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import StableDiffusionPipeline

    path = _checkpoint(tmp_path / "m.safetensors", SD1_KEYS)
    calls: list[tuple[str, dict[str, object]]] = []

    def fake_from_single_file(cls: type, link: str, **kwargs: object) -> object:
        calls.append((link, kwargs))
        raise OSError("stop here")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", classmethod(fake_from_single_file))
    with pytest.raises(ModelLoadError, match="stop here") as err:
        load_model(str(path), config_source=str(tiny_sd_folder))
    assert str(path) in str(err.value)
    link, kwargs = calls[0]
    assert link == str(path)
    assert kwargs["config"] == str(tiny_sd_folder)
    assert kwargs["local_files_only"] is True
    assert kwargs["safety_checker"] is None
    # Without a config source, the message says how to work offline.
    with pytest.raises(ModelLoadError, match="model.config_source"):
        load_model(str(path))
    assert "local_files_only" not in calls[1][1]


def test_hub_id_that_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelLoadError, match="org-that/does-not-exist.*Hugging Face hub"):
        probe_model("org-that/does-not-exist")
    # Something that looks like a path is never sent to the hub.
    with pytest.raises(ModelLoadError, match="does not exist"):
        probe_model("./models/sd15")


def test_probing_does_not_import_torch(tiny_sd_folder: Path, tmp_path: Path) -> None:
    # The wizard probes as the user types; torch and diffusers take seconds to
    # import, so probing built-ins, folders and safetensors files must not.
    import subprocess
    import sys

    path = _checkpoint(tmp_path / "m.safetensors", SDXL_KEYS)
    code = (
        "import sys\n"
        "from loratui.models.probe import probe_model\n"
        f"for spec in ['builtin:tiny-sd2', {str(tiny_sd_folder)!r}, {str(path)!r}]:\n"
        "    probe_model(spec)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
