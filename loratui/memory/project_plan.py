"""The memory plan of a project: its model and settings as the planner sees them, and the plan as text.

Used by ``loratui plan``, ``loratui check`` and the wizard's Review step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loratui.config import ConfigError, ProjectConfig
from loratui.memory import arch
from loratui.memory import planner as P
from loratui.project import ProjectPaths


def current_options(cfg: ProjectConfig) -> P.Options:
    """The project's memory settings; ``auto`` storage is the training precision (or model.base_weights)."""
    half = cfg.train.precision in ("bf16", "fp16")
    precision = cfg.model.base_precision
    if precision == "auto":
        precision = "fp8" if cfg.model.base_weights == "float8" else ("bf16" if half else "fp32")
    return P.Options(precision, cfg.train.gradient_checkpointing, cfg.train.gradient_checkpointing_every,
                     cfg.train.blocks_to_swap, cfg.train.activation_offload)


def _folder_config(folder: Path) -> tuple[dict[str, Any], str] | None:
    for sub in ("transformer", "unet"):
        path = folder / sub / "config.json"
        if path.is_file():
            config = json.loads(path.read_text())
            return config, str(config.get("_class_name", ""))
    return None


def _text_encoder_params(folder: Path) -> tuple[int, ...]:
    """Parameters of each text_encoder*/ in the folder, counted on the meta device."""
    import torch
    import transformers

    counts = []
    for sub in sorted(p for p in folder.glob("text_encoder*") if (p / "config.json").is_file()):
        config = transformers.AutoConfig.from_pretrained(sub)
        names = getattr(config, "architectures", None) or []
        cls = getattr(transformers, names[0], None) if names else None
        if cls is None:
            continue
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in cls(config).parameters()))
    return tuple(counts)


def _family_of(paths: ProjectPaths, cfg: ProjectConfig, class_name: str) -> str:
    if cfg.model.family != "auto":
        return cfg.model.family
    if class_name in arch.CLASS_FAMILIES:
        return arch.CLASS_FAMILIES[class_name]
    from loratui.models.probe import probe_model

    return probe_model(paths.model_spec(cfg), config_source=paths.config_source(cfg)).family


def project_model(project_dir: Path, cfg: ProjectConfig) -> P.Model:
    """The planner's view of the project: its denoiser's real config when one is on disk, else the
    published model of its family (a hub id the planner knows, or the family's reference model)."""
    from loratui.engine.build import base_model_folder
    from loratui.models.probe import resolve_spec

    paths = ProjectPaths(Path(project_dir))
    kind, where = resolve_spec(paths.model_spec(cfg))
    folder = base_model_folder(paths, cfg) if kind != "hub" else None
    found = _folder_config(folder) if folder is not None else None
    text_params: tuple[int, ...] = ()
    if found is not None:
        config, class_name = found
        family = _family_of(paths, cfg, class_name)
        name = cfg.model.base
        text_params = _text_encoder_params(folder) if folder is not None else ()
    else:
        family = arch.HUB_CONFIGS.get(str(where).lower()) if kind == "hub" else None
        if family is None:
            family = _family_of(paths, cfg, "")
        config = arch.published_config(family)
        reference = arch.denoiser(family).published_name
        known = kind == "hub" and str(where).lower() in arch.HUB_CONFIGS
        name = cfg.model.base if known else f"{cfg.model.base} (assumed the size of {reference})"
    if not text_params:
        text_params = arch.TEXT_ENCODER_PARAMS.get(family, ())
    transformer = bool(arch.denoiser(family).block_lists)
    return P.Model(
        family=family, name=name, config=config, resolution=cfg.data.resolution, batch=cfg.train.batch_size,
        rank=cfg.lora.rank, preset=cfg.lora.preset, lora_type=cfg.lora.type, lokr_factor=cfg.lora.lokr_factor,
        half=cfg.train.precision in ("bf16", "fp16"), optimizer=cfg.train.optimizer, ema=cfg.train.ema_decay > 0,
        text_encoder_params=text_params,
        # The SD UNets keep their CLIP encoders on the GPU; the transformer families cache every caption and
        # move theirs off, unless tags are shuffled or the text encoder trains.
        text_encoders_on_device=not transformer or cfg.lora.train_text_encoder or cfg.data.shuffle_tags,
        text_tokens=_text_tokens(family, config, cfg))


