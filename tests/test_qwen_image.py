"""Qwen-Image end to end on ``builtin:tiny-qwen-image``: its objective, its files, who loads them.

Qwen-Image's own rules (the prompt template whose first 34 tokens are dropped,
Qwen2.5-VL's last hidden states with their mask, the 3D VAE's per-channel latent
mean and std, 2x2 packing with per-picture RoPE shapes, σ as the timestep, the
resolution-dependent shift) are checked against diffusers' QwenImagePipeline;
the file loads in diffusers with every key consumed and equal outputs, and
ComfyUI's Qwen-Image key rules map every module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.events import Started
from loratui.project import ProjectPaths
from tests import flow_family
from tests.flow_family import OUTPUT, output_with_lora, train

torch.set_num_threads(1)

BASE = "builtin:tiny-qwen-image"


def make_project(root: Path, *settings: str) -> Path:
    return flow_family.make_project(root, BASE, *settings)


def pipeline():
    from diffusers import QwenImagePipeline

    from loratui.models.builtin import ensure_builtin

    pipe = QwenImagePipeline.from_pretrained(str(ensure_builtin("tiny-qwen-image")), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fixed_inputs(pipe) -> tuple[torch.Tensor, torch.Tensor, object]:
    from loratui.models.text import TextEmbedding

    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 10)
    mask[1, 6:] = 0
    hidden = torch.randn(2, 10, pipe.transformer.config.joint_attention_dim, generator=g) * mask[..., None]
    return torch.randn(2, 16, 8, 12, generator=g), torch.tensor([0.3, 0.8]), TextEmbedding(hidden, mask)


def transformer_output(pipe) -> torch.Tensor:
    from loratui.models import qwen_image

    latents, sigmas, cond = fixed_inputs(pipe)
    with torch.no_grad():
        return qwen_image.predict(pipe.transformer, latents, sigmas, cond, guidance=1.0, dtype=torch.float32)


# -- the family's own rules --------------------------------------------------------------------


def test_the_template_prefix_is_34_tokens_and_captions_encode_as_the_pipeline_does() -> None:
    from loratui.models import qwen_image
    from loratui.models.loader import load_model
    from loratui.models.text import encode_flow_captions

    model = load_model("builtin:tiny-qwen-image")
    tokenizer = model.tokenizers[0]
    prefix = qwen_image.PROMPT_TEMPLATE.split("{}")[0]
    assert len(tokenizer(prefix).input_ids) == qwen_image.TEMPLATE_TOKENS == 34
    pipe = pipeline()
    captions = ["zxc toy, red ball, blue background", "zxc"]
    ours = encode_flow_captions(model, captions)
    theirs, their_mask = pipe.encode_prompt(list(captions))
    n = theirs.shape[1]
    assert torch.equal(ours.pooled[:, :n].long(), their_mask) and not ours.pooled[:, n:].any()
    assert torch.allclose(ours.hidden[:, :n], theirs, atol=1e-5)


def test_our_prediction_is_the_pipelines_transformer_call() -> None:
    from diffusers import QwenImagePipeline

    from loratui.models import qwen_image

    pipe = pipeline()
    latents, sigmas, cond = fixed_inputs(pipe)
    b, c, h, w = latents.shape
    with torch.no_grad():
        packed = QwenImagePipeline._pack_latents(latents, b, c, h, w)
        raw = pipe.transformer(hidden_states=packed, timestep=sigmas * 1000 / 1000, encoder_hidden_states=cond.hidden,
                               encoder_hidden_states_mask=cond.pooled.long(), img_shapes=[[(1, h // 2, w // 2)]] * b,
                               return_dict=False)[0]
        theirs = QwenImagePipeline._unpack_latents(raw, h * 8, w * 8, 8)[:, :, 0]
        ours = qwen_image.predict(pipe.transformer, latents, sigmas, cond, guidance=1.0, dtype=torch.float32)
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())


def test_latents_are_normalised_per_channel_and_sigma_shifts_with_resolution() -> None:
    from loratui.engine.flow import resolve_sampling
    from loratui.models.loader import load_model

    from loratui.models import qwen_image

    model = load_model("builtin:tiny-qwen-image")
    vae = model.vae.config
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean, std = qwen_image.encode_latents(model.vae, pixels)
        raw = model.vae.encode(pixels.unsqueeze(2)).latent_dist
    latents_mean = torch.tensor(vae.latents_mean).view(-1, 1, 1)
    latents_std = torch.tensor(vae.latents_std).view(-1, 1, 1)
    assert torch.allclose(mean, (raw.mean[:, :, 0] - latents_mean) / latents_std, atol=1e-5)
    assert torch.allclose(std, raw.std[:, :, 0] / latents_std, atol=1e-5)
    assert resolve_sampling("auto", "qwen_image") == "flux_shift"
    assert model.noise_scheduler.config.max_image_seq_len == 8192  # Qwen-Image's own shift range


# -- training -----------------------------------------------------------------------------------


def test_a_few_steps_train_and_write_transformer_keys(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    events = train(project, 2)
    assert next(e for e in events if isinstance(e, Started)).family == "qwen_image"
    with safe_open(str(ProjectPaths(project).output / OUTPUT), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert any(".img_mlp." in k for k in keys) and any(".attn.add_q_proj." in k for k in keys)
    assert meta["ss_base_model_version"] == "qwen_image" and meta["modelspec.architecture"] == "Qwen-Image/lora"


def test_training_lowers_a_fixed_noise_fixed_sigma_evaluation_loss(sample_project: Path) -> None:
    flow_family.check_training_lowers_the_evaluation_loss(sample_project, "tiny-qwen-image")


def test_resume_gives_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    flow_family.check_resume_is_bit_exact(tmp_path, BASE)


def test_loratui_train_on_the_sample_project_trains_samples_and_writes_the_lora(tmp_path: Path) -> None:
    flow_family.check_loratui_train_in_a_subprocess(tmp_path, BASE, "qwen_image")


def test_loratui_sample_uses_the_familys_pipeline_and_scale_0_is_the_base(tmp_path: Path) -> None:
    flow_family.check_sample_after_training(tmp_path, BASE, "sample.guidance=4")


# -- files: diffusers and ComfyUI ------------------------------------------------------------


def test_diffusers_loads_our_file_with_every_key_and_gives_our_output(tmp_path: Path) -> None:
    flow_family.check_diffusers_loads_every_key(tmp_path, BASE, "qwen_image", pipeline, transformer_output)


def test_comfyui_key_rules_map_every_module(tmp_path: Path) -> None:
    """ComfyUI's model_lora_keys_unet for Qwen-Image: ``transformer.`` + every ``diffusion_model.`` weight
    name of its model, which keeps diffusers' names (its published qwen_image file has them)."""
    project = make_project(tmp_path, "lora.preset=all")
    train(project, 1)
    weights = pipeline().transformer.state_dict()
    key_map = {"transformer." + k[:-len(".weight")]: k for k in weights if k.endswith(".weight")}
    with safe_open(str(ProjectPaths(project).output / OUTPUT), "pt") as f:
        modules = {k.rsplit(".lora_", 1)[0] for k in f.keys()}
        for module in modules:
            assert module in key_map, module
            assert f.get_tensor(f"{module}.lora_B.weight").shape[0] == weights[key_map[module]].shape[0]
            assert f.get_tensor(f"{module}.lora_A.weight").shape[1] == weights[key_map[module]].shape[1]
    # preset all: 8 attention, 4 MLP and 2 modulation linears per block, less the last block's text outputs
    assert len(modules) == 2 * 14 - 3


