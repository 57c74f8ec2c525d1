"""A denoiser's architecture as the planner counts it: weights per block, and what a training step holds.

The real architecture is built from its config without allocating a byte:
on the meta device to count weights exactly per module, and under torch's
FakeTensorMode to run one LoRA training step (forward and backward, with
bf16 autocast when the run uses it) while every storage created is tracked,
so activations, their gradients and the LoRA gradients are counted as the
real step makes them. Transformers repeat identical blocks, so the step is
traced with one and two blocks of each kind and extrapolated to the real
count; UNets are traced whole.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Denoiser:
    """What the planner needs to know of a family's denoiser class."""

    family: str
    class_name: str
    count_keys: tuple[str, ...]      # config keys holding the block counts, one per block list
    block_lists: tuple[str, ...]     # the module lists of those blocks, in forward order
    published: str                   # config file of the reference model under configs/
    published_name: str


DENOISERS: dict[str, Denoiser] = {d.family: d for d in (
    Denoiser("sd1", "UNet2DConditionModel", (), (), "sd15_unet.json", "SD 1.5"),
    Denoiser("sd2", "UNet2DConditionModel", (), (), "sd15_unet.json", "SD 2.1 (SD 1.5's UNet size)"),
    Denoiser("sdxl", "UNet2DConditionModel", (), (), "sdxl_unet.json", "SDXL 1.0"),
    Denoiser("sd3", "SD3Transformer2DModel", ("num_layers",), ("transformer_blocks",),
             "sd35_medium_transformer.json", "SD3.5-Medium"),
    Denoiser("flux", "FluxTransformer2DModel", ("num_layers", "num_single_layers"),
             ("transformer_blocks", "single_transformer_blocks"), "flux_dev_transformer.json", "FLUX.1-dev"),
    Denoiser("chroma", "ChromaTransformer2DModel", ("num_layers", "num_single_layers"),
             ("transformer_blocks", "single_transformer_blocks"), "chroma_transformer.json", "Chroma1-HD"),
    Denoiser("flux2_klein", "Flux2Transformer2DModel", ("num_layers", "num_single_layers"),
             ("transformer_blocks", "single_transformer_blocks"), "flux2_klein_4b_transformer.json",
             "FLUX.2 klein 4B"),
    Denoiser("qwen_image", "QwenImageTransformer2DModel", ("num_layers",), ("transformer_blocks",),
             "qwen_image_transformer.json", "Qwen-Image (20 B)"),
    # Its two refiners' blocks come first in the forward and are swappable like the 30 main layers (as the
    # engine holds them); only the main layers vary in the traces.
    Denoiser("zimage", "ZImageTransformer2DModel", ("n_layers",), ("noise_refiner", "context_refiner", "layers"),
             "zimage_transformer.json", "Z-Image (6 B)"),
)}
CLASS_FAMILIES = {d.class_name: d.family for d in DENOISERS.values() if d.block_lists}

# Hub ids whose published transformer config is stored here, for projects that name one without a local copy.
HUB_CONFIGS = {
    "black-forest-labs/flux.1-dev": "flux", "black-forest-labs/flux.1-schnell": "flux",
    "stabilityai/stable-diffusion-3.5-medium": "sd3", "qwen/qwen-image": "qwen_image",
    "qwen/qwen-image-edit": "qwen_image", "tongyi-mai/z-image-turbo": "zimage", "tongyi-mai/z-image": "zimage",
    "lodestones/chroma1-hd": "chroma", "black-forest-labs/flux.2-klein-4b": "flux2_klein",
    "black-forest-labs/flux.2-klein-base-4b": "flux2_klein", "lodestones/chroma1-base": "chroma",
    "runwayml/stable-diffusion-v1-5": "sd1", "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd1",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
}

# Parameters of the text encoders the published pipelines use, for projects without their configs:
# CLIP-L 123 M, OpenCLIP-H 354 M, OpenCLIP-bigG 695 M, T5-XXL's encoder 4.76 B, Qwen2.5-VL-7B 8.29 B, Qwen3-4B 4.02 B.
TEXT_ENCODER_PARAMS = {"sd1": (123_060_480,), "sd2": (354_030_080,), "sdxl": (123_060_480, 694_659_840),
                       "sd3": (123_060_480, 694_659_840, 4_762_310_656), "flux": (123_060_480, 4_762_310_656),
                       "chroma": (4_762_310_656,), "flux2_klein": (4_022_468_096,), "qwen_image": (8_292_166_656,), "zimage": (4_022_468_096,)}
