"""Each model family end to end on its tiny model: what reaches the loss, what the file holds, who loads it.

SD1 (epsilon), SD2 (v-prediction) and SDXL (two text encoders, pooled
embeddings, size conditioning) train through the same engine; the kohya and
diffusers files from a real short run load in diffusers' own pipelines and
give exactly our LoRA-applied model's outputs; the key rules ComfyUI and
A1111 publish map every module of those files onto the original-layout model.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.cli import main
from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.runner import run_training
from loratui.events import Event, Finished
from loratui.project import ProjectPaths

torch.set_num_threads(1)

SAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "sample_project"
FAMILY_OF = {"tiny-sd": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}
LOADER_KEY = re.compile(r"^lora_(unet|te|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def make_project(root: Path, base: str, *settings: str) -> Path:
    """A copy of the sample project on ``base`` that trains quickly and saves float32 files."""
    project = root / "p"
    shutil.copytree(SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py"))
    cfg = load_config(project)
    for item in (f"model.base={base}", "save.every_n_steps=0", "sample.every_n_steps=0", "save.precision=fp32",
                 *settings):
        apply_override(cfg, item)
    save_config(project, cfg)
    return project


def train(project: Path, steps: int) -> list[Event]:
    seen: list[Event] = []
    run_training(project, emit=seen.append, commands=CommandChannel(), max_steps=steps)
    assert isinstance(seen[-1], Finished), seen[-1]
    return seen


def builtin_pipeline(name: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from loratui.models.builtin import ensure_builtin

    cls = StableDiffusionXLPipeline if name == "tiny-sdxl" else StableDiffusionPipeline
    kwargs = {} if name == "tiny-sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(str(ensure_builtin(name)), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encoders(pipe) -> dict[str, torch.nn.Module]:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return {"te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
    return {"te": pipe.text_encoder}


def outputs(pipe) -> dict[str, torch.Tensor]:
    """UNet and text-encoder outputs on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (1, 77), generator=g)
    out = {name: te(ids)[0] for name, te in encoders(pipe).items()}
    cfg = pipe.unet.config
    hidden = torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
    extra = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                      "time_ids": torch.tensor([[128.0, 192.0, 0.0, 32.0, 128.0, 128.0]])}
    out["unet"] = pipe.unet(torch.randn(1, 4, 16, 16, generator=g), 500, hidden, **extra).sample
    return {k: v.detach() for k, v in out.items()}


