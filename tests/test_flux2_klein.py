"""FLUX.2 klein on its tiny built-in: conditioning and latents as Flux2KleinPipeline makes them, training,
files and who loads them.

The built-in has FLUX.2 klein's parts as diffusers defines them (Flux2Transformer2DModel, Qwen3 with its
chat template, AutoencoderKLFlux2 with batch-norm latent statistics). The tests compare our encoding,
latents and transformer call with the pipeline's own helpers, train a few steps, and check that
diffusers' FLUX.2 loader and ComfyUI's key rules take every module of both file layouts.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.config import load_config
from loratui.project import ProjectPaths
from tests import flow_family
from tests.flow_family import kohya_modules, make_project, output_with_lora, train

torch.set_num_threads(1)

BASE = "builtin:tiny-flux2-klein"

LENGTH = 64  # the built-in tokenizer's length


def klein_pipeline():
    from diffusers import Flux2KleinPipeline

    from loratui.models.builtin import ensure_builtin

    pipe = Flux2KleinPipeline.from_pretrained(str(ensure_builtin("tiny-flux2-klein")), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def loaded():
    from loratui.models.loader import load_model

    return load_model("builtin:tiny-flux2-klein")


def prediction(transformer, model) -> torch.Tensor:
    from loratui.models import flux2

    latents = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = flux2.encode(model, ["zxc toy"], LENGTH)
        return flux2.predict(transformer, latents, torch.tensor([0.6]), cond, guidance=1.0, dtype=torch.float32)


# -- the objective -------------------------------------------------------------------------------


def test_text_latents_and_transformer_call_are_the_pipelines() -> None:
    from loratui.models import flux2

    pipe = klein_pipeline()
    model = loaded()
    ours = flux2.encode(model, ["zxc toy"], LENGTH)
    embeds, text_ids = pipe.encode_prompt("zxc toy", device=torch.device("cpu"), max_sequence_length=LENGTH)
    assert ours.pooled is None and ours.hidden.shape == (1, LENGTH, 3 * 16)
    assert torch.allclose(ours.hidden, embeds, atol=1e-6)
    assert torch.equal(flux2.text_ids(LENGTH, torch.device("cpu")), text_ids[0])

    # Latents: our normalised VAE-layout latents are the pipeline's patchified, batch-normed ones.
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean, _ = flux2.encode_latents(model.vae, image)
        theirs = pipe._encode_vae_image(image, generator=None)
    assert theirs.shape == (1, 128, 4, 4)
    assert torch.allclose(flux2.patchify(mean), theirs, atol=1e-5)
    assert not torch.allclose(flux2.patchify(mean), pipe._patchify_latents(model.vae.encode(image).latent_dist.mean),
                              atol=1e-2)  # the batch-norm statistics matter

    latents = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    packed = pipe._pack_latents(pipe._patchify_latents(latents))
    assert torch.equal(flux2.pack(latents), packed)
    ids = pipe._prepare_latent_ids(pipe._patchify_latents(latents))
    assert torch.equal(flux2.image_ids(8, 8, torch.device("cpu")), ids[0])
    t = torch.tensor([600.0])
    with torch.no_grad():
        out = pipe.transformer(hidden_states=packed, timestep=t / 1000, guidance=None, encoder_hidden_states=embeds,
                               txt_ids=text_ids, img_ids=ids, return_dict=False)[0]
        ours_pred = flux2.predict(pipe.transformer, latents, t / 1000, ours, guidance=1.0, dtype=torch.float32)
    back = pipe._unpatchify_latents(pipe._unpack_latents_with_ids(out, ids))
    assert torch.allclose(ours_pred, back, atol=1e-5)
    # The resolution shift counts the transformer's tokens, as musubi-tuner's flux2_shift does (h·w of the
    # patchified latent); our VAE-layout latents give that count.
    from loratui.engine.flow import image_tokens, resolve_sampling

    assert image_tokens(latents) == packed.shape[1] == 16
    assert resolve_sampling("auto", "flux2_klein") == "flux_shift"


# -- training ------------------------------------------------------------------------------------


def test_a_few_steps_write_the_flux2_file(tmp_path: Path) -> None:
    project = make_project(tmp_path, BASE, "lora.preset=all")
    events = train(project, 2)
    assert next(e for e in events if type(e).__name__ == "Started").family == "flux2_klein"
    losses = [e.loss for e in events if type(e).__name__ == "StepDone"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert meta["ss_base_model_version"] == "flux2" and meta["modelspec.prediction_type"] == "flow"
    modules = kohya_modules(keys)
    # 8 BFL modules per double block (q/k/v fused), linear1 and linear2 per single block.
    assert len(modules) == 2 * 8 + 2 * 2
    assert "lora_unet_single_blocks_1_linear1" in modules and "lora_unet_double_blocks_0_txt_mlp_2" in modules


def test_training_lowers_a_fixed_noise_fixed_sigma_evaluation_loss(sample_project: Path) -> None:
    """At sample_project's 1e-3 the tiny FLUX.2 moves too slowly to tell in 40 steps (0.2% lower, measured;
    a 4x wider tiny transformer gave 2%, so width is not the whole reason, which was not pinned down), so it
    trains at 1e-2 here (10% lower); the tiny FLUX.1 and Chroma fall 5-17% at 1e-3."""
    flow_family.check_training_lowers_the_evaluation_loss(sample_project, "tiny-flux2-klein",
                                                          "train.learning_rate=0.01")


def test_resume_gives_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    flow_family.check_resume_is_bit_exact(tmp_path, BASE)


def test_cli_train_samples_and_writes_a_lora(tmp_path: Path) -> None:
    flow_family.check_cli_train_then_sample(tmp_path, BASE)


def test_settings_flux2_cannot_take_are_refused(tmp_path: Path) -> None:
    from loratui.config import ConfigError
    from loratui.engine.build import _check_flow_settings

    model = loaded()
    cfg = load_config(make_project(tmp_path, BASE, "lora.train_text_encoder=true"))
    with pytest.raises(ConfigError, match="Qwen3 alone.*train_text_encoder = false"):
        _check_flow_settings(cfg, model)
    cfg.lora.train_text_encoder, cfg.train.guidance_scale = False, 3.5
    with pytest.raises(ConfigError, match="guidance_scale = 3.5.*klein base model"):
        _check_flow_settings(cfg, model)
    cfg.train.guidance_scale, cfg.data.resolution = 1.0, 120
    with pytest.raises(ConfigError, match="multiples of 16"):
        _check_flow_settings(cfg, model)


# -- files: diffusers ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_diffusers_loads_our_file_and_gives_our_transformer_output(tmp_path: Path, fmt: str) -> None:
    """Both layouts: diffusers' FLUX.2 converter splits sd-scripts'/musubi-tuner's fused qkv at any width."""
    project = make_project(tmp_path, BASE, f"save.format={fmt}", "lora.preset=all",
                           "lora.alpha=4", "train.learning_rate=0.01")
    train(project, 3)
    path = ProjectPaths(project).output / "zxc_toy.safetensors"
    pipe = klein_pipeline()
    model = loaded()
    base = prediction(pipe.transformer, model)
    ours = output_with_lora(path, "flux2_klein", pipe.transformer, lambda: prediction(pipe.transformer, model))
    converted = pipe.lora_state_dict(str(path))
    pipe.load_lora_weights(str(path), adapter_name="x")
    theirs = prediction(pipe.transformer, model)
    wrapped = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and "x" in m.lora_A]
    assert len(wrapped) == 2 * 12 + 2 * 2 == len(converted) // 2
    assert not torch.allclose(ours, base, atol=1e-5)
    assert torch.allclose(theirs, ours, atol=1e-5), float((theirs - ours).abs().max())