# Text tokens a caption becomes for the denoiser: CLIP's 77; SD3 77 + 256 T5; FLUX-dev and Chroma 512 T5;
# Qwen-Image and Z-Image up to 512 of their language model's tokens.
TEXT_TOKENS = {"sd1": 77, "sd2": 77, "sdxl": 77, "sd3": 77 + 256, "flux": 512, "chroma": 512, "flux2_klein": 512,
               "qwen_image": 512, "zimage": 512}


def denoiser(family: str) -> Denoiser:
    try:
        return DENOISERS[family]
    except KeyError:
        raise ValueError(f"the memory planner does not know the {family!r} family; it knows "
                         f"{', '.join(DENOISERS)}") from None


def published_config(family: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / denoiser(family).published).read_text())


def model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _model_class(family: str) -> type:
    import diffusers

    return getattr(diffusers, denoiser(family).class_name)


def build_model(family: str, config: dict[str, Any]) -> Any:
    """The denoiser with this config, on whatever device or fake mode is current, in the default dtype."""
    return _model_class(family).from_config(model_kwargs(config))


# -- weights -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockWeights:
    """One repeated block: its frozen Linear weights (which a quantized base stores) and every other parameter."""

    linear_shapes: tuple[tuple[int, int], ...]
    other_params: int

    @property
    def params(self) -> int:
        return sum(o * i for o, i in self.linear_shapes) + self.other_params


@dataclass(frozen=True)
class Weights:
    """The frozen denoiser's parameters: the repeated blocks in forward order, and the rest."""

    blocks: tuple[BlockWeights, ...]
    outside_params: int

    @property
    def params(self) -> int:
        return self.outside_params + sum(b.params for b in self.blocks)


def count_weights(family: str, config: dict[str, Any]) -> Weights:
    """Every parameter of the denoiser, per block, counted on the meta device (no memory is used)."""
    import torch
    from torch import nn

    with torch.device("meta"):
        model = build_model(family, config)
    blocks: list[BlockWeights] = []
    in_blocks = 0
    for list_name in denoiser(family).block_lists:
        for block in getattr(model, list_name):
            shapes = tuple((m.out_features, m.in_features) for m in block.modules() if type(m) is nn.Linear)
            linear = sum(o * i for o, i in shapes)
            total = sum(p.numel() for p in block.parameters())
            blocks.append(BlockWeights(shapes, total - linear))
            in_blocks += total
    outside = sum(p.numel() for p in model.parameters()) - in_blocks
    return Weights(tuple(blocks), outside)


def count_lora(family: str, config: dict[str, Any], *, preset: str, rank: int, kind: str, lokr_factor: int) -> int:
    """Trainable parameters of the denoiser's LoRA, injected into the meta-device model."""
    import torch

    with torch.device("meta"):
        model = build_model(family, config)
        model.requires_grad_(False)
        add_lora(model, family, preset=preset, rank=rank, kind=kind, lokr_factor=lokr_factor)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Module-name words of the layers each preset trains, for a family the injector does not know (yet):
# the injector the trainer uses decides wherever it can, so the plan follows the family's own targets.
_ATTENTION_WORDS = ("attn", "attention", "to_q", "to_k", "to_v", "to_out", "qkv", "add_q_proj", "add_k_proj",
                    "add_v_proj", "to_add_out")
_FF_WORDS = ("ff", "mlp", "feed_forward", "proj_mlp", "proj_out", "img_mlp", "txt_mlp")


