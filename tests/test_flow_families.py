"""SD3 and FLUX end to end on their tiny models: the flow objective, what the file holds, who loads it.

Both train through the same loop as the UNets with the flow-matching
objective; the files from a real short run load in diffusers' own pipelines
and give exactly our LoRA-applied transformer's outputs; ComfyUI's published
key rules map every module onto the model in the layout ComfyUI and Forge
keep it in (Black Forest Labs' for FLUX, the MMDiT's for SD3).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.config import load_config
from loratui.events import Started
from loratui.project import ProjectPaths
from tests import flow_family
from tests.flow_family import make_project, output_with_lora, train

torch.set_num_threads(1)


def pipeline(name: str):
    import diffusers

    from loratui.models.builtin import ensure_builtin

    cls = diffusers.FluxPipeline if name == "tiny-flux" else diffusers.StableDiffusion3Pipeline
    pipe = cls.from_pretrained(str(ensure_builtin(name)), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def transformer_output(pipe) -> torch.Tensor:
    """The transformer on fixed inputs, called as the family's training step calls it."""
    from loratui.models import flux, sd3
    from loratui.models.text import TextEmbedding

    g = torch.Generator().manual_seed(0)
    t = pipe.transformer
    if "Flux" in type(t).__name__:
        cond = TextEmbedding(torch.randn(1, 7, t.config.joint_attention_dim, generator=g),
                             torch.randn(1, t.config.pooled_projection_dim, generator=g))
        family = flux
    else:
        cond = TextEmbedding(torch.randn(1, 9, t.config.joint_attention_dim, generator=g),
                             torch.randn(1, t.config.pooled_projection_dim, generator=g))
        family = sd3
    latents = torch.randn(1, 16, 8, 8, generator=g)
    with torch.no_grad():
        return family.predict(t, latents, torch.tensor([0.6]), cond, guidance=1.0, dtype=torch.float32)


def with_our_lora(pipe, path: Path, family: str) -> torch.Tensor:
    return output_with_lora(path, family, pipe.transformer, lambda: transformer_output(pipe))


# -- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, family, first_key", [
    ("tiny-flux", "flux", "lora_unet_double_blocks_0_img_attn_proj.alpha"),
    ("tiny-sd3", "sd3", "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight"),
])
def test_a_few_steps_train_and_write_the_familys_file(tmp_path: Path, name: str, family: str,
                                                      first_key: str) -> None:
    project = make_project(tmp_path, f"builtin:{name}")
    events = train(project, 2)
    started = next(e for e in events if isinstance(e, Started))
    assert started.family == family
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert keys[0] == first_key
    assert meta["ss_base_model_version"] == ("flux1" if family == "flux" else "sd3")
    assert meta["modelspec.prediction_type"] == "flow"
    # ModelSpec's own rules, the tensor hash recomputed from the file's bytes; the tiny models are
    # none of the published sizes, so the family's default name.
    from loratui.lora import modelspec

    assert modelspec.problems(meta, (ProjectPaths(project).output / "zxc_toy.safetensors").read_bytes()) == []
    assert meta["modelspec.architecture"] == ("flux-1-dev/lora" if family == "flux"
                                              else "stable-diffusion-v3-medium/lora")
    if family == "flux":
        # Black Forest Labs' layout: no diffusers-only names, q/k/v fused.
        assert all(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys)
        assert not any("to_q" in k or "proj_mlp" in k for k in keys)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_training_lowers_a_fixed_noise_fixed_sigma_evaluation_loss(sample_project: Path, name: str) -> None:
    flow_family.check_training_lowers_the_evaluation_loss(sample_project, name)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_resume_gives_the_same_weights_bit_for_bit(tmp_path: Path, name: str) -> None:
    flow_family.check_resume_is_bit_exact(tmp_path, f"builtin:{name}")


# -- the objective -------------------------------------------------------------------------------


