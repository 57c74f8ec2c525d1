"""The flow-matching row: loratui against diffusers' own FLUX LoRA script, on the tiny FLUX.

Both train the same LoRA on ``builtin:tiny-flux`` (the cached diffusers folder
``loratui.models.builtin.ensure_builtin`` writes): the same 16 square images at
128 px, batch 2, rank 8 / alpha 8 on the same layers, AdamW at the same
learning rate and weight decay, constant schedule, clipping at 1.0, fp32,
uniform σ, FLUX's guidance embedding fed 1.0, latents cached.

Each side is timed as a whole process, ``loratui train DIR --headless`` against
``python train_dreambooth_lora_flux.py ...``, at a short and a long step count;
the steady step time is (T(long) − T(short)) / (long − short), so loading,
caching and saving cancel. The four runs of a turn go A B B A (ours, theirs,
theirs, ours; short and long alternating) so a slow minute lands on both.

diffusers' script is not part of loratui. Get it from the diffusers repository
(``examples/dreambooth/train_dreambooth_lora_flux.py``, the version that
matches the installed diffusers) and run it from its own environment, because
it imports torchvision:

    python3 -m venv /work/venv-flux
    /work/venv-flux/bin/pip install torch torchvision diffusers transformers \\
        accelerate peft safetensors pillow sentencepiece tensorboard

Then ``--diffusers-script PATH --diffusers-python /work/venv-flux/bin/python``
(or the environment variables LORATUI_DIFFUSERS_FLUX_SCRIPT and
LORATUI_DIFFUSERS_PYTHON).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, SAMPLE_PROJECT, load_average, machine_line, table, verdict

TARGET = 1.15
PROMPT = "zxc toy"
SCRIPT_ENV = "LORATUI_DIFFUSERS_FLUX_SCRIPT"
PYTHON_ENV = "LORATUI_DIFFUSERS_PYTHON"
HOW_TO_GET = (
    "this row needs diffusers' examples/dreambooth/train_dreambooth_lora_flux.py "
    f"(--diffusers-script or {SCRIPT_ENV}) and a Python that has torch, torchvision and diffusers "
    f"(--diffusers-python or {PYTHON_ENV}); see benchmarks/bench_flow.py's docstring"
)

_CONFIG = """name = "flowbench"
version = 1
[model]
base = "builtin:tiny-flux"
[data]
images = "images"
resolution = {resolution}
[lora]
rank = {rank}
alpha = {rank}.0
preset = "attention+ff"
[train]
batch_size = {batch}
learning_rate = {lr}
lr_scheduler = "constant"
optimizer = "adamw"
weight_decay = {weight_decay}
max_grad_norm = 1.0
precision = "no"
timestep_sampling = "uniform"
guidance_scale = 1.0
seed = 42
[save]
every_n_steps = 0
[sample]
every_n_steps = 0
"""


@dataclass
class Side:
    """One trainer: how to run it for a number of steps, and its timings per step count."""

    name: str
    wall: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)
    log: str = ""

    def record(self, steps: int, wall: float, cpu: float) -> None:
        self.wall.setdefault(steps, []).append(wall)
        self.cpu.setdefault(steps, []).append(cpu)

    def steady(self, times: dict[int, list[float]], short: int, long: int) -> tuple[float, list[float]]:
        """Median seconds per step over the turns, and each turn's own (T(long) − T(short)) / steps."""
        per_turn = [(tl - ts) / (long - short) for ts, tl in zip(times[short], times[long])]
        return statistics.median(per_turn), per_turn


def prepare(work: Path, *, resolution: int, rank: int, batch: int, lr: float, weight_decay: float) -> tuple[Path, Path]:
    """The loratui project and diffusers' instance folder, holding the same square images.

    The script resizes and crops every image to a square; the images are made
    square here so loratui's buckets and the script see the same pixels.
    The script opens every file of its folder as an image, so captions live
    only in the project (each the script's instance prompt).
    """
    from PIL import Image, ImageOps

    project, instance = work / "project", work / "instance"
    (project / "images").mkdir(parents=True)
    instance.mkdir()
    sources = sorted(p for p in (SAMPLE_PROJECT / "images").rglob("*") if p.suffix in (".jpg", ".png"))
    for i, path in enumerate(sources):
        with Image.open(path) as im:
            square = ImageOps.fit(im.convert("RGB"), (resolution, resolution))
        square.save(project / "images" / f"img_{i:02d}.png")
        square.save(instance / f"img_{i:02d}.png")
        (project / "images" / f"img_{i:02d}.txt").write_text(PROMPT, encoding="utf-8")
    (project / "loratui.toml").write_text(_CONFIG.format(resolution=resolution, rank=rank, batch=batch, lr=lr,
                                                         weight_decay=weight_decay), encoding="utf-8")
    return project, instance


