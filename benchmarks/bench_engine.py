"""The engine against a naive training script and against the compute floor, on this CPU.

Three ways to train the same LoRA (same built-in model, images, batch,
resolution, LoRA shape and hyper-parameters), timed in turns so machine drift
lands on all three alike:

  engine  loratui's Trainer: setup once (timed apart), then the loop body of
          ``Trainer.train`` (commands, optimizer step, events into
          metrics.jsonl), with checkpoints and samples turned off.
  naive   what a plain script does every step: decode the step's images,
          VAE-encode them, CLIP-encode the captions, UNet forward and
          backward with LoRA, clip, AdamW as constructed by default.
  floor   the compute the engine cannot avoid: UNet forward, loss, backward,
          clip and AdamW on tensors already in memory, with the fastest
          AdamW this torch has for the device (fused).

A fourth row, flow matching, trains ``builtin:tiny-flux`` with ``loratui train
--headless`` against diffusers' ``train_dreambooth_lora_flux.py``, whole
processes timed at two step counts (``bench_flow.py``; skipped with a message
saying how to get the script when it is not given).

Run: ``/work/venv/bin/python benchmarks/bench_engine.py`` (``--help`` for sizes;
``--flow-only`` for the flow-matching row alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_flow import add_arguments as add_flow_arguments
from bench_flow import run_flow_row
from common import Case, interleave, machine_line, ms, quiet, scratch_project, set_threads, table, verdict

FLOOR_TARGET = 0.90


def build_engine(project: Path, overrides: list[str]) -> tuple[Any, dict[str, float], Any]:
    """A set-up Trainer whose events go where a headless run's go (metrics.jsonl)."""
    from loratui.commands import CommandChannel
    from loratui.config import apply_override, load_config
    from loratui.engine.runner import MetricsWriter
    from loratui.engine.trainer import Trainer
    from loratui.events import EventFanout
    from loratui.project import ProjectPaths

    cfg = load_config(project)
    for item in overrides:
        apply_override(cfg, item)
    paths = ProjectPaths(project)
    metrics = MetricsWriter(paths.metrics)
    fan = EventFanout(metrics)
    trainer = Trainer(project, cfg, emit=fan, commands=CommandChannel(), max_steps=10**9)
    t0 = time.perf_counter()
    trainer.setup()
    setup = {"setup_s": time.perf_counter() - t0}
    return trainer, setup, metrics


def engine_step(trainer: Any) -> None:
    # The body of Trainer.train's loop; saving and sampling are off in this benchmark's config.
    if trainer.train_one_step() is not None:
        raise RuntimeError("unexpected stop command")


def _fresh_model(cfg: Any) -> tuple[Any, Any, list[Any]]:
    """Another copy of the base model with the same LoRA (same seed, so the same initial weights)."""
    import torch

    from loratui.lora.inject import inject_lora
    from loratui.models.loader import load_model

    model = load_model(cfg.model.base)
    gen = torch.Generator("cpu").manual_seed(cfg.train.seed)
    net = inject_lora(model.unet, component="unet", family=model.family, preset=cfg.lora.preset,
                      rank=cfg.lora.rank, alpha=cfg.lora.alpha, generator=gen)
    model.unet.train()
    return model, net, list(net.parameters())