def test_sigma_sampling_follows_each_method() -> None:
    from loratui.engine.flow import flux_mu, sample_sigmas

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform = sample_sigmas(g(), 20000, method="uniform")
    logit = sample_sigmas(g(), 20000, method="logit_normal")
    shifted = sample_sigmas(g(), 20000, method="shift", shift=3.0)
    assert abs(float(uniform.mean()) - 0.5) < 0.01 and abs(float(logit.median()) - 0.5) < 0.01
    # Shift 3 sends the logit-normal median 0.5 to 3·0.5/(1 + 2·0.5) = 0.75.
    assert abs(float(shifted.median()) - 0.75) < 0.01
    config = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
    assert flux_mu(256, config) == pytest.approx(0.5) and flux_mu(4096, config) == pytest.approx(1.15)
    small = sample_sigmas(g(), 20000, method="flux_shift", image_tokens=256, scheduler_config=config)
    large = sample_sigmas(g(), 20000, method="flux_shift", image_tokens=4096, scheduler_config=config)
    # The median moves to e^μ / (e^μ + 1): larger pictures train at more noise.
    assert float(small.median()) == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 1), abs=0.01)
    assert float(large.median()) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1), abs=0.01)


def test_flow_loss_is_the_velocity_error_on_the_straight_path() -> None:
    from loratui.engine.flow import flow_matching_loss
    from loratui.models.text import TextEmbedding

    seen = {}

    class Family:
        @staticmethod
        def predict(transformer, noisy, sigmas, cond, *, guidance, dtype):
            seen.update(noisy=noisy, sigmas=sigmas, guidance=guidance)
            return torch.zeros_like(noisy)

    x = torch.randn(2, 16, 4, 4)
    eps = torch.randn(2, 16, 4, 4)
    sigmas = torch.tensor([0.25, 0.75])
    loss = flow_matching_loss(Family, None, x, TextEmbedding(torch.zeros(1)), torch.Generator(),
                              sampling="uniform", sigmoid_scale=1.0, shift=3.0, scheduler_config={},
                              guidance=1.0, sigmas=sigmas, noise=eps)
    s = sigmas.view(2, 1, 1, 1)
    assert torch.allclose(seen["noisy"], (1 - s) * x + s * eps)
    # A zero prediction leaves the whole target ε − x as the error.
    assert float(loss) == pytest.approx(float(((eps - x) ** 2).mean()), rel=1e-6)


def test_flux_packing_is_diffusers_own() -> None:
    from diffusers import FluxPipeline

    from loratui.models.flux import image_ids, pack, unpack

    latents = torch.randn(2, 16, 6, 10)
    packed = pack(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 10))
    assert torch.equal(unpack(packed, 6, 10), latents)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    assert torch.equal(image_ids(6, 10, torch.device("cpu"), torch.float32), ids)


# -- files: diffusers --------------------------------------------------------------------------


@pytest.mark.parametrize("name, family, fmt", [("tiny-sd3", "sd3", "kohya"), ("tiny-flux", "flux", "diffusers")])
def test_diffusers_loads_our_file_and_gives_our_transformer_output(tmp_path: Path, name: str, family: str,
                                                                   fmt: str) -> None:
    project = make_project(tmp_path, f"builtin:{name}", f"save.format={fmt}", "lora.preset=all",
                           "lora.alpha=4")  # alpha != rank: the scale must survive
    train(project, 3)
    path = ProjectPaths(project).output / "zxc_toy.safetensors"
    pipe = pipeline(name)
    base = transformer_output(pipe)
    ours = with_our_lora(pipe, path, family)
    pipe.load_lora_weights(str(path), adapter_name="x")
    theirs = transformer_output(pipe)
    wrapped = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and "x" in m.lora_A]
    with safe_open(str(path), "pt") as f:
        file_modules = {k.rsplit(".lora_", 1)[0] for k in f.keys()}
    # Every module in the file became a LoRA layer in diffusers' transformer.
    assert len(wrapped) == len(file_modules)
    assert not torch.allclose(ours, base, atol=1e-5)
    assert torch.allclose(theirs, ours, atol=1e-5), float((theirs - ours).abs().max())


