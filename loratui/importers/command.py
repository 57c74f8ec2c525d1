"""``loratui import DIR --kohya ARGS.toml [--dataset DATASET.toml]``: write the project and say what happened."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from rich.console import Console

from loratui.config import CONFIG_NAME, ConfigError, ProjectConfig, config_from_dict, save_config
from loratui.importers import ImportReport


def run_import(project_dir: Path, *, kohya: Path | None, dataset: Path | None, force: bool,
               console: Console) -> int:
    from loratui.importers.kohya import import_kohya

    if kohya is None and dataset is None:
        raise ConfigError("loratui import needs --kohya ARGS.toml (or the kohya_ss GUI's .json) and/or "
                          "--dataset DATASET.toml.")
    for flag, path in (("--kohya", kohya), ("--dataset", dataset)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file.")
    target = Path(project_dir) / CONFIG_NAME
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; import into a new folder, or add --force to replace it "
                          f"(the old one is kept as {CONFIG_NAME}.bak).")
    cfg, report = import_kohya(kohya, dataset)
    if not cfg.save.output_name:  # no output_name in kohya's files: name it after the folder, as `new` does
        from loratui.project import safe_name

        cfg.name = safe_name(Path(project_dir).resolve().name)
    # Whatever was mapped must load back: validate the result as the file it becomes.
    from loratui.tomlfile import render_config_toml

    try:
        config_from_dict(tomllib.loads(render_config_toml(cfg)), str(target))
    except ConfigError as exc:  # a combination we could not foresee; say so rather than write a broken file
        raise ConfigError(f"the imported settings do not validate, nothing was written:\n{exc}") from None
    Path(project_dir).mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.copy2(target, target.with_name(CONFIG_NAME + ".bak"))
        target.unlink()
    save_config(Path(project_dir), cfg)
    _print(console, report, target, cfg)
    return 0


def _print(console: Console, report: ImportReport, target: Path, cfg: ProjectConfig) -> None:
    for line in report.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    folders = [c.folder for c in cfg.data.concepts] or [cfg.data.images]
    missing = [f for f in folders if not (target.parent / f).expanduser().is_dir()]
    for folder in missing:
        console.print(f"note: the folder {folder} does not exist here; edit it in {target} before training",
                      markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {target}; check the images with `loratui check {target.parent}`", markup=False,
                  highlight=False, soft_wrap=True)
