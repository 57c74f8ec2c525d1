"""Peak GPU memory and step time of each memory option: FLUX.1-dev and Qwen-Image at 1024 px, on one CUDA GPU.

Both transformers are built from their published configs (``configs/``, random
weights, no network) in bf16 and held the way the engine holds them
(``loratui.memory``): the blocks' Linear weights stored in each
``model.base_precision``, the last blocks swapped from pinned host memory
(``train.blocks_to_swap``), gradient checkpointing with and without activation
offload. A rank-16 LoRA on every block linear (FLUX's default ``all`` preset)
trains in fp32 with fused AdamW on a flow-matching step (noisy = (1−σ)·x + σ·ε,
target ε − x) at 1024 px, batch 1, 512 text tokens.

Printed per case: peak memory (``torch.cuda.max_memory_allocated`` over the
timed steps, the resident weights included), s/step, and beside them the
planner's estimate when ``loratui.memory.planner`` is importable (its total
includes about 0.6 GiB of CUDA context that torch's allocator does not count).
A case that runs out of memory says so and the next one starts.

Budget: cases start while ``--budget-s`` (default 450 s) lasts, in the order
of ``OPTIONS``. ``--cpu-smoke`` runs the same path on tiny configs on the CPU
(no peak memory there), so the script is tested where there is no GPU.

Run: ``python benchmarks/gpu_memory.py`` or ``python benchmarks/gpu.py --memory``; ``--cpu-smoke`` on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# (name, config file, family as the planner names it)
REAL_MODELS = (("FLUX.1-dev", "flux_dev_transformer.json", "flux"),
               ("Qwen-Image", "qwen_image_transformer.json", "qwen_image"))
TINY_QWEN = {"_class_name": "QwenImageTransformer2DModel", "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6],
             "in_channels": 64, "joint_attention_dim": 32, "num_attention_heads": 2, "num_layers": 3,
             "out_channels": 16, "patch_size": 2}
SMOKE_MODELS = (("tiny-flux", "tiny_flux_transformer.json", "flux"), ("tiny-qwen", TINY_QWEN, "qwen_image"))
PIXELS, SMOKE_PIXELS = 1024, 64
TEXT_TOKENS, SMOKE_TEXT_TOKENS = 512, 16
RANK = 16


@dataclass(frozen=True)
class Option:
    precision: str = "bf16"
    checkpointing: bool = True
    swap_share: float = 0.0  # share of the blocks to swap
    offload: bool = False

    def label(self, blocks: int) -> str:
        parts = [self.precision] + (["checkpointing"] if self.checkpointing else [])
        if self.offload:
            parts.append("activation offload")
        if self.swap_share:
            share = f"{self.swap(blocks)}/{blocks}" if blocks else f"{self.swap_share:.0%} of the blocks"
            parts.append(f"swap {share}")
        return " + ".join(parts)

    def swap(self, blocks: int) -> int:
        return round(self.swap_share * blocks)


OPTIONS = (
    Option("bf16", checkpointing=False), Option("bf16"), Option("fp8"), Option("fp8-scaled"), Option("int8"),
    Option("int4"), Option("nf4"), Option("bf16", swap_share=0.5), Option("int8", swap_share=0.5),
    Option("bf16", offload=True), Option("int8", swap_share=0.5, offload=True),
)


@dataclass
class Row:
    model: str
    option: str
    peak_bytes: int | None = None
    s_per_step: float | None = None
    estimate_bytes: int | None = None
    note: str = ""


def load_config(spec: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(spec, dict):
        return dict(spec)
    return json.loads((HERE / "configs" / spec).read_text())


def build(config: dict[str, Any], device: Any, dtype: Any) -> Any:
    import torch
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel

    cls = FluxTransformer2DModel if config["_class_name"] == "FluxTransformer2DModel" else QwenImageTransformer2DModel
    torch.manual_seed(0)
    with torch.device(device):
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return model.to(dtype).requires_grad_(False).train()


def hold(model: Any, option: Option, device: Any) -> tuple[list[Any], Any, Any]:
    """Store, inject, swap and checkpoint as ``loratui.memory.hold`` does for a project; returns the LoRA
    parameters, the block swap (or None) and the checkpointing function (or None)."""
    import torch

    from loratui.lora.inject import inject_lora
    from loratui.memory.block_swap import BlockSwap
    from loratui.memory.blocks import transformer_blocks
    from loratui.memory.offload import enable_offloaded_checkpointing
    from loratui.memory.stored import block_linears, store_linear

    blocks = transformer_blocks(model)
    count = option.swap(len(blocks))
    host = {id(b) for b in blocks[len(blocks) - count:]} if count else set()
    if option.precision != "bf16":
        for block in blocks:
            keep = torch.device("cpu") if id(block) in host else device
            for layer in list(block_linears(block)):
                store_linear(layer, option.precision, work_device=device, keep_device=keep)
    # The LoRA names only label the factors here; FLUX's rules find every block linear of both models.
    net = inject_lora(model, component="unet", family="flux", preset="all", rank=RANK, alpha=RANK,
                      generator=torch.Generator("cpu").manual_seed(0), check_count=False)
    swap = BlockSwap(blocks, count, device) if count else None
    func = None
    if option.offload:
        func = enable_offloaded_checkpointing(model)
    elif option.checkpointing:
        model.enable_gradient_checkpointing()
    return list(net.parameters()), swap, func


def make_step(model: Any, params: list[Any], config: dict[str, Any], pixels: int, tokens: int, device: Any,
              dtype: Any) -> Any:
    import torch

    flux = config["_class_name"] == "FluxTransformer2DModel"
    side = pixels // 16  # 8x VAE, 2x2 patches
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(1, side * side, config.get("in_channels", 64), generator=g).to(device)
    text = torch.randn(1, tokens, config["joint_attention_dim"], generator=g).to(device, dtype)
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    extra: dict[str, Any]
    if flux:
        extra = dict(pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=g).to(device, dtype),
                     img_ids=torch.zeros(side * side, 3, device=device), txt_ids=torch.zeros(tokens, 3, device=device))
        if config.get("guidance_embeds"):
            extra["guidance"] = torch.ones(1, device=device)
    else:
        extra = dict(img_shapes=[(1, side, side)])

    def step() -> float:
        sigma = torch.rand(1, generator=g).to(device)
        noise = torch.randn(x.shape, generator=g).to(device)
        noisy = ((1 - sigma) * x + sigma * noise).to(dtype)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(hidden_states=noisy, encoder_hidden_states=text, timestep=sigma.to(dtype), return_dict=False,
                        **extra)[0]
        loss = torch.nn.functional.mse_loss(out.float(), noise - x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def planner_estimate(family: str, name: str, config: dict[str, Any], option: Option, blocks: int, pixels: int,
                     tokens: int) -> int | None:
    try:
        from loratui.memory import planner
    except ImportError:
        return None
    try:
        model = planner.Model(family, name, config, resolution=pixels, batch=1, rank=RANK, preset="all",
                              text_tokens=tokens)
        options = planner.Options(base_precision=option.precision, gradient_checkpointing=option.checkpointing,
                                  blocks_to_swap=option.swap(blocks), activation_offload=option.offload)
        return int(planner.estimate(model, options).memory.total)
    except Exception as exc:  # the planner's own problem must not stop the measurements
        print(f"  planner: {exc}", file=sys.stderr)
        return None


def run_case(name: str, spec: Any, family: str, option: Option, *, device: Any, smoke: bool, steps: int) -> Row:
    import torch

    from loratui.memory.blocks import transformer_blocks

    cuda = device.type == "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    pixels, tokens = (SMOKE_PIXELS, SMOKE_TEXT_TOKENS) if smoke else (PIXELS, TEXT_TOKENS)
    config = load_config(spec)
    row = Row(name, option.precision)
    model = swap = None
    try:
        model = build(config, device, dtype)
        blocks = len(transformer_blocks(model))
        row.option = option.label(blocks)
        row.estimate_bytes = planner_estimate(family, name, config, option, blocks, pixels, tokens)
        if option.precision == "nf4" and (not cuda or _missing("bitsandbytes")):
            row.note = "skipped: nf4 needs CUDA and bitsandbytes (pip install -e '.[quant]')"
            return row
        params, swap, _ = hold(model, option, device)
        step = make_step(model, params, config, pixels, tokens, device, dtype)
        step()  # warm-up: kernels chosen, allocator grown
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        losses = [step() for _ in range(steps)]
        if cuda:
            torch.cuda.synchronize()
            row.peak_bytes = torch.cuda.max_memory_allocated()
        row.s_per_step = (time.perf_counter() - t0) / steps
        if not all(v == v for v in losses):
            row.note = "loss not finite"
    except torch.cuda.OutOfMemoryError:
        row.note = "out of memory"
    except Exception as exc:  # one broken case must not cost the GPU run the others' numbers
        row.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    finally:
        if swap is not None:
            swap.remove()
        del model, swap
        gc.collect()  # hooks and modules refer to each other: free the last case's weights before the next
        if cuda:
            torch.cuda.empty_cache()
    return row


def _missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def format_rows(rows: list[Row]) -> str:
    gib = 2**30
    lines = ["| model | option | peak GiB | s/step | planner GiB | planner / peak | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r.peak_bytes / gib:.2f}" if r.peak_bytes else "—"
        est = f"{r.estimate_bytes / gib:.2f}" if r.estimate_bytes else "—"
        ratio = f"{r.estimate_bytes / r.peak_bytes:.2f}" if r.estimate_bytes and r.peak_bytes else "—"
        sps = f"{r.s_per_step:.3f}" if r.s_per_step is not None else "—"
        lines.append(f"| {r.model} | {r.option} | {peak} | {sps} | {est} | {ratio} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny configs on the CPU: tests the script path")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting cases after this (default 450)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default 3; smoke 1)")
    ap.add_argument("--models", default=None, help="comma-separated subset, e.g. FLUX.1-dev")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here, after every case")
    args = ap.parse_args(argv)

    import torch

    from common import machine_line, quiet

    quiet()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine, or use --cpu-smoke to test the script here", file=sys.stderr)
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    models = SMOKE_MODELS if smoke else REAL_MODELS
    if args.models:
        wanted = {m.strip() for m in args.models.split(",")}
        models = tuple(m for m in models if m[0] in wanted)
    budget = args.budget_s or (120.0 if smoke else 450.0)
    steps = args.steps or (1 if smoke else 3)
    start = time.perf_counter()
    rows: list[Row] = []
    for name, spec, family in models:
        for option in OPTIONS:
            if time.perf_counter() - start > budget:
                rows.append(Row(name, option.label(0), note="skipped: budget spent"))
                continue
            row = run_case(name, spec, family, option, device=device, smoke=smoke, steps=steps)
            rows.append(row)
            print(f"  {name} {row.option}: {row.s_per_step if row.s_per_step is not None else row.note} "
                  f"({time.perf_counter() - start:.0f} s elapsed)", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    where = "CPU (smoke)" if smoke else torch.cuda.get_device_name(device)
    print(f"\n## gpu_memory.py — {where} · {machine_line()}\n")
    print(f"rank-{RANK} LoRA on every block linear, batch 1, {SMOKE_PIXELS if smoke else PIXELS} px, "
          f"{SMOKE_TEXT_TOKENS if smoke else TEXT_TOKENS} text tokens, {steps} timed steps after one untimed; "
          f"finished in {time.perf_counter() - start:.0f} s\n")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
