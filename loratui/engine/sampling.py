"""Sample images during training and by hand (``loratui sample``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from loratui.config import ProjectConfig, SamplePrompt

if TYPE_CHECKING:
    from loratui.engine.session import TrainingSession
    from loratui.lora.layer import LoRANetwork
    from loratui.models.loader import LoadedModel


@dataclass
class SampleResult:
    path: Path
    prompt: str
    seed: int


def _size(cfg: ProjectConfig) -> tuple[int, int]:
    return (cfg.sample.width or cfg.data.resolution, cfg.sample.height or cfg.data.resolution)


def render(model: LoadedModel, networks: dict[str, LoRANetwork], prompts: list[SamplePrompt], cfg: ProjectConfig,
           out_dir: Path, *, device: torch.device, scale: float = 1.0,
           autocast_dtype: torch.dtype = torch.float32) -> Iterator[SampleResult]:
    """Draw each prompt with the LoRA at ``scale`` (0 gives the base model) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    width, height = _size(cfg)
    for net in networks.values():
        net.set_multiplier(scale)
    vae_device = next(model.vae.parameters()).device
    model.vae.to(device)
    # Text encoders may wait on the CPU after their captions were cached (SD3, FLUX).
    te_devices = [next(te.parameters()).device for te in model.text_encoders]
    for te in model.text_encoders:
        te.to(device)
    pipe = model.make_pipeline()
    was_training = model.unet.training
    model.unet.eval()
    try:
        for i, p in enumerate(prompts):
            gen = torch.Generator("cpu").manual_seed(p.seed)
            # Half-precision UNet and fp32 VAE meet inside the pipeline; autocast reconciles them.
            guidance = {_guidance_argument(model): p.guidance or cfg.sample.guidance}
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype,
                                                 enabled=autocast_dtype != torch.float32):
                image = pipe(
                    **_prompt_kwargs(model, p, cfg, device), width=width, height=height,
                    num_inference_steps=p.steps or cfg.sample.steps, **guidance,
                    generator=gen, output_type="pil").images[0]
            path = out_dir / f"{i:02d}-seed{p.seed}.png"
            tmp = path.with_suffix(".png.tmp")
            image.save(tmp, format="PNG")
            os.replace(tmp, path)
            negative = {"flux": "(FLUX takes none)", "flux2_klein": "(FLUX.2 klein takes none; its guidance uses an "
                        "empty prompt)"}.get(model.family, p.negative)
            path.with_suffix(".txt").write_text(
                f"prompt: {p.prompt}\nnegative: {negative}\nseed: {p.seed}\n"
                f"steps: {p.steps or cfg.sample.steps}\nguidance: {p.guidance or cfg.sample.guidance}\n"
                f"size: {width}x{height}\nlora scale: {scale}\n", encoding="utf-8")
            yield SampleResult(path, p.prompt, p.seed)
    finally:
        for net in networks.values():
            net.set_multiplier(1.0)
        model.vae.to(vae_device)
        for te, te_device in zip(model.text_encoders, te_devices):
            te.to(te_device)
        if was_training:
            model.unet.train()


def _guidance_argument(model: LoadedModel) -> str:
    """The pipeline argument sample.guidance goes to (QwenImagePipeline's classifier-free scale is true_cfg_scale)."""
    if not model.is_flow:
        return "guidance_scale"
    from loratui.models.text import family_module

    return getattr(family_module(model.family), "GUIDANCE_ARGUMENT", "guidance_scale")


def _prompt_kwargs(model: LoadedModel, p: SamplePrompt, cfg: ProjectConfig, device: torch.device) -> dict:
    """Prompts as the training saw them, clip skip (UNets) and T5 length (SD3, FLUX) included."""
    clip_skip = cfg.model.clip_skip
    if model.is_flow:
        from loratui.models.text import family_module, t5_length

        length = t5_length(model, cfg.model.t5_max_length)
        # A family whose pipeline would encode prompts unlike its training (Chroma's mask) encodes them itself.
        own = getattr(family_module(model.family), "sample_prompt_kwargs", None)
        if own is not None:
            return {**own(model, p.prompt, p.negative, length, device), "max_sequence_length": length}
        kwargs = {"prompt": p.prompt, "max_sequence_length": length}
        # FLUX-dev is guidance-distilled: guidance_scale feeds its guidance embedding and there is no
        # negative prompt; SD3 uses classifier-free guidance with one.
        from loratui.models.text import family_module

        fam = family_module(model.family)
        if getattr(fam, "NEGATIVE_PROMPT", False):
            kwargs["negative_prompt"] = p.negative or getattr(fam, "EMPTY_NEGATIVE", None)
        return kwargs
    if clip_skip <= 1:
        return {"prompt": p.prompt, "negative_prompt": p.negative or None}
    if model.family == "sdxl":
        # diffusers counts SDXL's clip skip from the penultimate layer, we from the last.
        return {"prompt": p.prompt, "negative_prompt": p.negative or None, "clip_skip": clip_skip - 1}
    # The SD pipeline's own clip_skip path does not work with current CLIPTextModel; encode here instead.
    from loratui.models.text import encode_prompts

    pos = encode_prompts(model, [p.prompt], clip_skip=clip_skip, device=device)
    neg = encode_prompts(model, [p.negative], clip_skip=clip_skip, device=device)
    return {"prompt_embeds": pos.hidden, "negative_prompt_embeds": neg.hidden}


def generate_samples(session: TrainingSession, cfg: ProjectConfig, out_dir: Path,
                     prompts: list[SamplePrompt] | None = None) -> Iterator[SampleResult]:
    model = session.model
    unet = model.unet
    # The pipeline needs the plain UNet, not accelerate's or torch.compile's wrapper.
    model.unet = session.accelerator.unwrap_model(unet)
    try:
        yield from render(model, session.networks, list(cfg.sample.prompts if prompts is None else prompts), cfg,
                          out_dir,
                          device=session.accelerator.device, autocast_dtype=session.weight_dtype)
    finally:
        model.unet = unet
