"""Put LoRA modules into a UNet or CLIP text encoder by preset.

Presets (UNet):
  ``attention``     to_q/to_k/to_v/to_out.0 of attn1/attn2 in every Transformer2DModel
  ``attention+ff``  every Linear/Conv2d in every Transformer2DModel (kohya's default)
  ``all``           attention+ff plus every Linear/Conv2d in ResnetBlock2D,
                    Downsample2D and Upsample2D (LoCon)
Text encoders always get q/k/v/out_proj and mlp.fc1/fc2 of every encoder layer.

Matching is by class (falling back to class name, since libraries rename
classes), and the number of modules found is checked against what the model
config implies, so a family that silently stopped matching is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from loratui.lora.layer import AdapterModule, LoRANetwork
from loratui.lora.naming import (
    COMPONENTS,
    TE_TARGETS,
    TRANSFORMER_FAMILIES,
    UNetLayout,
    components_for,
    kohya_to_module_path,
    normalize_family,
    split_kohya_name,
    te_kohya_name,
    te_module_path,
    unet_kohya_name,
)
from loratui.lora.variants import adapter_for_tensors, make_adapter

from loratui.lora.transformer_names import expected_transformer_count, internal_name, transformer_targets

if TYPE_CHECKING:
    from loratui.lora.fileformat import LoRAFile

UNET_PRESETS = ("attention", "attention+ff", "all")
_ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# torch.compile / DDP wrap a model and prefix every path; names must not change.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class _Classes:
    """Library classes looked up on first use, so importing loratui.lora stays cheap."""

    def __init__(self, *spec: tuple[str, str]) -> None:
        self._spec = spec
        self._found: tuple[type, ...] | None = None

    def get(self) -> tuple[type, ...]:
        if self._found is None:
            found = []
            for module_name, class_name in self._spec:
                try:
                    found.append(getattr(__import__(module_name, fromlist=[class_name]), class_name))
                except (ImportError, AttributeError):
                    continue  # renamed or moved: the class-name fallback still applies
            self._found = tuple(found)
        return self._found


def _is(module: nn.Module, classes: _Classes | tuple[type, ...], names: tuple[str, ...]) -> bool:
    if type(module).__name__ in names:
        return True
    return isinstance(module, classes.get() if isinstance(classes, _Classes) else classes)


_TRANSFORMER = (_Classes(("diffusers.models.transformers.transformer_2d", "Transformer2DModel")),
                ("Transformer2DModel", "SpatialTransformer"))  # fmt: skip
_RESNET = (_Classes(("diffusers.models.resnet", "ResnetBlock2D")), ("ResnetBlock2D",))
_SAMPLER = (
    _Classes(("diffusers.models.downsampling", "Downsample2D"), ("diffusers.models.upsampling", "Upsample2D")),
    ("Downsample2D", "Upsample2D"),
)
_ENCODER_LAYER = (_Classes(("transformers.models.clip.modeling_clip", "CLIPEncoderLayer")), ("CLIPEncoderLayer",))


def _strip_wrapper(path: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while path.startswith(prefix):
            path = path[len(prefix) :]
    return path


def _layers(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    return [
        (f"{prefix}.{name}", sub)
        for name, sub in module.named_modules()
        if name and isinstance(sub, (nn.Linear, nn.Conv2d, AdapterModule))
        and not any(part in ("lora_down", "lora_up") for part in name.split("."))
    ]


def _unet_targets(root: nn.Module, preset: str) -> list[tuple[str, nn.Module]]:
    found: dict[str, nn.Module] = {}
    for path, module in root.named_modules():
        if _is(module, *_TRANSFORMER):
            if preset == "attention":
                for sub_path, sub in module.named_modules():
                    if re.search(r"(^|\.)attn\d$", sub_path) and hasattr(sub, "to_q"):
                        for target in _ATTN_TARGETS:
                            found.setdefault(f"{path}.{sub_path}.{target}", sub.get_submodule(target))
            else:
                found.update({p: m for p, m in _layers(module, path) if p not in found})
        elif preset == "all" and (_is(module, *_RESNET) or _is(module, *_SAMPLER)):
            found.update({p: m for p, m in _layers(module, path) if p not in found})
    # Drop the base layers found inside an already-wrapped adapter.
    return [(p, m) for p, m in found.items() if not p.endswith(".base")]


def _te_targets(root: nn.Module) -> list[tuple[int, str, str, nn.Module]]:
    """(layer index, sub-name, actual path, module) for every CLIP encoder target."""
    out = []
    for path, module in root.named_modules():
        # A renamed layer class is still recognised by its shape: attention plus MLP.
        if not (_is(module, *_ENCODER_LAYER) or (hasattr(module, "self_attn") and hasattr(module, "mlp"))):
            continue
        m = re.search(r"layers\.(\d+)$", path)
        if m is None:
            raise RuntimeError(f"cannot read the layer index of text-encoder layer {path!r}")
        for sub in TE_TARGETS:
            try:
                target = module.get_submodule(sub)
            except AttributeError as exc:
                raise RuntimeError(
                    f"text-encoder layer {path!r} has no {sub!r}; this transformers version lays CLIP out "
                    "differently and is not supported"
                ) from exc
            out.append((int(m.group(1)), sub, f"{path}.{sub}", target))
    return out


def inject_lora(
    root: nn.Module,
    *,
    component: str,
    family: str,
    preset: str,
    rank: int,
    alpha: float,
    generator: torch.Generator | None = None,
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
    check_count: bool = True,
    kind: str = "lora",
    lokr_factor: int = -1,
) -> LoRANetwork:
    """Wrap the preset's layers of ``root`` (a UNet or CLIP text encoder) with LoRA.

    ``conv_rank``/``conv_alpha`` apply to convolutions with a kernel larger than
    1x1 (kohya's conv_dim/conv_alpha) and default to ``rank``/``alpha``.
    ``kind`` is the adapter type (``lora``, ``dora``, ``loha``, ``lokr``;
    ``lokr_factor`` splits LoKr's dimensions), see :mod:`loratui.lora.variants`.
    """
    family = normalize_family(family)
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    if component not in components_for(family):
        raise ValueError(
            f"component {component!r} does not exist in a {family} model; use one of {components_for(family)}"
        )
    if component == "unet" and preset not in UNET_PRESETS:
        raise ValueError(f"unknown LoRA layer preset {preset!r}; expected one of {', '.join(UNET_PRESETS)}")

    if component == "unet" and family in TRANSFORMER_FAMILIES:
        targets = [(internal_name(p), p, p, m) for p, m in transformer_targets(root, preset)]
    elif component == "unet":
        layout = UNetLayout.from_config(root.config) if hasattr(root, "config") else UNetLayout.for_family(family)
        targets = [
            (unet_kohya_name(_strip_wrapper(p), family, layout), _strip_wrapper(p), p, m)
            for p, m in _unet_targets(root, preset)
        ]
    else:
        targets = [(te_kohya_name(component, i, sub), te_module_path(i, sub), p, m) for i, sub, p, m in _te_targets(root)]

    if check_count:
        if component == "unet" and family in TRANSFORMER_FAMILIES:
            expected = expected_transformer_count(getattr(root, "config", None), family, preset)
        else:
            expected = expected_module_count(root, component, preset)
        if expected is not None and expected != len(targets):
            raise RuntimeError(
                f"found {len(targets)} {component} layers for the {preset!r} preset, but the model config implies "
                f"{expected}; the installed diffusers/transformers names its modules differently than loratui "
                "expects, so part of the model would silently get no LoRA"
            )

    modules: dict[str, AdapterModule] = {}
    paths: dict[str, str] = {}
    sites: dict[str, tuple[nn.Module, str, nn.Module]] = {}
    for name, canonical, actual, base in targets:
        if isinstance(base, AdapterModule):
            raise RuntimeError(f"{actual!r} already has a LoRA; remove the old network before injecting another")
        if name in modules:
            raise RuntimeError(f"two {component} layers map to the same kohya name {name!r}")
        big_kernel = isinstance(base, nn.Conv2d) and tuple(base.kernel_size) != (1, 1)
        r = conv_rank if big_kernel and conv_rank else rank
        a = conv_alpha if big_kernel and conv_alpha else alpha
        parent_path, _, attr = actual.rpartition(".")
        parent = root.get_submodule(parent_path) if parent_path else root
        lora = make_adapter(kind, base, r, a, generator=generator, lokr_factor=lokr_factor)
        setattr(parent, attr, lora)
        modules[name], paths[name], sites[name] = lora, canonical, (parent, attr, base)
    return LoRANetwork(component, family, preset, modules, paths, sites)


def _find(root: nn.Module, component: str, path: str) -> tuple[str, nn.Module] | None:
    """The module at a canonical path, allowing for transformers 5's CLIPTextModel without ``text_model.``."""
    candidates = [path]
    if component != "unet":
        candidates.append(path.removeprefix("text_model."))
    for candidate in candidates:
        for prefix in ("", *_WRAPPER_PREFIXES):
            try:
                return prefix + candidate, root.get_submodule(prefix + candidate)
            except AttributeError:
                continue
    return None


def inject_from_file(lora: LoRAFile, roots: Mapping[str, nn.Module], *, strict: bool = True) -> dict[str, LoRANetwork]:
    """Wrap exactly the layers a LoRA file has, with its own per-module ranks and alphas, and load it.

    For sampling with any kohya or diffusers LoRA whatever preset or ranks it
    was trained with. ``roots`` maps component to model (``{"unet": unet,
    "te": text_encoder}``); load the file with the model's family
    (``load_lora_file(path, family=...)``) so SDXL/SD1 names resolve. With
    ``strict``, modules the model does not have are an error naming them.
    """
    family = lora.family or "sd1"
    groups: dict[str, list[str]] = {}
    for name in lora.modules:
        groups.setdefault(split_kohya_name(name)[0], []).append(name)
    networks: dict[str, LoRANetwork] = {}
    unknown: list[str] = [n for c, names in groups.items() if c not in roots for n in names]
    for component, names in groups.items():
        root = roots.get(component)
        if root is None:
            continue
        config = getattr(root, "config", None)
        layout = UNetLayout.from_config(config) if component == "unet" and config is not None else None
        modules: dict[str, AdapterModule] = {}
        paths: dict[str, str] = {}
        sites: dict[str, tuple[nn.Module, str, nn.Module]] = {}
        for name in names:
            _, canonical = kohya_to_module_path(name, family, layout)
            found = _find(root, component, canonical)
            if found is None or not isinstance(found[1], (nn.Linear, nn.Conv2d)):
                unknown.append(name)
                continue
            actual, base = found
            weights = lora.modules[name]
            parent_path, _, attr = actual.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            modules[name] = adapter_for_tensors(base, weights.kind, weights.tensors(), weights.alpha)
            setattr(parent, attr, modules[name])
            paths[name], sites[name] = canonical, (parent, attr, base)
        network = LoRANetwork(component, family, "file", modules, paths, sites)
        networks[component] = network
        try:
            network.load_state_dict({k: v for k, v in lora.state_dict().items() if k.partition(".")[0] in modules})
        except ValueError:
            network.remove()
            raise
    if strict and unknown:
        for network in networks.values():
            network.remove()
        raise ValueError(
            f"LoRA file {lora.path} has {len(unknown)} modules this {family} model does not have "
            f"(e.g. {sorted(unknown)[:3]}); it was made for another model family or layout"
        )
    return networks


# -- expected counts ---------------------------------------------------------------


def _get(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _per_layer(value: Any, index: int, layers: int) -> int:
    """Transformer depth summed over a block's layers (config values may be int, per-block or per-layer)."""
    if isinstance(value, int):
        return value * layers
    item = value[index]
    return sum(item) if isinstance(item, (list, tuple)) else int(item) * layers


def _resnet_layers(in_ch: int, out_ch: int) -> int:
    # conv1, conv2, time_emb_proj, and a 1x1 shortcut when the channels change.
    return 3 + (1 if in_ch != out_ch else 0)


def expected_module_count(root: nn.Module, component: str, preset: str) -> int | None:
    """How many layers a preset should wrap, worked out from the model config alone.

    Returns None when the config has blocks this rule does not know.
    """
    config = getattr(root, "config", None)
    if component != "unet":
        layers = _get(config, "num_hidden_layers")
        return int(layers) * len(TE_TARGETS) if layers else None

    down, up = _get(config, "down_block_types"), _get(config, "up_block_types")
    channels = _get(config, "block_out_channels")
    lpb = _get(config, "layers_per_block")
    if not down or not up or not channels or not isinstance(lpb, int):
        return None
    known_down, known_up = {"CrossAttnDownBlock2D", "DownBlock2D"}, {"CrossAttnUpBlock2D", "UpBlock2D"}
    mid = _get(config, "mid_block_type", "UNetMidBlock2DCrossAttn")
    if set(down) - known_down or set(up) - known_up or mid not in ("UNetMidBlock2DCrossAttn", None):
        return None
    depth = _get(config, "transformer_layers_per_block", 1)
    reverse = _get(config, "reverse_transformer_layers_per_block") or (
        depth if isinstance(depth, int) else list(reversed(depth))
    )

    transformers = blocks = 0
    for i, kind in enumerate(down):
        if kind.startswith("CrossAttn"):
            transformers += lpb
            blocks += _per_layer(depth, i, lpb)
    if mid == "UNetMidBlock2DCrossAttn":
        transformers += 1
        blocks += _per_layer(depth, len(down) - 1, 1)
    for i, kind in enumerate(up):
        if kind.startswith("CrossAttn"):
            transformers += lpb + 1
            blocks += _per_layer(reverse, i, lpb + 1)

    if preset == "attention":
        return 8 * blocks
    count = 10 * blocks + 2 * transformers
    if preset != "all":
        return count

    # Walk the channels the way UNet2DConditionModel builds its blocks.
    out_ch = channels[0]
    for i in range(len(down)):
        in_ch, out_ch = out_ch, channels[i]
        count += sum(_resnet_layers(in_ch if j == 0 else out_ch, out_ch) for j in range(lpb))
        count += 1 if i < len(down) - 1 else 0
    if mid is not None:
        count += 2 * _resnet_layers(channels[-1], channels[-1])
    rev = list(reversed(channels))
    out_ch = rev[0]
    for i in range(len(up)):
        prev, out_ch = out_ch, rev[i]
        skip_in = rev[min(i + 1, len(rev) - 1)]
        for j in range(lpb + 1):
            skip = skip_in if j == lpb else out_ch
            count += _resnet_layers((prev if j == 0 else out_ch) + skip, out_ch)
        count += 1 if i < len(up) - 1 else 0
    return count
