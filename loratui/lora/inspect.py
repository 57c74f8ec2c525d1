"""``loratui inspect FILE``: what a LoRA file holds, in a table a person can read."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from loratui.lora import modelspec
from loratui.lora.fileformat import read_validated_bytes, load_lora_file, safetensors_hashes
from loratui.lora.naming import TRANSFORMER_FAMILIES

_COMPONENT_LABELS = {"unet": "UNet", "te": "text encoder", "te1": "text encoder 1", "te2": "text encoder 2"}
_FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3.x (MMDiT, flow matching)",
                  "flux": "FLUX.1 (flow matching)", "zimage": "Z-Image (single-stream DiT, flow matching)",
                  "qwen_image": "Qwen-Image (MMDiT, flow matching)", "chroma": "Chroma (FLUX blocks, T5 only, flow matching)",
                  "flux2_klein": "FLUX.2 klein (Qwen3, flow matching)",
                  None: "unknown"}
# What the transformer families' files hold, in words; the names each loader maps are in transformer_files.
_LAYOUT_LABELS = {("flux", "kohya"): "sd-scripts: lora_unet_ + Black Forest Labs names, q/k/v fused",
                  ("flux", "diffusers"): "diffusers: transformer. PEFT keys, alpha/rank folded into up",
                  ("sd3", "diffusers"): "diffusers: transformer. PEFT keys, alpha/rank folded into up",
                  ("zimage", "diffusers"): "diffusers: transformer. PEFT keys (q/k/v apart), alpha/rank folded "
                                           "into up",
                  ("qwen_image", "diffusers"): "diffusers: transformer. PEFT keys, alpha/rank folded into up",
                  ("chroma", "kohya"): "sd-scripts: lora_unet_ + Black Forest Labs names, q/k/v fused",
                  ("chroma", "diffusers"): "diffusers: transformer. PEFT keys, alpha/rank folded into up",
                  ("flux2_klein", "kohya"): "musubi-tuner: lora_unet_ + Black Forest Labs names, q/k/v fused",
                  ("flux2_klein", "diffusers"): "diffusers: transformer. PEFT keys, alpha/rank folded into up"}
_KIND_LABELS = {"lora": "LoRA", "dora": "DoRA (LoRA + dora_scale)", "loha": "LoHa (LyCORIS)",
                "lokr": "LoKr (LyCORIS)"}  # fmt: skip
# Metadata worth a line of its own; the rest is counted, not printed (ss_tag_frequency can be huge).
_SHOWN_METADATA = (
    "ss_output_name", "ss_base_model_version", "ss_sd_model_name", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_network_args", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr",
    "ss_steps", "ss_epoch", "ss_training_started_at", "ss_training_finished_at", "ss_mixed_precision",
    "ss_seed", "ss_optimizer", "ss_tag_frequency", "modelspec.sai_model_spec", "modelspec.architecture",
    "modelspec.implementation", "modelspec.title", "modelspec.description", "modelspec.author", "modelspec.date",
    "modelspec.license", "modelspec.tags", "modelspec.trigger_phrase", "modelspec.usage_hint",
    "modelspec.resolution", "modelspec.prediction_type", "modelspec.hash_sha256", "modelspec.thumbnail",
)  # fmt: skip


def inspect_lora_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a LoRA file: format, family, ranks, alphas, modules per component, metadata, hashes."""
    path = Path(path)
    lora = load_lora_file(path)
    data = read_validated_bytes(path)
    model_hash, legacy_hash = safetensors_hashes(data)
    components = lora.component_counts()
    stored = lora.metadata.get("sshs_model_hash")
    layers = None
    if lora.family in TRANSFORMER_FAMILIES:
        # Counted as the file holds them (sd-scripts' fused FLUX modules), as other tools count them;
        # "transformer_layers" is how many of diffusers' layers they cover.
        layers = components.get("unet", 0)
        components["unet"] = _file_modules(lora.path, ("lora_unet_", "transformer."))
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "format": lora.format,
        "family": lora.family,
        "modules": sum(components.values()),
        "transformer_layers": layers,
        "layout": _LAYOUT_LABELS.get((lora.family, lora.format)),
        "modules_per_component": {c: components[c] for c in ("unet", "te", "te1", "te2") if c in components},
        "text_encoder": any(c != "unet" for c in components),
        "types": dict(sorted(lora.kinds.items())),
        # A LoKr with both Kronecker factors full has no rank (scale 1): counted as "full".
        "ranks": dict(sorted(Counter(r if r is not None else "full" for r in lora.ranks.values()).items(),
                             key=lambda item: (isinstance(item[0], str), item[0]))),
        "alphas": dict(sorted(Counter(lora.alphas.values()).items())),
        "conv_modules": sum(1 for w in lora.modules.values()
                            if any(t.ndim == 4 and t.shape[-1] > 1 for t in w.tensors().values())),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for w in lora.modules.values()
                          for t in w.tensors().values()}),
        "sshs_model_hash": model_hash,
        # A file edited after saving (or renamed tensors) no longer matches its recorded hash.
        "hash_matches_metadata": None if stored is None else stored == model_hash,
        "sshs_legacy_hash": lora.metadata.get("sshs_legacy_hash", legacy_hash),
        # Where the file breaks Stability AI's ModelSpec (None: it carries no modelspec keys at all).
        "modelspec_problems": modelspec.problems(lora.metadata, data) if any(
            k.startswith("modelspec.") for k in lora.metadata) else None,
        "metadata": dict(lora.metadata),
    }


