"""LoRA training steps on real SD1.5, SDXL, SD3.5-Medium, FLUX.1-dev, Z-Image and Qwen-Image shapes, on one CUDA GPU.

The transformers (SD3.5-Medium, FLUX.1-dev, Z-Image-Turbo 6 B, Qwen-Image 20 B) are built and trained the
same way with the flow-matching objective (``flow_matching_loss``, FLUX's and Qwen-Image's resolution
shifts and guidance 1.0, SD3's and Z-Image's shift 3), on text tokens of their real lengths (FLUX-dev 512
T5 tokens; SD3 77 CLIP + 256 T5; Z-Image and Qwen-Image their pipelines' longest caption, 512).

UNets are built from the published configs (JSON, random weights, no network)
in bf16, with loratui's LoRA on the default preset (attention, rank 16) in
fp32, and trained the way the engine trains: ``diffusion_loss`` under bf16
autocast (noise drawn on the CPU generator, as the engine does), backward,
gradient clipping with the engine's finiteness check, fused AdamW. SD1.5 runs
at 512 px (64² latents), SDXL at 1024 px (128²), batch 1, 4 and 16, with and
without gradient checkpointing, and with and without ``torch.compile`` of the
UNet (what ``train.compile`` does).

Printed per case: s/step, samples/s, model FLOPs per step (counted once per
model with ``torch.utils.flop_counter.FlopCounterMode`` on a batch-1 step
without checkpointing, times the batch; recomputation is not counted, as usual
for MFU), achieved TFLOP/s, MFU against the device's peak, and peak memory
(``torch.cuda.max_memory_allocated``).

Budget: the whole script stays under ``--budget-s`` (default 450 s, for an
8-minute limit on an H100). Eager cases run first; compiled ones follow while
time is left. A case whose projected memory (from the batch-1 peak) would not
fit, or whose projected time would overrun the budget, is skipped and says why.

``--cpu-smoke`` runs the same path on the CPU with the built-in tiny UNet
configs, fp32 and the ``eager`` compile backend, in seconds, so the script is
tested where there is no GPU.

``--memory`` runs ``gpu_memory.py`` instead: peak memory and step time of each
memory option (stored base precisions, block swap, activation offload) for
FLUX.1-dev and Qwen-Image at 1024 px, beside the planner's estimate.

Run: ``python benchmarks/gpu.py`` (on the GPU machine), ``python benchmarks/gpu.py --cpu-smoke``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
CONFIG_DIRS = (HERE / "configs", HERE.parent / "tests" / "data" / "real_configs")
# (name, config file, pixels); SDXL's pooled text size follows from its config.
REAL_MODELS = (("SD1.5", "sd15_unet.json", 512), ("SDXL", "sdxl_unet.json", 1024),
               ("SD3.5-M", "sd35_medium_transformer.json", 1024), ("FLUX-dev", "flux_dev_transformer.json", 1024),
               ("Z-Image", "zimage_transformer.json", 1024), ("Qwen-Image", "qwen_image_transformer.json", 1024))
SMOKE_MODELS = (("tiny-sd", "tiny_sd_unet.json", 64), ("tiny-sdxl", "tiny_sdxl_unet.json", 64),
                ("tiny-sd3", "tiny_sd3_transformer.json", 64), ("tiny-flux", "tiny_flux_transformer.json", 64),
                ("tiny-zimage", "tiny_zimage_transformer.json", 64),
                ("tiny-qwen-image", "tiny_qwen_image_transformer.json", 64))
# Text tokens the transformers attend to: FLUX-dev's T5 length; SD3's 77 CLIP tokens + 256 T5; Z-Image's and
# Qwen-Image's pipelines' longest caption (512; they attend to a caption's real tokens only).
TEXT_TOKENS = {"flux": 512, "sd3": 77 + 256, "zimage": 512, "qwen_image": 512}
# Each transformer class: its family and the config key of its text width.
TRANSFORMERS = {"FluxTransformer2DModel": ("flux", "joint_attention_dim"),
                "SD3Transformer2DModel": ("sd3", "joint_attention_dim"),
                "ZImageTransformer2DModel": ("zimage", "cap_feat_dim"),
                "QwenImageTransformer2DModel": ("qwen_image", "joint_attention_dim")}
BATCHES = (1, 4, 16)
SMOKE_BATCHES = (1, 2)
# Commonly quoted dense bf16 tensor-core peaks, TFLOP/s (not sparse); the first match on the device name wins.
# "H100" alone is the SXM part (named "H100 80GB HBM3"); the NVL part has no figure here: pass --peak-tflops.
PEAK_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", None), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
    ("L40S", 362.0), ("4090", 165.0))
# First compile of a UNet, before one has been measured on this machine (seconds).
COMPILE_GUESS_S = {"SD1.5": 120.0, "SDXL": 240.0, "SD3.5-M": 240.0, "FLUX-dev": 300.0, "Z-Image": 240.0,
                   "Qwen-Image": 420.0}
MEMORY_HEADROOM = 0.90  # skip a case projected to use more of the GPU than this


def find_config(name: str) -> Path:
    for folder in CONFIG_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} is in none of {', '.join(map(str, CONFIG_DIRS))}")


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


@dataclass
class Model:
    name: str
    pixels: int
    unet: Any
    params: list[Any]
    optimizer: Any
    scheduler: Any
    hidden_dim: int
    pooled_dim: int | None
    family: str = "sd1"
    flops_per_sample: float | None = None
    compile_s: float | None = None
    # Memory one more sample adds (batch-1 peak over what was resident), by gradient checkpointing.
    per_sample_bytes: dict[bool, int] = field(default_factory=dict)
    bs1_step_s: dict[bool, float] = field(default_factory=dict)
    resident_bytes: int = 0  # the model, its LoRA and optimizer state on the device between steps

    def take_measurements(self, other: "Model") -> None:
        """What an earlier build of the same model measured (FLOPs, per-sample memory, step times)."""
        self.flops_per_sample = other.flops_per_sample
        self.compile_s = other.compile_s
        self.per_sample_bytes = dict(other.per_sample_bytes)
        self.bs1_step_s = dict(other.bs1_step_s)
        self.resident_bytes = other.resident_bytes

    @property
    def latent(self) -> int:
        return self.pixels // 8

    @property
    def is_flow(self) -> bool:
        return self.family in TEXT_TOKENS


@dataclass
class Row:
    model: str
    pixels: int
    batch: int
    gc: bool
    compiled: bool
    s_per_step: float | None = None
    flops: float | None = None
    peak_bytes: int | None = None
    note: str = ""


class Bench:
    def __init__(self, device: Any, smoke: bool, budget_s: float, steps: int, backend: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.smoke = smoke
        self.budget_s = budget_s
        self.steps = steps
        self.backend = backend
        self.compile_mode = "default"
        self.t_start = time.perf_counter()
        # The smoke run checks the path, not the numbers: bf16 is emulated slowly on most CPUs.
        self.dtype = torch.float32 if smoke else torch.bfloat16
        self.grads_seen: dict[str, bool] = {}
        self.total_memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None

    # ------------------------------------------------------------------ building
    def release(self, model: Model) -> None:
        """Frees the model's weights, LoRA and optimizer state; its measurements stay on the record."""
        model.unet = model.params = model.optimizer = None
        import gc

        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def build(self, name: str, config_file: str, pixels: int) -> Model:
        import torch
        from diffusers import DDPMScheduler, UNet2DConditionModel

        from loratui.lora.inject import inject_lora

        config = json.loads(find_config(config_file).read_text())
        if config.get("_class_name") in TRANSFORMERS:
            return self.build_transformer(name, config, pixels)
        torch.manual_seed(0)
        # Built directly on the device: a 2.6 B-parameter SDXL UNet initialises in seconds there.
        with torch.device(self.device):
            unet = UNet2DConditionModel.from_config(config)
        unet.to(self.dtype).requires_grad_(False).train()
        family = "sdxl" if config.get("addition_embed_type") == "text_time" else "sd1"
        net = inject_lora(unet, component="unet", family=family, preset="attention", rank=16, alpha=16.0,
                          generator=torch.Generator("cpu").manual_seed(0))
        params = list(net.parameters())
        fused = self.device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=fused)
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear")
        pooled = None
        if family == "sdxl":
            pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        return Model(name, pixels, unet, params, optimizer, scheduler, config["cross_attention_dim"], pooled)

    def build_transformer(self, name: str, config: dict[str, Any], pixels: int) -> Model:
        import torch
        import diffusers
        from diffusers import FlowMatchEulerDiscreteScheduler

        from loratui.lora.inject import inject_lora

        family, text_key = TRANSFORMERS[config["_class_name"]]
        flux = family == "flux"
        cls = getattr(diffusers, config["_class_name"])
        torch.manual_seed(0)
        with torch.device(self.device):
            model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        model.to(self.dtype).requires_grad_(False).train()
        net = inject_lora(model, component="unet", family=family, preset="attention", rank=16, alpha=16.0,
                          generator=torch.Generator("cpu").manual_seed(0))
        params = list(net.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=self.device.type in ("cuda", "cpu"))
        # The published scheduler settings the σ sampling reads: FLUX.1-dev's, SD3's and Z-Image's (fixed
        # shift 3), Qwen-Image's (its own resolution-dependent range).
        if family == "qwen_image":
            scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                                                        max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192)
        else:
            scheduler = FlowMatchEulerDiscreteScheduler(
                shift=3.0, use_dynamic_shifting=flux, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                max_image_seq_len=4096)
        # Z-Image and Qwen-Image have no pooled vector; their conditioning carries the text mask instead.
        return Model(name, pixels, model, params, optimizer, scheduler, config[text_key],
                     config.get("pooled_projection_dim"), family)

    def inputs(self, model: Model, batch: int) -> tuple[Any, Any]:
        import torch

        from loratui.engine.step import Conditioning

        g = torch.Generator("cpu").manual_seed(batch)
        if model.is_flow:
            latents = torch.randn(batch, 16, model.latent, model.latent, generator=g).to(self.device)
            tokens = TEXT_TOKENS[model.family] if not self.smoke else 16
            hidden = torch.randn(batch, tokens, model.hidden_dim, generator=g).to(self.device, self.dtype)
            if model.pooled_dim is None:
                return latents, Conditioning(hidden, torch.ones(batch, tokens, device=self.device))
            pooled = torch.randn(batch, model.pooled_dim, generator=g).to(self.device, self.dtype)
            return latents, Conditioning(hidden, pooled)
        latents = torch.randn(batch, 4, model.latent, model.latent, generator=g).to(self.device)
        hidden = torch.randn(batch, 77, model.hidden_dim, generator=g).to(self.device, self.dtype)
        if model.pooled_dim is None:
            return latents, Conditioning(hidden)
        pooled = torch.randn(batch, model.pooled_dim, generator=g).to(self.device, self.dtype)
        side = float(model.pixels)
        time_ids = torch.tensor([[side, side, 0.0, 0.0, side, side]] * batch, device=self.device, dtype=self.dtype)
        return latents, Conditioning(hidden, pooled, time_ids)

    # ------------------------------------------------------------------ one step
    def step_fn(self, model: Model, unet: Any, batch: int) -> Callable[[], None]:
        import torch

        from loratui.engine.step import diffusion_loss, step_generator

        latents, cond = self.inputs(model, batch)
        counter = iter(range(10**9))
        self.grads_seen.clear()

        def loss_of(gen: Any) -> Any:
            if not model.is_flow:
                return diffusion_loss(unet, model.scheduler, latents, cond, gen, prediction_type="epsilon",
                                      unet_dtype=self.dtype)
            from loratui.engine.flow import flow_matching_loss, resolve_sampling
            from loratui.models.text import family_module

            return flow_matching_loss(
                family_module(model.family), unet, latents, cond, gen,
                sampling=resolve_sampling("auto", model.family), sigmoid_scale=1.0, shift=3.0,
                scheduler_config=model.scheduler.config, guidance=1.0, dtype=self.dtype)

        def step() -> None:
            gen = step_generator(0, next(counter))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
                loss = loss_of(gen)
            loss.backward()
            if "ok" not in self.grads_seen:  # once per case: checkpointing or compile must not lose them
                self.grads_seen["ok"] = any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                                            for p in model.params)
            norm = torch.nn.utils.clip_grad_norm_(model.params, 1.0)
            if bool(torch.isfinite(norm)):  # the engine's one host sync per step
                model.optimizer.step()
            model.optimizer.zero_grad(set_to_none=True)
            loss.item()  # the engine reads the loss every step

        return step

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def count_flops(self, model: Model) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        model.unet.disable_gradient_checkpointing()
        step = self.step_fn(model, model.unet, 1)
        step()  # allocations and lazy initialisation outside the count
        with FlopCounterMode(display=False) as counter:
            step()
        model.flops_per_sample = float(counter.get_total_flops())

    # ------------------------------------------------------------------ budgets
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def projected_bytes(self, model: Model, batch: int, gc: bool) -> int | None:
        per_sample = model.per_sample_bytes.get(gc)
        if per_sample is None or self.total_memory is None:
            return None
        # Linear in the batch from batch 1, whose fixed costs (workspaces) make this err on the safe side.
        return model.resident_bytes + batch * per_sample

    def skip_reason(self, model: Model, batch: int, gc: bool, compiled: bool) -> str | None:
        projected = self.projected_bytes(model, batch, gc)
        if projected is not None and projected > MEMORY_HEADROOM * self.total_memory:
            return f"skipped: projected {projected / 2**30:.0f} GiB from the batch-1 peak does not fit"
        per_step = model.bs1_step_s.get(gc, model.bs1_step_s.get(False, 0.0)) * batch
        cost = per_step * (self.steps + 4)
        if compiled:
            guess = 5.0 if self.smoke else COMPILE_GUESS_S.get(model.name, 200.0)
            cost += model.compile_s if model.compile_s is not None else guess
        if self.elapsed() + cost > self.budget_s:
            return f"skipped: about {cost:.0f} s would pass the {self.budget_s:.0f} s budget"
        return None

    # ------------------------------------------------------------------ cases
    def run_case(self, model: Model, batch: int, gc: bool, compiled: bool) -> Row:
        import torch

        row = Row(model.name, model.pixels, batch, gc, compiled)
        reason = self.skip_reason(model, batch, gc, compiled)
        if reason:
            row.note = reason
            return row
        if gc:
            model.unet.enable_gradient_checkpointing()
        else:
            model.unet.disable_gradient_checkpointing()
        unet = model.unet
        if compiled:
            torch._dynamo.reset()  # a new batch or checkpointing setting compiles afresh, timed below
            mode = None if self.backend != "inductor" else self.compile_mode
            unet = torch.compile(model.unet, backend=self.backend, dynamic=False, mode=mode)
        resident = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            resident = torch.cuda.memory_allocated(self.device)
            model.resident_bytes = max(model.resident_bytes, resident)
        try:
            step = self.step_fn(model, unet, batch)
            t0 = time.perf_counter()
            step()  # first step: allocation, autotuning, and for compiled cases the compile itself
            self.sync()
            first = time.perf_counter() - t0
            if compiled:
                model.compile_s = first
                row.note = f"compile + first step {first:.0f} s"
            for _ in range(2):
                step()
            self.sync()
            t0 = time.perf_counter()
            for _ in range(self.steps):
                step()
            self.sync()
            row.s_per_step = (time.perf_counter() - t0) / self.steps
        except torch.OutOfMemoryError:
            model.optimizer.zero_grad(set_to_none=True)
            row.note = "out of memory"
            return row
        if not self.grads_seen.pop("ok", True):
            row.note = (row.note + "; " if row.note else "") + "no LoRA gradient reached the factors"
        if self.device.type == "cuda":
            row.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            if batch == 1 and not compiled:
                model.per_sample_bytes[gc] = max(0, row.peak_bytes - resident)
        if batch == 1 and not compiled:
            model.bs1_step_s[gc] = row.s_per_step
        if model.flops_per_sample is not None:
            row.flops = model.flops_per_sample * batch
        return row


