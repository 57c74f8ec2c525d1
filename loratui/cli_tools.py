"""The one-shot commands: check, sample, export, inspect, convert, bench."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from loratui.config import ConfigError, SamplePrompt, load_config
from loratui.project import ProjectPaths

console = Console()


def cmd_check(args: argparse.Namespace) -> int:
    from loratui.data.concepts import empty_concepts, scan_project
    from loratui.data.report import render_report

    cfg = load_config(args.dir)
    report = scan_project(cfg, Path(args.dir))
    console.print(render_report(report))
    if report.usable:
        console.print(f"steps per epoch at batch size {cfg.train.batch_size}: "
                      f"{report.steps_per_epoch(cfg.train.batch_size)}")
    problems = empty_concepts(report) if cfg.data.concepts else []
    for line in problems:
        console.print(f"[bold red]{line}[/]")
    return 2 if problems else report.exit_code


def cmd_import(args: argparse.Namespace) -> int:
    from loratui.importers.command import run_import

    return run_import(args.dir, kohya=args.kohya, dataset=args.dataset, force=args.force, console=console)


def _load_for_inference(project_dir: Path, lora: Path | None, *, use_lora: bool):
    """The project's base model with its LoRA (or another file) injected, on the best device."""
    import torch

    from loratui.engine.quiet import quiet_libraries
    from loratui.lora.fileformat import load_lora_file
    from loratui.lora.inject import inject_from_file
    from loratui.engine.session import load_project_model

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
        names = ["te"] if len(model.text_encoders) == 1 else ["te1", "te2"]
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
    if getattr(args, "merge", False):
        from loratui.engine.merge_export import export_merged

        if args.format is not None:
            raise ConfigError("--format applies to LoRA files; a merged model is always written as a diffusers "
                              "folder and one original-layout .safetensors. Drop --format or --merge.")
        if args.lora is not None and args.checkpoint is not None:
            raise ConfigError("give either --lora FILE or --checkpoint DIR to merge, not both.")
        if getattr(args, "ema", False):
            raise ConfigError("--ema writes a LoRA file; to merge the EMA, run `loratui export DIR --ema` first, "
                              "then `loratui export DIR --merge --lora output/NAME-ema.safetensors`.")
        folder, single = export_merged(args.dir, scale=args.scale, lora=args.lora or args.checkpoint,
                                       out_dir=args.out)
        console.print(f"wrote {folder}/ (diffusers folder) and {single} (one checkpoint), LoRA scale {args.scale:g}")
        console.print(f"  diffusers: from_pretrained(\"{folder}\"); A1111/Forge: copy {single.name} to "
                      "models/Stable-diffusion/; ComfyUI: to models/checkpoints/")
        return 0
    if getattr(args, "lora", None) is not None or getattr(args, "scale", 1.0) != 1.0:
        raise ConfigError("--lora and --scale only apply with --merge; add --merge to write a merged model.")
    import tempfile

    from safetensors.torch import save_file

    from loratui.engine import checkpoint as ckpt
    from loratui.engine.export import SAVE_DTYPES, training_metadata
    from loratui.lora.fileformat import convert_lora_file
    from loratui.models.loader import probe_model

    project = Path(args.dir)
    cfg = load_config(project)
    paths = ProjectPaths(project)
    source = args.checkpoint or ckpt.latest_checkpoint(paths.checkpoints)
    if source is None:
        raise ConfigError(f"{paths.checkpoints} holds no checkpoint to export; train the project first.")
    loaded = ckpt.load_checkpoint(Path(source))
    fmt = args.format or cfg.save.format
    default = paths.lora_file(cfg)
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
    meta = training_metadata(cfg, family=family, prediction_type=pred, steps=loaded.state.step,
                             epoch=loaded.state.epoch, num_images=0, tag_frequency={})
    out.parent.mkdir(parents=True, exist_ok=True)
    # The checkpoint holds kohya-keyed float32 tensors; the converter writes either format from them,
    # with the chosen dtype, the hashes and an atomic rename.
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / "lora.safetensors"
        save_file(tensors, str(staged), metadata=meta)
        convert_lora_file(staged, out, fmt, family=family, dtype=SAVE_DTYPES[cfg.save.precision])
    console.print(f"wrote {out} ({fmt}) from {Path(source).name}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from loratui.lora.inspect import inspect_lora_file, render_inspection

    console.print(render_inspection(inspect_lora_file(args.file)))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from loratui.lora.fileformat import convert_lora_file

    result = convert_lora_file(args.src, args.dst, args.to, family=args.family)
    console.print(f"wrote {args.dst}: {args.to} format, {len(result.modules)} modules, family {result.family}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from loratui.engine.estimate import estimate_run, render_estimate

    est = estimate_run(Path(args.dir), load_config(args.dir), measure=True, steps=args.steps)
    if args.json:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(est)))
    else:
        console.print(render_estimate(est))
    return 0