def add_lora(model: Any, family: str, *, preset: str, rank: int, kind: str = "lora", lokr_factor: int = -1) -> None:
    from loratui.lora.inject import inject_lora
    from loratui.lora.naming import normalize_family

    try:
        normalize_family(family)
        network = inject_lora(model, component="unet", family=family, preset=preset, rank=rank, alpha=float(rank),
                              kind=kind, lokr_factor=lokr_factor, check_count=False)
    except ValueError:
        network = None
    if network is not None and len(network):
        return
    from torch import nn

    from loratui.lora.variants import make_adapter

    words = _ATTENTION_WORDS + (_FF_WORDS if preset != "attention" else ())
    for list_name in denoiser(family).block_lists:
        for block in getattr(model, list_name):
            targets = [(path, m) for path, m in block.named_modules()
                       if type(m) is nn.Linear and any(w in part for part in path.split(".") for w in words)]
            for path, base in targets:
                parent_path, _, attr = path.rpartition(".")
                parent = block.get_submodule(parent_path) if parent_path else block
                setattr(parent, attr, make_adapter(kind, base, rank, float(rank), generator=None,
                                                   lokr_factor=lokr_factor))


# -- activations -------------------------------------------------------------------------------------------


class StorageTracker:
    """Bytes of tensor storage alive while it is active, and the most at once.

    Used as a TorchDispatchMode: every storage an operation creates is counted once, until the last tensor
    using it is gone. Storages that existed before (weights, inputs) are registered first and never counted.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                tracker._created(out)
                return out

        self.mode = _Mode()
        self.live = 0
        self.peak = 0
        self._known: dict[int, Any] = {}

    def ignore(self, tensors: Any) -> None:
        for t in tensors:
            st = t.untyped_storage()
            self._known[st._cdata] = st  # held strongly: never freed while tracking

    def _created(self, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in self._known:
                continue
            size = st.nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            self._known[key] = weakref.ref(st, self._freed(key, size))

    def _freed(self, key: int, size: int) -> Callable[[Any], None]:
        def gone(_ref: Any) -> None:
            self.live -= size
            self._known.pop(key, None)
        return gone

    def __enter__(self) -> StorageTracker:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


@dataclass(frozen=True)
class StepMemory:
    """Bytes a training step adds on top of the weights: what the forward leaves for the backward
    (activations), and the most alive at once during forward and backward (with gradients and transients)."""

    saved: int
    peak: int

    def __add__(self, other: StepMemory) -> StepMemory:
        return StepMemory(self.saved + other.saved, self.peak + other.peak)

    def scaled(self, k: float) -> StepMemory:
        return StepMemory(int(self.saved * k), int(self.peak * k))


def training_inputs(family: str, config: dict[str, Any], batch: int, side: int, text: int, dtype: Any) -> Callable[[Any], Any]:
    """A function running ``model`` once on random inputs of this size (latent side ``side``), as training does."""
    import torch

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=dtype)

    b, h, w = batch, side, side
    if family in ("sd1", "sd2", "sdxl"):
        cross = config.get("cross_attention_dim", 768)
        cross = cross[0] if isinstance(cross, (list, tuple)) else cross
        extra: dict[str, Any] = {}
        if config.get("addition_embed_type") == "text_time":
            pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
            extra["added_cond_kwargs"] = {"text_embeds": rand(b, pooled), "time_ids": rand(b, 6)}
        channels = config.get("in_channels", 4)
        return lambda m: m(rand(b, channels, h, w), torch.full((b,), 500.0), rand(b, text, cross),
                           return_dict=False, **extra)[0]
    if family in ("sd3", "flux"):
        from loratui.models import flux, sd3
        from loratui.models.text import TextEmbedding

        cond = TextEmbedding(rand(b, text, config["joint_attention_dim"]), rand(b, config["pooled_projection_dim"]))
        channels = config.get("in_channels", 16) // (4 if family == "flux" else 1)
        module = flux if family == "flux" else sd3
        return lambda m: module.predict(m, rand(b, channels, h, w), torch.rand(b), cond, guidance=1.0, dtype=dtype)
    tokens = (h // 2) * (w // 2)
    if family in ("chroma", "flux2_klein"):
        axes = len(config.get("axes_dims_rope", (16, 56, 56)))
        return lambda m: m(hidden_states=rand(b, tokens, config["in_channels"]),
                           encoder_hidden_states=rand(b, text, config["joint_attention_dim"]),
                           timestep=torch.rand(b, dtype=dtype), img_ids=torch.zeros(tokens, axes, dtype=dtype),
                           txt_ids=torch.zeros(text, axes, dtype=dtype), return_dict=False)[0]
    if family == "qwen_image":
        return lambda m: m(hidden_states=rand(b, tokens, config["in_channels"]),
                           encoder_hidden_states=rand(b, text, config["joint_attention_dim"]),
                           encoder_hidden_states_mask=torch.ones(b, text, dtype=torch.bool),
                           timestep=torch.rand(b, dtype=dtype), img_shapes=[[(1, h // 2, w // 2)]] * b,
                           return_dict=False)[0]
    if family == "zimage":
        channels = config.get("in_channels", 16)
        return lambda m: m([rand(channels, 1, h, w) for _ in range(b)], torch.rand(b, dtype=dtype),
                           [rand(text, config["cap_feat_dim"]) for _ in range(b)], return_dict=False)[0]
    raise ValueError(f"no training inputs known for the {family!r} family")


def _loss(out: Any) -> Any:
    if isinstance(out, (list, tuple)):
        return sum(o.float().pow(2).mean() for o in out)
    return out.float().pow(2).mean()


def trace_step(family: str, config: dict[str, Any], *, batch: int, side: int, text: int, half: bool, preset: str,
               rank: int, kind: str = "lora", checkpointing: bool = False) -> StepMemory:
    """One LoRA training step of exactly this model, run on fake tensors while its storages are counted."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    dtype = torch.bfloat16 if half else torch.float32
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    default = torch.get_default_dtype()
    with fake:
        torch.set_default_dtype(dtype)
        try:
            model = build_model(family, config)
        finally:
            torch.set_default_dtype(default)
        model.requires_grad_(False)
        add_lora(model, family, preset=preset, rank=rank, kind=kind)
        if checkpointing:
            from loratui.engine.grad_checkpoint import enable_unet_checkpointing

            model.train()
            enable_unet_checkpointing(model, 1)
        run = training_inputs(family, config, batch, side, text, dtype)
        tracker = StorageTracker()
        tracker.ignore([*model.parameters(), *model.buffers()])
        with tracker, torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            loss = _loss(run(model))
            saved = tracker.live
            loss.backward()
    return StepMemory(saved, tracker.peak)


