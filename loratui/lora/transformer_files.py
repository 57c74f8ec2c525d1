"""LoRA files of the flow-matching transformers: which keys each family is written with, and reading them back.

Which layout loads where (read from each program's loader):

- FLUX, ``lora_unet_`` + Black Forest Labs module path, fused ``qkv`` /
  ``linear1`` (sd-scripts' layout): ComfyUI and Forge map ``lora_unet_`` +
  every weight of their BFL-layout model; diffusers' FLUX loader converts it
  (``_convert_kohya_flux_lora_to_diffusers``), splitting a fused module back
  into q, k, v. This is the default for FLUX. CLIP-L is ``lora_te1_``.
- Chroma, the same layout (sd-scripts' ``--model_type chroma`` writes it):
  ComfyUI's Chroma model class is a subclass of its FLUX class, so both its
  ``lora_unet_`` rule and its ``transformer.`` rule (``flux_to_diffusers``)
  apply; diffusers' ``ChromaPipeline`` loads LoRAs with the FLUX loader and
  its converter. Chroma's blocks have no modulation layers, so its files hold
  none. ``save.format = "diffusers"`` writes ``transformer.`` PEFT keys.
- FLUX.2 klein, the same layout with FLUX.2's modules (musubi-tuner's): the
  double blocks' q/k/v fused into ``qkv``, their feed-forward layers
  ``img_mlp.0``/``img_mlp.2``, the single blocks' ``linear1``/``linear2``
  (already one layer each in diffusers). diffusers' ``Flux2KleinPipeline``
  converts it (``_convert_kohya_flux2_lora_to_diffusers``, at any width); ComfyUI's
  FLUX.2 model is a subclass of its FLUX model, so ``lora_unet_`` + its weights
  and ``flux_to_diffusers`` (which lists FLUX.2's diffusers names) both apply.
- SD3, ``transformer.`` PEFT keys: diffusers' SD3 loader reads no other
  layout, and ComfyUI maps ``transformer.`` keys onto its MMDiT. Forge does
  not run SD3. So SD3 files are always written this way; CLIP-L and CLIP-G
  are ``text_encoder.`` / ``text_encoder_2.``.
- FLUX with ``save.format = "diffusers"``: ``transformer.`` PEFT keys, read
  by diffusers, ComfyUI and Forge alike.
- Z-Image, ``transformer.`` PEFT keys with diffusers' separate q, k, v: the
  one layout both read. diffusers' Z-Image loader takes them as they are;
  ComfyUI's ``model_lora_keys_unet`` maps ``transformer.`` + every diffusers
  name of ``z_image_to_diffusers`` (comfy/utils.py) onto its fused
  ``attention.qkv`` (q, k, v at their row offsets) and ``attention.out``.
  The text encoder (Qwen3) gets no LoRA.
- Qwen-Image, ``transformer.`` PEFT keys: diffusers' Qwen-Image loader takes
  them as they are; ComfyUI's ``model_lora_keys_unet`` maps ``transformer.`` +
  every weight of its Qwen-Image model, whose names are diffusers' own. The
  text encoder (Qwen2.5-VL) gets no LoRA.

PEFT keys carry no alpha that ComfyUI reads, so those files have each
module's alpha / rank folded into its up matrix (alpha = rank everywhere),
which every loader then applies with scale 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from loratui.lora.naming import DIFFUSERS_PREFIX, te_kohya_name
from loratui.lora.transformer_names import (
    bfl_from_underscores,
    flux_bfl_module,
    flux_diffusers_parts,
    flux_fused_dims,
    internal_name,
)

TRANSFORMER_PREFIX = "transformer"
_DIFFUSION_MODEL = "diffusion_model."
# Families whose other trainers also write diffusers' paths under ``diffusion_model.`` (ai-toolkit).
_DIFFUSERS_NAMED = ("zimage", "qwen_image")
_TE_PREFIX = {"text_encoder": "te1", "text_encoder_2": "te2"}


def _baked_up(weights: Any) -> torch.Tensor:
    return weights.up.float() * (weights.alpha / weights.rank)


# -- writing ---------------------------------------------------------------------------------------


def transformer_tensors(entries: list[Any], family: str, fmt: str, cast: Callable[[torch.Tensor], torch.Tensor],
                        alpha_tensor: Callable[[float], torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (and extra metadata) of a file for this family: FLUX in sd-scripts' layout by default;
    SD3 always, and FLUX on request, as PEFT keys."""
    if family in ("flux", "chroma", "flux2_klein") and fmt == "kohya":
        return flux_kohya_tensors(entries, cast, alpha_tensor, family), {}
    return transformer_diffusers_tensors(entries, cast)