def with_our_lora(pipe, path: Path, family: str, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Outputs with the file applied by loratui's own layer (then removed again)."""
    from loratui.lora import inject_from_file, load_lora_file

    networks = inject_from_file(load_lora_file(path, family=family), {"unet": pipe.unet, **encoders(pipe)})
    try:
        for net in networks.values():
            net.set_multiplier(scale)
        return outputs(pipe)
    finally:
        for net in networks.values():
            net.remove()


def with_diffusers_lora(pipe, path: Path) -> dict[str, torch.Tensor]:
    pipe.load_lora_weights(str(path), adapter_name="x")
    try:
        return outputs(pipe)
    finally:
        pipe.unload_lora_weights()


# -- what reaches the loss ----------------------------------------------------------------------


def _spy_on_loss(monkeypatch) -> list[dict]:
    import loratui.engine.session as session

    calls: list[dict] = []
    real = session.diffusion_loss

    def spy(unet, noise_scheduler, latents, cond, generator, **kwargs):
        seen: dict = {"prediction_type": kwargs["prediction_type"], "cond": cond, "latents": latents,
                      "scheduler_prediction": noise_scheduler.config.prediction_type}

        def hook(module, args, kw):
            seen["unet_kwargs"] = kw

        handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            return real(unet, noise_scheduler, latents, cond, generator, **kwargs)
        finally:
            handle.remove()
            calls.append(seen)

    monkeypatch.setattr(session, "diffusion_loss", spy)
    return calls


# SD1's epsilon run is the rest of the suite; SD2 overridden to epsilon is the contrast here.
@pytest.mark.parametrize("base, override, expected, version", [
    ("tiny-sd2", None, "v_prediction", "sd_v2_v"),
    ("tiny-sd2", "model.prediction_type=epsilon", "epsilon", "sd_v2"),
])
def test_the_prediction_type_reaches_the_loss(tmp_path: Path, monkeypatch, base: str, override: str | None,
                                              expected: str, version: str) -> None:
    from diffusers import DDPMScheduler

    calls = _spy_on_loss(monkeypatch)
    velocity = []
    real_velocity = DDPMScheduler.get_velocity
    monkeypatch.setattr(DDPMScheduler, "get_velocity",
                        lambda self, *a, **k: velocity.append(1) or real_velocity(self, *a, **k))
    project = make_project(tmp_path, f"builtin:{base}", *([override] if override else []))
    train(project, 2)
    assert calls and all(c["prediction_type"] == expected == c["scheduler_prediction"] for c in calls)
    # The v target is built only through the scheduler's get_velocity.
    assert bool(velocity) == (expected == "v_prediction")
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == version
    assert meta["modelspec.prediction_type"] == ("v" if expected == "v_prediction" else "epsilon")


def test_sdxl_is_conditioned_on_pooled_text_and_each_images_sizes(tmp_path: Path, monkeypatch) -> None:
    calls = _spy_on_loss(monkeypatch)
    # 20 pictures per epoch (4 close-ups twice), batches of 4: five steps see each picture once.
    project = make_project(tmp_path, "builtin:tiny-sdxl", "train.batch_size=4")
    train(project, 5)
    rows = []
    for c in calls:
        kwargs = c["unet_kwargs"]
        added = kwargs["added_cond_kwargs"]
        assert added["text_embeds"] is c["cond"].pooled  # the second encoder's projected pooled output
        assert added["text_embeds"].shape == (4, 32) and added["text_embeds"].abs().sum() > 0
        assert kwargs["encoder_hidden_states"].shape == (4, 77, 32 + 48)  # both encoders side by side
        assert tuple(8 * s for s in c["latents"].shape[-2:]) == (128, 128)
        rows += [tuple(int(v) for v in row) for row in added["time_ids"]]
    # (original h, w), (crop top, left), (target h, w): the four 192x128 pictures go into the
    # 128x128 bucket centre-cropped, 32 px off the left.
    assert sorted(set(rows)) == [(128, 128, 0, 0, 128, 128), (128, 192, 0, 32, 128, 128)]
    assert rows.count((128, 192, 0, 32, 128, 128)) == 4


def test_clip_skip_2_conditions_sd1_on_the_normed_penultimate_layer(tmp_path: Path, monkeypatch) -> None:
    import loratui.engine.session as session

    seen: list[tuple[list[str], torch.Tensor]] = []
    real = session.TrainingSession.conditioning

    def capture(self, batch):
        cond = real(self, batch)
        seen.append((list(batch.captions), cond.hidden.detach()))
        return cond

    monkeypatch.setattr(session.TrainingSession, "conditioning", capture)
    for skip in (1, 2):
        train(make_project(tmp_path / str(skip), "builtin:tiny-sd", f"model.clip_skip={skip}",
                           "train.batch_size=1"), 1)
    (captions, hidden1), (captions2, hidden2) = seen
    assert captions == captions2
    assert not torch.allclose(hidden1, hidden2, atol=1e-4)
    # Independently: transformers' hidden states, the layer before the last, through the final norm.
    pipe = builtin_pipeline("tiny-sd")
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True)
        norm = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm
        torch.testing.assert_close(hidden2, norm(states.hidden_states[-2]))
        torch.testing.assert_close(hidden1, states.last_hidden_state)


