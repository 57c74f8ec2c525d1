"""Chroma on its tiny built-in: the objective against diffusers' pipeline, training, files and who loads them.

Chroma is FLUX.1-schnell's blocks conditioned on T5 alone, with the T5
padding masked in the transformer (all but one padding token) and a timestep
approximator instead of per-block modulation. The tests compare our
transformer call with the one ``ChromaPipeline`` makes, train a few steps,
and check that diffusers' Chroma loader and ComfyUI's published key rules take
every module of our files.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.config import load_config
from loratui.project import ProjectPaths
from tests import flow_family
from tests.flow_family import kohya_modules, make_project, output_with_lora, train

torch.set_num_threads(1)

BASE = "builtin:tiny-chroma"


def chroma_pipeline():
    from diffusers import ChromaPipeline

    from loratui.models.builtin import ensure_builtin

    pipe = ChromaPipeline.from_pretrained(str(ensure_builtin("tiny-chroma")), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def loaded():
    from loratui.models.loader import load_model

    return load_model("builtin:tiny-chroma")


def prediction(transformer, captions_model=None) -> torch.Tensor:
    """Our call of the transformer on fixed latents and a real caption's embedding."""
    from loratui.models import chroma

    model = captions_model or loaded()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 8, 8, generator=g)
    with torch.no_grad():
        cond = chroma.encode(model, ["zxc toy"], 32)
        return chroma.predict(transformer, latents, torch.tensor([0.6]), cond, guidance=1.0, dtype=torch.float32)


# -- the objective -------------------------------------------------------------------------------


def test_our_prediction_is_the_pipelines_transformer_call() -> None:
    """Same T5 embedding, same mask (one padding token kept), packing, ids and timestep as ChromaPipeline;
    the only difference is the mask's type, boolean here (diffusers' float mask is added to the scores)."""
    from loratui.models import chroma

    pipe = chroma_pipeline()
    model = loaded()
    model.unet = pipe.transformer
    ours = chroma.encode(model, ["zxc toy"], 32)
    embeds, mask = pipe._get_t5_prompt_embeds(["zxc toy"], max_sequence_length=32, device=torch.device("cpu"))
    assert torch.allclose(ours.hidden, embeds, atol=1e-6)
    assert torch.equal(ours.pooled, mask)
    assert int(mask.sum()) == len(pipe.tokenizer("zxc toy").input_ids) + 1  # the real tokens and one pad

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 8, 8, generator=g)
    packed = pipe._pack_latents(latents, 1, 16, 8, 8)
    ids = pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    t = torch.tensor([600.0])
    full = pipe._prepare_attention_mask(1, packed.shape[1], torch.float32, mask.bool())
    with torch.no_grad():
        theirs = pipe.transformer(hidden_states=packed, timestep=t / 1000, encoder_hidden_states=embeds,
                                  txt_ids=torch.zeros(32, 3), img_ids=ids, attention_mask=full,
                                  return_dict=False)[0]
        float_mask = pipe._prepare_attention_mask(1, packed.shape[1], torch.float32, mask)
        unmasked = pipe.transformer(hidden_states=packed, timestep=t / 1000, encoder_hidden_states=embeds,
                                    txt_ids=torch.zeros(32, 3), img_ids=ids, attention_mask=float_mask,
                                    return_dict=False)[0]
        ours_pred = chroma.predict(pipe.transformer, latents, t / 1000, ours, guidance=1.0, dtype=torch.float32)
    assert torch.allclose(ours_pred, pipe._unpack_latents(theirs, 64, 64, 8), atol=1e-6)
    # The float mask lets the padding in: a different prediction.
    assert not torch.allclose(theirs, unmasked, atol=1e-4)