# -- files: ComfyUI ------------------------------------------------------------------------------


def comfy_flux2_weights(config) -> dict[str, int]:
    """Weight name -> rows of ComfyUI's FLUX.2 model (comfy/ldm/flux with FLUX.2's settings): fused q/k/v,
    a SwiGLU input twice the MLP width, the single blocks' linear1 = q, k, v and the SwiGLU input."""
    hidden = config.num_attention_heads * config.attention_head_dim
    mlp = int(hidden * config.mlp_ratio)
    rows: dict[str, int] = {}
    for i in range(config.num_layers):
        p = f"double_blocks.{i}"
        rows.update({f"{p}.img_attn.qkv": 3 * hidden, f"{p}.txt_attn.qkv": 3 * hidden,
                     f"{p}.img_attn.proj": hidden, f"{p}.txt_attn.proj": hidden,
                     f"{p}.img_mlp.0": 2 * mlp, f"{p}.img_mlp.2": hidden,
                     f"{p}.txt_mlp.0": 2 * mlp, f"{p}.txt_mlp.2": hidden})
    for i in range(config.num_single_layers):
        rows.update({f"single_blocks.{i}.linear1": 3 * hidden + 2 * mlp, f"single_blocks.{i}.linear2": hidden})
    return rows


# ComfyUI's flux_to_diffusers (its FLUX.2 class is a subclass of its Flux class): the FLUX.2 names it maps.
_DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
           "attn.to_out.0", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
           "ff_context.linear_out")