def test_files_with_ai_toolkits_diffusion_model_prefix_are_read_as_the_same_modules(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from loratui.lora import load_lora_file

    project = make_project(tmp_path, "lora.alpha=4")
    train(project, 1)
    ours = load_lora_file(ProjectPaths(project).output / OUTPUT)
    tensors = load_file(str(ProjectPaths(project).output / OUTPUT))
    other = tmp_path / "other.safetensors"
    save_file({k.replace("transformer.", "diffusion_model.", 1): v for k, v in tensors.items()}, str(other))
    theirs = load_lora_file(other)  # no metadata: the family comes from the names
    assert theirs.family == ours.family == "qwen_image" and theirs.modules.keys() == ours.modules.keys()
    for name, w in ours.modules.items():
        t = theirs.modules[name]
        assert torch.equal(t.up * (t.alpha / t.rank), w.up * (w.alpha / w.rank)) and torch.equal(t.down, w.down)


# -- names on the real architecture ----------------------------------------------------------

QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))


@pytest.mark.parametrize("preset, modules", [("attention", 60 * 8 - 1), ("attention+ff", 60 * 12 - 3),
                                             ("all", 60 * 14 - 3)])
def test_qwen_image_module_counts_and_musubi_tuners_default(preset: str, modules: int) -> None:
    """Qwen-Image's 60 blocks: 8 attention linears (both streams), 4 MLP, 2 modulation. musubi-tuner's
    default (every block linear but img_mod/txt_mod) is our attention+ff: 720, less the last block's
    text-stream outputs (to_add_out, txt_mlp), whose output nothing reads, so they never train: 717."""
    from diffusers import QwenImageTransformer2DModel

    from loratui.lora import inject_lora

    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**QWEN_IMAGE)
    net = inject_lora(model, component="unet", family="qwen_image", preset=preset, rank=4, alpha=4.0)
    assert len(net) == modules
    assert not any(".img_mod." in p or ".txt_mod." in p for p in net.module_paths.values()) or preset == "all"


# -- detection, single files, bad input ----------------------------------------------------------


def test_the_folder_is_detected_and_an_edit_model_is_refused(tmp_path: Path) -> None:
    import json

    from loratui.models.builtin import ensure_builtin
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model

    info = probe_model(str(ensure_builtin("tiny-qwen-image")))
    assert (info.family, info.prediction_type) == ("qwen_image", "flow")
    assert "Qwen-Image" in info.description and "Qwen2.5-VL" in info.description
    edit = tmp_path / "edit"
    shutil.copytree(ensure_builtin("tiny-qwen-image"), edit)
    index = json.loads((edit / "model_index.json").read_text())
    index["_class_name"] = "QwenImageEditPlusPipeline"
    (edit / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="QwenImageEditPlusPipeline.*Qwen-Image-Edit.*QwenImagePipeline"):
        load_model(str(edit))