def test_gradient_checkpointing_keeps_the_text_mask() -> None:
    """diffusers drops the mask of Chroma's single blocks when it checkpoints them; ours puts it back, so the
    loss and its gradients are the same with and without checkpointing."""
    from loratui.engine.flow import flow_matching_loss
    from loratui.lora import inject_lora
    from loratui.models import chroma

    model = loaded()
    net = inject_lora(model.unet, component="unet", family="chroma", preset="all", rank=2, alpha=2.0,
                      generator=torch.Generator().manual_seed(0))
    for module in net.values():
        torch.nn.init.normal_(module.lora_up.weight, std=0.1)
    with torch.no_grad():
        cond = chroma.encode(model, ["zxc toy", "a longer caption of the toy"], 32)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        for p in net.parameters():
            p.grad = None
        loss = flow_matching_loss(chroma, model.unet, latents, cond, torch.Generator().manual_seed(2),
                                  sampling="uniform", sigmoid_scale=1.0, shift=3.0, scheduler_config={},
                                  guidance=1.0, sigmas=torch.tensor([0.3, 0.8]))
        loss.backward()
        return float(loss), [p.grad.clone() for p in net.parameters()]

    plain, plain_grads = loss_and_grads()
    model.unet.enable_gradient_checkpointing()
    checkpointed, grads = loss_and_grads()
    assert checkpointed == pytest.approx(plain, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, plain_grads))


# -- training ------------------------------------------------------------------------------------


def test_a_few_steps_write_sd_scripts_chroma_file(tmp_path: Path) -> None:
    from loratui.models import chroma  # noqa: F401 - the family module must import on its own

    project = make_project(tmp_path, BASE, "lora.preset=all")
    events = train(project, 2)
    assert next(e for e in events if type(e).__name__ == "Started").family == "chroma"
    losses = [e.loss for e in events if type(e).__name__ == "StepDone"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert meta["ss_base_model_version"] == "chroma" and meta["modelspec.prediction_type"] == "flow"
    assert all(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys)
    modules = kohya_modules(keys)
    # Chroma's blocks: 8 fused modules per double block, 2 per single block, no modulation.
    assert len(modules) == 2 * 8 + 2 * 2
    assert not any("_mod_" in k or "modulation" in k for k in keys)


def test_training_lowers_a_fixed_noise_fixed_sigma_evaluation_loss(sample_project: Path) -> None:
    flow_family.check_training_lowers_the_evaluation_loss(sample_project, "tiny-chroma")


def test_resume_gives_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    flow_family.check_resume_is_bit_exact(tmp_path, BASE)


def test_cli_train_samples_and_writes_a_lora(tmp_path: Path) -> None:
    """``loratui train --headless`` on a copy of sample_project: a sample at the end, then the file; a sample
    with the LoRA at scale 0 is the base model's."""
    flow_family.check_cli_train_then_sample(tmp_path, BASE)


def test_settings_chroma_cannot_take_are_refused(tmp_path: Path) -> None:
    from loratui.config import ConfigError
    from loratui.engine.build import _check_flow_settings

    model = loaded()
    cfg = load_config(make_project(tmp_path, BASE, "lora.train_text_encoder=true"))
    with pytest.raises(ConfigError, match="T5 alone.*train_text_encoder = false"):
        _check_flow_settings(cfg, model)
    cfg.lora.train_text_encoder, cfg.train.guidance_scale = False, 3.5
    with pytest.raises(ConfigError, match="guidance_scale = 3.5.*no guidance embedding"):
        _check_flow_settings(cfg, model)
    cfg.train.guidance_scale, cfg.data.bucket_step = 1.0, 24
    with pytest.raises(ConfigError, match="multiples of 16"):
        _check_flow_settings(cfg, model)


# -- files: diffusers ----------------------------------------------------------------------------


def test_diffusers_loads_our_file_and_gives_our_transformer_output(tmp_path: Path) -> None:
    project = make_project(tmp_path, BASE, "save.format=diffusers", "lora.preset=all",
                           "lora.alpha=4", "train.learning_rate=0.01")
    train(project, 3)
    path = ProjectPaths(project).output / "zxc_toy.safetensors"
    pipe = chroma_pipeline()
    model = loaded()
    base = prediction(pipe.transformer, model)
    ours = output_with_lora(path, "chroma", pipe.transformer, lambda: prediction(pipe.transformer, model))
    pipe.load_lora_weights(str(path), adapter_name="x")
    theirs = prediction(pipe.transformer, model)
    wrapped = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and "x" in m.lora_A]
    with safe_open(str(path), "pt") as f:
        file_modules = {k.rsplit(".lora_", 1)[0] for k in f.keys()}
    assert len(wrapped) == len(file_modules) == 2 * 12 + 2 * 5
    assert not torch.allclose(ours, base, atol=1e-5)
    assert torch.allclose(theirs, ours, atol=1e-5), float((theirs - ours).abs().max())