def lora_layers(model_dir: Path) -> list[str]:
    """The layers loratui's attention+ff preset trains, as full paths (PEFT matches a full path exactly).

    diffusers' own default list wraps only q, k, v in the single blocks and
    would also catch the top-level ``proj_out`` by suffix; full paths give the
    script exactly loratui's layers.
    """
    from diffusers import FluxTransformer2DModel

    from loratui.lora.transformer_names import transformer_targets

    transformer = FluxTransformer2DModel.from_pretrained(model_dir / "transformer")
    return [path for path, _ in transformer_targets(transformer, "attention+ff")]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the process and its children) and the output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise SystemExit(f"{cmd[1]} failed with exit status {proc.returncode}:\n{tail}")
    return wall, cpu, proc.stdout


def ours_command(project: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "loratui", "train", str(project), "--headless", "--max-steps", str(steps)]


def clean_run_outputs(project: Path) -> None:
    # The latent and text caches stay warm in .cache/ for every timed run; a run's outputs must not
    # turn the next run into a resume.
    for name in ("output", "checkpoints", "samples", "logs", "metrics.jsonl", ".loratui.lock"):
        path = project / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def theirs_command(python: str, script: Path, model_dir: Path, instance: Path, out: Path, steps: int, *,
                   resolution: int, rank: int, batch: int, lr: float, weight_decay: float,
                   layers: list[str]) -> list[str]:
    from loratui.models.builtin_flow import TINY_T5_LENGTH

    return [
        python, str(script),
        "--pretrained_model_name_or_path", str(model_dir),
        "--instance_data_dir", str(instance), "--instance_prompt", PROMPT,
        "--output_dir", str(out), "--resolution", str(resolution), "--train_batch_size", str(batch),
        "--rank", str(rank), "--lora_alpha", str(rank), "--lora_layers", ",".join(layers),
        "--learning_rate", str(lr), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--optimizer", "AdamW", "--adam_weight_decay", str(weight_decay), "--max_grad_norm", "1.0",
        "--max_train_steps", str(steps), "--checkpointing_steps", "100000000",
        "--mixed_precision", "no", "--guidance_scale", "1.0", "--weighting_scheme", "none",
        "--max_sequence_length", str(TINY_T5_LENGTH), "--cache_latents", "--seed", "42",
        "--dataloader_num_workers", "0",
    ]


def lora_parameter_counts(ours_log: str, theirs_out: Path) -> tuple[int | None, int | None]:
    """Trainable LoRA parameters as each side reports or saves them, to show both train the same layers."""
    from safetensors import safe_open

    match = re.search(r"([\d,]+) LoRA parameters", ours_log)
    ours = int(match.group(1).replace(",", "")) if match else None
    theirs = None
    weights = theirs_out / "pytorch_lora_weights.safetensors"
    if weights.exists():
        with safe_open(str(weights), "pt") as f:
            theirs = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys())
    return ours, theirs


