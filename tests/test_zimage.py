"""Z-Image end to end on ``builtin:tiny-zimage``: its objective, its files, who loads them.

Z-Image trains through the same loop as the other flow families; its own rules
(Qwen3 chat-template captions without padding, the timestep given as 1 − σ, the
prediction negated) are checked against diffusers' ZImagePipeline and its
training script's transformer call; the file loads in diffusers with every key
consumed and equal outputs, and ComfyUI's published key rules map every module
onto its fused-qkv model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.config import load_config
from loratui.events import Started
from loratui.project import ProjectPaths
from tests import flow_family
from tests.flow_family import OUTPUT, output_with_lora, train

torch.set_num_threads(1)

BASE = "builtin:tiny-zimage"


def make_project(root: Path, *settings: str) -> Path:
    return flow_family.make_project(root, BASE, *settings)


def pipeline():
    from diffusers import ZImagePipeline

    from loratui.models.builtin import ensure_builtin

    pipe = ZImagePipeline.from_pretrained(str(ensure_builtin("tiny-zimage")), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fixed_inputs(pipe) -> tuple[torch.Tensor, torch.Tensor, object]:
    from loratui.models.text import TextEmbedding

    g = torch.Generator().manual_seed(0)
    width = pipe.transformer.config.cap_feat_dim
    hidden = torch.randn(2, 12, width, generator=g)
    mask = torch.ones(2, 12)
    mask[1, 7:] = 0  # the second caption is shorter: its padding must not reach the transformer
    return torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.3, 0.8]), TextEmbedding(hidden, mask)


def transformer_output(pipe) -> torch.Tensor:
    from loratui.models import zimage

    latents, sigmas, cond = fixed_inputs(pipe)
    with torch.no_grad():
        return zimage.predict(pipe.transformer, latents, sigmas, cond, guidance=1.0, dtype=torch.float32)


# -- the family's own rules --------------------------------------------------------------------


def test_captions_are_encoded_as_the_pipeline_encodes_them() -> None:
    from loratui.models.loader import load_model
    from loratui.models.text import encode_flow_captions
    from loratui.models.zimage import caption_features

    model = load_model("builtin:tiny-zimage")
    pipe = pipeline()
    captions = ["zxc toy, red ball", ""]
    ours = encode_flow_captions(model, captions)
    theirs, _ = pipe.encode_prompt(list(captions), do_classifier_free_guidance=False,
                                   max_sequence_length=ours.hidden.shape[1])
    features = caption_features(ours, torch.float32)
    assert [f.shape[0] for f in features] == [t.shape[0] for t in theirs]
    assert features[0].shape[0] > features[1].shape[0]  # the padding is gone, each caption its own length
    for a, b in zip(features, theirs):
        assert torch.allclose(a, b, atol=1e-6)


def test_our_prediction_is_the_pipelines_transformer_call_negated() -> None:
    """ZImagePipeline (and diffusers' Z-Image training script) call the transformer with
    (1000 − t) / 1000 and negate what it returns; our velocity at σ = t / 1000 is exactly that."""
    from loratui.models import zimage

    pipe = pipeline()
    latents, _, cond = fixed_inputs(pipe)
    timesteps = torch.tensor([300.0, 800.0])
    features = zimage.caption_features(cond, torch.float32)
    with torch.no_grad():
        raw = pipe.transformer(list(latents.unsqueeze(2).unbind(0)), (1000 - timesteps) / 1000, features,
                               return_dict=False)[0]
        theirs = -torch.stack([r.float() for r in raw]).squeeze(2)
        ours = zimage.predict(pipe.transformer, latents, timesteps / 1000, cond, guidance=1.0, dtype=torch.float32)
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())


# -- training -----------------------------------------------------------------------------------


def test_a_few_steps_train_and_write_transformer_keys(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    events = train(project, 2)
    assert next(e for e in events if isinstance(e, Started)).family == "zimage"
    with safe_open(str(ProjectPaths(project).output / OUTPUT), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
                        for k in keys)
    assert {k.split(".")[1] for k in keys} == {"layers", "noise_refiner", "context_refiner"}
    assert meta["ss_base_model_version"] == "zimage" and meta["modelspec.prediction_type"] == "flow"
    assert meta["modelspec.architecture"] == "Z-Image/lora"


def test_training_lowers_a_fixed_noise_fixed_sigma_evaluation_loss(sample_project: Path) -> None:
    flow_family.check_training_lowers_the_evaluation_loss(sample_project, "tiny-zimage")


def test_resume_gives_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    flow_family.check_resume_is_bit_exact(tmp_path, BASE)


def test_loratui_train_on_the_sample_project_trains_samples_and_writes_the_lora(tmp_path: Path) -> None:
    flow_family.check_loratui_train_in_a_subprocess(tmp_path, BASE, "zimage")


def test_loratui_sample_uses_the_familys_pipeline_and_scale_0_is_the_base(tmp_path: Path) -> None:
    flow_family.check_sample_after_training(tmp_path, BASE, "sample.guidance=4")


# -- files: diffusers and ComfyUI ------------------------------------------------------------


def test_diffusers_loads_our_file_with_every_key_and_gives_our_output(tmp_path: Path) -> None:
    flow_family.check_diffusers_loads_every_key(tmp_path, BASE, "zimage", pipeline, transformer_output)


def comfy_zimage_key_map(config) -> dict[str, tuple[str, int, int]]:
    """ComfyUI's model_lora_keys_unet for Z-Image (its Lumina2 branch): ``transformer.`` + every diffusers
    weight name of ``z_image_to_diffusers`` (comfy/utils.py) -> (weight in ComfyUI's model, row offset, rows).
    Written from the published rules: q, k and v land at offsets 0, dim and 2·dim of the fused ``qkv``,
    ``to_out.0`` is ``out``, the rest keep their names; every block list gets an adaLN entry."""
    dim = config.dim
    out: dict[str, tuple[str, int, int]] = {}
    blocks = [f"layers.{i}" for i in range(config.n_layers)]
    blocks += [f"{name}.{i}" for name in ("context_refiner", "noise_refiner") for i in range(config.n_refiner_layers)]
    for block in blocks:
        for n, part in enumerate("qkv"):
            out[f"transformer.{block}.attention.to_{part}"] = (f"{block}.attention.qkv.weight", n * dim, dim)
        out[f"transformer.{block}.attention.to_out.0"] = (f"{block}.attention.out.weight", 0, -1)
        for sub in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0"):
            out[f"transformer.{block}.{sub}"] = (f"{block}.{sub}.weight", 0, -1)
    return out


def test_comfyui_key_rules_map_every_module_onto_its_fused_model(tmp_path: Path) -> None:
    from loratui.models.zimage_checkpoint import zimage_to_original

    project = make_project(tmp_path, "lora.preset=all")
    train(project, 1)
    pipe = pipeline()
    comfy_model = zimage_to_original(pipe.transformer.state_dict())  # ComfyUI keeps Z-Image in this layout
    key_map = comfy_zimage_key_map(pipe.transformer.config)
    with safe_open(str(ProjectPaths(project).output / OUTPUT), "pt") as f:
        modules = {k.rsplit(".lora_", 1)[0] for k in f.keys()}
        for module in modules:
            assert module in key_map, module
            weight, offset, rows = key_map[module]
            assert weight in comfy_model, weight
            up = f.get_tensor(f"{module}.lora_B.weight")
            target = comfy_model[weight]
            expected = target.shape[0] if rows < 0 else rows
            assert up.shape[0] == expected and offset + expected <= target.shape[0], module
    # Preset "all": every linear of every block; only the context refiner's adaLN entries go unused.
    assert len(modules) == len([k for k in key_map if not ("context_refiner" in k and "adaLN" in k)])


# -- names on the real architecture ----------------------------------------------------------

Z_IMAGE_TURBO = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                     n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
                     rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])


@pytest.mark.parametrize("preset, modules", [("attention", 34 * 4), ("attention+ff", 34 * 7), ("all", 34 * 7 + 32)])
def test_z_image_module_counts_and_musubi_tuners_share(preset: str, modules: int) -> None:
    """Z-Image's 30 layers and 2 + 2 refiner blocks have 4 attention and 3 feed-forward linears each; the
    modulated ones (layers, noise refiner) one adaLN linear more. musubi-tuner's default (every linear of the
    main layers, modulation and refiners excluded) is our attention+ff restricted to ``layers.``: 210."""
    from diffusers import ZImageTransformer2DModel

    from loratui.lora import inject_lora

    with torch.device("meta"):
        model = ZImageTransformer2DModel(**Z_IMAGE_TURBO)
    net = inject_lora(model, component="unet", family="zimage", preset=preset, rank=4, alpha=4.0)
    assert len(net) == modules
    if preset == "attention+ff":
        assert sum(1 for p in net.module_paths.values() if p.startswith("layers.")) == 30 * 7


# -- detection, single files, merge, bad input -------------------------------------------------


def test_the_folder_is_detected_and_described() -> None:
    from loratui.models.builtin import ensure_builtin
    from loratui.models.probe import probe_model

    info = probe_model(str(ensure_builtin("tiny-zimage")))
    assert (info.source_kind, info.family, info.prediction_type) == ("folder", "zimage", "flow")
    assert "Z-Image" in info.description and "Qwen3" in info.description


def test_a_comfyui_layout_file_is_detected_and_loads_with_its_config_source(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loratui.models.builtin import ensure_builtin
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model
    from loratui.models.zimage_checkpoint import zimage_to_original

    reference = load_model("builtin:tiny-zimage")
    state = reference.unet.state_dict()
    path = tmp_path / "z_image_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in zimage_to_original(state).items()}, str(path))
    assert probe_model(str(path)).family == "zimage"
    with pytest.raises(ModelLoadError, match=r"z_image_tiny.safetensors.*Qwen3.*model.config_source"):
        load_model(str(path))
    loaded = load_model(str(path), config_source=str(ensure_builtin("tiny-zimage")))
    assert (loaded.family, loaded.prediction_type) == ("zimage", "flow")
    again = loaded.unet.state_dict()
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)


def test_merged_folder_and_comfyui_file_hold_the_lora(tmp_path: Path) -> None:
    from loratui.engine.merge_export import export_merged
    from loratui.models.loader import load_model

    project = make_project(tmp_path, "lora.preset=all")
    train(project, 2)
    pipe = pipeline()
    ours = output_with_lora(ProjectPaths(project).output / OUTPUT, "zimage", pipe.transformer,
                            lambda: transformer_output(pipe))
    folder, single = export_merged(project, scale=1.0)
    merged = load_model(str(folder))
    pipe.transformer = merged.unet
    assert torch.allclose(transformer_output(pipe), ours, atol=1e-4)
    with safe_open(str(single), "pt") as f:
        assert any(k.endswith(".attention.qkv.weight") for k in f.keys())  # ComfyUI's own layout
    flow_family.check_single_file_is_the_folder(single, folder, merged)


def test_inspect_and_convert_know_the_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from safetensors.torch import load_file

    from loratui.cli import main

    project = make_project(tmp_path)
    train(project, 1)
    path = ProjectPaths(project).output / OUTPUT
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "zimage" and "q/k/v apart" in summary["layout"]
    assert main(["convert", str(path), str(tmp_path / "c.safetensors"), "--to", "kohya"]) == 0
    assert "zimage files are always written in this layout" in " ".join(capsys.readouterr().out.split())
    a, b = load_file(str(path)), load_file(str(tmp_path / "c.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_gets_a_message_not_a_traceback(tmp_path: Path) -> None:
    from loratui.config import ConfigError
    from loratui.engine.build import _check_flow_settings
    from loratui.models.builtin import ensure_builtin
    from loratui.models.loader import ModelLoadError, load_model

    # A Z-Image folder named as FLUX.
    with pytest.raises(ModelLoadError, match="model.family is set to flux but the model looks like zimage"):
        load_model("builtin:tiny-zimage", family="flux")
    # A folder without its text encoder, or without its VAE.
    for part in ("text_encoder", "vae"):
        folder = tmp_path / f"no-{part}"
        shutil.copytree(ensure_builtin("tiny-zimage"), folder)
        shutil.rmtree(folder / part)
        with pytest.raises(ModelLoadError, match=f"{folder} has no {part}\\b.*copy or download the whole diffusers folder"):
            load_model(str(folder))
    model = load_model("builtin:tiny-zimage")
    cfg = load_config(make_project(tmp_path))
    cfg.data.bucket_step = 24
    with pytest.raises(ConfigError, match="multiples of 16"):
        _check_flow_settings(cfg, model)
    cfg.data.bucket_step, cfg.lora.train_text_encoder = 64, True
    with pytest.raises(ConfigError, match="Qwen3.*lora.train_text_encoder = false"):
        _check_flow_settings(cfg, model)