def test_diffusers_converts_our_flux_kohya_file_at_flux1_width(tmp_path: Path) -> None:
    """diffusers' converter of sd-scripts' FLUX layout hard-codes FLUX.1's 3072 widths, so it is run on a
    file with FLUX.1-dev's real shapes: every key is consumed and each layer gets our exact delta."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from loratui.lora import inject_lora, save_kohya

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    net = inject_lora(model, component="unet", family="flux", preset="all", rank=2, alpha=1.0)
    g = torch.Generator().manual_seed(0)
    for module in net.values():
        module.lora_down.weight = torch.nn.Parameter(torch.randn(module.lora_down.weight.shape, generator=g))
        module.lora_up.weight = torch.nn.Parameter(torch.randn(module.lora_up.weight.shape, generator=g))
        module.alpha = torch.tensor(1.0)
    path = tmp_path / "flux.safetensors"
    save_kohya(path, {"unet": net}, {}, dtype=torch.float32)
    converted = FluxPipeline.lora_state_dict(str(path))
    assert len(converted) == 2 * len(net)
    for name, module in net.items():
        key = "transformer." + net.module_paths[name]
        a, b = converted[f"{key}.lora_A.weight"], converted[f"{key}.lora_B.weight"]
        expected = module.lora_up.weight @ module.lora_down.weight * 0.5
        assert torch.allclose(b.float() @ a.float(), expected, atol=1e-4), name


# -- files: ComfyUI and Forge key rules --------------------------------------------------------


def comfy_flux_weights(transformer) -> dict[str, int]:
    """BFL weight name -> rows, for a FLUX model kept in ComfyUI's/Forge's layout.

    The names follow ComfyUI's ``flux_to_diffusers`` (comfy/utils.py): fused q/k/v (and the single blocks'
    MLP input) at the offsets it lists, everything else one to one.
    """
    c = transformer.config
    hidden = c.num_attention_heads * c.attention_head_dim
    rows: dict[str, int] = {}
    for i in range(c.num_layers):
        p = f"double_blocks.{i}"
        rows.update({f"{p}.img_attn.qkv": 3 * hidden, f"{p}.txt_attn.qkv": 3 * hidden,
                     f"{p}.img_attn.proj": hidden, f"{p}.txt_attn.proj": hidden,
                     f"{p}.img_mod.lin": 6 * hidden, f"{p}.txt_mod.lin": 6 * hidden,
                     f"{p}.img_mlp.0": 4 * hidden, f"{p}.img_mlp.2": hidden,
                     f"{p}.txt_mlp.0": 4 * hidden, f"{p}.txt_mlp.2": hidden})
    for i in range(c.num_single_layers):
        p = f"single_blocks.{i}"
        rows.update({f"{p}.linear1": 7 * hidden, f"{p}.linear2": hidden, f"{p}.modulation.lin": 3 * hidden})
    return rows


def comfy_keys(weights) -> dict[str, str]:
    """ComfyUI's model_lora_keys_unet: ``lora_unet_`` + every diffusion_model weight with ``.`` -> ``_``."""
    return {"lora_unet_" + name.replace(".", "_"): name for name in weights}


def test_comfyui_and_forge_map_every_module_of_the_flux_file(tmp_path: Path) -> None:
    project = make_project(tmp_path, "builtin:tiny-flux", "lora.preset=all")
    train(project, 1)
    pipe = pipeline("tiny-flux")
    weights = comfy_flux_weights(pipe.transformer)
    # Our own check of the layout table: each BFL weight's rows are what diffusers' layers add up to.
    assert sum(weights.values()) == sum(
        m.out_features for n, m in pipe.transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and n.startswith(("transformer_blocks.", "single_transformer_blocks.")))
    key_map = comfy_keys(weights)
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in f.keys()}
        for module in modules:
            assert module in key_map, module
            up = f.get_tensor(f"{module}.lora_up.weight")
            assert up.shape[0] == weights[key_map[module]], module
    assert len(modules) == len(weights)  # preset "all": every block weight, as sd-scripts trains