def _text_tokens(family: str, config: dict[str, Any], cfg: ProjectConfig) -> int:
    t5 = cfg.model.t5_max_length
    if family == "flux":
        return t5 or (512 if config.get("guidance_embeds") else 256)
    if family == "sd3":
        return 77 + (t5 or 256)
    return arch.TEXT_TOKENS[family]


def card_memory(gpu_memory_gib: float | None) -> tuple[int | None, str]:
    """The card's memory in bytes and where the figure came from: --gpu-memory wins, else the CUDA device."""
    if gpu_memory_gib is not None:
        if gpu_memory_gib <= 0:
            raise ConfigError(f"--gpu-memory {gpu_memory_gib:g}: give the card's memory in GB, e.g. --gpu-memory 24.")
        return int(gpu_memory_gib * P.GIB), f"{gpu_memory_gib:g} GB (--gpu-memory)"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"{props.total_memory / P.GIB:.0f} GB ({props.name}, detected)"
    return None, "no GPU here: `loratui plan DIR --gpu-memory GB` plans for a card"


def project_plan(project_dir: Path, cfg: ProjectConfig, gpu_memory_gib: float | None = None) -> P.Plan:
    import torch

    card, source = card_memory(gpu_memory_gib)
    model = project_model(project_dir, cfg)
    cuda = torch.cuda.is_available() or gpu_memory_gib is not None
    result = P.plan(model, current_options(cfg), card, card_source=source, cuda=cuda)
    extra = host_memory_problems(result, host_memory_bytes()) if torch.cuda.is_available() else []
    if current_options(cfg).base_precision == "nf4" and not torch.cuda.is_available():
        extra.append("model.base_precision = \"nf4\" runs only on an NVIDIA GPU (bitsandbytes), and this machine "
                     "has none: train there, or use \"int4\" for about the same memory.")
    notes = result.notes
    missing = _missing_library(current_options(cfg).base_precision)
    if missing:
        # Training here needs the package now; a plan for another machine only needs it there.
        if torch.cuda.is_available():
            extra.append(missing)
        else:
            notes += (missing,)
    if not model.half and card is not None:
        notes += (_half_precision_note(model, card),)
    return P.Plan(result.model, result.current, result.candidates, result.best, result.card_bytes,
                  result.card_source, result.problems + tuple(extra), notes)


def _missing_library(precision: str) -> str:
    import importlib.util

    from loratui.memory.precision import PRECISIONS

    lib = PRECISIONS[precision].library if precision in PRECISIONS else None
    if lib is None or importlib.util.find_spec(lib) is not None:
        return ""
    return (f"model.base_precision = \"{precision}\" needs {lib}, which is not installed: "
            "`pip install -e '.[quant]'`, or choose \"fp8-scaled\" (no extra package).")


def _half_precision_note(model: P.Model, card: int) -> str:
    from dataclasses import replace

    half = P.plan(replace(model, half=True), None, card)
    text = ("train.precision = \"no\" trains in fp32, twice the memory and several times the time of "
            "\"bf16\" on a GPU")
    if half.best is None:
        return text + "."
    return text + (f"; with \"bf16\" the fastest that fits is {half.best.options.label()} "
                   f"(≈ {P.gib(half.best.memory.total)}).")


def host_memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


# Pinned memory is taken from what the rest of the process (captions' encoders, the data) also needs.
HOST_SHARE = 0.8


def host_memory_problems(plan: P.Plan, host_bytes: int) -> list[str]:
    """Swapped blocks that would not fit this machine's memory, said before a run fails on them."""
    if plan.current is None or not plan.current.memory.host or not host_bytes:
        return []
    held = plan.current.memory.host
    if held <= HOST_SHARE * host_bytes:
        return []
    n = plan.current.options.blocks_to_swap
    return [f"train.blocks_to_swap = {n} keeps {P.gib(held)} of blocks in pinned host memory, but this machine "
            f"has {P.gib(host_bytes)} in all: swap fewer blocks, or store the base smaller (model.base_precision "
            f"= \"fp8\" or \"int8\" halves it)."]


# -- text --------------------------------------------------------------------------------------------------


