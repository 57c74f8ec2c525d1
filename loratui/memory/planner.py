"""What a run will hold in GPU memory, and the fastest memory options that fit a card.

Peak device memory is the sum of: the frozen denoiser as stored
(``model.base_precision``, less the blocks ``train.blocks_to_swap`` keeps in
host memory), the text encoders when they stay on the GPU, the LoRA with its
gradients and optimizer state, the step's activations (traced on fake tensors
by :mod:`loratui.memory.arch`, with gradient checkpointing and activation
offload applied) and the CUDA context. Bytes per stored weight come from
:mod:`loratui.memory.precision`, the same description the engine stores by.

Relative step times order the options: each base precision's measured factor,
gradient checkpointing's recomputation, activation offload's copies, and block
swap's PCIe time that the compute of the block before it does not hide.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from typing import Any

from loratui.memory import arch
from loratui.memory.precision import PRECISIONS, stored_bytes

GIB = 2**30
# The CUDA context, cuBLAS workspaces and the allocator's rounding: memory the card loses that torch's
# tensors do not account for (about 0.5 GiB of context on recent drivers, plus a few percent).
CONTEXT_BYTES = int(0.6 * GIB)
ALLOCATOR_SLACK = 0.05
# Blocks of a swapped run on the card at once: the one computing and the one arriving.
SWAP_RING = 2
# A pinned host-to-device copy on PCIe 4.0 x16, and what a 24-80 GB card sustains in bf16 LoRA training.
PCIE_BYTES_PER_S = 24e9
SUSTAINED_FLOPS = 100e12
# Even a copy the compute hides slows the step: it shares the card's memory bandwidth and the streams
# synchronise at every block. Counted as this share of the copy's time (an assumption until measured).
SWAP_FLOOR = 0.25
# A recommendation keeps this share of the card free for what no estimate sees (fragmentation, spikes).
FIT_MARGIN = 0.95
# Recomputing a block costs about 0.7 of a step's time for LoRA (performance-anchors: +69-78 % measured);
# host copies of the checkpointed activations about 15 % more (sd-scripts' cpu_offload_checkpointing).
CHECKPOINT_COST = 0.7
OFFLOAD_COST = 0.15
# Stored formats rebuild each weight in the compute dtype for its own matmul and again in the backward, never
# keeping it for the backward (memory/stored.py): one rebuilt weight exists at a time.
REBUILDS_WEIGHTS = ("fp8", "fp8-scaled", "int8", "int4", "nf4")
# Bytes of optimizer state per trained parameter.
OPTIMIZER_STATE = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "adamw_schedulefree": 12}
TRANSFORMER_PRECISIONS = ("bf16", "fp8", "fp8-scaled", "int8", "int4", "nf4")


class PlanError(ValueError):
    """The settings cannot be planned as they are; the message says what to change."""


@dataclass(frozen=True)
class Model:
    """What the plan is for: the denoiser's architecture and the run's shape."""

    family: str
    name: str                      # shown to the user: the project's base model, or the reference model assumed
    config: dict[str, Any]
    resolution: int
    batch: int
    rank: int
    preset: str = "attention"
    lora_type: str = "lora"
    lokr_factor: int = -1
    half: bool = True              # bf16/fp16 training (fp32 weights and no autocast otherwise)
    optimizer: str = "adamw"
    ema: bool = False
    text_encoder_params: tuple[int, ...] = ()
    text_encoders_on_device: bool = False
    text_tokens: int = 0

    @property
    def transformer(self) -> bool:
        return bool(arch.denoiser(self.family).block_lists)


@dataclass(frozen=True)
class Options:
    """The memory settings the planner chooses between (``model.base_precision``, ``train.*``)."""

    base_precision: str = "bf16"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1
    blocks_to_swap: int = 0
    activation_offload: bool = False

    def label(self) -> str:
        parts = [self.base_precision]
        if self.gradient_checkpointing:
            parts.append("checkpointing" + (f" every {self.checkpoint_every}" if self.checkpoint_every > 1 else ""))
        if self.activation_offload:
            parts.append("activation offload")
        if self.blocks_to_swap:
            parts.append(f"swap {self.blocks_to_swap} blocks")
        return " + ".join(parts)

    def settings(self) -> dict[str, Any]:
        """The config fields that give this option, as loratui.toml spells them."""
        return {"model.base_precision": self.base_precision,
                "train.gradient_checkpointing": self.gradient_checkpointing,
                "train.gradient_checkpointing_every": self.checkpoint_every,
                "train.blocks_to_swap": self.blocks_to_swap, "train.activation_offload": self.activation_offload}


@dataclass(frozen=True)
class Memory:
    """Peak device memory by part, in bytes, and what waits in host memory."""

    weights: int
    text_encoders: int
    lora: int
    activations: int
    workspace: int
    host: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.text_encoders + self.lora + self.activations + self.workspace


@dataclass(frozen=True)
class Estimate:
    options: Options
    memory: Memory
    relative_time: float            # step time against bf16 without checkpointing or swapping
    notes: tuple[str, ...] = ()

    def fits(self, card_bytes: int | None) -> bool | None:
        return None if card_bytes is None else self.memory.total <= FIT_MARGIN * card_bytes


# -- one estimate ----------------------------------------------------------------------------------------


def check_options(model: Model, options: Options) -> list[str]:
    """What cannot work with this model, each with what to change."""
    problems = []
    name = model.name
    if options.base_precision not in ("bf16", "fp32") and not model.transformer:
        problems.append(f"model.base_precision = \"{options.base_precision}\" is for the transformer families "
                        f"(SD3, FLUX, Chroma, Qwen-Image, Z-Image); {name} is a UNet: set it to \"auto\".")
    if options.base_precision not in ("bf16", "fp32") and options.base_precision not in PRECISIONS:
        problems.append(f"model.base_precision = \"{options.base_precision}\" is unknown; choose one of "
                        f"{', '.join(PRECISIONS)}.")
    blocks = len(arch.count_weights_cached(model.family, model.config).blocks)
    if options.blocks_to_swap and not model.transformer:
        problems.append(f"train.blocks_to_swap = {options.blocks_to_swap} is for the transformer families; {name} "
                        "is a UNet: set it to 0 (gradient checkpointing saves the most memory there).")
    elif options.blocks_to_swap and options.blocks_to_swap >= blocks:
        problems.append(f"train.blocks_to_swap = {options.blocks_to_swap}, but {name} has {blocks} blocks: set it to "
                        f"at most {blocks - 1} (one block must stay on the GPU).")
    if options.activation_offload and not options.gradient_checkpointing:
        problems.append("train.activation_offload = true moves the checkpointed activations to host memory, so it "
                        "needs train.gradient_checkpointing = true; turn that on or the offload off.")
    return problems


def estimate(model: Model, options: Options, *, swapped: set[int] | None = None) -> Estimate:
    """Peak device memory and relative step time of ``model`` trained with ``options``.

    ``train.blocks_to_swap = N`` keeps the last N blocks in forward order in host memory; ``swapped``
    names other block indices instead (to compare with trainers that count blocks differently).
    """
    problems = check_options(model, options)
    if problems:
        raise PlanError(" ".join(problems))
    weights = arch.count_weights_cached(model.family, model.config)
    compute = 2 if model.half else 4
    if swapped is None:
        swapped = set(range(len(weights.blocks) - options.blocks_to_swap, len(weights.blocks)))
    block_bytes = [_block_bytes(b, options.base_precision, compute) for b in weights.blocks]
    on_card = sum(b for i, b in enumerate(block_bytes) if i not in swapped)
    host = sum(block_bytes[i] for i in swapped)
    if swapped:
        on_card += SWAP_RING * max(block_bytes[i] for i in swapped)
    on_card += weights.outside_params * compute
    text = sum(model.text_encoder_params) * compute if model.text_encoders_on_device else 0
    lora_params = arch.count_lora_cached(model.family, model.config, model.preset, model.rank, model.lora_type,
                                         model.lokr_factor)
    per_param = 4 + 4 + OPTIMIZER_STATE.get(model.optimizer, 8) + (4 if model.ema else 0)
    activations = _activations(model, options, weights, compute)
    workspace = CONTEXT_BYTES + int(ALLOCATOR_SLACK * activations)
    memory = Memory(on_card, text, lora_params * per_param, activations, workspace, host)
    return Estimate(options, memory, relative_time(model, options, weights, block_bytes, swapped))


def _block_bytes(block: arch.BlockWeights, precision: str, compute: int) -> int:
    if precision in ("bf16", "fp32"):
        return block.params * (compute if precision == "bf16" else 4)
    return sum(stored_bytes(precision, o, i) for o, i in block.linear_shapes) + block.other_params * compute


def _activations(model: Model, options: Options, weights: arch.Weights, compute: int) -> int:
    args = dict(batch=model.batch, side=model.resolution // 8, text=model.text_tokens, half=model.half,
                preset=model.preset, rank=model.rank, kind=model.lora_type)
    plain = arch.step_memory(model.family, model.config, checkpointing=False, **args)
    if not options.gradient_checkpointing:
        step = plain.peak
    else:
        full = arch.step_memory(model.family, model.config, checkpointing=True, **args)
        # Checkpointing every k-th block keeps the others' activations: in between the two traced ends.
        kept = 1.0 - 1.0 / options.checkpoint_every
        step = int(full.peak + kept * max(0, plain.peak - full.peak))
        if options.activation_offload and weights.blocks:
            # The checkpointed block inputs wait in host memory; two are on the card at a time (in use, arriving).
            n = len(weights.blocks)
            step -= int(full.saved * max(0.0, 1.0 - SWAP_RING / n) / options.checkpoint_every)
    if options.base_precision in REBUILDS_WEIGHTS:
        step += max((o * i for b in weights.blocks for o, i in b.linear_shapes), default=0) * compute
    return step


def relative_time(model: Model, options: Options, weights: arch.Weights, block_bytes: list[int],
                  swapped: set[int]) -> float:
    """Step time against bf16 with no checkpointing, offload or swap, on the same card."""
    speed = PRECISIONS[options.base_precision].relative_speed if options.base_precision in PRECISIONS else 1.0
    time = speed
    if options.gradient_checkpointing:
        time *= 1.0 + CHECKPOINT_COST / options.checkpoint_every
        if options.activation_offload:
            time *= 1.0 + OFFLOAD_COST
    if swapped:
        tokens = model.batch * ((model.resolution // 16) ** 2 + model.text_tokens)
        step_flops = 3 * 2 * weights.params * tokens  # forward, backward and recompute, 2 FLOPs a weight and token
        exposed = 0.0
        for i in sorted(swapped):
            copy_s = block_bytes[i] / PCIE_BYTES_PER_S
            # The copy overlaps the compute of the block before it, in the forward and again in the backward.
            hidden_s = 2 * weights.blocks[max(0, i - 1)].params * tokens / SUSTAINED_FLOPS
            exposed += 2 * max(copy_s - hidden_s, SWAP_FLOOR * copy_s)
        time += exposed / (step_flops / SUSTAINED_FLOPS)
    return time


# -- choosing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    model: Model
    current: Estimate | None
    candidates: tuple[Estimate, ...]
    best: Estimate | None
    card_bytes: int | None
    card_source: str
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def candidate_options(model: Model, *, cuda: bool = True) -> list[Options]:
    """Every combination the table shows (block swap is added per precision where it is needed)."""
    precisions = [p for p in TRANSFORMER_PRECISIONS if cuda or not PRECISIONS[p].cuda_only] \
        if model.transformer else ["bf16" if model.half else "fp32"]
    out = []
    for p in precisions:
        out += [Options(p), Options(p, True, 2), Options(p, True, 1)]
        if model.transformer:
            out.append(Options(p, True, 1, activation_offload=True))
    return out


def smallest_swap(model: Model, options: Options, card_bytes: int) -> Estimate | None:
    """The same options with the fewest swapped blocks that fit, or None when even the most do not."""
    blocks = len(arch.count_weights_cached(model.family, model.config).blocks)
    lo, hi = 1, blocks - 1
    limit = FIT_MARGIN * card_bytes
    if hi < lo or estimate(model, replace(options, blocks_to_swap=hi)).memory.total > limit:
        return None
    while lo < hi:  # memory falls as more blocks are swapped
        mid = (lo + hi) // 2
        if estimate(model, replace(options, blocks_to_swap=mid)).memory.total <= limit:
            hi = mid
        else:
            lo = mid + 1
    return estimate(model, replace(options, blocks_to_swap=lo))


def plan(model: Model, current: Options | None, card_bytes: int | None, *, card_source: str = "",
         cuda: bool = True) -> Plan:
    """Estimates for the current settings and every candidate, and the fastest candidate that fits."""
    problems = tuple(check_options(model, current)) if current is not None else ()
    now = estimate(model, current) if current is not None and not problems else None
    candidates = [estimate(model, o) for o in candidate_options(model, cuda=cuda)]
    if card_bytes is not None and model.transformer:
        for e in list(candidates):
            if not e.fits(card_bytes) and e.options.gradient_checkpointing and e.options.checkpoint_every == 1:
                swapped = smallest_swap(model, e.options, card_bytes)
                if swapped is not None:
                    candidates.append(swapped)
    fitting = [e for e in candidates if e.fits(card_bytes)]
    order = {p: i for i, p in enumerate(("bf16", "fp32", *TRANSFORMER_PRECISIONS))}
    best = min(fitting, key=lambda e: (round(e.relative_time, 3), order[e.options.base_precision]), default=None)
    notes = []
    for lib in sorted({PRECISIONS[e.options.base_precision].library for e in candidates
                       if e.options.base_precision in PRECISIONS} - {None}):
        if importlib.util.find_spec(lib) is None:
            notes.append(f"{lib} is not installed here: the precisions it stores need `pip install -e '.[quant]'`")
    return Plan(model, now, tuple(candidates), best, card_bytes, card_source, problems, tuple(notes))


def gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"