def test_a_comfyui_file_is_detected_and_loads_with_its_config_source(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loratui.models.builtin import ensure_builtin
    from loratui.models.loader import ModelLoadError, load_model
    from loratui.models.probe import probe_model

    reference = load_model("builtin:tiny-qwen-image")
    state = reference.unet.state_dict()
    path = tmp_path / "qwen_image_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert probe_model(str(path)).family == "qwen_image"
    with pytest.raises(ModelLoadError, match=r"qwen_image_tiny.safetensors.*Qwen2.5-VL.*model.config_source"):
        load_model(str(path))
    loaded = load_model(str(path), config_source=str(ensure_builtin("tiny-qwen-image")))
    again = loaded.unet.state_dict()
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
    # The same weights under ComfyUI's checkpoint prefix load the same.
    prefixed = tmp_path / "qwen_image_comfy.safetensors"
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in state.items()}, str(prefixed))
    assert probe_model(str(prefixed)).family == "qwen_image"
    again = load_model(str(prefixed), config_source=str(ensure_builtin("tiny-qwen-image"))).unet.state_dict()
    assert all(torch.equal(again[k], state[k]) for k in state)
    # A Z-Image file named as Qwen-Image: a message naming the file and the setting.
    zimage = load_model("builtin:tiny-zimage").unet.state_dict()
    wrong = tmp_path / "z.safetensors"
    save_file({k: v.contiguous() for k, v in zimage.items()}, str(wrong))
    with pytest.raises(ModelLoadError, match=r"z.safetensors does not fit the Qwen-Image transformer.*config_source"):
        load_model(str(wrong), family="qwen_image", config_source=str(ensure_builtin("tiny-qwen-image")))
    with pytest.raises(ModelLoadError, match="model.family is set to zimage but the model looks like qwen_image"):
        load_model("builtin:tiny-qwen-image", family="zimage")


def test_merged_folder_and_file_hold_the_lora_and_inspect_knows_the_family(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from loratui.cli import main
    from loratui.engine.merge_export import export_merged
    from loratui.models.loader import load_model

    project = make_project(tmp_path, "lora.preset=all")
    train(project, 2)
    lora = ProjectPaths(project).output / OUTPUT
    assert main(["inspect", str(lora), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "qwen_image"
    pipe = pipeline()
    ours = output_with_lora(lora, "qwen_image", pipe.transformer, lambda: transformer_output(pipe))
    folder, single = export_merged(project, scale=1.0)
    merged = load_model(str(folder))
    assert merged.family == "qwen_image"
    pipe.transformer = merged.unet
    assert torch.allclose(transformer_output(pipe), ours, atol=1e-4)
    flow_family.check_single_file_is_the_folder(single, folder, merged)


def test_review_says_what_fits_on_24_48_and_80_gb(tmp_path: Path) -> None:
    from loratui.config import ProjectConfig
    from loratui.memory.project_plan import review_lines

    cfg = ProjectConfig()
    cfg.model.base, cfg.model.family, cfg.train.precision = "Qwen/Qwen-Image", "qwen_image", "bf16"
    cfg.data.resolution = 1024
    text = "\n".join(review_lines(tmp_path, cfg))
    assert "24 GB: does not fit as set" in text and "48 GB:" in text and "80 GB:" in text
    assert "swap" in text.split("24 GB:")[1].split("\n")[0]  # 20 B fits 24 GB only by streaming blocks


def test_a_file_with_the_last_blocks_untrained_text_outputs_continues_but_a_trained_one_is_refused(
        tmp_path: Path) -> None:
    """musubi-tuner's files hold LoRA on the last block's text-stream outputs, which nothing reads: their up
    factors stay zero, so continuing from such a file drops them; a module this run lacks that did train
    (non-zero up) is still refused, because its change would be lost."""
    from safetensors.torch import save_file

    from loratui.lora import inject_lora
    from loratui.lora.continue_from import apply_lora_file

    net = inject_lora(pipeline().transformer, component="unet", family="qwen_image", preset="attention+ff",
                      rank=4, alpha=4.0)
    sd = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    stray = "lora_unet_transformer_blocks_1_txt_mlp_net_2"
    sd[f"{stray}.lora_down.weight"] = torch.randn(4, 32)
    sd[f"{stray}.alpha"] = torch.tensor(4.0)
    for up, outcome in ((torch.zeros(32, 4), "applied"), (torch.ones(32, 4), "refused")):
        sd[f"{stray}.lora_up.weight"] = up
        path = tmp_path / f"{outcome}.safetensors"
        save_file(sd, str(path), metadata={"ss_base_model_version": "qwen_image"})
        if outcome == "applied":
            apply_lora_file(path, {"unet": net})
            key = "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight"
            assert torch.equal(net.state_dict()[key], sd[key])
        else:
            with pytest.raises(ValueError, match=stray):
                apply_lora_file(path, {"unet": net})
