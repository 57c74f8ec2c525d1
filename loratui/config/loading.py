"""Reading, checking and writing ``loratui.toml`` against the declarations in ``schema``."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any

from loratui import CONFIG_VERSION
from loratui.config.schema import (CONFIG_NAME, SECTIONS, TOP_LEVEL, ConceptConfig, ConfigError, FieldSpec,
                                   ProjectConfig, SamplePrompt, concept_specs, field_spec, field_specs)

def coerce_value(spec: FieldSpec, value: Any) -> Any:
    """Check one value against its declaration; raise ValueError with a sentence a user can act on."""
    if spec.type is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value
    if spec.type in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"must be a number, not {value!r}")
        if isinstance(value, str):
            try:
                value = float(value.strip()) if spec.type is float else int(value.strip())
            except ValueError:
                kind = "a whole number" if spec.type is int else "a number"
                raise ValueError(f"must be {kind}, not {value!r}") from None
        if spec.type is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"must be a whole number, not {value!r}")
            value = int(value)
        if not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, not {value!r}")
        value = spec.type(value)
        if spec.min is not None and value < spec.min:
            raise ValueError(f"must be at least {spec.min:g}, not {value:g}")
        if spec.max is not None and value > spec.max:
            raise ValueError(f"must be at most {spec.max:g}, not {value:g}")
        return value
    if spec.type is str:
        if not isinstance(value, str):
            raise ValueError(f"must be text (in quotes), not {value!r}")
        if spec.choices and value not in spec.choices:
            hint = _nearest(value, spec.choices)
            raise ValueError(f"must be one of {', '.join(spec.choices)}, not {value!r}{hint}")
        return value
    if spec.type is list:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, not {value!r}")
        return value
    raise TypeError(spec.type)  # a declaration bug, not user input


def _nearest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce_prompts(raw: list, where: str, problems: list[str]) -> list[SamplePrompt]:
    prompts: list[SamplePrompt] = []
    allowed = {f.name: f for f in dataclasses.fields(SamplePrompt)}
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            problems.append(f"{where}[{i}] must be a table with a prompt, not {item!r}")
            continue
        kwargs: dict[str, Any] = {}
        for key, value in item.items():
            if key not in allowed:
                problems.append(f"sample.prompts[{i}].{key} is not a known key{_nearest(key, allowed)}")
                continue
            meta = allowed[key].metadata
            spec = FieldSpec("sample.prompts", key, type(allowed[key].default), allowed[key].default,
                             meta["help"], meta["min"], meta["max"], meta["choices"], None)
            try:
                kwargs[key] = coerce_value(spec, value)
            except ValueError as exc:
                problems.append(f"sample.prompts[{i}].{key} {exc}")
        prompts.append(SamplePrompt(**kwargs))
    return prompts


def _coerce_concepts(raw: Any, problems: list[str]) -> list[ConceptConfig]:
    if not isinstance(raw, list):
        problems.append("data.concepts must be a list of [[data.concepts]] tables")
        return []
    specs = {s.name: s for s in concept_specs()}
    concepts: list[ConceptConfig] = []
    for i, item in enumerate(raw):
        where = f"data.concepts[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be a table with a folder, not {item!r}")
            continue
        kwargs: dict[str, Any] = {}
        for key, value in item.items():
            if key not in specs:
                problems.append(f"{where}.{key} is not a known key{_nearest(key, specs)}")
                continue
            try:
                kwargs[key] = coerce_value(specs[key], value)
            except ValueError as exc:
                if key == "repeats":
                    exc = ValueError(f"{exc}; a concept with no repeats would never be trained, "
                                     "remove its table instead")
                problems.append(f"{where}.{key} {exc}")
        concept = ConceptConfig(**kwargs)
        if not concept.folder.strip():
            problems.append(f"{where} needs folder = \"...\", the folder that holds its images")
        concepts.append(concept)
    return concepts


def migrate(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Bring an older file up to CONFIG_VERSION; returns the data and what was changed."""
    version = raw.get("version", CONFIG_VERSION)
    notes: list[str] = []
    # Version 1 is the first public layout; later versions add their steps here.
    if version < CONFIG_VERSION:  # pragma: no cover - nothing older exists yet
        notes.append(f"migrated from version {version}")
    return raw, notes