# -- the files a real run writes ------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sd2", "tiny-sdxl"])
def trained(request, tmp_path_factory) -> tuple[str, Path]:
    """A 3-step run with UNet and text-encoder LoRA (LoCon preset), its kohya file and a diffusers export."""
    name = request.param
    project = make_project(tmp_path_factory.mktemp(name), f"builtin:{name}", "lora.preset=all",
                           "lora.train_text_encoder=true", "train.text_encoder_lr=0.001", "lora.rank=4",
                           "lora.alpha=2")
    train(project, 3)
    out = ProjectPaths(project).output
    assert main(["export", str(project), "--format", "diffusers", "--out", str(out / "peft.safetensors")]) == 0
    return name, project


def test_kohya_file_keys_metadata_and_trained_text_encoders(trained) -> None:
    name, project = trained
    family = FAMILY_OF[name]
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    bad = [k for k in tensors if not LOADER_KEY.match(k)]
    assert not bad, bad[:5]
    assert all(t.dim() == 0 for k, t in tensors.items() if k.endswith(".alpha"))
    prefixes = {k.split("_text_model")[0] for k in tensors if k.startswith("lora_te")}
    assert prefixes == ({"lora_te1", "lora_te2"} if family == "sdxl" else {"lora_te"})
    for prefix in prefixes:
        ups = {k: t for k, t in tensors.items() if k.startswith(prefix + "_") and k.endswith("lora_up.weight")}
        assert len(ups) == 3 * 6  # 3 layers x q/k/v/out/fc1/fc2
        # SDXL reads the first encoder's penultimate layer, so its last layer gets no gradient (as in kohya);
        # every other text-encoder module has moved off its zero initialisation.
        untouched = {k for k, t in ups.items() if t.abs().sum() == 0}
        expected = {k for k in ups if "_layers_2_" in k} if prefix == "lora_te1" else set()
        assert untouched == expected, f"{prefix}: {sorted(untouched)[:3]}"
    if family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in tensors)  # SGM names
    else:
        assert any(k.startswith("lora_unet_down_blocks_") for k in tensors)  # diffusers block names
    expected = {"sd1": ("sd_v1", "stable-diffusion-v1/lora", "epsilon"),
                "sd2": ("sd_v2_v", "stable-diffusion-v2-768-v/lora", "v"),
                "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "epsilon")}[family]
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"], meta["modelspec.prediction_type"]) \
        == expected
    assert meta["modelspec.title"] == "zxc_toy" and meta["modelspec.resolution"] == "128x128"
    assert meta["ss_v2"] == str(family == "sd2")
    # ModelSpec's own rules, the tensor hash recomputed from the file's bytes.
    from loratui.lora import modelspec

    assert modelspec.problems(meta, (ProjectPaths(project).output / "zxc_toy.safetensors").read_bytes()) == []


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_diffusers_pipeline_loads_the_file_and_matches_our_model(trained, fmt: str) -> None:
    name, project = trained
    out = ProjectPaths(project).output
    path = out / ("zxc_toy.safetensors" if fmt == "kohya" else "peft.safetensors")
    if fmt == "diffusers":
        with safe_open(str(path), "pt") as f:
            adapter = json.loads(f.metadata()["lora_adapter_metadata"])
        assert adapter["unet.r"] == 4 and adapter["unet.lora_alpha"] == 2.0
    pipe = builtin_pipeline(name)
    with torch.no_grad():
        base = outputs(pipe)
        ours = with_our_lora(pipe, path, FAMILY_OF[name])
        theirs = with_diffusers_lora(pipe, path)
    assert set(theirs) == set(ours) == {"unet", *encoders(pipe)}
    for key in ours:
        assert not torch.allclose(ours[key], base[key], atol=1e-4), f"the LoRA changes nothing in {key}"
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-4, atol=1e-4, msg=f"{name} {fmt} {key}")