def flux_kohya_tensors(entries: list[Any], cast: Callable[[torch.Tensor], torch.Tensor],
                       alpha_tensor: Callable[[float], torch.Tensor], family: str = "flux") -> dict[str, torch.Tensor]:
    """sd-scripts' FLUX layout: BFL module names, the layers diffusers keeps apart fused into one module."""
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, Any]] = {}
    for e in entries:
        if e.component != "unet":
            tensors[f"{e.name}.lora_down.weight"] = cast(e.weights.down)
            tensors[f"{e.name}.lora_up.weight"] = cast(e.weights.up)
            tensors[f"{e.name}.alpha"] = alpha_tensor(e.weights.alpha)
            continue
        module, part, _ = flux_bfl_module(e.path, family)
        groups.setdefault(module, {})[part] = e.weights
    for module, parts in groups.items():
        down, up, alpha = fuse(module, parts, family)
        name = "lora_unet_" + module.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = cast(down)
        tensors[f"{name}.lora_up.weight"] = cast(up)
        tensors[f"{name}.alpha"] = alpha_tensor(alpha)
    return tensors


def fuse(module: str, parts: Mapping[int, Any], family: str = "flux") -> tuple[torch.Tensor, torch.Tensor, float]:
    """One LoRA equal to the sum of the parts' LoRAs on a fused weight: stacked downs, block-diagonal up.

    The fused alpha keeps the first part's scale (alpha / rank) for the fused rank; a part with another
    scale has the ratio folded into its block of the up matrix.
    """
    if len(flux_diffusers_parts(module, family)) == 1:
        (w,) = parts.values()
        return w.down.float(), w.up.float(), float(w.alpha)
    present = sorted(parts)
    first = parts[present[0]]
    width = first.up.shape[0] if present[0] < 3 else first.up.shape[0] // 4
    dims = flux_fused_dims(module, width)
    rank = sum(parts[p].rank for p in present)
    scale = first.alpha / first.rank
    down = torch.cat([parts[p].down.float() for p in present], dim=0)
    up = torch.zeros(sum(dims), rank)
    row_starts = [sum(dims[:i]) for i in range(len(dims))]
    col = 0
    for p in present:
        w = parts[p]
        ratio = (w.alpha / w.rank) / scale
        up[row_starts[p]:row_starts[p] + dims[p], col:col + w.rank] = w.up.float() * ratio
        col += w.rank
    return down, up, scale * rank