def summary_lines(plan: P.Plan) -> list[str]:
    """A few lines for Review and `loratui check`: the current settings' peak, whether it fits, the proposal."""
    m = plan.model
    lines = [f"memory plan for {m.name} at {m.resolution} px, batch {m.batch}, rank {m.rank}:"]
    lines += [f"  problem: {p}" for p in plan.problems]
    if plan.current is not None:
        mem = plan.current.memory
        fit = plan.current.fits(plan.card_bytes)
        where = (f" on {plan.card_source}" + (" — fits" if fit else " — does NOT fit")) if fit is not None \
            else f" ({plan.card_source})"
        lines.append(f"  now ({plan.current.options.label()}): ≈ {P.gib(mem.total)} peak "
                     f"(weights {P.gib(mem.weights)}, text encoders {P.gib(mem.text_encoders)}, LoRA+optimizer "
                     f"{P.gib(mem.lora)}, activations {P.gib(mem.activations)}){where}")
    if plan.card_bytes is not None:
        if plan.best is None:
            lines.append(f"  nothing the planner knows fits {P.gib(plan.card_bytes)}: lower data.resolution or "
                         "train.batch_size, or use a bigger card")
        elif plan.current is None or plan.best.options != plan.current.options:
            changes = ", ".join(f"{k} = {_toml(v)}" for k, v in plan.best.options.settings().items()
                                if plan.current is None or v != plan.current.options.settings()[k])
            lines.append(f"  fastest that fits: {plan.best.options.label()} (≈ {P.gib(plan.best.memory.total)}, "
                         f"{plan.best.relative_time:.2f}× bf16's step time): set {changes}")
        else:
            lines.append("  these are already the fastest settings that fit")
    lines += [f"  note: {n}" for n in plan.notes]
    return lines


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


def table_rows(plan: P.Plan) -> list[dict[str, Any]]:
    rows = []
    for e in sorted(plan.candidates, key=lambda e: e.relative_time):
        rows.append({"options": e.options.label(), "settings": e.options.settings(),
                     "peak_gib": round(e.memory.total / P.GIB, 2), "relative_time": round(e.relative_time, 3),
                     "fits": e.fits(plan.card_bytes), "best": e is plan.best,
                     "host_gib": round(e.memory.host / P.GIB, 2),
                     "parts_gib": {k: round(getattr(e.memory, k) / P.GIB, 2)
                                   for k in ("weights", "text_encoders", "lora", "activations", "workspace")}})
    return rows


def plan_json(plan: P.Plan) -> dict[str, Any]:
    m = plan.model
    current = None
    if plan.current is not None:
        current = {"options": plan.current.options.label(), "settings": plan.current.options.settings(),
                   "peak_gib": round(plan.current.memory.total / P.GIB, 2),
                   "fits": plan.current.fits(plan.card_bytes)}
    return {"model": m.name, "family": m.family, "resolution": m.resolution, "batch": m.batch, "rank": m.rank,
            "card_gib": None if plan.card_bytes is None else round(plan.card_bytes / P.GIB, 2),
            "card_source": plan.card_source, "problems": list(plan.problems), "notes": list(plan.notes),
            "current": current, "best": None if plan.best is None else plan.best.options.settings(),
            "options": table_rows(plan)}


REVIEW_CARDS_GIB = (24, 48, 80)


def review_lines(project_dir: Path, cfg: ProjectConfig) -> list[str]:
    """The wizard's memory lines: for this machine's card, or, without one, for 24, 48 and 80 GB cards."""
    import torch

    if torch.cuda.is_available():
        return summary_lines(project_plan(project_dir, cfg))
    model = project_model(project_dir, cfg)
    current = current_options(cfg)
    problems = P.check_options(model, current)
    if problems:
        return [f"memory plan for {model.name}:"] + [f"  problem: {p}" for p in problems]
    now = P.estimate(model, current)
    mem = now.memory
    lines = [f"memory plan for {model.name} at {model.resolution} px, batch {model.batch}: now "
             f"({current.label()}) ≈ {P.gib(mem.total)} peak (weights {P.gib(mem.weights)}, activations "
             f"{P.gib(mem.activations)}); no GPU here, so for the usual cards:"]
    for card in REVIEW_CARDS_GIB:
        result = P.plan(model, current, card * P.GIB)
        if result.best is None:
            lines.append(f"  {card} GB: nothing fits; lower data.resolution or train.batch_size")
            continue
        verdict = "as set" if now.fits(card * P.GIB) else "does not fit as set"
        lines.append(f"  {card} GB: {verdict}; fastest that fits: {result.best.options.label()} "
                     f"(≈ {P.gib(result.best.memory.total)}, {result.best.relative_time:.2f}× bf16's step time)")
    return lines
