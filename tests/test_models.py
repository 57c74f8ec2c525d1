"""Built-in models, loading, family detection and text encoding."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from loratui.models import builtin
from loratui.models.loader import LoadedModel, ModelLoadError, load_model, probe_model

torch.set_num_threads(1)

EXPECTED = {
    "tiny-sd": ("sd1", "epsilon", 0.18215),
    "tiny-sd2": ("sd2", "v_prediction", 0.18215),
    "tiny-sdxl": ("sdxl", "epsilon", 0.13025),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("loratui-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORATUI_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def models(cache_dir: Path) -> dict[str, LoadedModel]:
    return {name: load_model(f"builtin:{name}") for name in EXPECTED}


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- built-ins ------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_building_twice_gives_identical_weights(name: str, tmp_path: Path) -> None:
    first = builtin.build_pipeline(name, tmp_path / "a")
    second = builtin.build_pipeline(name, tmp_path / "b")
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if name == "tiny-sdxl" else [])
    for comp in components:
        a, b = _state(getattr(first, comp)), _state(getattr(second, comp))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{comp}.{key} differs between builds"


def test_ensure_builtin_is_idempotent_and_cleans_interrupted_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORATUI_CACHE_DIR", str(tmp_path))
    target = builtin.builtin_dir("tiny-sd")
    target.parent.mkdir(parents=True)
    # What a killed build leaves: an old temporary sibling, and a target
    # folder without model_index.json (e.g. copied by hand, half done).
    stale = target.parent / f".{target.name}.tmp-dead"
    (stale / "unet").mkdir(parents=True)
    old = time.time() - 7200
    os.utime(stale, (old, old))
    (target / "unet").mkdir(parents=True)

    path = builtin.ensure_builtin("builtin:tiny-sd")
    assert path == target
    assert (path / "model_index.json").is_file()
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not stale.exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size < 6 * 1024 * 1024

    # A second call must not build again.
    monkeypatch.setattr(builtin, "build_pipeline", lambda *a, **k: pytest.fail("rebuilt an existing built-in"))
    assert builtin.ensure_builtin("tiny-sd") == path


def test_interrupted_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORATUI_CACHE_DIR", str(tmp_path))
    real_build = builtin.build_pipeline

    def build_then_fail_while_saving(name: str, work_dir: Path):
        pipe = real_build(name, work_dir)

        def save_pretrained(folder: str, **kwargs: object) -> None:
            (Path(folder) / "unet").mkdir(parents=True)
            (Path(folder) / "model_index.json").write_text("{}")
            raise KeyboardInterrupt

        pipe.save_pretrained = save_pretrained
        return pipe

    monkeypatch.setattr(builtin, "build_pipeline", build_then_fail_while_saving)
    with pytest.raises(KeyboardInterrupt):
        builtin.ensure_builtin("tiny-sd")
    parent = builtin.builtin_dir("tiny-sd").parent
    assert list(parent.iterdir()) == []


def test_unknown_builtin_names_the_choices(cache_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="builtin:tiny-sdxl"):
        probe_model("builtin:tiny-sd4")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_load_builtin(models: dict[str, LoadedModel], name: str) -> None:
    model = models[name]
    family, pred, scaling = EXPECTED[name]
    assert (model.source_kind, model.family, model.prediction_type) == ("builtin", family, pred)
    assert model.vae_scaling_factor == pytest.approx(scaling)
    assert model.resolution == 128
    assert type(model.noise_scheduler).__name__ == "DDPMScheduler"
    assert model.noise_scheduler.config.prediction_type == pred
    assert model.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert model.noise_scheduler.config.num_train_timesteps == 1000
    assert model.sample_scheduler.config.prediction_type == pred
    assert len(model.text_encoders) == len(model.tokenizers) == (2 if family == "sdxl" else 1)
    assert not any(p.requires_grad for p in model.unet.parameters())
    info = probe_model(f"builtin:{name}")
    assert (info.family, info.prediction_type, info.resolution) == (family, pred, 128)
    assert probe_model(str(builtin.builtin_dir(name))).family == family
    # Loading the same thing again yields the same cache identity.
    assert load_model(f"builtin:{name}").fingerprint == model.fingerprint


def test_module_names_match_the_real_models(models: dict[str, LoadedModel]) -> None:
    sd_names = dict(models["tiny-sd"].unet.named_modules())
    for name in [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
        "down_blocks.0.attentions.0.proj_in",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "down_blocks.1.resnets.0.conv_shortcut",
        "down_blocks.3.resnets.1.time_emb_proj",
        "down_blocks.0.downsamplers.0.conv",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0",
        "up_blocks.0.upsamplers.0.conv",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
    ]:
        assert name in sd_names, name
    assert "down_blocks.3.attentions.0" not in sd_names
    # SD1 projects with 1x1 convs, SD2 and SDXL with Linear layers.
    assert isinstance(sd_names["down_blocks.0.attentions.0.proj_in"], torch.nn.Conv2d)
    sd2_proj = dict(models["tiny-sd2"].unet.named_modules())["down_blocks.0.attentions.0.proj_in"]
    assert isinstance(sd2_proj, torch.nn.Linear)
    xl_names = dict(models["tiny-sdxl"].unet.named_modules())
    assert "down_blocks.0.attentions.0" not in xl_names
    assert "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q" in xl_names
    assert "mid_block.attentions.0.transformer_blocks.1.attn2.to_k" in xl_names
    assert len(models["tiny-sdxl"].unet.down_blocks) == 3


def test_vae_downsamples_by_eight(models: dict[str, LoadedModel]) -> None:
    vae = models["tiny-sd"].vae
    with torch.no_grad():
        latents = vae.encode(torch.randn(1, 3, 64, 96)).latent_dist.sample()
        assert latents.shape == (1, 4, 8, 12)
        assert vae.decode(latents).sample.shape == (1, 3, 64, 96)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl"])
def test_make_pipeline_generates_an_image(models: dict[str, LoadedModel], name: str) -> None:
    pipe = models[name].make_pipeline()
    generator = torch.Generator().manual_seed(0)
    image = pipe("a red cube", num_inference_steps=2, height=64, width=64, generator=generator).images[0]
    assert image.size == (64, 64)


def test_family_and_prediction_overrides(cache_dir: Path) -> None:
    model = load_model("builtin:tiny-sd", prediction_type="v_prediction")
    assert model.prediction_type == "v_prediction"
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    assert model.sample_scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ModelLoadError, match="prediction_type 'x0'"):
        load_model("builtin:tiny-sd", prediction_type="x0")
    with pytest.raises(ModelLoadError, match="model.family is set to sdxl"):
        load_model("builtin:tiny-sd", family="sdxl")