def format_rows(rows: list[Row], peak: float | None) -> str:
    from common import table

    out = []
    for r in rows:
        timed = r.s_per_step is not None
        tflops = r.flops / r.s_per_step / 1e12 if timed and r.flops else None
        out.append((
            r.model, r.pixels, r.batch, "on" if r.gc else "off", "on" if r.compiled else "off",
            f"{r.s_per_step:.4f}" if timed else "–", f"{r.batch / r.s_per_step:.2f}" if timed else "–",
            f"{r.flops / 1e12:.3g}" if r.flops else "–", f"{tflops:.3g}" if tflops else "–",
            f"{tflops / peak:.1%}" if tflops and peak else "–",
            f"{r.peak_bytes / 2**30:.2f}" if r.peak_bytes is not None else "–", r.note))
    return table(("model", "px", "batch", "grad ckpt", "compile", "s/step", "samples/s", "TFLOP/step",
                  "TFLOP/s", "MFU", "peak GiB", "note"), out)


def memory_reading_check(device: Any) -> str:
    """The engine's per-step memory reading against torch's own two calls."""
    import torch

    from loratui.engine.memory import memory_snapshot

    snap = memory_snapshot(device)
    alloc = torch.cuda.memory_allocated(device) / 2**20
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    same = abs((snap.gpu_alloc_mb or 0) - alloc) < 1 and abs((snap.gpu_peak_mb or 0) - peak) < 1
    return (f"engine memory_snapshot: {snap.gpu_alloc_mb:.0f} MiB allocated, peak {snap.gpu_peak_mb:.0f} MiB; "
            f"torch.cuda: {alloc:.0f} / {peak:.0f} MiB -> {'agree' if same else 'DISAGREE'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny configs on the CPU: tests the script path")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting cases after this (default 450)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default 10; smoke 2)")
    ap.add_argument("--models", default=None, help="comma-separated subset, e.g. SD1.5")
    ap.add_argument("--no-compile", action="store_true", help="eager cases only")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode of the compiled cases (reduce-overhead: CUDA graphs), as train.compile_mode")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here, after every case")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak for MFU")
    ap.add_argument("--memory", action="store_true",
                    help="measure the memory options instead (gpu_memory.py: FLUX.1-dev and Qwen-Image)")
    args = ap.parse_args(argv)
    if args.memory:
        from gpu_memory import main as memory_main

        passed = [*(["--cpu-smoke"] if args.cpu_smoke else []),
                  *(["--budget-s", str(args.budget_s)] if args.budget_s else []),
                  *(["--steps", str(args.steps)] if args.steps else []),
                  *(["--models", args.models] if args.models else []),
                  *(["--json", str(args.json)] if args.json else [])]
        return memory_main(passed)

    import torch

    from common import machine_line, quiet

    quiet()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine, or use --cpu-smoke to test the script here", file=sys.stderr)
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    models = SMOKE_MODELS if smoke else REAL_MODELS
    if args.models:
        wanted = {m.strip() for m in args.models.split(",")}
        models = tuple(m for m in models if m[0] in wanted)
    if device.type == "cuda":
        from loratui.engine.cuda_setup import configure_cuda_backends

        configure_cuda_backends()  # the engine's settings: TF32, and cuDNN's fused attention off
    if smoke:
        torch.set_num_threads(1)  # tiny tensors: more threads only add contention on a shared machine
    bench = Bench(device, smoke, args.budget_s or (90.0 if smoke else 450.0), args.steps or (2 if smoke else 10),
                  backend="eager" if smoke else "inductor")
    bench.compile_mode = args.compile_mode
    name = "CPU (smoke)" if smoke else torch.cuda.get_device_name(device)
    peak = args.peak_tflops or (None if smoke else peak_tflops(name))

    rows: list[Row] = []
    batches = SMOKE_BATCHES if smoke else BATCHES

    def run(model: Model, batch: int, gc: bool, compiled: bool) -> None:
        row = bench.run_case(model, batch, gc, compiled)
        rows.append(row)
        print(f"  {model.name} bs {batch} gc {gc} compile {compiled}: "
              f"{row.s_per_step if row.s_per_step is not None else row.note} "
              f"({bench.elapsed():.0f} s elapsed)", file=sys.stderr, flush=True)
        if args.json:  # rewritten after every case, so a run cut short still leaves its numbers
            args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))

    # One model on the device at a time, so each row's peak memory is that model's own; the eager cases of
    # every model come first, and a model is built again (seconds on a GPU) for its compiled cases.
    stats: dict[str, Model] = {}
    for model_name, config_file, pixels in models:
        t0 = time.perf_counter()
        model = bench.build(model_name, config_file, pixels)
        bench.count_flops(model)
        print(f"  built {model_name} and counted its FLOPs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for gc in (False, True):
            for batch in batches:
                run(model, batch, gc, False)
        stats[model_name] = model
        bench.release(model)
    if not args.no_compile:
        # While time lasts: first each model's largest batch that fits, then the rest, biggest first.
        order = sorted(batches, reverse=True)
        first = []
        for m in stats.values():
            fitting = [b for b in order if not (bench.skip_reason(m, b, False, False) or "").startswith(
                "skipped: projected")]
            if fitting:
                first.append((m.name, fitting[0], False))
        rest = [(m.name, b, gc) for gc in (False, True) for b in order for m in stats.values()]
        compiled = first + [c for c in rest if c not in first]
        if smoke:  # tracing a UNet takes seconds even with the eager backend: one compiled case shows the path
            compiled = compiled[:1]
        current: Model | None = None
        for model_name, batch, gc in compiled:
            if current is None or current.name != model_name:
                if current is not None:
                    bench.release(current)
                config_file, pixels = next((c, p) for n, c, p in models if n == model_name)
                current = bench.build(model_name, config_file, pixels)
                current.take_measurements(stats[model_name])
            run(current, batch, gc, True)
            stats[model_name].compile_s = current.compile_s

    print(f"\n## gpu.py — {name} · {machine_line()}\n")
    peak_note = (f"peak {peak:g} TFLOP/s bf16 dense (the commonly quoted figure for this device"
                 f"{', given on the command line' if args.peak_tflops else ''})" if peak else
                 "no peak known for this device: MFU not computed (pass --peak-tflops)")
    weights = "fp32 (smoke)" if smoke else "bf16"
    print(f"LoRA attention preset, rank 16, fp32 factors on a {weights} UNet or transformer, fused AdamW, {bench.steps} timed steps "
          f"per case after 3 untimed; {peak_note}; finished in {bench.elapsed():.0f} s\n")
    print(format_rows(rows, peak))
    if device.type == "cuda":
        print("\n" + memory_reading_check(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
