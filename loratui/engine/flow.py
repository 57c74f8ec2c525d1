"""The flow-matching objective of SD3.x and FLUX.1, and how its timesteps are drawn.

A clean latent x and noise ε are joined on a straight line,
``noisy = (1 − σ)·x + σ·ε``, and the transformer learns the velocity along
it, ``ε − x``. Which σ a step trains on is the one real choice; the peers
offer the same four ways, named here as sd-scripts names them:

- ``uniform``: σ ~ U(0, 1).
- ``logit_normal``: σ = sigmoid(s·n), n ~ N(0, 1): the middle of the path,
  where the prediction is hardest, is drawn most (SD3's paper; diffusers'
  default ``weighting_scheme``).
- ``shift``: logit-normal, then ``σ ← k·σ / (1 + (k − 1)·σ)`` with a fixed k
  (SD3's scheduler shift 3.0), which moves the draws toward noise.
- ``flux_shift``: logit-normal, then FLUX's resolution-dependent shift: μ
  grows linearly with the image's token count (0.5 at 256 tokens, 1.15 at
  4096, from the model's scheduler config) and ``σ ← e^μ / (e^μ + 1/σ − 1)``.

All randomness comes from the step's CPU generator, as in ``step.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from loratui.engine.step import to_device
from loratui.models.text import TextEmbedding

TIMESTEP_SAMPLING = ("auto", "uniform", "logit_normal", "shift", "flux_shift")
# Families whose schedulers shift σ with the image's token count (``use_dynamic_shifting``).
_RESOLUTION_SHIFT = ("flux", "qwen_image", "chroma", "flux2_klein")


def resolve_sampling(method: str, family: str) -> str:
    """``auto`` is FLUX's own resolution shift for FLUX and Chroma (whose pipeline shifts its sampling the
    same way) and the fixed shift for SD3."""
    if method != "auto":
        return method
    return "flux_shift" if family in _RESOLUTION_SHIFT else "shift"


def flux_mu(image_tokens: int, scheduler_config: Mapping[str, Any]) -> float:
    """FLUX's shift exponent for an image of this many packed tokens (linear in the token count)."""
    base_len = float(scheduler_config.get("base_image_seq_len", 256))
    max_len = float(scheduler_config.get("max_image_seq_len", 4096))
    base_shift = float(scheduler_config.get("base_shift", 0.5))
    max_shift = float(scheduler_config.get("max_shift", 1.15))
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (image_tokens - base_len)


def sample_sigmas(generator: torch.Generator, batch: int, *, method: str, sigmoid_scale: float = 1.0,
                  shift: float = 3.0, image_tokens: int = 4096,
                  scheduler_config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """σ in (0, 1) for each picture of a batch, drawn as ``method`` says (see the module docstring)."""
    if method == "uniform":
        return torch.rand(batch, generator=generator)
    logits = torch.randn(batch, generator=generator) * sigmoid_scale
    sigmas = torch.sigmoid(logits)
    if method == "logit_normal":
        return sigmas
    if method == "shift":
        return shift * sigmas / (1 + (shift - 1) * sigmas)
    if method == "flux_shift":
        mu = flux_mu(image_tokens, scheduler_config or {})
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    raise ValueError(f"unknown timestep sampling {method!r}; expected one of {', '.join(TIMESTEP_SAMPLING)}")


def image_tokens(latents: torch.Tensor) -> int:
    """Tokens of one picture in FLUX's and SD3's transformers: one per 2x2 latent patch."""
    return (latents.shape[-2] // 2) * (latents.shape[-1] // 2)


def flow_matching_loss(family: Any, transformer: torch.nn.Module, latents: torch.Tensor, cond: TextEmbedding,
                       generator: torch.Generator, *, sampling: str, sigmoid_scale: float, shift: float,
                       scheduler_config: Mapping[str, Any], guidance: float,
                       dtype: torch.dtype = torch.float32, sigmas: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None, pixel_weight: torch.Tensor | None = None,
                       sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean flow-matching loss over the batch; ``sigmas``/``noise`` fixed only by evaluation.
    ``pixel_weight``/``sample_weight`` weigh it per latent pixel (masks) and per image (concepts),
    as for the UNet families.

    ``family`` is the family's module (``loratui.models.flux`` or ``.sd3``): it calls the
    transformer in its own layout and returns the prediction in latent layout.
    """
    device = latents.device
    b = latents.shape[0]
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if sigmas is None:
        sigmas = sample_sigmas(generator, b, method=sampling, sigmoid_scale=sigmoid_scale, shift=shift,
                               image_tokens=image_tokens(latents), scheduler_config=scheduler_config)
    noise = to_device(noise, device)
    sigmas = to_device(sigmas.float(), device)
    latents = latents.float()
    s = sigmas.view(b, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    target = noise - latents
    pred = family.predict(transformer, noisy, sigmas, cond, guidance=guidance, dtype=dtype)
    loss = F.mse_loss(pred.float(), target, reduction="none")
    if pixel_weight is not None:
        loss = loss * pixel_weight
    loss = loss.mean(dim=(1, 2, 3))
    if sample_weight is not None:
        loss = loss * sample_weight
    return loss.mean()