def test_comfyui_maps_every_module_of_the_sd3_file(tmp_path: Path) -> None:
    project = make_project(tmp_path, "builtin:tiny-sd3", "lora.preset=all")
    train(project, 1)
    pipe = pipeline("tiny-sd3")
    depth = pipe.transformer.config.num_layers
    # ComfyUI's mmdit_to_diffusers: q/k/v slices of width 64·depth, and the per-block table.
    per_block = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "norm1_context.linear", "attn.to_add_out",
                 "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "attn.to_out.0", "attn2.to_out.0",
                 "ff.net.0.proj", "ff.net.2"]
    known = {f"transformer.transformer_blocks.{i}.{k}" for i in range(depth) for k in per_block}
    assert 64 * depth == pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        modules = {k.rsplit(".lora_", 1)[0] for k in f.keys()}
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in f.keys())
    unmapped = sorted(modules - known)
    assert not unmapped, unmapped


# -- names on the real architectures -------------------------------------------------------------

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=tuple(range(13)))


@pytest.mark.parametrize("preset, modules", [("attention", 19 * 4 + 38 * 2), ("all", 19 * 10 + 38 * 3)])
def test_flux_dev_names_are_the_ones_sd_scripts_writes(tmp_path: Path, preset: str, modules: int) -> None:
    """sd-scripts' FLUX LoRA: 10 modules per double block and 3 per single block when every linear
    layer trains (its default), 4 + 2 for attention; named lora_unet_ + the BFL path."""
    from diffusers import FluxTransformer2DModel

    from loratui.lora import inject_lora
    from loratui.lora.transformer_names import flux_bfl_module

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_DEV)
    net = inject_lora(model, component="unet", family="flux", preset=preset, rank=4, alpha=4.0)
    bfl = {flux_bfl_module(p)[0] for p in net.module_paths.values()}
    assert len(bfl) == modules
    assert "double_blocks.18.txt_attn.qkv" in bfl and "single_blocks.37.linear2" in bfl
    if preset == "all":
        assert len(net) == 19 * 14 + 38 * 6  # diffusers keeps q, k, v (and the MLP input) apart


@pytest.mark.parametrize("preset, modules", [
    ("attention", 23 * 8 + 7 + 13 * 4), ("attention+ff", 23 * 12 + 9 + 13 * 4), ("all", 23 * 14 + 11 + 13 * 4)])
def test_sd35_medium_module_counts(preset: str, modules: int) -> None:
    from diffusers import SD3Transformer2DModel

    from loratui.lora import inject_lora

    with torch.device("meta"):
        model = SD3Transformer2DModel(**SD35_MEDIUM)
    net = inject_lora(model, component="unet", family="sd3", preset=preset, rank=4, alpha=4.0)
    assert len(net) == modules


# -- single files, merge, sampling ---------------------------------------------------------------


def test_a_flux_file_in_black_forest_labs_layout_loads_with_its_config_source(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loratui.models.builtin import ensure_builtin
    from loratui.models.flux_checkpoint import flux_to_bfl
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model

    reference = load_model("builtin:tiny-flux")
    state = reference.unet.state_dict()
    path = tmp_path / "flux1-tiny.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in flux_to_bfl(state).items()}, str(path))
    assert probe_model(str(path)).family == "flux"
    with pytest.raises(ModelLoadError, match="flux1-tiny.safetensors.*model.config_source"):
        load_model(str(path))
    loaded = load_model(str(path), config_source=str(ensure_builtin("tiny-flux")))
    assert (loaded.family, loaded.prediction_type) == ("flux", "flow")
    again = loaded.unet.state_dict()
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)


@pytest.mark.parametrize("name, family, text", [("tiny-flux", "flux", "guidance-distilled"),
                                                ("tiny-sd3", "sd3", "flow matching")])
def test_diffusers_folders_are_detected_by_their_transformer(name: str, family: str, text: str) -> None:
    from loratui.models.builtin import ensure_builtin
    from loratui.models.probe import probe_model

    info = probe_model(str(ensure_builtin(name)))
    assert (info.source_kind, info.family, info.prediction_type) == ("folder", family, "flow")
    assert text in info.description