_SINGLE = ("attn.to_qkv_mlp_proj", "attn.to_out")


def test_comfyui_maps_every_module_of_both_layouts(tmp_path: Path) -> None:
    config, peft_modules = flow_family.comfy_modules_of_both_layouts(tmp_path, BASE, "flux2_klein", klein_pipeline,
                                                                     comfy_flux2_weights)
    known = {f"transformer.transformer_blocks.{i}.{k}" for i in range(config.num_layers) for k in _DOUBLE}
    known |= {f"transformer.single_transformer_blocks.{i}.{k}" for i in range(config.num_single_layers)
              for k in _SINGLE}
    assert peft_modules == known


# -- names on the real architecture --------------------------------------------------------------

# FLUX.2-klein-4B's transformer as third-party implementations list it (5 double, 20 single blocks,
# 24 heads of 128, Qwen3-4B's 2560 width x 3 layers); its config.json could not be read here.
KLEIN_4B = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=7680, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
                guidance_embeds=False)


@pytest.mark.parametrize("preset, layers, fused", [("attention", 5 * 8 + 20 * 2, 5 * 4 + 20 * 2),
                                                   ("all", 5 * 12 + 20 * 2, 5 * 8 + 20 * 2)])
def test_klein_4b_module_counts(preset: str, layers: int, fused: int) -> None:
    """musubi-tuner's lora_flux_2 wraps every block linear: 8 BFL modules per double block, 2 per single."""
    from diffusers import Flux2Transformer2DModel

    from loratui.lora import inject_lora
    from loratui.lora.transformer_names import flux_bfl_module

    with torch.device("meta"):
        model = Flux2Transformer2DModel(**KLEIN_4B)
    net = inject_lora(model, component="unet", family="flux2_klein", preset=preset, rank=4, alpha=4.0)
    assert len(net) == layers
    assert len({flux_bfl_module(p, "flux2_klein")[0] for p in net.module_paths.values()}) == fused


# -- detection, single files, merge ----------------------------------------------------------------


def test_a_klein_file_in_comfyuis_layout_loads_with_its_config_source(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loratui.models.builtin import ensure_builtin
    from loratui.models.flux2_checkpoint import flux2_to_original
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model

    reference = loaded()
    state = reference.unet.state_dict()
    original = flux2_to_original(state)
    assert "single_stream_modulation.lin.weight" in original and "double_blocks.0.img_attn.qkv.weight" in original
    path = tmp_path / "flux-2-klein-tiny.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in original.items()}, str(path))
    assert probe_model(str(path)).family == "flux2_klein"
    with pytest.raises(ModelLoadError, match=r"flux-2-klein-tiny.safetensors.*Qwen3.*config_source"):
        load_model(str(path))
    with pytest.raises(ModelLoadError, match="flux-2-klein-tiny.safetensors.*ChromaTransformer2DModel"):
        load_model(str(path), config_source=str(ensure_builtin("tiny-chroma")))
    again = load_model(str(path), config_source=str(ensure_builtin("tiny-flux2-klein")))
    weights = again.unet.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)


def test_folder_detection_and_a_family_named_wrongly() -> None:
    from loratui.models.builtin import ensure_builtin
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model

    info = probe_model(str(ensure_builtin("tiny-flux2-klein")))
    assert (info.source_kind, info.family, info.prediction_type) == ("folder", "flux2_klein", "flow")
    assert "FLUX.2 klein" in info.description and "Qwen3" in info.description
    with pytest.raises(ModelLoadError, match="model.family is set to flux but the model looks like flux2_klein"):
        load_model(str(ensure_builtin("tiny-flux2-klein")), family="flux")