class NaiveLoop:
    """A training script without caches: every step re-reads and re-encodes its inputs."""

    def __init__(self, cfg: Any, dataset: Any) -> None:
        import torch

        self.cfg = cfg
        self.dataset = dataset
        self.model, _, self.params = _fresh_model(cfg)
        t = cfg.train
        # What a plain script writes; on the CPU torch picks its per-tensor implementation.
        self.optimizer = torch.optim.AdamW(self.params, lr=t.learning_rate, weight_decay=t.weight_decay)
        self.index = 0
        self.parts: dict[str, list[float]] = {"images": [], "vae": [], "text": [], "unet+optimizer": []}
        self.generator = torch.Generator("cpu").manual_seed(t.seed)

    def step(self) -> None:
        import random

        import torch
        import torch.nn.functional as F

        from loratui.data.buckets import resize_and_crop
        from loratui.data.captions import build_caption
        from loratui.data.images import image_to_tensor, load_image
        from loratui.models.text import encode_tokens, tokenize

        cfg, model, gen = self.cfg, self.model, self.generator
        _, entries = self.dataset.plan.micro_batch(self.index)
        self.index += 1
        t0 = time.perf_counter()
        items = [self.dataset.items[e.item] for e in entries]
        pixels = torch.stack([
            image_to_tensor(resize_and_crop(load_image(it.path).image, it.bucket, flip=e.flip).image)
            for it, e in zip(items, entries)])
        t1 = time.perf_counter()
        with torch.no_grad():
            latents = model.vae.encode(pixels).latent_dist.sample(gen) * model.vae_scaling_factor
        t2 = time.perf_counter()
        rng = random.Random(self.index)
        captions = [build_caption(it.caption, trigger_word=cfg.data.trigger_word, rng=rng) for it in items]
        with torch.no_grad():
            hidden = encode_tokens(model, tokenize(model, captions), clip_skip=cfg.model.clip_skip).hidden
        t3 = time.perf_counter()
        sched = model.noise_scheduler
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        noisy = sched.add_noise(latents, noise, timesteps)
        pred = model.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        if cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.train.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        t4 = time.perf_counter()
        for key, value in zip(self.parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            self.parts[key].append(value)


class FloorLoop:
    """UNet forward, backward and optimizer step on inputs made once, before timing."""

    def __init__(self, cfg: Any, trainer: Any, variants: int = 4) -> None:
        import torch

        self.cfg = cfg
        self.model, _, self.params = _fresh_model(cfg)
        t = cfg.train
        # Fused AdamW is one kernel for all LoRA tensors, on the CPU as on CUDA: the fastest AdamW here.
        self.optimizer = torch.optim.AdamW(self.params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=True)
        s = trainer.session
        gen = torch.Generator("cpu").manual_seed(t.seed)
        self.inputs = []
        for i in range(variants):
            _, entries = s.dataset.plan.micro_batch(i)
            batch = s.dataset.batch(entries, micro_batch=i, seed=t.seed, trigger_word=trainer.cfg.data.trigger_word,
                                    shuffle_tags=False, keep_tokens=1, caption_dropout=0.0, generator=gen)
            cond = s.conditioning(batch)
            sched = self.model.noise_scheduler
            noise = torch.randn(batch.latents.shape, generator=gen)
            timesteps = torch.randint(0, sched.config.num_train_timesteps, (batch.latents.shape[0],), generator=gen)
            noisy = sched.add_noise(batch.latents, noise, timesteps)
            self.inputs.append((noisy, timesteps, cond.hidden.detach().clone(), noise))
        self.index = 0

    def step(self) -> None:
        import torch
        import torch.nn.functional as F

        noisy, timesteps, hidden, target = self.inputs[self.index % len(self.inputs)]
        self.index += 1
        pred = self.model.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        F.mse_loss(pred, target).backward()
        if self.cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def engine_breakdown(trainer: Any, steps: int) -> list[tuple[str, float]]:
    """The engine's own split of a step, from the StepDone events of the timed steps."""
    import json

    rows = [json.loads(line) for line in trainer.paths.metrics.read_text().splitlines()][-steps:]
    return [(key, statistics.median(r[key] for r in rows))
            for key in ("step_time_s", "data_time_s", "compute_time_s", "optimizer_time_s")]


def optimizer_cost(trainer: Any, repeats: int = 30) -> list[tuple[str, float]]:
    """The engine's optimizer against fused AdamW on copies of the LoRA tensors (with made-up gradients)."""
    import torch

    s = trainer.session
    params = [torch.nn.Parameter(p.detach().clone()) for p in s.lora_parameters()]
    t = trainer.cfg.train
    engine_opt = s.optimizer.optimizer if hasattr(s.optimizer, "optimizer") else s.optimizer
    defaults = {k: engine_opt.defaults.get(k) for k in ("foreach", "fused")}
    same = type(engine_opt)(params, lr=t.learning_rate, weight_decay=t.weight_decay,
                            **{k: v for k, v in defaults.items() if v is not None})
    fused = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=True)
    results = []
    for name, opt in ((f"engine's {type(engine_opt).__name__} {defaults}", same), ("fused AdamW", fused)):
        times = []
        for _ in range(repeats):
            for p in params:
                p.grad = torch.full_like(p, 1e-3)
            t0 = time.perf_counter()
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        results.append((name, statistics.median(times[3:])))
    return results


