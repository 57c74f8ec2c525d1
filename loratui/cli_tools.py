"""The one-shot commands: check, sample, export, inspect, convert, bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from loratui.config import ConfigError, SamplePrompt, load_config
from loratui.project import ProjectPaths

console = Console()


def print_lines(lines: list[str]) -> None:
    """Plain lines for a pipe, a file or a CI log: no markup, no wrapping, no cut names."""
    for line in lines:
        print(line)


def print_json(data: object) -> None:
    """One JSON document on one line, so both ``json.load`` and line-based tools read it."""
    import json

    print(json.dumps(data, ensure_ascii=True, default=str))


def cmd_check(args: argparse.Namespace) -> int:
    from loratui.data.concepts import empty_concepts, scan_project
    from loratui.data.report import problem_lines, render_report, report_json

    project = Path(args.dir)
    cfg = load_config(project)
    report = scan_project(cfg, project)
    batch = cfg.train.batch_size
    holdout_note = ""
    if report.usable:
        from loratui.data.holdout import mark_held_out, project_holdout

        holdout = project_holdout(ProjectPaths(project), cfg, report.usable)
        holdout_note = holdout.note if holdout.source != "off" else ""
        mark_held_out(report, holdout)
    problems = empty_concepts(report) if cfg.data.concepts else []
    memory, memory_lines, memory_problems = _memory_plan(project, cfg)
    if args.json:
        data = report_json(report, project, batch_size=batch)
        data["summary"]["validation"] = holdout_note or None
        data["summary"]["concept_problems"] = problems
        data["summary"]["memory"] = memory
        print_json(data)
    elif not console.is_terminal:
        lines = problem_lines(report, project)
        extra = [f"validation: {holdout_note}"] if holdout_note else []
        if report.usable:
            extra.append(f"steps per epoch at batch size {batch}: {report.steps_per_epoch(batch)}")
        extra += [f"error: {line}" for line in problems] + memory_lines
        lines[-1:-1] = extra
        print_lines(lines)
    else:
        console.print(render_report(report))
        if holdout_note:
            console.print(holdout_note, highlight=False)
        if report.usable:
            console.print(f"steps per epoch at batch size {batch}: {report.steps_per_epoch(batch)}")
        for line in problems:
            console.print(f"[bold red]{line}[/]")
        for line in memory_lines:
            console.print(line, highlight=False, markup=False)
    return 2 if problems or memory_problems else report.exit_code


def _memory_plan(project: Path, cfg) -> tuple[dict | None, list[str], bool]:
    """The memory planner's verdict for check: (JSON, lines, whether a setting cannot work)."""
    from loratui.memory.planner import PlanError
    from loratui.memory.project_plan import plan_json, project_plan, summary_lines

    try:
        plan = project_plan(project, cfg)
    except PlanError as exc:
        return {"problems": [str(exc)]}, [f"error: memory plan: {exc}"], True
    except Exception as exc:  # noqa: BLE001 - an estimate is advice; a model it cannot read is not a check failure
        return None, [f"memory plan: none ({exc})"], False
    data = plan_json(plan)
    data.pop("options")  # the table belongs to `loratui plan`
    return data, summary_lines(plan), bool(plan.problems)


