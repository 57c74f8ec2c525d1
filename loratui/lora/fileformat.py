"""LoRA files: kohya format (the default everywhere), diffusers/PEFT format, and both ways between.

kohya-format files also carry the LyCORIS types under LyCORIS' own tensor
names (``dora_scale`` beside a LoRA's factors; ``hada_w1_a``... for LoHa;
``lokr_w1``, ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b`` for LoKr), which
ComfyUI, Forge and A1111 load; the diffusers format holds plain LoRA only.

A file is read into a :class:`LoRAFile` whose modules are keyed by kohya name
whatever the file's own spelling, so the rest of loratui sees one format.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from loratui.lora.layer import LoRANetwork
from loratui.lora.naming import (
    DIFFUSERS_PREFIX,
    KOHYA_PREFIX,
    TRANSFORMER_FAMILIES,
    UNetLayout,
    base_model_version,
    family_from_metadata,
    guess_family,
    kohya_to_module_path,
    module_path_to_kohya,
    normalize_family,
    split_kohya_name,
)
from loratui.lora.safetensors_io import LoRAFileError, read_validated_bytes, safetensors_hashes, write_atomic
from loratui.lora.variants import KNOWN_SUFFIXES, UNSUPPORTED_HINT, kind_of_suffixes, rank_of

from loratui.lora.transformer_files import guess_transformer_family, read_transformer_file, transformer_tensors

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
_KOHYA_PREFIXES = tuple(p + "_" for p in KOHYA_PREFIX.values())


@dataclass
class LoRAWeights:
    """One module's tensors: down ``[r, in(, kh, kw)]``, up ``[out, r(, 1, 1)]`` and alpha for LoRA.

    The LyCORIS types keep their other tensors in ``extra`` by file suffix:
    ``dora_scale`` beside down/up for DoRA; ``hada_*`` (LoHa) or ``lokr_*``
    (LoKr) alone, with ``down``/``up`` None.
    """

    down: torch.Tensor | None
    up: torch.Tensor | None
    alpha: float
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], alpha: float) -> LoRAWeights:
        rest = dict(tensors)
        return cls(rest.pop("lora_down.weight", None), rest.pop("lora_up.weight", None), alpha, rest)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor but alpha, by file suffix."""
        out = {} if self.down is None else {"lora_down.weight": self.down}
        if self.up is not None:
            out["lora_up.weight"] = self.up
        return {**out, **self.extra}

    @property
    def kind(self) -> str:
        return kind_of_suffixes(set(self.tensors())) or "lora"

    @property
    def rank(self) -> int | None:
        """None for a LoKr whose two factors are both full (it has no rank; its scale is 1)."""
        return rank_of(self.kind, self.tensors())

    @property
    def in_width(self) -> int:
        """The wrapped layer's input width times its kernel window (what tells model families apart)."""
        t = self.tensors()
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[1])
        if self.kind == "lokr":
            w2 = t.get("lokr_w2", t.get("lokr_w2_b"))
            return int(t["lokr_w1"].shape[1]) * int(w2[0].numel() if "lokr_w2" in t else w2.shape[1])
        assert self.down is not None
        return int(self.down[0].numel())