def _file_modules(path: Path, prefixes: tuple[str, ...]) -> int:
    """Distinct modules among a file's tensor names that start with ``prefixes``."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = [k for k in f.keys() if k.startswith(prefixes)]
    return len({k.rsplit(".lora_", 1)[0].rsplit(".alpha", 1)[0] for k in keys})


def _value(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _counts(counter: dict[Any, int]) -> str:
    if len(counter) == 1:
        return _value(next(iter(counter)))
    return ", ".join(f"{_value(value)} ×{n}" for value, n in counter.items())


def inspection_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of :func:`inspect_lora_file`'s summary, metadata last."""
    per = summary["modules_per_component"]
    rows = [
        ("format", summary["format"]),
        ("type", ", ".join(_KIND_LABELS.get(k, k) + (f" ×{n}" if len(summary["types"]) > 1 else "")
                           for k, n in summary["types"].items())),
        ("model family", _FAMILY_LABELS.get(summary["family"], str(summary["family"]))),
    ]
    labels = dict(_COMPONENT_LABELS)
    if summary.get("transformer_layers") is not None:
        labels["unet"] = "transformer"
    rows.append(("modules", f"{summary['modules']} (" + ", ".join(f"{labels.get(c, c)} {n}" for c, n in per.items())
                 + ")"))
    if summary.get("layout"):
        rows.append(("layout", summary["layout"]))
    if summary.get("transformer_layers") not in (None, per.get("unet")):
        rows.append(("transformer layers", f"{summary['transformer_layers']} in diffusers' layout"))
    rows += [
        ("text encoder", "trained" if summary["text_encoder"] else "not trained"),
        ("rank", _counts(summary["ranks"])),
        ("alpha", _counts(summary["alphas"])),
    ]
    if summary["conv_modules"]:
        rows.append(("3×3 conv modules", str(summary["conv_modules"])))
    rows.append(("dtype", ", ".join(summary["dtypes"])))
    rows.append(("size", f"{summary['size_bytes'] / 1e6:.1f} MB"))
    match = summary["hash_matches_metadata"]
    note = "" if match is None else " (matches metadata)" if match else " (differs from the hash in metadata)"
    rows.append(("sshs_model_hash", summary["sshs_model_hash"] + note))
    problems = summary.get("modelspec_problems")
    if problems is not None:
        rows.append(("ModelSpec", "follows the rules" if not problems else "; ".join(problems)))
    return rows


def metadata_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The metadata worth a line of its own, then a count of the rest."""
    meta = summary["metadata"]
    rows = []
    for key in _SHOWN_METADATA:
        if key in meta:
            value = _shown_value(key, meta[key], summary)
            rows.append((key, value if len(value) <= 200 else value[:200] + "…"))
    hidden = len([k for k in meta if k not in _SHOWN_METADATA and not k.startswith("sshs_")])
    if hidden:
        rows.append(("", f"{hidden} more keys not shown"))
    return rows


def _shown_value(key: str, value: str, summary: dict[str, Any]) -> str:
    """A metadata value as a person reads it: a thumbnail's size, a hash's check, the most frequent tags."""
    if key == "modelspec.thumbnail":
        kind = value.partition(";")[0]
        return f"{kind} ({len(value) * 3 // 4 / 1000:.1f} kB)"
    if key == "modelspec.hash_sha256":
        match = value == "0x" + summary["sshs_model_hash"]
        return value + (" (matches the tensors)" if match else " (differs from the tensors: the file changed)")
    if key == "ss_tag_frequency":
        try:
            folders = json.loads(value)
            counts: Counter[str] = Counter()
            for tags in folders.values():
                counts.update(tags)
        except (ValueError, AttributeError, TypeError):
            return value
        top = ", ".join(f"{tag} ×{n}" for tag, n in counts.most_common(8))
        return f"{len(counts)} tags in {len(folders)} folders" + (f"; most frequent: {top}" if top else "")
    return value


def render_inspection(summary: dict[str, Any]) -> Any:
    """A rich renderable for :func:`inspect_lora_file`'s summary."""
    from rich.console import Group
    from rich.table import Table

    table = Table(title=Path(summary["path"]).name, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in inspection_rows(summary):
        table.add_row(label, value)
    if not summary["metadata"]:
        return table
    shown = Table(title="metadata", show_header=False, box=None, pad_edge=False)
    shown.add_column(style="bold")
    shown.add_column(overflow="fold")
    for label, value in metadata_rows(summary):
        shown.add_row(label, value)
    return Group(table, shown)


def inspection_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as ``label: value`` lines, for pipes and logs: nothing wraps or is cut."""
    lines = [f"file: {summary['path']}"]
    lines += [f"{label}: {value}" for label, value in inspection_rows(summary)]
    lines += [f"metadata {label}: {value}" if label else f"metadata: {value}"
              for label, value in metadata_rows(summary)]
    return lines


def inspection_json(summary: dict[str, Any]) -> str:
    # JSON keys are strings anyway; making them so first lets "full" sort beside numeric ranks.
    flat = {k: {str(key): n for key, n in v.items()} if k in ("ranks", "alphas") else v for k, v in summary.items()}
    return json.dumps(flat, sort_keys=True, default=str)
