"""The memory planner's estimate against the measured peak of real LoRA steps, on one CUDA GPU.

FLUX.1-dev and Qwen-Image are built from their published configs with random
weights (bf16, on the GPU, no download), given loratui's LoRA (rank 16,
attention) and trained for two steps at 1024 px, batch 1, the way the engine
trains: bf16 autocast, fused AdamW, gradient checkpointing through the
engine's own switch. Each base storage this tree can hold is tried (bf16, and
fp8 through ``loratui.engine.float8``), with and without checkpointing. The
second step's ``torch.cuda.max_memory_allocated`` is compared with the
planner's peak less its CUDA context (which the allocator does not count).

Cases that would not fit the card by the planner's own estimate are skipped
and say so. ``--cpu-smoke`` runs the same path on the CPU with tiny configs,
fp32, measuring with the planner's storage tracker on real tensors.

Run: ``python benchmarks/gpu_memory_plan.py [--out results.json]``,
``python benchmarks/gpu_memory_plan.py --cpu-smoke``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loratui.memory import arch  # noqa: E402
from loratui.memory import planner as P  # noqa: E402

TINY_FLUX = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 16, "axes_dims_rope": [4, 4, 8],
             "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 32, "num_attention_heads": 4,
             "num_layers": 3, "num_single_layers": 5, "patch_size": 1, "pooled_projection_dim": 32}
REAL = (("FLUX.1-dev", "flux", None, 1024), ("Qwen-Image", "qwen_image", None, 1024))
SMOKE = (("tiny-flux", "flux", TINY_FLUX, 256),)


def measure(family: str, config: dict[str, Any], *, pixels: int, precision: str, checkpointing: bool,
            device: Any, text: int) -> tuple[int, float]:
    """Peak bytes (weights included) and seconds of the second of two LoRA steps."""
    import torch

    from loratui.engine.grad_checkpoint import enable_unet_checkpointing

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = arch.build_model(family, config)
    finally:
        torch.set_default_dtype(default)
    model.requires_grad_(False)
    if precision == "fp8":
        from loratui.engine.float8 import store_blocks_in_float8

        store_blocks_in_float8(model)
    arch.add_lora(model, family, preset="attention", rank=16)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(device)
    if checkpointing:
        model.train()
        enable_unet_checkpointing(model, 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    run = arch.training_inputs(family, config, 1, pixels // 8, text, dtype)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = run(model)
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.device(device):
        step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated()
        else:
            resident = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()])
            state = sum(v.untyped_storage().nbytes() for s in optimizer.state.values() for v in s.values()
                        if torch.is_tensor(v))
            tracker = arch.StorageTracker()
            tracker.ignore([*model.parameters(), *model.buffers(),
                            *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))])
            t0 = time.perf_counter()
            with tracker:
                step()
            seconds = time.perf_counter() - t0
            peak = resident + state + tracker.peak
    del model, optimizer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return peak, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny configs on the CPU, in seconds")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine, or pass --cpu-smoke", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    card = None if args.cpu_smoke else torch.cuda.get_device_properties(0).total_memory
    rows = []
    print("| model | base | checkpointing | estimate GiB | measured GiB | estimate/measured | s/step |")
    print("|---|---|---|---|---|---|---|")
    for name, family, config, pixels in (SMOKE if args.cpu_smoke else REAL):
        config = config or arch.published_config(family)
        text = arch.TEXT_TOKENS[family]
        for precision in (("fp32",) if args.cpu_smoke else ("bf16", "fp8")):
            for checkpointing in (True, False):
                model = P.Model(family, name, config, pixels, 1, 16, half=not args.cpu_smoke, text_tokens=text)
                est = P.estimate(model, P.Options(precision, checkpointing))
                expected = est.memory.total - est.memory.workspace
                row: dict[str, Any] = {"model": name, "base": precision, "checkpointing": checkpointing,
                                       "estimate_gib": round(expected / P.GIB, 2)}
                if card is not None and est.memory.total > 0.92 * card:
                    row["note"] = f"skipped: the estimate {P.gib(est.memory.total)} does not fit this card"
                else:
                    peak, seconds = measure(family, config, pixels=pixels, precision=precision,
                                            checkpointing=checkpointing, device=device, text=text)
                    row.update(measured_gib=round(peak / P.GIB, 2), ratio=round(expected / peak, 3),
                               s_per_step=round(seconds, 3))
                rows.append(row)
                print(f"| {name} | {precision} | {checkpointing} | {row['estimate_gib']} | "
                      f"{row.get('measured_gib', '-')} | {row.get('ratio', row.get('note', '-'))} | "
                      f"{row.get('s_per_step', '-')} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