CHROMA1_HD = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56),
                  approximator_num_channels=64, approximator_hidden_dim=5120, approximator_layers=5)


def test_diffusers_converts_our_kohya_file_at_chroma1_width(tmp_path: Path) -> None:
    """ChromaPipeline reads sd-scripts' layout through diffusers' FLUX converter, which hard-codes FLUX.1's
    3072 widths: run on a file with Chroma1-HD's real shapes, every key is consumed and each layer gets our
    exact delta."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    from loratui.lora import inject_lora, save_kohya

    with torch.device("meta"):
        model = ChromaTransformer2DModel(**{**CHROMA1_HD, "num_layers": 1, "num_single_layers": 1})
    net = inject_lora(model, component="unet", family="chroma", preset="all", rank=2, alpha=1.0)
    g = torch.Generator().manual_seed(0)
    for module in net.values():
        module.lora_down.weight = torch.nn.Parameter(torch.randn(module.lora_down.weight.shape, generator=g))
        module.lora_up.weight = torch.nn.Parameter(torch.randn(module.lora_up.weight.shape, generator=g))
        module.alpha = torch.tensor(1.0)
    path = tmp_path / "chroma.safetensors"
    save_kohya(path, {"unet": net}, {"ss_base_model_version": "chroma"}, dtype=torch.float32)
    converted = ChromaPipeline.lora_state_dict(str(path))
    assert len(converted) == 2 * len(net) == 2 * (12 + 5)
    for name, module in net.items():
        key = "transformer." + net.module_paths[name]
        a, b = converted[f"{key}.lora_A.weight"], converted[f"{key}.lora_B.weight"]
        expected = module.lora_up.weight @ module.lora_down.weight * 0.5
        assert torch.allclose(b.float() @ a.float(), expected, atol=1e-4), name


# -- files: ComfyUI ------------------------------------------------------------------------------


def comfy_chroma_weights(config) -> dict[str, int]:
    """Weight name -> rows of ComfyUI's Chroma (comfy/ldm/chroma): FLUX's double and single blocks without
    their modulation (``img_mod``/``txt_mod``/``modulation``), fused q/k/v as in ``flux_to_diffusers``."""
    hidden = config.num_attention_heads * config.attention_head_dim
    rows: dict[str, int] = {}
    for i in range(config.num_layers):
        p = f"double_blocks.{i}"
        rows.update({f"{p}.img_attn.qkv": 3 * hidden, f"{p}.txt_attn.qkv": 3 * hidden,
                     f"{p}.img_attn.proj": hidden, f"{p}.txt_attn.proj": hidden,
                     f"{p}.img_mlp.0": 4 * hidden, f"{p}.img_mlp.2": hidden,
                     f"{p}.txt_mlp.0": 4 * hidden, f"{p}.txt_mlp.2": hidden})
    for i in range(config.num_single_layers):
        rows.update({f"single_blocks.{i}.linear1": 7 * hidden, f"single_blocks.{i}.linear2": hidden})
    return rows


# ComfyUI's flux_to_diffusers (its Chroma class is a subclass of its Flux class, so the rule applies):
# the diffusers layers it maps inside each block.
_FLUX_TO_DIFFUSERS_DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                             "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out", "norm1.linear",
                             "norm1_context.linear", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                             "ff_context.net.2")
_FLUX_TO_DIFFUSERS_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "norm.linear", "proj_out")


def test_comfyui_maps_every_module_of_both_layouts(tmp_path: Path) -> None:
    config, peft_modules = flow_family.comfy_modules_of_both_layouts(tmp_path, BASE, "chroma", chroma_pipeline,
                                                                     comfy_chroma_weights)
    known = {f"transformer.transformer_blocks.{i}.{k}" for i in range(config.num_layers)
             for k in _FLUX_TO_DIFFUSERS_DOUBLE}
    known |= {f"transformer.single_transformer_blocks.{i}.{k}" for i in range(config.num_single_layers)
              for k in _FLUX_TO_DIFFUSERS_SINGLE}
    assert len(peft_modules) == 2 * 12 + 2 * 5
    assert not sorted(peft_modules - known)


# -- names on the real architecture --------------------------------------------------------------


@pytest.mark.parametrize("preset, layers, fused", [("attention", 19 * 8 + 38 * 4, 19 * 4 + 38 * 2),
                                                   ("all", 19 * 12 + 38 * 5, 19 * 8 + 38 * 2)])
def test_chroma1_hd_module_counts(preset: str, layers: int, fused: int) -> None:
    """Chroma1-HD (19 double, 38 single blocks, built on the meta device): sd-scripts' lora_flux for
    --model_type chroma wraps every block linear, 8 per double and 2 per single block in BFL's fused
    layout (no img_mod/txt_mod/modulation: Chroma has none)."""
    from diffusers import ChromaTransformer2DModel

    from loratui.lora import inject_lora
    from loratui.lora.transformer_names import flux_bfl_module

    with torch.device("meta"):
        model = ChromaTransformer2DModel(**CHROMA1_HD)
    net = inject_lora(model, component="unet", family="chroma", preset=preset, rank=4, alpha=4.0)
    assert len(net) == layers
    assert len({flux_bfl_module(p)[0] for p in net.module_paths.values()}) == fused


# -- detection and single files --------------------------------------------------------------------


def test_a_chroma_file_in_comfyuis_layout_loads_with_its_config_source(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loratui.models.builtin import ensure_builtin
    from loratui.models.chroma_checkpoint import chroma_to_original
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model

    reference = loaded()
    state = reference.unet.state_dict()
    original = chroma_to_original(state)
    assert "distilled_guidance_layer.layers.0.in_layer.weight" in original
    assert "double_blocks.0.img_attn.qkv.weight" in original and "final_layer.linear.weight" in original
    path = tmp_path / "chroma-tiny.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in original.items()}, str(path))
    info = probe_model(str(path))
    assert (info.family, info.prediction_type) == ("chroma", "flow")
    with pytest.raises(ModelLoadError, match=r"chroma-tiny.safetensors.*text encoder \(T5\).*config_source"):
        load_model(str(path))
    with pytest.raises(ModelLoadError, match="chroma-tiny.safetensors.*FluxTransformer2DModel.*config_source"):
        load_model(str(path), config_source=str(ensure_builtin("tiny-flux")))
    again = load_model(str(path), config_source=str(ensure_builtin("tiny-chroma")))
    assert again.family == "chroma"
    weights = again.unet.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)


def test_folder_detection_and_a_family_named_wrongly() -> None:
    from loratui.models.builtin import ensure_builtin
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model

    info = probe_model(str(ensure_builtin("tiny-chroma")))
    assert (info.source_kind, info.family, info.prediction_type) == ("folder", "chroma", "flow")
    assert "Chroma" in info.description and "T5 only" in info.description
    with pytest.raises(ModelLoadError, match="model.family is set to flux but the model looks like chroma"):
        load_model(str(ensure_builtin("tiny-chroma")), family="flux")


def test_merged_folder_and_file_hold_the_lora(tmp_path: Path) -> None:
    flow_family.check_merged_folder_and_file(tmp_path, BASE, "chroma", loaded, prediction)


def test_inspect_and_convert(tmp_path: Path, capsys) -> None:
    flow_family.check_inspect_and_convert(tmp_path, capsys, BASE, {"model family": "Chroma",
                                                                   "modules": "20 (transformer 20"})


def test_review_says_what_chroma1_hd_holds_and_what_fits(tmp_path: Path) -> None:
    from loratui.config import ProjectConfig
    from loratui.memory.project_plan import review_lines
    from loratui.models.family_defaults import family_start

    cfg = ProjectConfig()
    cfg.model.base, cfg.data.resolution = "lodestones/Chroma1-HD", 1024
    for path, value in family_start("chroma").items():
        section, name = path.split(".")
        setattr(getattr(cfg, section), name, value)
    bf16 = "\n".join(review_lines(tmp_path, cfg))
    assert "Chroma1-HD at 1024 px" in bf16 and "24 GB: as set" in bf16  # 8.9 B with checkpointing fits 24 GB
    cfg.train.gradient_checkpointing = False
    assert "24 GB: does not fit as set" in "\n".join(review_lines(tmp_path, cfg))