def transformer_diffusers_tensors(entries: list[Any], cast: Callable[[torch.Tensor], torch.Tensor]
                                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``transformer.`` / ``text_encoder(_2).`` PEFT keys, scale folded in (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    adapter: dict[str, Any] = {}
    ranks: dict[str, dict[str, int]] = {}
    for e in entries:
        prefix = TRANSFORMER_PREFIX if e.component == "unet" else DIFFUSERS_PREFIX[e.component]
        path = e.path if e.component == "unet" else e.path.removeprefix("text_model.")
        key = f"{prefix}.{e.path}"
        tensors[f"{key}.lora_A.weight"] = cast(e.weights.down)
        tensors[f"{key}.lora_B.weight"] = cast(_baked_up(e.weights))
        ranks.setdefault(prefix, {})[path] = e.weights.rank
    for prefix, by_path in ranks.items():
        common = max(set(by_path.values()), key=list(by_path.values()).count)
        odd = {p: r for p, r in by_path.items() if r != common}
        adapter.update({f"{prefix}.r": common, f"{prefix}.lora_alpha": common,
                        f"{prefix}.target_modules": sorted(by_path), f"{prefix}.rank_pattern": odd,
                        f"{prefix}.alpha_pattern": odd})
    return tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(adapter, indent=2, sort_keys=True)}


# -- reading ---------------------------------------------------------------------------------------


def guess_transformer_family(keys: list[str]) -> str | None:
    """From the names alone; FLUX.1, Chroma and FLUX.2 files in sd-scripts' layout share their names, so
    ``ss_base_model_version`` (read before this) or the base model tells them apart."""
    if any(k.startswith(("transformer.noise_refiner.", "transformer.context_refiner.", "transformer.layers.",
                         "diffusion_model.noise_refiner.", "diffusion_model.context_refiner.",
                         "diffusion_model.layers.",
                         "lora_unet_noise_refiner_", "lora_unet_context_refiner_", "lora_unet_layers_"))
           for k in keys):
        return "zimage"
    if any(".to_qkv_mlp_proj." in k or ".ff.linear_in." in k for k in keys):
        return "flux2_klein"
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return "flux"
    if any(k.startswith("transformer.single_transformer_blocks.") for k in keys):
        return "flux"
    if any(k.startswith(("transformer.transformer_blocks.", "diffusion_model.transformer_blocks."))
           and (".img_mlp." in k or ".img_mod." in k) for k in keys):
        return "qwen_image"  # only these layers tell it from SD3 without the file's metadata
    if any(k.startswith(("transformer.transformer_blocks.", "lora_unet_joint_blocks_")) for k in keys):
        return "sd3"
    return None


def read_transformer_file(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str], family: str,
                          make_weights: Callable[[torch.Tensor, torch.Tensor, float], Any], where: str
                          ) -> tuple[dict[str, Any], str]:
    """Modules keyed by loratui's names (``lora_unet_<diffusers path>``, ``lora_te1_…``) and the format."""
    from loratui.lora.fileformat import LoRAFileError

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = re.fullmatch(r"(.+?)\.(lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight|alpha)", key)
        if m is None:
            raise LoRAFileError(f"LoRA file {where} has a key loratui cannot read: {key!r}; only plain LoRA is "
                                "supported (not LoHa/LoKr/DoRA)")
        part = {"lora_down.weight": "down", "lora_A.weight": "down", "lora_up.weight": "up",
                "lora_B.weight": "up"}.get(m.group(2), "alpha")
        groups.setdefault(m.group(1), {})[part] = tensor
    adapter = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    modules: dict[str, Any] = {}
    fmt = "kohya"
    for module, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise LoRAFileError(f"LoRA file {where}: module {module!r} has no "
                                f"{'up' if 'down' in parts else 'down'} weight")
        down, up = parts["down"], parts["up"]
        rank = int(down.shape[0])
        if module.startswith(("lora_te1_", "lora_te2_", "lora_te_")):
            name = re.sub(r"^lora_te_", "lora_te1_", module)
            modules[name] = make_weights(down, up, _alpha(parts, rank))
        elif module.startswith(f"{TRANSFORMER_PREFIX}."):
            fmt = "diffusers"
            path = module[len(TRANSFORMER_PREFIX) + 1:]
            modules[internal_name(path)] = make_weights(down, up, _peft_alpha(adapter, TRANSFORMER_PREFIX, path, rank))
        elif module.startswith(_DIFFUSION_MODEL) and family in _DIFFUSERS_NAMED:
            # ai-toolkit's and ComfyUI's spelling of the same diffusers paths, sometimes with an alpha.
            fmt = "diffusers"
            path = module[len(_DIFFUSION_MODEL):]
            alpha = _alpha(parts, rank) if "alpha" in parts else _peft_alpha(adapter, TRANSFORMER_PREFIX, path, rank)
            modules[internal_name(path)] = make_weights(down, up, alpha)
        elif module.split(".", 1)[0] in _TE_PREFIX:
            fmt = "diffusers"
            prefix, _, path = module.partition(".")
            m = re.fullmatch(r"(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)", path)
            if m is None:
                raise LoRAFileError(f"LoRA file {where}: {module!r} is not a CLIP encoder layer loratui knows")
            name = te_kohya_name(_TE_PREFIX[prefix], int(m.group(1)), m.group(2))
            modules[name] = make_weights(down, up, _peft_alpha(adapter, prefix, path.removeprefix("text_model."),
                                                               rank))
        elif module.startswith(("lora_unet_transformer_blocks_", "lora_unet_single_transformer_blocks_",
                                "lora_unet_noise_refiner_", "lora_unet_context_refiner_", "lora_unet_layers_")):
            # loratui's own names, as checkpoints hold them.
            modules[module] = make_weights(down, up, _alpha(parts, rank))
        elif family in ("flux", "chroma", "flux2_klein") and module.startswith("lora_unet_"):
            for path, (d, u, a) in unfuse(bfl_from_underscores(module[len("lora_unet_"):]), down, up,
                                          _alpha(parts, rank), where, family).items():
                modules[internal_name(path)] = make_weights(d, u, a)
        else:
            raise LoRAFileError(
                f"LoRA file {where}: {module!r} is not a {family} module in a layout loratui reads "
                "(FLUX: lora_unet_ + Black Forest Labs names or transformer. keys; SD3, Z-Image and "
                "Qwen-Image: transformer. keys)")
    return modules, fmt