def cmd_plan(args: argparse.Namespace) -> int:
    from loratui.memory.planner import PlanError
    from loratui.memory.project_plan import plan_json, project_plan, summary_lines, table_rows

    cfg = load_config(args.dir)
    try:
        plan = project_plan(Path(args.dir), cfg, args.gpu_memory)
    except PlanError as exc:
        raise ConfigError(str(exc)) from None
    if args.json:
        print_json(plan_json(plan))
        return 2 if plan.problems else 0
    rows = table_rows(plan)
    if not console.is_terminal:
        print_lines(summary_lines(plan))
        print_lines(["  peak GiB   step time  card     setting (* the proposed one; time against bf16)"])
        print_lines([f"{'*' if r['best'] else ' '} {r['peak_gib']:6.1f} GiB  {r['relative_time']:.2f}x  "
                     f"{'fits' if r['fits'] else 'too big' if r['fits'] is False else ''}  {r['options']}"
                     for r in rows])
        return 2 if plan.problems else 0
    from rich.table import Table

    for line in summary_lines(plan):
        console.print(line, highlight=False, markup=False)
    table = Table(title=f"memory options ({plan.card_source})")
    for name in ("", "options", "peak", "step time", "fits", "host"):
        table.add_column(name, justify="right" if name in ("peak", "step time", "host") else "left")
    for r in rows:
        fits = "yes" if r["fits"] else "no" if r["fits"] is False else "?"
        table.add_row("*" if r["best"] else "", r["options"], f"{r['peak_gib']:.1f} GiB",
                      f"{r['relative_time']:.2f}x", fits, f"{r['host_gib']:.1f} GiB" if r["host_gib"] else "")
    console.print(table)
    return 2 if plan.problems else 0


def cmd_import(args: argparse.Namespace) -> int:
    from loratui.importers.command import run_import

    return run_import(args.dir, kohya=args.kohya, dataset=args.dataset, force=args.force, console=console)


def _load_for_inference(project_dir: Path, lora: Path | None, *, use_lora: bool):
    """The project's base model with its LoRA (or another file) injected, on the best device."""
    import torch

    from loratui.engine.quiet import quiet_libraries
    from loratui.lora.fileformat import load_lora_file
    from loratui.lora.inject import inject_from_file
    from loratui.engine.build import load_project_model

    quiet_libraries()
    cfg = load_config(project_dir)
    paths = ProjectPaths(Path(project_dir))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = load_project_model(paths, cfg, dtype=dtype, device=device)
    model.vae.to(device, torch.float32)
    for te in model.text_encoders:
        te.to(device)
    networks = {}
    if use_lora:
        lora = lora or paths.lora_file(cfg)
        if not lora.is_file():
            raise ConfigError(f"no LoRA file at {lora}: train the project first, pass --lora FILE, or use --no-lora.")
        # Wrap exactly the layers the file has, with its own ranks: any kohya or diffusers LoRA works.
        from loratui.lora.naming import components_for

        names = components_for(model.family)[1:]  # CLIP encoders only; SD3's and FLUX's T5 come last
        roots = {"unet": model.unet, **dict(zip(names, model.text_encoders))}
        networks = inject_from_file(load_lora_file(lora, family=model.family), roots)
    return cfg, model, networks, device, dtype


