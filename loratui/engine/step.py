"""The diffusion training objective for one micro-batch.

All randomness of a step (noise, timesteps, the latent sample) is drawn from
one CPU generator seeded by the run seed and the micro-batch index, then moved
to the device. The step is therefore a pure function of (weights, seed,
position): the same on every resume, on any number of threads, and the same
sequence on CPU as on CUDA up to kernel arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Conditioning:
    hidden: torch.Tensor  # [B, 77, D]
    pooled: torch.Tensor | None = None  # SDXL
    time_ids: torch.Tensor | None = None  # SDXL [B, 6]

    def unet_kwargs(self) -> dict:
        kwargs: dict = {"encoder_hidden_states": self.hidden}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs


def step_generator(seed: int, micro_batch: int, salt: int = 0) -> torch.Generator:
    # Mixing with large odd constants keeps neighbouring steps' streams unrelated.
    mixed = (seed * 0x9E3779B1 + micro_batch * 0x85EBCA77 + salt * 0xC2B2AE3D) % (2**63 - 1)
    return torch.Generator("cpu").manual_seed(mixed)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor moved to ``device`` without making the host wait for the GPU.

    A copy from ordinary (pageable) memory to CUDA can wait for the work already queued on the stream,
    which undoes the trainer running a step ahead of the GPU. From pinned memory the copy is queued
    like a kernel, and torch's caching host allocator keeps the source alive until it has run.
    """
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return a / (1.0 - a)


def diffusion_loss(unet: torch.nn.Module, noise_scheduler, latents: torch.Tensor, cond: Conditioning,
                   generator: torch.Generator, *, prediction_type: str, noise_offset: float = 0.0,
                   min_snr_gamma: float = 0.0, timesteps: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, unet_dtype: torch.dtype = torch.float32,
                   pixel_weight: torch.Tensor | None = None,
                   sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the batch; ``timesteps``/``noise`` fixed only by evaluation.

    ``pixel_weight`` [B, 1, h, w] (masked loss) and ``sample_weight`` [B] (concept loss weights,
    prior_loss_weight) multiply the squared error per latent pixel and per image, as kohya does:
    the mean is not renormalised, so a half-masked image counts half."""
    device = latents.device
    b = latents.shape[0]
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        if noise_offset:
            noise = noise + noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=generator)
    if timesteps is None:
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = to_device(noise, device)
    timesteps = to_device(timesteps, device)
    latents = latents.float()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    pred = unet(noisy.to(unet_dtype), timesteps, **cond.unet_kwargs()).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    if pixel_weight is not None:
        loss = loss * pixel_weight
    loss = loss.mean(dim=(1, 2, 3))
    if sample_weight is not None:
        loss = loss * sample_weight
    if min_snr_gamma > 0:
        s = snr(noise_scheduler.alphas_cumprod, timesteps)
        clipped = torch.clamp(s, max=min_snr_gamma)
        # For v-prediction the loss is already scaled by (snr + 1) relative to epsilon.
        weight = clipped / (s + 1) if prediction_type == "v_prediction" else clipped / s
        loss = loss * weight
    return loss.mean()