def find_script(args: argparse.Namespace) -> tuple[Path, str] | str:
    """The script and its Python, or the reason the row is skipped."""
    script = args.diffusers_script or os.environ.get(SCRIPT_ENV)
    python = args.diffusers_python or os.environ.get(PYTHON_ENV)
    if not script or not python:
        return HOW_TO_GET
    if not Path(script).is_file():
        return f"{script} is not a file; {HOW_TO_GET}"
    probe = subprocess.run([python, "-c", "import torch, torchvision, diffusers, peft, accelerate"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{python} cannot import torch, torchvision, diffusers, peft and accelerate; {HOW_TO_GET}"
    return Path(script), python


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--diffusers-script", help=f"train_dreambooth_lora_flux.py (or ${SCRIPT_ENV})")
    ap.add_argument("--diffusers-python", help=f"a Python with torchvision and diffusers (or ${PYTHON_ENV})")
    # A process spends ~15 s of CPU on imports and loading before its first step and steps take
    # 50-100 ms here, so the long runs need hundreds of steps more than the short ones for the
    # difference to stand above a shared machine's minute-to-minute drift.
    ap.add_argument("--flow-short", type=int, default=10, help="optimizer steps of the short runs")
    ap.add_argument("--flow-long", type=int, default=310, help="optimizer steps of the long runs")
    ap.add_argument("--flow-turns", type=int, default=3, help="turns of short and long runs of both sides")


def run_flow_row(args: argparse.Namespace, threads: int) -> int:
    found = find_script(args)
    if isinstance(found, str):
        print(f"\n## bench_engine — flow-matching row skipped\n\n{found}\n")
        return 0
    script, python = found
    from loratui.models.builtin import ensure_builtin

    resolution, rank, batch, lr, weight_decay = 128, 8, 2, 1e-4, 1e-4
    short, long = args.flow_short, args.flow_long
    if not 0 < short < long:
        raise SystemExit(f"--flow-short ({short}) must be at least 1 and below --flow-long ({long})")
    model_dir = ensure_builtin("tiny-flux")
    work = Path(tempfile.mkdtemp(prefix="loratui-flowbench-"))
    project, instance = prepare(work, resolution=resolution, rank=rank, batch=batch, lr=lr,
                                weight_decay=weight_decay)
    layers = lora_layers(model_dir)
    threads_env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base_env = {**os.environ, **threads_env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"}
    ours_env = {**base_env, "PYTHONPATH": str(REPO)}
    ours, theirs = Side("loratui train --headless"), Side("diffusers train_dreambooth_lora_flux.py")

    def run_ours(steps: int) -> None:
        clean_run_outputs(project)
        wall, cpu, log = timed(ours_command(project, steps), ours_env, work)
        ours.record(steps, wall, cpu)
        ours.log = log

    def run_theirs(steps: int) -> None:
        out = work / "diffusers-out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = theirs_command(python, script, model_dir, instance, out, steps, resolution=resolution, rank=rank,
                             batch=batch, lr=lr, weight_decay=weight_decay, layers=layers)
        wall, cpu, log = timed(cmd, base_env, work)
        theirs.record(steps, wall, cpu)
        theirs.log = log

    # One untimed run of each fills loratui's latent and text caches and the OS file cache for both.
    run_ours(2)
    run_theirs(2)
    for side in (ours, theirs):
        side.wall.clear()
        side.cpu.clear()
    for turn in range(args.flow_turns):
        # A B B A, short and long swapping each turn, so drift within a turn lands on both sides.
        first, second = (short, long) if turn % 2 == 0 else (long, short)
        for run, steps in ((run_ours, first), (run_theirs, first), (run_theirs, second), (run_ours, second)):
            run(steps)
        print(f"  flow turn {turn + 1}/{args.flow_turns} done (load {load_average()})", file=sys.stderr, flush=True)
    ours_params, theirs_params = lora_parameter_counts(ours.log, work / "diffusers-out")

    print(f"\n## bench_engine — flow matching against diffusers' script — {machine_line(threads)}\n")
    print(f"builtin:tiny-flux, 16 square images at {resolution} px, batch {batch}, LoRA attention+ff rank {rank} "
          f"alpha {rank} ({len(layers)} layers; LoRA parameters: ours {ours_params}, theirs {theirs_params}), "
          f"AdamW lr {lr:g} weight decay {weight_decay:g}, fp32, OMP_NUM_THREADS={threads}; whole processes, "
          f"{args.flow_turns} turns of {short} and {long} steps; steady step = (T({long}) − T({short})) / "
          f"{long - short}, median over turns\n")
    rows, steady = [], {}
    for side in (ours, theirs):
        wall, wall_turns = side.steady(side.wall, short, long)
        cpu, _ = side.steady(side.cpu, short, long)
        steady[side.name] = (wall, cpu)
        rows.append((side.name, f"{statistics.median(side.wall[short]):.1f}",
                     f"{statistics.median(side.wall[long]):.1f}", f"{wall * 1e3:.1f}",
                     " ".join(f"{t * 1e3:.0f}" for t in wall_turns), f"{cpu * 1e3:.1f}", f"{batch / wall:.2f}"))
    print(table(("trainer", f"T({short}) s", f"T({long}) s", "steady ms/step (wall)", "per turn",
                 "steady ms/step (CPU)", "samples/s"), rows))
    (ours_wall, ours_cpu), (theirs_wall, theirs_cpu) = steady[ours.name], steady[theirs.name]
    print()
    print(table(("measure", "value", "target", "verdict"), [
        ("ours / diffusers' script (speed, wall)", f"{theirs_wall / ours_wall:.2f}×", f"≥ {TARGET:.2f}×",
         verdict(theirs_wall / ours_wall, TARGET)),
        ("ours / diffusers' script (speed, CPU time)", f"{theirs_cpu / ours_cpu:.2f}×", f"≥ {TARGET:.2f}×",
         verdict(theirs_cpu / ours_cpu, TARGET)),
    ]))
    if any(t <= 0 for side in (ours, theirs) for t in side.steady(side.wall, short, long)[1]):
        print("\nA turn's long run took no longer than its short run: the machine's load swamped the steps "
              "(compare the CPU column); raise --flow-long or run on a quieter machine.")
    print(f"\nload average at the end: {load_average()}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both trainers")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    return run_flow_row(args, args.threads)


if __name__ == "__main__":
    sys.exit(main())