def cmd_sample(args: argparse.Namespace) -> int:
    from loratui.engine.sampling import render

    cfg, model, networks, device, dtype = _load_for_inference(args.dir, args.lora, use_lora=not args.no_lora)
    prompt = SamplePrompt(prompt=args.prompt, negative=args.negative, seed=args.seed, steps=args.steps,
                          guidance=args.guidance)
    out = Path(args.out)
    tmp_dir = out.parent / f".{out.name}.parts"
    for result in render(model, networks, [prompt], cfg, tmp_dir, device=device, scale=args.scale,
                         autocast_dtype=dtype):
        result.path.replace(out)
        result.path.with_suffix(".txt").replace(out.with_suffix(".txt"))
    tmp_dir.rmdir()
    console.print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if getattr(args, "best", False) and (args.checkpoint is not None or getattr(args, "merge", False)):
        raise ConfigError("--best chooses the checkpoint itself; drop --checkpoint (or --merge, then merge the "
                          "exported file with --merge --lora FILE).")
    if getattr(args, "merge", False):
        from loratui.engine.merge_export import export_merged

        if args.format is not None:
            raise ConfigError("--format applies to LoRA files; a merged model is always written as a diffusers "
                              "folder and one original-layout .safetensors. Drop --format or --merge.")
        if args.lora is not None and args.checkpoint is not None:
            raise ConfigError("give either --lora FILE or --checkpoint DIR to merge, not both.")
        if getattr(args, "card", None) is not None or getattr(args, "push", None):
            raise ConfigError("--card and --push publish a LoRA, not a merged model; drop --merge.")
        if getattr(args, "ema", False):
            raise ConfigError("--ema writes a LoRA file; to merge the EMA, run `loratui export DIR --ema` first, "
                              "then `loratui export DIR --merge --lora output/NAME-ema.safetensors`.")
        folder, single = export_merged(args.dir, scale=args.scale, lora=args.lora or args.checkpoint,
                                       out_dir=args.out)
        console.print(f"wrote {folder}/ (diffusers folder) and {single} (one checkpoint), LoRA scale {args.scale:g}")
        if (folder / "transformer").is_dir():
            # SD3/FLUX checkpoints hold the transformer alone, as the published ones do.
            console.print(f"  diffusers: from_pretrained(\"{folder}\"), or {single.name} through from_single_file "
                          f"with config=\"{folder}\"; ComfyUI: {single.name} to models/diffusion_models/ "
                          "(Load Diffusion Model), text encoders and VAE as for the base model")
            return 0
        console.print(f"  diffusers: from_pretrained(\"{folder}\"); A1111/Forge: copy {single.name} to "
                      "models/Stable-diffusion/; ComfyUI: to models/checkpoints/")
        return 0
    if getattr(args, "lora", None) is not None or getattr(args, "scale", 1.0) != 1.0:
        raise ConfigError("--lora and --scale only apply with --merge; add --merge to write a merged model.")
    args.card, args.push = getattr(args, "card", None), getattr(args, "push", None)
    import tempfile

    from safetensors.torch import save_file

    from loratui.engine import checkpoint as ckpt
    from loratui.engine.export import SAVE_DTYPES, project_tag_frequency, sample_thumbnail, training_metadata
    from loratui.lora.fileformat import convert_lora_file
    from loratui.lora.modelspec import model_variant
    from loratui.models.loader import probe_model

    project = Path(args.dir)
    cfg = load_config(project)
    paths = ProjectPaths(project)
    default = paths.lora_file(cfg)
    if getattr(args, "best", False):
        source = _best_checkpoint(paths)
        default = default.with_name(default.stem + "-best.safetensors")
    else:
        source = args.checkpoint or ckpt.latest_checkpoint(paths.checkpoints)
    if source is None:
        raise ConfigError(f"{paths.checkpoints} holds no checkpoint to export; train the project first.")
    loaded = ckpt.load_checkpoint(Path(source))
    fmt = args.format or cfg.save.format
    tensors = loaded.lora
    if getattr(args, "ema", False):
        if "ema" not in loaded.extra:
            raise ConfigError(f"{Path(source).name} holds no EMA: it was trained with train.ema_decay = 0. "
                              "Set it (0.999 is typical) for the next run.")
        tensors = {**loaded.lora, **loaded.extra["ema"]}  # the EMA holds the factors; alphas as trained
        default = default.with_name(default.stem + "-ema" + default.suffix)
    out = Path(args.out) if args.out else (default.with_name(default.stem + "-diffusers.safetensors")
                                           if fmt == "diffusers" else default)
    info = probe_model(paths.model_spec(cfg), config_source=paths.config_source(cfg),
                       allow_pickle=cfg.model.allow_pickle)
    family = info.family if cfg.model.family == "auto" else cfg.model.family
    pred = info.prediction_type if cfg.model.prediction_type == "auto" else cfg.model.prediction_type
    tags, num_images = project_tag_frequency(cfg, project)
    meta = training_metadata(cfg, family=family, prediction_type=pred, steps=loaded.state.step,
                             epoch=loaded.state.epoch, num_images=num_images, tag_frequency=tags,
                             variant=model_variant(family, _denoiser_config(info.path)),
                             thumbnail=sample_thumbnail(paths.samples, loaded.state.step))
    out.parent.mkdir(parents=True, exist_ok=True)
    # The checkpoint holds kohya-keyed float32 tensors; the converter writes either format from them,
    # with the chosen dtype, the hashes and an atomic rename.
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / "lora.safetensors"
        save_file(tensors, str(staged), metadata=meta)
        convert_lora_file(staged, out, fmt, family=family, dtype=SAVE_DTYPES[cfg.save.precision])
    best = ""
    if getattr(args, "best", False) and loaded.state.best_val_loss is not None:
        best = f", the lowest validation loss ({loaded.state.best_val_loss:.4f})"
    console.print(f"wrote {out} ({fmt}) from {Path(source).name}{best}")
    if fmt == "diffusers":
        _warn_diffusers_format(out)
    if args.card is not None or args.push:
        _write_card(project, out, args)
    return 0


