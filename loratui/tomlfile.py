"""Writing ``loratui.toml`` so that a person can keep editing it by hand.

tomlkit (rather than a plain TOML writer) keeps the user's own comments,
ordering and blank lines when the wizard saves over a file they edited; a new
file gets each field's one-line note as a comment.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit
from tomlkit.items import Table

from loratui.config import SECTIONS, field_specs

# Written as [[section.key]] tables after the plain keys, not as inline values.
_ARRAYS_OF_TABLES = ("prompts", "concepts")

if TYPE_CHECKING:
    from loratui.config import ProjectConfig


def _fresh_document(cfg: ProjectConfig) -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    doc.add(tomlkit.comment("loratui project. Every field is explained; `loratui train . --headless` runs it."))
    doc.add("name", cfg.name)
    doc.add("version", cfg.version)
    for section in SECTIONS:
        table = tomlkit.table()
        for spec in field_specs(section):
            if spec.name in _ARRAYS_OF_TABLES:
                continue
            table.add(tomlkit.comment(spec.help))
            table.add(spec.name, _plain(getattr(getattr(cfg, section), spec.name)))
        doc.add(tomlkit.nl())
        doc.add(section, table)
    _set_prompts(doc, cfg)
    _set_concepts(doc, cfg)
    return doc


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)  # type: ignore[arg-type]
    return value


def _set_prompts(doc: tomlkit.TOMLDocument, cfg: ProjectConfig) -> None:
    sample = doc["sample"]
    assert isinstance(sample, Table)
    prompts = [dataclasses.asdict(p) for p in cfg.sample.prompts]
    if not prompts:
        if "prompts" in sample:
            del sample["prompts"]
        return
    aot = tomlkit.aot()
    for p in prompts:
        t = tomlkit.table()
        for k, v in p.items():
            t.add(k, v)
        aot.append(t)
    sample["prompts"] = aot


def _set_concepts(doc: tomlkit.TOMLDocument, cfg: ProjectConfig) -> None:
    data = doc["data"]
    assert isinstance(data, Table)
    if not cfg.data.concepts:
        if "concepts" in data:
            del data["concepts"]
        return
    aot = tomlkit.aot()
    for concept in cfg.data.concepts:
        t = tomlkit.table()
        for key, value in dataclasses.asdict(concept).items():
            # A key left out inherits from [data]; writing it would freeze today's value.
            if value is not None:
                t.add(key, value)
        aot.append(t)
    data["concepts"] = aot


def _update_document(doc: tomlkit.TOMLDocument, cfg: ProjectConfig) -> None:
    doc["name"] = cfg.name
    doc["version"] = cfg.version
    for section in SECTIONS:
        if section not in doc:
            doc.add(section, tomlkit.table())
        table = doc[section]
        for spec in field_specs(section):
            if spec.name in _ARRAYS_OF_TABLES:
                continue
            new = getattr(getattr(cfg, section), spec.name)
            if spec.name in table:
                if table[spec.name] != new:  # leave untouched values (and their comments) as they are
                    table[spec.name] = new
            elif new != spec.default:
                table[spec.name] = new
    _set_prompts(doc, cfg)
    _set_concepts(doc, cfg)


def render_config_toml(cfg: ProjectConfig, existing_text: str | None = None) -> str:
    if existing_text:
        doc = tomlkit.parse(existing_text)
        _update_document(doc, cfg)
    else:
        doc = _fresh_document(cfg)
    return tomlkit.dumps(doc)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Temp file beside the target, fsync, rename: a crash leaves the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_config_toml(path: Path, cfg: ProjectConfig) -> Path:
    existing = path.read_text(encoding="utf-8") if path.exists() else None
    try:
        text = render_config_toml(cfg, existing)
    except tomlkit.exceptions.ParseError:
        # The file on disk is broken (a half edit): never overwrite what the user wrote; save beside it.
        path = path.with_name(path.name + ".new")
        text = render_config_toml(cfg, None)
    atomic_write_text(path, text)
    return path
