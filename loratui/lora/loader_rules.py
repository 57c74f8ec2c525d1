"""What the other programs do with our files, where it differs from what a user would assume.

ComfyUI's key map (comfy/lora.py ``model_lora_keys_unet``) knows the diffusers-format UNet
keys only in the old attention-processor spelling (``unet.<path>.processor.to_q``,
``…processor.to_out``). The PEFT keys diffusers writes today (``unet.<path>.to_q``) match
nothing there, so ComfyUI skips every attention projection of such a file, in every family,
and logs "lora key not loaded"; the other layers (projections in/out, feed-forward,
convolutions) and the text encoders load. The kohya file loads whole everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ATTENTION_PROJECTION = re.compile(r"^unet\..*\.(to_q|to_k|to_v|to_out\.0)$")


def comfyui_skipped_modules(diffusers_modules: Iterable[str]) -> list[str]:
    """The modules of a diffusers-format file (``unet.…``/``text_encoder.…`` paths) ComfyUI would skip."""
    return sorted(m for m in diffusers_modules if _ATTENTION_PROJECTION.match(m))


def diffusers_format_warning(diffusers_modules: Iterable[str]) -> str | None:
    """The sentence ``export``/``convert`` print when a diffusers-format file loses layers in ComfyUI."""
    modules = list(diffusers_modules)
    skipped = comfyui_skipped_modules(modules)
    if not skipped:
        return None
    unet = sum(1 for m in modules if m.startswith("unet."))
    return (f"warning: ComfyUI does not load the attention projections (to_q, to_k, to_v, to_out.0) of a "
            f"diffusers-format file: {len(skipped)} of its {unet} UNet modules would be skipped there. "
            "For ComfyUI (and A1111/Forge) use the kohya file (save.format = \"kohya\", the default).")


def diffusers_modules_of(keys: Iterable[str]) -> list[str]:
    """Module paths of a diffusers-format file's tensor names (``….lora_A.weight`` → ``…``)."""
    out = {k.rsplit(".lora_", 1)[0] for k in keys if ".lora_A." in k or ".lora_B." in k}
    return sorted(out)