def _write_card(project: Path, lora: Path, args: argparse.Namespace) -> None:
    from loratui.publish.card import card_for_project

    folder = card_for_project(project, lora, args.card if isinstance(args.card, Path) else None, repo=args.push)
    console.print(f"wrote {folder}/: {lora.name}, {lora.stem}.preview.png, images/ and README.md (model card)")
    if args.push:
        from loratui.publish.hub import push_folder

        url = push_folder(folder, args.push, private=getattr(args, "private", False))
        console.print(f"uploaded {folder}/ to {url}")


def _denoiser_config(folder: Path | None) -> dict:
    """A diffusers folder's transformer (or UNet) config, which names the model's variant; {} otherwise."""
    import json

    for part in ("transformer", "unet"):
        config = Path(folder) / part / "config.json" if folder is not None else None
        if config is not None and config.is_file():
            try:
                return json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
    return {}


def _best_checkpoint(paths: ProjectPaths) -> Path:
    from loratui.engine import checkpoint as ckpt

    found = ckpt.best_checkpoint(paths.checkpoints)
    if found is None:
        raise ConfigError(f"no best checkpoint in {paths.checkpoints}: the newest checkpoint records no validation "
                          "loss. Train with validation.split (or validation.folder) and save.keep_best = true, or "
                          "export the newest one without --best.")
    path, state = found
    if not (path / ckpt.STATE_FILE).is_file():
        raise ConfigError(f"the best checkpoint (step {state.best_step}) is no longer in {paths.checkpoints}; "
                          "it was deleted outside loratui. Export the newest one without --best.")
    return path


def _warn_diffusers_format(path: Path) -> None:
    from safetensors import safe_open

    from loratui.lora.loader_rules import diffusers_format_warning, diffusers_modules_of

    with safe_open(str(path), "pt") as f:
        warning = diffusers_format_warning(diffusers_modules_of(f.keys()))
    if warning:
        print(warning, file=sys.stderr)


def cmd_inspect(args: argparse.Namespace) -> int:
    from loratui.lora.inspect import inspect_lora_file, inspection_json, inspection_lines, render_inspection

    summary = inspect_lora_file(args.file)
    if args.json:
        print(inspection_json(summary))
    elif not console.is_terminal:
        print_lines(inspection_lines(summary))
    else:
        console.print(render_inspection(summary))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from loratui.lora.fileformat import convert_lora_file

    result = convert_lora_file(args.src, args.dst, args.to, family=args.family)
    note = ""
    if result.format != args.to:
        # SD3 has one layout every loader reads (transformer. keys); it is written whatever was asked.
        note = f" (asked for {args.to}; {result.family} files are always written in this layout)"
    console.print(f"wrote {args.dst}: {result.format} format{note}, {len(result.modules)} modules, "
                  f"family {result.family}")
    if result.format == "diffusers":
        _warn_diffusers_format(Path(args.dst))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from loratui.engine.estimate import estimate_rows, estimate_run, render_estimate

    est = estimate_run(Path(args.dir), load_config(args.dir), steps=args.steps)
    if args.json:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(est)))
    elif not console.is_terminal:
        print_lines([f"{label}: {value}" for label, value in estimate_rows(est)])
    else:
        console.print(render_estimate(est))
    return 0