@dataclass
class LoRAFile:
    """A LoRA file's contents with kohya module names."""

    path: Path | None
    format: str  # "kohya", "diffusers" or "diffusers-old"
    family: str | None  # "sd1", "sd2", "sdxl" or None when it cannot be told
    metadata: dict[str, str]
    modules: dict[str, LoRAWeights] = field(default_factory=dict)

    @property
    def ranks(self) -> dict[str, int]:
        return {name: w.rank for name, w in self.modules.items()}

    @property
    def alphas(self) -> dict[str, float]:
        return {name: w.alpha for name, w in self.modules.items()}

    def component_counts(self) -> dict[str, int]:
        return dict(Counter(split_kohya_name(name)[0] for name in self.modules))

    @property
    def kinds(self) -> dict[str, int]:
        """Modules per adapter type (``lora``, ``dora``, ``loha``, ``lokr``)."""
        return dict(Counter(w.kind for w in self.modules.values()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """kohya-keyed tensors, alpha as a 0-dim float32 tensor."""
        sd: dict[str, torch.Tensor] = {}
        for name, w in self.modules.items():
            for suffix, tensor in w.tensors().items():
                sd[f"{name}.{suffix}"] = tensor
            sd[f"{name}.alpha"] = torch.tensor(w.alpha, dtype=torch.float32)
        return sd


# -- metadata and hashes -------------------------------------------------------------------


def _stringify(metadata: Mapping[str, object]) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        if value is None:
            continue
        out[str(key)] = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return out


def _serialise_with_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    # kohya hashes a serialisation that carries only its ss_* keys; the model
    # hash covers tensor bytes only, so it matches the final file regardless.
    model_hash, legacy_hash = safetensors_hashes(st_save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")}))
    hashes = {"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}
    if "modelspec.sai_model_spec" in metadata:
        # ModelSpec hashes the same tensor bytes, spelled 0x + lower-case hex.
        hashes["modelspec.hash_sha256"] = "0x" + model_hash
    return st_save(tensors, {**metadata, **hashes})


# -- writing ------------------------------------------------------------------------------------


@dataclass
class _Entry:
    component: str
    name: str  # kohya name
    path: str  # canonical diffusers module path
    weights: LoRAWeights


def _entries_from_networks(networks: Mapping[str, LoRANetwork]) -> tuple[list[_Entry], str]:
    entries, families = [], set()
    for network in networks.values():
        families.add(network.family)
        for name, module in network.items():
            w = LoRAWeights.from_tensors(module.file_tensors(), float(module.alpha))
            entries.append(_Entry(network.component, name, network.module_paths[name], w))
    if len(families) > 1:
        raise ValueError(f"networks from different model families cannot share a file: {sorted(families)}")
    names = Counter(e.name for e in entries)
    if dupes := [n for n, c in names.items() if c > 1]:
        raise ValueError(f"two networks write the same LoRA module: {dupes[:3]}")
    return entries, families.pop() if families else "sd1"


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().to("cpu")
    return (t.to(dtype) if dtype is not None else t).contiguous()


def _alpha_tensor(alpha: float, dtype: torch.dtype | None) -> torch.Tensor:
    # kohya stores alpha in the save dtype; keep float32 when that would round it.
    if dtype is not None and float(torch.tensor(alpha, dtype=dtype)) == alpha:
        return torch.tensor(alpha, dtype=dtype)
    return torch.tensor(alpha, dtype=torch.float32)


def _default_metadata(entries: list[_Entry], family: str) -> dict[str, str]:
    ranks = Counter(e.weights.rank for e in entries if e.weights.rank is not None)
    alphas = Counter(e.weights.alpha for e in entries)
    kinds = {e.weights.kind for e in entries}
    meta = {
        # LyCORIS' kohya entry point is what trains the other types; loaders go by tensor names.
        "ss_network_module": "networks.lora" if kinds <= {"lora"} else "lycoris.kohya",
        "ss_base_model_version": base_model_version(family),
        "ss_v2": str(family == "sd2"),
    }
    if ranks:
        meta["ss_network_dim"] = str(ranks.most_common(1)[0][0])
        meta["ss_network_alpha"] = f"{alphas.most_common(1)[0][0]:g}"
    return meta


def _kohya_tensors(entries: list[_Entry], dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    for e in entries:
        if not e.name.startswith(_KOHYA_PREFIXES):
            raise ValueError(f"{e.name!r} is not a kohya LoRA name")
        for suffix, tensor in e.weights.tensors().items():
            tensors[f"{e.name}.{suffix}"] = _cast(tensor, dtype)
        tensors[f"{e.name}.alpha"] = _alpha_tensor(e.weights.alpha, dtype)
    return tensors, {}


def _write(path: Path, entries: list[_Entry], family: str, metadata: Mapping[str, object],
           dtype: torch.dtype | None, fmt: str) -> None:  # fmt: skip
    if not entries:
        raise ValueError(f"there are no LoRA modules to save to {path}")
    if family in TRANSFORMER_FAMILIES:
        tensors, extra = transformer_tensors(entries, family, fmt, lambda t: _cast(t, dtype),
                                             lambda a: _alpha_tensor(a, dtype))
    else:
        tensors, extra = (_kohya_tensors if fmt == "kohya" else _diffusers_tensors)(entries, dtype)
    meta = {**_default_metadata(entries, family), **_stringify(metadata), **extra}
    write_atomic(Path(path), _serialise_with_hashes(tensors, meta))


def save_kohya(path: str | os.PathLike[str], networks: Mapping[str, LoRANetwork], metadata: Mapping[str, object],
               *, dtype: torch.dtype | None = torch.float16) -> None:  # fmt: skip
    """Write the networks as a kohya LoRA (loads in A1111, Forge, ComfyUI and diffusers)."""
    _write(Path(path), *_entries_from_networks(networks), metadata, dtype, "kohya")


def save_diffusers(path: str | os.PathLike[str], networks: Mapping[str, LoRANetwork], metadata: Mapping[str, object],
                   *, dtype: torch.dtype | None = torch.float16) -> None:  # fmt: skip
    """Write the networks in the diffusers/PEFT format, with alpha kept in ``lora_adapter_metadata``."""
    _write(Path(path), *_entries_from_networks(networks), metadata, dtype, "diffusers")


def _peft_target(component: str, path: str) -> str:
    # Patterns without "text_model." match CLIPTextModel under transformers 4
    # and 5 alike (PEFT matches a pattern against the end of a module path).
    return path.removeprefix("text_model.") if component != "unet" else path


def _adapter_metadata(entries: list[_Entry]) -> dict[str, object]:
    packed: dict[str, object] = {}
    by_prefix: dict[str, list[_Entry]] = {}
    for e in entries:
        by_prefix.setdefault(DIFFUSERS_PREFIX[e.component], []).append(e)
    for prefix, group in by_prefix.items():
        r = Counter(e.weights.rank for e in group).most_common(1)[0][0]
        alpha = Counter(e.weights.alpha for e in group).most_common(1)[0][0]
        packed[f"{prefix}.r"] = r
        packed[f"{prefix}.lora_alpha"] = alpha
        packed[f"{prefix}.target_modules"] = sorted(_peft_target(e.component, e.path) for e in group)
        packed[f"{prefix}.rank_pattern"] = {
            _peft_target(e.component, e.path): e.weights.rank for e in group if e.weights.rank != r
        }
        packed[f"{prefix}.alpha_pattern"] = {
            _peft_target(e.component, e.path): e.weights.alpha for e in group if e.weights.alpha != alpha
        }
    return packed


def _diffusers_tensors(entries: list[_Entry], dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if kinds := sorted({e.weights.kind for e in entries} - {"lora"}):
        raise LoRAFileError(
            f"the diffusers/PEFT format holds plain LoRA only, and these modules are {'/'.join(kinds)}: write "
            "them in the kohya format (save.format = \"kohya\"), which ComfyUI, Forge and A1111 load"
        )
    tensors: dict[str, torch.Tensor] = {}
    for e in entries:
        key = f"{DIFFUSERS_PREFIX[e.component]}.{e.path}"
        tensors[f"{key}.lora_A.weight"] = _cast(e.weights.down, dtype)
        tensors[f"{key}.lora_B.weight"] = _cast(e.weights.up, dtype)
    adapter = json.dumps(_adapter_metadata(entries), indent=2, sort_keys=True)
    return tensors, {"format": "pt", LORA_ADAPTER_METADATA_KEY: adapter}


# -- reading ---------------------------------------------------------------------------------

_PEFT_SUFFIX = re.compile(
    r"^(?P<module>.+?)(?:\.lora_(?P<peft>[AB])\.weight|\.lora(?:_linear_layer)?\.(?P<old>down|up)\.weight"
    r"|_lora\.(?P<proc>down|up)\.weight|\.alpha)$"
)
_KOHYA_KEY = re.compile(r"^(?P<module>[^.]+)\.(?P<suffix>.+)$")
_DIFFUSERS_COMPONENTS = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2"}
_TE_ATTN = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def _pair_up(tensors: dict[str, torch.Tensor], pattern: re.Pattern[str], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Group tensors by module into {"down", "up", "alpha"}; anything else is an error naming the key."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = pattern.match(key)
        if m is None:
            raise LoRAFileError(
                f"LoRA file {path} has a key loratui cannot read: {key!r}; diffusers/PEFT files are read as "
                "plain LoRA only (LoHa/LoKr/DoRA are read from kohya/LyCORIS files)"
            )
        groups = m.groupdict()
        part = {"A": "down", "B": "up"}.get(groups.get("peft") or "") or groups.get("part") or groups.get("old")
        pairs.setdefault(m["module"], {})[part or groups.get("proc") or "alpha"] = tensor
    for module, parts in pairs.items():
        if "down" not in parts or "up" not in parts:
            raise LoRAFileError(f"LoRA file {path}: module {module!r} has no {'up' if 'down' in parts else 'down'} weight")
    return pairs


def _read_kohya(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, LoRAWeights]:
    """kohya/LyCORIS keys grouped by module; an unknown or incomplete set of tensors is an error naming it."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KOHYA_KEY.match(key)
        if m is None or m["suffix"] not in KNOWN_SUFFIXES:
            raise LoRAFileError(f"LoRA file {path} has a key loratui cannot read: {key!r}; {UNSUPPORTED_HINT}")
        grouped.setdefault(m["module"], {})[m["suffix"]] = tensor
    modules = {}
    for module, parts in grouped.items():
        kind = kind_of_suffixes(set(parts))
        if kind is None:
            raise LoRAFileError(
                f"LoRA file {path}: module {module!r} has an incomplete or mixed set of tensors "
                f"({', '.join(sorted(parts))}); {UNSUPPORTED_HINT}"
            )
        alpha = parts.pop("alpha", None)
        rank = rank_of(kind, parts)
        # Every loader reads a missing alpha as alpha = rank (scale 1).
        value = float(alpha.float().reshape(-1)[0]) if alpha is not None else float(rank or 1)
        modules[module] = LoRAWeights.from_tensors(parts, value)
    return modules


def _alpha(parts: dict[str, torch.Tensor]) -> float:
    # Every loader reads a missing alpha as alpha = rank (scale 1).
    return float(parts["alpha"].float().reshape(-1)[0]) if "alpha" in parts else float(parts["down"].shape[0])


def _diffusers_module_path(module: str) -> tuple[str, str]:
    """``unet.down_blocks...attn1.processor.to_q`` -> (``unet``, canonical module path)."""
    prefix, _, path = module.partition(".")
    path = path.replace(".processor.", ".")
    if prefix == "unet":
        return "unet", re.sub(r"\.to_out$", ".to_out.0", path)
    # The old attention-processor spelling named CLIP's projections like the UNet's.
    path = re.sub(r"\.(to_q|to_k|to_v|to_out)(\.0)?$", lambda m: "." + _TE_ATTN[m[1]], path)
    return _DIFFUSERS_COMPONENTS[prefix], path if path.startswith("text_model.") else "text_model." + path


def _adapter_alpha(adapter: dict[str, object], prefix: str, path: str, rank: int) -> float:
    """The alpha PEFT would use for a module, from diffusers' lora_adapter_metadata."""
    for key, value in dict(adapter.get(f"{prefix}.alpha_pattern") or {}).items():  # type: ignore[call-overload]
        if re.match(rf"(.*\.)?({key})$", path):
            return float(value)
    alpha = adapter.get(f"{prefix}.lora_alpha")
    return float(alpha) if alpha is not None else float(rank)  # type: ignore[arg-type]


def _read_diffusers(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path
                    ) -> tuple[dict[tuple[str, str], LoRAWeights], str]:  # fmt: skip
    """Modules keyed by (component, canonical path), and "diffusers" or "diffusers-old"."""
    adapter = json.loads(metadata.get(LORA_ADAPTER_METADATA_KEY) or "{}")
    old = any(not k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha")) for k in tensors)
    modules = {}
    for module, parts in _pair_up(tensors, _PEFT_SUFFIX, path).items():
        component, mpath = _diffusers_module_path(module)
        prefix = module.partition(".")[0]
        if "alpha" in parts:
            alpha = _alpha(parts)
        else:
            alpha = _adapter_alpha(adapter, prefix, mpath.removeprefix("text_model."), int(parts["down"].shape[0]))
        modules[(component, mpath)] = LoRAWeights(parts["down"], parts["up"], alpha)
    return modules, "diffusers-old" if old else "diffusers"


def _normalise_names(modules: dict[str, LoRAWeights], family: str, layout: UNetLayout | None) -> dict[str, LoRAWeights]:
    """Rename modules to the spelling this family's loaders expect (SGM for SDXL, diffusers for SD1/SD2)."""
    out = {}
    for name, w in modules.items():
        try:
            component, mpath = kohya_to_module_path(name, family, layout)
            out[module_path_to_kohya(component, mpath, family, layout)] = w
        except ValueError:
            out[name] = w  # a module outside the known layout keeps the file's own name
    return out


def load_lora_file(path: str | os.PathLike[str], *, family: str | None = None,
                   layers_per_block: int | None = None) -> LoRAFile:  # fmt: skip
    """Read a kohya or diffusers/PEFT LoRA file into kohya-named modules.

    ``family`` overrides the guess (metadata, then names, then widths);
    ``layers_per_block`` sets SDXL's SGM block numbering (default 2).
    """
    path = Path(path)
    data = read_validated_bytes(path)
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise LoRAFileError(f"LoRA file {path} could not be read as safetensors ({exc}); copy it again") from exc
    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    if not tensors:
        raise LoRAFileError(f"LoRA file {path} holds no tensors")
    family = normalize_family(family) if family else None
    flow_family = family or family_from_metadata(metadata) or guess_transformer_family(list(tensors))
    if flow_family in TRANSFORMER_FAMILIES:
        by_name, fmt = read_transformer_file(tensors, metadata, flow_family, LoRAWeights, str(path))
        return LoRAFile(path, fmt, flow_family, dict(metadata), by_name)

    if all(k.startswith(_KOHYA_PREFIXES) for k in tensors):
        fmt = "kohya"
        modules = _read_kohya(tensors, path)
    elif all(k.partition(".")[0] in _DIFFUSERS_COMPONENTS for k in tensors):
        by_path, fmt = _read_diffusers(tensors, metadata, path)
        # Provisional SD1-style names (diffusers block names; te2 stays te2)
        # are enough to guess the family; the names are then made final.
        modules = {module_path_to_kohya(c, p, "sd1"): w for (c, p), w in by_path.items()}
    else:
        odd = next(k for k in tensors if not k.startswith(_KOHYA_PREFIXES))
        raise LoRAFileError(
            f"LoRA file {path} is neither kohya (lora_unet_/lora_te_ keys) nor diffusers (unet./text_encoder. keys); "
            f"first unrecognised key: {odd!r}"
        )
    family = family or guess_family({n: (w.rank or 0, w.in_width) for n, w in modules.items()}, metadata)
    if family == "sdxl":
        modules = {re.sub(r"^lora_te_", "lora_te1_", n): w for n, w in modules.items()}
    if family is not None:
        modules = _normalise_names(modules, family, UNetLayout.for_family(family, layers_per_block))
    return LoRAFile(path, fmt, family, dict(metadata), modules)


# -- conversion and reuse -----------------------------------------------------------------------


def _entries_from_file(lora: LoRAFile, family: str, layers_per_block: int | None) -> list[_Entry]:
    layout = UNetLayout.for_family(family, layers_per_block)
    entries = []
    for name, w in lora.modules.items():
        component, mpath = kohya_to_module_path(name, family, layout)
        entries.append(_Entry(component, name, mpath, w))
    return entries


def convert_lora_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], to: str, *,
                      family: str | None = None, layers_per_block: int | None = None,
                      dtype: torch.dtype | None = None) -> LoRAFile:  # fmt: skip
    """Rewrite ``src`` as ``to`` ("kohya" or "diffusers"), keeping every module's scale alpha/rank."""
    if to not in ("kohya", "diffusers"):
        raise ValueError(f"unknown LoRA format {to!r}; expected 'kohya' or 'diffusers'")
    lora = load_lora_file(src, family=family, layers_per_block=layers_per_block)
    fam = lora.family or (normalize_family(family) if family else None)
    if fam is None:
        raise LoRAFileError(f"cannot tell whether {src} is for SD1, SD2 or SDXL; pass the model family explicitly")
    entries = _entries_from_file(lora, fam, layers_per_block)
    # Our own hashes are recomputed for the new bytes.
    meta = {k: v for k, v in lora.metadata.items() if k not in ("sshs_model_hash", "sshs_legacy_hash", "format",
                                                                  "modelspec.hash_sha256",
                                                                  LORA_ADAPTER_METADATA_KEY)}  # fmt: skip
    _write(Path(dst), entries, fam, meta, dtype, to)
    return load_lora_file(dst, family=fam, layers_per_block=layers_per_block)
