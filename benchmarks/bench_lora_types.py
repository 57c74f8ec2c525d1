"""Training step time and trainable parameters of each adapter type (lora, dora, loha, lokr).

One UNet forward + backward on fixed inputs per step, the four types injected
side by side into copies of the same model and timed in turns, so the ratios
to plain LoRA are what to read. The default model is the built-in tiny SD1;
``--sd15`` builds the real SD1.5 UNet shape from its published config (random
weights, no download) at 64 px, which is slower but has real layer widths.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Case, interleave, machine_line, ms, quiet, set_threads, table  # noqa: E402

TYPES = ("lora", "dora", "loha", "lokr")


def _unet(sd15: bool):
    import torch

    if not sd15:
        from loratui.models.builtin import build_pipeline

        return build_pipeline("tiny-sd", Path(tempfile.mkdtemp(prefix="loratui-bench-"))).unet, 16, 8
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                  block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)  # fmt: skip
    return UNet2DConditionModel(**config), 8, 77


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true", help="real SD1.5 UNet shapes (random weights) at 64 px")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--preset", default="attention+ff")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    quiet()
    import torch

    from loratui.lora import inject_lora

    threads = set_threads(args.threads)
    base, latent, tokens = _unet(args.sd15)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, latent, latent, generator=g)
    context = torch.randn(2, tokens, base.config.cross_attention_dim, generator=g)
    cases, params = [], {}
    for kind in TYPES:
        unet = copy.deepcopy(base)
        network = inject_lora(unet, component="unet", family="sd1", preset=args.preset, rank=args.rank,
                              alpha=float(args.rank), kind=kind)  # fmt: skip
        params[kind] = network.num_parameters()

        def step(unet=unet, network=network) -> None:
            unet(latents, 10, context).sample.square().mean().backward()
            for p in network.parameters():
                p.grad = None

        cases.append(Case(kind, step))
    interleave(cases, rounds=args.rounds, per_round=args.per_round, warmup=1)
    lora = cases[0].median
    print(f"\n{machine_line(threads)}")
    print(f"model: {'SD1.5 UNet shape, 64 px' if args.sd15 else 'builtin:tiny-sd, 128 px'}, batch 2, "
          f"preset {args.preset}, rank {args.rank}\n")
    rows = [(c.name, ms(c.median), f"{c.median / lora:.2f}", f"{params[c.name]:,}") for c in cases]
    print(table(("type", "ms/step (median)", "× lora", "trainable parameters"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