def test_sampling_at_a_chosen_scale_and_scale_zero_is_the_base(trained, tmp_path: Path) -> None:
    from PIL import Image, ImageChops

    _, project = trained
    common = ["sample", str(project), "--prompt", "zxc toy, red ball", "--seed", "3", "--steps", "2"]
    for tag, extra in (("base", ["--no-lora"]), ("zero", ["--scale", "0"]), ("half", ["--scale", "0.5"]),
                       ("full", [])):
        assert main([*common, *extra, "--out", str(tmp_path / f"{tag}.png")]) == 0
    img = {t: Image.open(tmp_path / f"{t}.png").convert("RGB") for t in ("base", "zero", "half", "full")}
    assert ImageChops.difference(img["zero"], img["base"]).getbbox() is None
    assert ImageChops.difference(img["full"], img["base"]).getbbox() is not None
    assert ImageChops.difference(img["half"], img["full"]).getbbox() is not None
    assert "lora scale: 0.5" in (tmp_path / "half.txt").read_text()


# -- ComfyUI and A1111 key rules, simulated ---------------------------------------------------------
# Neither program runs here. These follow the rules their LoRA loaders publish
# (ComfyUI comfy/lora.py model_lora_keys_unet/_clip; A1111 extensions-builtin/Lora
# networks.py convert_diffusers_name_to_compvis plus its SDXL fallbacks) and
# check every module of our files lands on a layer of the original-layout model.

_CLIP_SUBS = {"self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1",
              "mlp_fc2"}


def _comfy_names(original: dict, diffusers_unet: list[str], family: str, te_layers: dict[str, int]) -> set[str]:
    names = {"lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
             for k in original if k.startswith("model.diffusion_model.") and k.endswith(".weight")}
    names |= {"lora_unet_" + k[:-len(".weight")].replace(".", "_") for k in diffusers_unet if k.endswith(".weight")}
    for prefix, layers in te_layers.items():
        names |= {f"{prefix}_text_model_encoder_layers_{b}_{s}" for b in range(layers) for s in _CLIP_SUBS}
    return names


_RESNET_SUFFIX = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
                  "conv_shortcut": "skip_connection"}