def step_memory(family: str, config: dict[str, Any], *, batch: int, side: int, text: int, half: bool, preset: str,
                rank: int, kind: str = "lora", checkpointing: bool = False) -> StepMemory:
    """:func:`trace_step` for the whole model; transformers from traces of one and two blocks of each kind."""
    keys = denoiser(family).count_keys
    key = json.dumps(config, sort_keys=True)
    args = (family, key, batch, side, text, half, preset, rank, kind, checkpointing)
    if not keys:
        return _traced(*args, None)
    counts = [int(config[k]) for k in keys]
    base = _traced(*args, tuple(1 for _ in keys))
    total = base
    for i, n in enumerate(counts):
        if n <= 1:
            continue
        two = _traced(*args, tuple(2 if j == i else 1 for j in range(len(keys))))
        per_block = StepMemory(two.saved - base.saved, two.peak - base.peak)
        total = total + per_block.scaled(n - 1)
    # A peak is at least what the forward leaves; extrapolating the two separately can cross them.
    return StepMemory(total.saved, max(total.peak, total.saved))


@lru_cache(maxsize=64)
def _traced(family: str, config_json: str, batch: int, side: int, text: int, half: bool, preset: str, rank: int,
            kind: str, checkpointing: bool, counts: tuple[int, ...] | None) -> StepMemory:
    config = json.loads(config_json)
    if counts is not None:
        config.update(dict(zip(denoiser(family).count_keys, counts)))
    return trace_step(family, config, batch=batch, side=side, text=text, half=half, preset=preset, rank=rank,
                      kind=kind, checkpointing=checkpointing)


def count_weights_cached(family: str, config: dict[str, Any]) -> Weights:
    return _weights(family, json.dumps(config, sort_keys=True))


def count_lora_cached(family: str, config: dict[str, Any], preset: str, rank: int, kind: str, lokr_factor: int) -> int:
    return _lora(family, json.dumps(config, sort_keys=True), preset, rank, kind, lokr_factor)


@lru_cache(maxsize=32)
def _weights(family: str, config_json: str) -> Weights:
    return count_weights(family, json.loads(config_json))


@lru_cache(maxsize=32)
def _lora(family: str, config_json: str, preset: str, rank: int, kind: str, lokr_factor: int) -> int:
    return count_lora(family, json.loads(config_json), preset=preset, rank=rank, kind=kind, lokr_factor=lokr_factor)
