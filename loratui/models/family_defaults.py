"""Where a LoRA on each model family starts: the values the wizard proposes once it knows the family.

Only the settings the other trainers start differently per family are here; every
other setting keeps loratui.toml's default whatever the family. The numbers are
the ones the peers publish (read from their guides and example configs):

- Learning rate 1e-4 for every family: kohya sd-scripts' guides (``train_network.md``,
  ``sd3_train_network.md``, ``flux_train_network.md``: ``--learning_rate=1e-4``),
  ai-toolkit's ``train_lora_flux_24gb.yaml`` (``lr: 1e-4``) and diffusers'
  ``train_text_to_image_lora`` READMEs. diffusers' SD3 DreamBooth README trains at 4e-4
  with 512 px and 4x accumulation, its FLUX one with Prodigy (lr 1.0): neither is a
  plain-AdamW start at the native size, so they are not followed.
- FLUX layers ``all``: sd-scripts' ``networks/lora_flux.py`` wraps every Linear of the
  DoubleStreamBlock and SingleStreamBlock, the modulation included (its ``img_mod_dim``
  and ``single_mod_dim`` default to the rank).
- SD3 layers ``attention``: sd-scripts' SD3 guide targets "the qkv matrices and proj_out in
  the attention blocks"; diffusers' ``train_dreambooth_lora_sd3.py`` the attention
  projections of both streams.
- SD3 and FLUX in bf16 with gradient checkpointing: ai-toolkit's FLUX example
  (``dtype: bf16``, "other dtypes may not work correctly"; ``gradient_checkpointing: true``,
  "need this on unless you have a ton of vram") and both sd-scripts guides
  (``--gradient_checkpointing``). Without a GPU the engine runs fp32 whatever this says.
- FLUX samples at guidance 3.5: diffusers' ``FluxPipeline`` default (ai-toolkit's example samples
  at 4). FLUX-dev reads it through its guidance embedding, where loratui's 7 (a UNet's
  classifier-free scale, and SD3's pipeline default) overcooks the pictures.
- Chroma: ai-toolkit's ``train_lora_chroma_24gb.yaml`` (``lr: 1e-4``, ``dtype: bf16``,
  ``gradient_checkpointing: true``, samples at ``guidance_scale: 4`` with real classifier-free
  guidance and a negative prompt) and sd-scripts' ``flux_train_network.py --model_type chroma``
  (every linear layer of the blocks; Chroma's blocks have no modulation layers, so ``all`` is
  attention and feed-forward).
- FLUX.2 klein: diffusers' ``train_dreambooth_lora_flux2_klein.py`` README and musubi-tuner's
  FLUX.2 guide (learning rate 1e-4, bf16, gradient checkpointing; musubi-tuner's ``lora_flux_2``
  wraps every linear layer of the blocks, which is ``all``: FLUX.2's modulation is shared and
  outside the blocks); samples at guidance 4, ``Flux2KleinPipeline``'s default (classifier-free
  guidance against an empty prompt for the base models).
- Rank 16 / alpha 16 is ai-toolkit's example for every family and loratui's default, so it
  is not proposed per family (sd-scripts' examples use rank 16 with alpha 1).
- Resolution: the model's own size (its config's ``sample_size``, or the family's published
  size: 512 for SD1/SD2, 1024 for SDXL, SD3 and FLUX).

- Z-Image layers ``attention+ff``: musubi-tuner's ``networks/lora_zimage.py`` wraps every
  Linear of the ZImageTransformerBlocks (attention and SwiGLU feed-forward) and leaves out
  the adaptive-norm modulation (``exclude_patterns`` ``.*(_modulation|_refiner).*``); loratui's
  preset also covers the two refiners' blocks.
- Z-Image samples without classifier-free guidance (``sample.guidance = 0``): Z-Image-Turbo is
  guidance-distilled; ``ZImagePipeline``'s own example draws it with ``guidance_scale=0.0``, and
  ai-toolkit's ``train_lora_zimage_turbo_32gb.yaml`` samples with ``guidance_scale: 1`` ("Turbo
  distilled: use 1", its off). The same file trains in bf16 with gradient checkpointing (as
  here) but with Prodigy at lr 1.0, which is not a plain-AdamW start, so 1e-4 is kept.

- Qwen-Image layers ``attention+ff``: musubi-tuner's ``networks/lora_qwen_image.py`` wraps every
  Linear of the QwenImageTransformerBlocks and leaves out the ``img_mod``/``txt_mod`` modulation by
  default (``exclude_mod``). Samples at guidance 4: ``QwenImagePipeline``'s ``true_cfg_scale``
  default, with a negative prompt of " " when none is given, as its examples do. ai-toolkit's
  ``train_lora_qwen_image_24gb.yaml`` trains at ``lr: 1e-4`` in bf16 with gradient checkpointing
  (and quantizes the transformer to 3 bits, "required for 24GB", which loratui does not do).

The UNet families (SD1, SD2, SDXL) start from loratui's defaults, which follow kohya's.
"""

from __future__ import annotations

from typing import Any

from loratui.config import field_spec
from loratui.models.family import NATIVE_RESOLUTION

FAMILY_SETTINGS: tuple[str, ...] = (
    "data.resolution", "train.learning_rate", "lora.preset", "train.precision", "train.gradient_checkpointing",
    "sample.guidance",
)
"""Every setting the wizard proposes from the family; a value the user chose is never replaced."""

_FLOW_START = {"train.learning_rate": 1e-4, "train.precision": "bf16", "train.gradient_checkpointing": True}
_FAMILY_START: dict[str, dict[str, Any]] = {
    "sd1": {}, "sd2": {}, "sdxl": {},
    "sd3": {**_FLOW_START, "lora.preset": "attention"},
    "flux": {**_FLOW_START, "lora.preset": "all", "sample.guidance": 3.5},
    "zimage": {**_FLOW_START, "lora.preset": "attention+ff", "sample.guidance": 0.0},
    "qwen_image": {**_FLOW_START, "lora.preset": "attention+ff", "sample.guidance": 4.0},
    "chroma": {**_FLOW_START, "lora.preset": "all", "sample.guidance": 4.0},
    "flux2_klein": {**_FLOW_START, "lora.preset": "all", "sample.guidance": 4.0},
}

FAMILY_SOURCES = {"sd3": "sd-scripts and diffusers", "flux": "sd-scripts, ai-toolkit and diffusers",
                  "zimage": "musubi-tuner, ai-toolkit and diffusers",
                  "qwen_image": "musubi-tuner, ai-toolkit and diffusers",
                  "chroma": "ai-toolkit and sd-scripts", "flux2_klein": "diffusers and musubi-tuner"}
"""Whose published starting settings a family's values are, as the wizard names them."""


def family_start(family: str, resolution: int | None = None) -> dict[str, Any]:
    """The starting value of every setting in FAMILY_SETTINGS for ``family``.

    ``resolution`` is the model's own size when its config states one; otherwise the
    family's published size is used.
    """
    values = {path: field_spec(path).default for path in FAMILY_SETTINGS}
    values.update(_FAMILY_START.get(family, {}))
    values["data.resolution"] = resolution or NATIVE_RESOLUTION.get(family, values["data.resolution"])
    return values


def family_specific(family: str) -> dict[str, Any]:
    """Only the settings in which ``family`` starts apart from other families (besides the resolution)."""
    start = _FAMILY_START.get(family, {})
    return {path: start[path] for path in FAMILY_SETTINGS if path in start}