def test_merged_folder_and_file_hold_the_lora(tmp_path: Path) -> None:
    flow_family.check_merged_folder_and_file(tmp_path, BASE, "flux2_klein", loaded, prediction)


def test_inspect_and_convert(tmp_path: Path, capsys) -> None:
    flow_family.check_inspect_and_convert(tmp_path, capsys, BASE, {"model family": "FLUX.2 klein"})


def test_flux2_dev_and_chroma_radiance_are_named_and_refused(tmp_path: Path) -> None:
    """Files of related models that loratui does not train say what they are instead of failing later."""
    import json

    from safetensors.torch import save_file

    from loratui.models.builtin import ensure_builtin
    from loratui.models.probe import ModelLoadError, probe_model

    dev = tmp_path / "flux2-dev.safetensors"
    save_file({"single_stream_modulation.lin.weight": torch.zeros(4, 2), "txt_in.weight": torch.zeros(2, 15360)},
              str(dev))
    with pytest.raises(ModelLoadError, match=r"flux2-dev.safetensors.*FLUX.2 \[dev\].*FLUX.2-klein-base-4B"):
        probe_model(str(dev))
    radiance = tmp_path / "chroma-radiance.safetensors"
    save_file({"distilled_guidance_layer.in_proj.weight": torch.zeros(2, 2),
               "nerf_blocks.0.param_generator.weight": torch.zeros(2, 2)}, str(radiance))
    with pytest.raises(ModelLoadError, match="chroma-radiance.safetensors.*Chroma Radiance.*Chroma1-HD"):
        probe_model(str(radiance))
    folder = tmp_path / "dev-folder"
    shutil.copytree(ensure_builtin("tiny-flux2-klein"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "Flux2Pipeline"}))
    with pytest.raises(ModelLoadError, match="dev-folder.*FLUX.2 \\[dev\\]"):
        probe_model(str(folder))


def test_review_says_what_klein_holds_and_what_fits(tmp_path: Path) -> None:
    from loratui.config import ProjectConfig
    from loratui.memory.project_plan import review_lines
    from loratui.models.family_defaults import family_start

    cfg = ProjectConfig()
    cfg.model.base, cfg.data.resolution = "black-forest-labs/FLUX.2-klein-base-4B", 1024
    for path, value in family_start("flux2_klein").items():
        section, name = path.split(".")
        setattr(getattr(cfg, section), name, value)
    assert (cfg.lora.preset, cfg.train.precision, cfg.sample.guidance) == ("all", "bf16", 4.0)
    text = "\n".join(review_lines(tmp_path, cfg))
    assert "FLUX.2-klein-base-4B at 1024 px" in text and "24 GB: as set" in text  # 4 B fits a 24 GB card


@pytest.mark.parametrize("name, part, message", [
    ("tiny-flux2-klein", "text_encoder", r"has no text_encoder \(the Qwen3 text encoder\), which a flux2_klein"),
    ("tiny-chroma", "text_encoder", r"has no text_encoder \(the T5 text encoder\), which a chroma model needs"),
    ("tiny-flux2-klein", "vae", "has no vae, which a flux2_klein model needs"),
])
def test_a_folder_without_its_text_encoder_or_vae_says_so(tmp_path: Path, name: str, part: str,
                                                          message: str) -> None:
    import json

    from loratui.models.builtin import ensure_builtin
    from loratui.models.loader import ModelLoadError, load_model

    folder = tmp_path / "incomplete"
    shutil.copytree(ensure_builtin(name), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index[part] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(folder / part)
    with pytest.raises(ModelLoadError, match=f"incomplete.*{message}"):
        load_model(str(folder))


def test_a_step_distilled_klein_is_described_as_such(tmp_path: Path) -> None:
    import json

    from loratui.models.builtin import ensure_builtin
    from loratui.models.probe import probe_model

    folder = tmp_path / "klein-distilled"
    shutil.copytree(ensure_builtin("tiny-flux2-klein"), folder)
    assert "step-distilled" not in probe_model(str(folder)).description
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "is_distilled": True}))
    assert "step-distilled: LoRAs are usually trained on FLUX.2-klein-base" in probe_model(str(folder)).description