def config_from_dict(raw: dict[str, Any], source: str = CONFIG_NAME) -> ProjectConfig:
    """Validate a parsed TOML document; every problem is collected before raising."""
    problems: list[str] = []
    version = raw.get("version", CONFIG_VERSION)
    if not isinstance(version, int):
        raise ConfigError(f"{source}: version must be a whole number, not {version!r}.")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"{source} was written by a newer loratui (config version {version}; this one reads up to "
            f"{CONFIG_VERSION}). Upgrade loratui with `pip install -U loratui`."
        )
    raw, _ = migrate(raw)
    cfg = ProjectConfig(version=CONFIG_VERSION)
    for key, value in raw.items():
        if key == "name":
            if isinstance(value, str) and value.strip():
                cfg.name = value.strip()
            else:
                problems.append(f"name must be non-empty text, not {value!r}")
        elif key == "version":
            continue
        elif key in SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"[{key}] must be a table, not {value!r}")
                continue
            section_obj = getattr(cfg, key)
            specs = {s.name: s for s in field_specs(key)}
            for name, item in value.items():
                if name not in specs:
                    problems.append(f"{key}.{name} is not a known setting{_nearest(name, specs)}")
                    continue
                if key == "sample" and name == "prompts":
                    if not isinstance(item, list):
                        problems.append("sample.prompts must be a list of [[sample.prompts]] tables")
                        continue
                    setattr(section_obj, name, _coerce_prompts(item, "sample.prompts", problems))
                    continue
                if key == "data" and name == "concepts":
                    section_obj.concepts = _coerce_concepts(item, problems)
                    continue
                try:
                    setattr(section_obj, name, coerce_value(specs[name], item))
                except ValueError as exc:
                    problems.append(f"{key}.{name} {exc}")
        else:
            problems.append(f"{key} is not a known section or setting{_nearest(key, list(SECTIONS) + list(TOP_LEVEL))}")
    problems.extend(cross_check(cfg))
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n{listing}\nEdit the file and run again.",
                          problems)
    return cfg


def cross_check(cfg: ProjectConfig) -> list[str]:
    """Rules that span fields."""
    problems = []
    if cfg.data.resolution % cfg.data.bucket_step:
        problems.append(f"data.resolution ({cfg.data.resolution}) must be a multiple of data.bucket_step "
                        f"({cfg.data.bucket_step})")
    if cfg.data.resolution % 8:
        problems.append(f"data.resolution must be a multiple of 8 (the VAE downsamples by 8), not {cfg.data.resolution}")
    if cfg.lora.lokr_factor == 0:
        problems.append("lora.lokr_factor must be -1 (even split) or a positive factor such as 8, not 0")
    if cfg.lora.type != "lora" and cfg.save.format == "diffusers":
        problems.append(f"save.format = \"diffusers\" holds plain LoRA only; lora.type = \"{cfg.lora.type}\" "
                        "needs save.format = \"kohya\" (ComfyUI, Forge and A1111 load it)")
    if cfg.validation.folder and cfg.validation.split > 0:
        problems.append("validation.folder and validation.split are both set: hold out a share of the images "
                        "(split) or use a separate folder, not both")
    if not cfg.data.images and not cfg.data.concepts:
        problems.append("data.images must name a folder")
    if cfg.data.concepts and all(c.is_reg for c in cfg.data.concepts):
        problems.append("data.concepts are all regularization images (is_reg = true); add a concept with the "
                        "images to learn")
    folders = [c.folder.strip().rstrip("/") for c in cfg.data.concepts]
    for folder in sorted({f for f in folders if folders.count(f) > 1}):
        problems.append(f"data.concepts: folder {folder!r} is listed twice; give it one table")
    if cfg.train.optimizer == "adamw_schedulefree" and cfg.train.lr_scheduler not in ("constant",
                                                                                      "constant_with_warmup"):
        problems.append(f"train.lr_scheduler = {cfg.train.lr_scheduler!r} does not go with adamw_schedulefree, "
                        "which replaces the schedule: use \"constant\" (train.warmup_steps still warms up)")
    return problems


def load_config(project_dir: Path) -> ProjectConfig:
    path = Path(project_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path} does not exist. Create a project with `loratui new {project_dir}`.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}.") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)".
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix that line and run again.") from None
    return config_from_dict(raw, str(path))


def save_config(project_dir: Path, cfg: ProjectConfig) -> Path:
    """Write the config, keeping the user's comments and layout where the file already exists."""
    from loratui.tomlfile import write_config_toml

    return write_config_toml(Path(project_dir) / CONFIG_NAME, cfg)


def apply_override(cfg: ProjectConfig, assignment: str) -> None:
    """Apply one ``section.key=value`` from the command line, with the same checks as the file."""
    path, sep, text = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set {assignment!r}: write it as section.key=value, e.g. train.max_steps=200")
    path = path.strip()
    if path == "name":
        cfg.name = text
        return
    try:
        spec = field_spec(path)
    except KeyError:
        names = [s.path for s in field_specs()]
        raise ConfigError(f"--set {path}: not a known setting{_nearest(path, names)}") from None
    try:
        value = coerce_value(spec, text)
    except ValueError as exc:
        raise ConfigError(f"--set {path} {exc}") from None
    setattr(getattr(cfg, spec.section), spec.name, value)
    problems = cross_check(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