def _per_call(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_step_work(trainer: Any, repeats: int = 200) -> list[tuple[str, float]]:
    """The engine's per-step host work outside the UNet and the optimizer, one piece at a time."""
    import tempfile

    import torch

    from loratui.engine.batches import BatchPlan
    from loratui.engine.memory import memory_snapshot
    from loratui.engine.runner import MetricsWriter
    from loratui.engine.step import step_generator
    from loratui.events import EventFanout, StepDone

    s = trainer.session
    cfg = trainer.cfg
    plan = s.dataset.plan
    _, entries = plan.micro_batch(0)

    def batch() -> Any:
        return s.dataset.batch(entries, micro_batch=0, seed=cfg.train.seed, trigger_word=cfg.data.trigger_word,
                               shuffle_tags=cfg.data.shuffle_tags, keep_tokens=cfg.data.keep_tokens,
                               caption_dropout=cfg.data.caption_dropout, generator=step_generator(1, 0))

    one = batch()
    big = BatchPlan(tuple((128, 128) for _ in range(10_000)), tuple(1 for _ in range(10_000)), 2, 1, True)
    big.micro_batch(0)
    with tempfile.TemporaryDirectory() as tmp:
        fan = EventFanout(MetricsWriter(Path(tmp) / "metrics.jsonl"))
        event = lambda: fan(StepDone(step=1, total_steps=2, epoch=0, loss=0.1, lr=1e-4, step_time_s=0.1,  # noqa: E731
                                     data_time_s=0.0, compute_time_s=0.1, optimizer_time_s=0.0, samples_per_s=20.0,
                                     ram_mb=memory_snapshot(torch.device("cpu")).ram_mb))
        rows = [
            ("plan.micro_batch (this project)", _per_call(lambda: plan.micro_batch(1), repeats)),
            ("plan.micro_batch (10,000-image plan)", _per_call(lambda: big.micro_batch(7), repeats)),
            ("step_generator", _per_call(lambda: step_generator(cfg.train.seed, 3), repeats)),
            ("dataset.batch: captions + latent sample", _per_call(batch, repeats)),
            ("conditioning: text cache + stack", _per_call(lambda: s.conditioning(one), repeats)),
            ("memory_snapshot", _per_call(lambda: memory_snapshot(s.accelerator.device), repeats)),
            ("StepDone into metrics.jsonl", _per_call(event, repeats)),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="turns of A B C")
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each case per turn")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change the sample project's config, e.g. train.batch_size=4")
    ap.add_argument("--flow-only", action="store_true", help="run only the flow-matching row (bench_flow.py)")
    add_flow_arguments(ap)
    args = ap.parse_args(argv)

    threads = set_threads(args.threads)
    quiet()
    if args.flow_only:
        return run_flow_row(args, threads)
    project = scratch_project()
    overrides = ["save.every_n_steps=0", "sample.every_n_steps=0", *args.overrides]
    print(f"project: copy of sample_project with {overrides}", file=sys.stderr)
    trainer, setup, metrics = build_engine(project, overrides)
    cfg = trainer.cfg
    dataset = trainer.session.dataset
    t0 = time.perf_counter()
    naive = NaiveLoop(cfg, dataset)
    floor = FloorLoop(cfg, trainer)
    setup["other_models_s"] = time.perf_counter() - t0

    cases = [Case("engine", lambda: engine_step(trainer)), Case("naive", naive.step), Case("floor", floor.step)]
    interleave(cases, rounds=args.rounds, per_round=args.steps, warmup=3)
    metrics.close()
    engine, naive_case, floor_case = cases
    batch = cfg.train.batch_size * cfg.train.grad_accum

    print(f"\n## bench_engine — {machine_line(threads)}\n")
    print(f"{cfg.model.base}, {len(dataset.items)} images, resolution {cfg.data.resolution}, "
          f"batch {cfg.train.batch_size} × accumulation {cfg.train.grad_accum}, LoRA {cfg.lora.preset} "
          f"rank {cfg.lora.rank}; {args.rounds} turns × {args.steps} steps per case; medians, "
          f"IQR in brackets\n")
    rows = []
    for c in cases:
        q1, q3 = c.quartiles()
        rows.append((c.name, f"{ms(c.median)} [{ms(q1)}–{ms(q3)}]", f"{batch / c.median:.2f}"))
    print(table(("case", "ms/step", "samples/s"), rows))

    # Shares step by step (the parts of one step add up to it), then the median share: robust to a slow minute.
    timed = len(naive_case.times)
    parts = {k: v[-timed:] for k, v in naive.parts.items()}
    totals = [sum(p) for p in zip(*parts.values())]
    share = {k: statistics.median(x / t for x, t in zip(v, totals)) for k, v in parts.items()}
    vae_text = statistics.median((a + b) / t for a, b, t in zip(parts["vae"], parts["text"], totals))
    removable = statistics.median((a + b + c) / t for a, b, c, t in
                                  zip(parts["vae"], parts["text"], parts["images"], totals))
    predicted = 1 / (1 - vae_text)
    predicted_all = 1 / (1 - removable)
    print("\nnaive step, part by part (medians):\n")
    print(table(("part", "ms", "share of naive step"),
                [(k, ms(statistics.median(v)), f"{share[k]:.1%}") for k, v in parts.items()]))
    ratio_naive = naive_case.median / engine.median
    ratio_floor = floor_case.median / engine.median
    print("\n" + table(("measure", "value", "target", "verdict"), [
        ("engine / floor (samples/s)", f"{ratio_floor:.3f}", f"≥ {FLOOR_TARGET:.2f}",
         verdict(ratio_floor, FLOOR_TARGET)),
        ("VAE + text share of the naive step", f"{vae_text:.1%}", "", ""),
        ("speed-up predicted by removing VAE + text", f"{predicted:.2f}×", "", ""),
        ("… and image decoding too", f"{predicted_all:.2f}×", "", ""),
        ("engine / naive (samples/s), measured", f"{ratio_naive:.2f}×", f"≥ {predicted:.2f}×",
         verdict(ratio_naive, predicted)),
    ]))
    print("\nengine's own split (StepDone medians of the timed steps), and setup:\n")
    rows = [(k, ms(v)) for k, v in engine_breakdown(trainer, len(engine.times))]
    rows.append(("setup: scan, load, inject, encode latents (cold cache)", ms(setup["setup_s"])))
    print(table(("engine", "ms"), rows))
    work = per_step_work(trainer)
    print("\nper-step host work outside the UNet and the optimizer (µs per call, median):\n")
    print(table(("piece", "µs"), [(k, f"{v * 1e6:.0f}") for k, v in work]))
    print("\noptimizer step alone (clip + AdamW + zero_grad on the same LoRA tensors):\n")
    print(table(("optimizer", "ms"), [(k, ms(v)) for k, v in optimizer_cost(trainer)]))
    print(f"\nload average at the end: {machine_line(threads).split('load average ')[1]}")
    trainer.cleanup()
    # Whole processes, after the in-process rows: the engine above is cleaned up and its memory freed.
    return run_flow_row(args, threads)


if __name__ == "__main__":
    sys.exit(main())