def _alpha(parts: Mapping[str, torch.Tensor], rank: int) -> float:
    return float(parts["alpha"].float().reshape(-1)[0]) if "alpha" in parts else float(rank)


def _peft_alpha(adapter: Mapping[str, Any], prefix: str, path: str, rank: int) -> float:
    for pattern, value in dict(adapter.get(f"{prefix}.alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({re.escape(pattern)})$", path):
            return float(value)
    alpha = adapter.get(f"{prefix}.lora_alpha")
    return float(alpha) if alpha is not None else float(rank)


def unfuse(module: str, down: torch.Tensor, up: torch.Tensor, alpha: float, where: str, family: str = "flux"
           ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """A BFL module's LoRA as LoRAs of the diffusers layers fused into it.

    Parts whose rows of the up matrix are all zero are left out. When the up matrix is block-diagonal
    (as loratui writes it) each part gets back its own rank; otherwise (a LoRA trained on the fused
    weight, as sd-scripts trains) every part shares the whole down matrix and its slice of the up rows.
    """
    from loratui.lora.fileformat import LoRAFileError

    try:
        paths = flux_diffusers_parts(module, family)
    except ValueError as exc:
        raise LoRAFileError(f"LoRA file {where}: {exc}") from None
    rank = int(down.shape[0])
    if len(paths) == 1:
        return {paths[0]: (down, up, alpha)}
    width = up.shape[0] // (3 if module.endswith(".qkv") else 7)
    dims = flux_fused_dims(module, width)
    if sum(dims) != up.shape[0]:
        raise LoRAFileError(f"LoRA file {where}: {module} has {up.shape[0]} output rows, not the {sum(dims)} "
                            "a FLUX block fuses there")
    starts = [sum(dims[:i]) for i in range(len(dims))]
    rows = {i: up[starts[i]:starts[i] + dims[i]] for i in range(len(dims))}
    present = [i for i in rows if bool(rows[i].abs().sum() > 0)] or list(rows)
    scale = alpha / rank
    if rank % len(present) == 0:
        r = rank // len(present)
        diagonal = all(bool((rows[i][:, k * r:(k + 1) * r] == 0).all())
                       for j, i in enumerate(present) for k in range(len(present)) if k != j)
        if diagonal:
            return {paths[i]: (down[j * r:(j + 1) * r], rows[i][:, j * r:(j + 1) * r].contiguous(), scale * r)
                    for j, i in enumerate(present)}
    return {paths[i]: (down, rows[i].contiguous(), alpha) for i in present}