def _a1111_target(name: str, family: str) -> str:
    """The A1111 module name a kohya name resolves to (down to the attention module for q/k/v of OpenCLIP)."""
    def resnet(kind: str, rest: str) -> str:
        for a, b in _RESNET_SUFFIX.items():
            if kind == "resnets" and rest.startswith(a):
                return b + rest[len(a):]
        return rest

    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_input_blocks_{1 + 3 * i + j}_{1 if kind == 'attentions' else 0}_{resnet(kind, rest)}"
    if m := re.fullmatch(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", name):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else 2 * j}_{resnet(kind, rest)}"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_output_blocks_{3 * i + j}_{1 if kind == 'attentions' else 0}_{resnet(kind, rest)}"
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", name):
        return f"diffusion_model_input_blocks_{3 + 3 * int(m[1])}_0_op"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", name):
        return f"diffusion_model_output_blocks_{2 + 3 * int(m[1])}_{2 if int(m[1]) > 0 else 1}_conv"
    openclip = {"mlp_fc1": "mlp_c_fc", "mlp_fc2": "mlp_c_proj"}
    if m := re.fullmatch(r"lora_te(2?)_text_model_encoder_layers_(\d+)_(.+)", name):
        if family == "sd1" or (family == "sdxl" and not m[1]):
            return f"transformer_text_model_encoder_layers_{m[2]}_{m[3]}"
        sub = openclip.get(m[3], m[3].replace("self_attn", "attn"))
        # q/k/v resolve to the attention module holding the joint in_proj.
        sub = re.sub(r"_[qkv]_proj$", "", sub)
        return f"{'1_' if m[1] else ''}model_transformer_resblocks_{m[2]}_{sub}"
    if name.startswith("lora_unet_"):
        return "diffusion_model_" + name[len("lora_unet_"):]  # "SDXL loras already have compvis keys"
    if name.startswith("lora_te1_text_model"):
        return "0_transformer_text_model" + name[len("lora_te1_text_model"):]
    return name


def _a1111_modules(original: dict, family: str) -> set[str]:
    """A1111's network_layer_mapping names, from the original-layout checkpoint's parameter names."""
    prefixes = {"model.": "", "cond_stage_model.": "", "conditioner.embedders.0.": "0_",
                "conditioner.embedders.1.": "1_"}
    out = set()
    for key in original:
        module = key.rsplit(".", 1)[0]
        for prefix, tag in prefixes.items():
            if module.startswith(prefix):
                out.add(tag + module[len(prefix):].replace(".", "_"))
    return out


def test_comfyui_and_a1111_key_rules_map_every_module(trained) -> None:
    from loratui.lora import load_lora_file
    from loratui.models.single_file import original_state_dict

    name, project = trained
    family = FAMILY_OF[name]
    pipe = builtin_pipeline(name)
    original = original_state_dict(unet=pipe.unet, vae=pipe.vae, text_encoders=list(encoders(pipe).values()),
                                   family=family)
    te_layers = {("lora_te1" if family == "sdxl" else "lora_te"): 3, **({"lora_te2": 3} if family == "sdxl" else {})}
    comfy = _comfy_names(original, list(pipe.unet.state_dict()), family, te_layers)
    a1111 = _a1111_modules(original, family)
    modules = list(load_lora_file(ProjectPaths(project).output / "zxc_toy.safetensors").modules)
    assert modules
    assert [m for m in modules if m not in comfy] == [], "ComfyUI would log 'lora key not loaded'"
    missing = [m for m in modules if _a1111_target(m, family) not in a1111]
    assert missing == [], f"A1111 would fail to match {missing[:3]}"


# -- init_lora ------------------------------------------------------------------------------------------


def _handwritten_kohya(path: Path, rank: int, alpha: float) -> None:
    """A kohya LoRA for tiny-sd written without loratui's writer: names by kohya's rule, fp16, no metadata."""
    from safetensors.torch import save_file

    pipe = builtin_pipeline("tiny-sd")
    g = torch.Generator().manual_seed(7)
    tensors = {}
    for path_, module in pipe.unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        for child, layer in module.named_modules():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                name = "lora_unet_" + f"{path_}.{child}".replace(".", "_")
                kernel = tuple(layer.weight.shape[2:])
                down = torch.randn(rank, layer.weight.shape[1], *kernel, generator=g) * 0.1
                up = torch.randn(layer.weight.shape[0], rank, *((1, 1) if kernel else ()), generator=g) * 0.1
                tensors.update({f"{name}.lora_down.weight": down.half(), f"{name}.lora_up.weight": up.half(),
                                f"{name}.alpha": torch.tensor(alpha).half()})
    assert len(tensors) == 3 * 192  # the SD1.5 layout's attention+ff modules
    save_file(tensors, str(path))


@pytest.mark.parametrize("source", ["previous run", "kohya by hand"])
def test_init_lora_is_the_starting_point(tmp_path: Path, source: str) -> None:
    from loratui.engine.trainer import Trainer

    if source == "previous run":
        first = make_project(tmp_path / "first", "builtin:tiny-sd")
        train(first, 3)
        init = ProjectPaths(first).output / "zxc_toy.safetensors"
    else:
        init = tmp_path / "kohya.safetensors"
        _handwritten_kohya(init, rank=8, alpha=4.0)
    project = make_project(tmp_path / "second", "builtin:tiny-sd", f"lora.init_lora={init}")
    trainer = Trainer(project, load_config(project), emit=lambda e: None, commands=CommandChannel())
    trainer.setup()
    try:
        assert trainer.step == 0
        unet = trainer.session.accelerator.unwrap_model(trainer.session.unet)
        pipe = builtin_pipeline("tiny-sd")
        with torch.no_grad():
            base = outputs(pipe)["unet"]
            expected = with_our_lora(pipe, init, "sd1")["unet"]
            pipe.unet = unet
            got = outputs(pipe)["unet"]
    finally:
        trainer.cleanup()
    assert not torch.allclose(expected, base, atol=1e-4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