def test_an_sd3_file_without_config_source_names_its_size(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loratui.models.loader import ModelLoadError, load_model

    path = tmp_path / "sd3-odd.safetensors"
    save_file({f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight": torch.zeros(3, 1)
               for i in range(5)}, str(path))
    with pytest.raises(ModelLoadError, match=r"sd3-odd.safetensors.*config_source.*5 joint blocks"):
        load_model(str(path))


def test_schnell_style_model_refuses_a_training_guidance(tmp_path: Path) -> None:
    from loratui.config import ConfigError
    from loratui.engine.build import _check_flow_settings
    from loratui.models.loader import load_model

    model = load_model("builtin:tiny-flux")
    model.unet.register_to_config(guidance_embeds=False)
    cfg = load_config(make_project(tmp_path, "builtin:tiny-flux", "train.guidance_scale=3.5"))
    with pytest.raises(ConfigError, match="guidance_scale = 3.5.*no guidance embedding"):
        _check_flow_settings(cfg, model)
    cfg.data.bucket_step = 24
    with pytest.raises(ConfigError, match="multiples of 16"):
        _check_flow_settings(cfg, model)
    cfg.data.bucket_step, cfg.train.guidance_scale, cfg.train.min_snr_gamma = 64, 1.0, 5.0
    with pytest.raises(ConfigError, match="min_snr_gamma = 5.*flow matching"):
        _check_flow_settings(cfg, model)


def test_merged_flux_folder_and_file_hold_the_lora(tmp_path: Path) -> None:
    from loratui.engine.merge_export import export_merged
    from loratui.models.loader import load_model

    project = make_project(tmp_path, "builtin:tiny-flux", "lora.preset=all")
    train(project, 2)
    lora = ProjectPaths(project).output / "zxc_toy.safetensors"
    folder, single = export_merged(project, scale=1.0)
    pipe = pipeline("tiny-flux")
    ours = with_our_lora(pipe, lora, "flux")
    merged = load_model(str(folder))
    pipe.transformer = merged.unet
    assert torch.allclose(transformer_output(pipe), ours, atol=1e-4)
    flow_family.check_single_file_is_the_folder(single, folder, merged)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_sampling_uses_the_familys_pipeline_and_scale_0_is_the_base(tmp_path: Path, name: str) -> None:
    flow_family.check_sample_after_training(tmp_path, f"builtin:{name}")
    if name == "tiny-flux":
        assert "negative: (FLUX takes none)" in (tmp_path / "s1.txt").read_text()


def test_float8_base_weights_train_on_the_cpu(tmp_path: Path) -> None:
    from loratui.engine.build import build_session
    from loratui.memory.stored import StoredLinear

    project = make_project(tmp_path, "builtin:tiny-flux", "model.base_weights=float8")
    cfg = load_config(project)
    session = build_session(ProjectPaths(project), cfg, status=lambda *a, **k: None)
    try:
        stored = [m for m in session.unet.modules() if isinstance(m, StoredLinear)]
        assert stored and all(m.precision == "fp8" and m.qweight.dtype == torch.float8_e4m3fn for m in stored)
        # Every block linear is float8, whether or not it carries a LoRA.
        assert not [n for n, m in session.unet.named_modules()
                    if type(m) is torch.nn.Linear and n.startswith(("transformer_blocks", "single_transformer"))
                    and "lora_" not in n]
    finally:
        session.close()
    events = train(project, 2)
    losses = [e.loss for e in events if type(e).__name__ == "StepDone"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        assert any(f.get_tensor(k).abs().sum() > 0 for k in f.keys() if k.endswith("lora_up.weight"))


def test_review_estimate_says_float8_fits_flux_dev_on_24_gb() -> None:
    from loratui.memory import arch
    from loratui.memory import planner as P

    model = P.Model("flux", "FLUX.1-dev", arch.published_config("flux"), 1024, 1, 16, text_tokens=512)
    bf16 = P.estimate(model, P.Options("bf16", True, 1)).memory.total
    fp8 = P.estimate(model, P.Options("fp8", True, 1)).memory.total
    assert bf16 > 24 * P.GIB > fp8
