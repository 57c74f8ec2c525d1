"""The fields of ``loratui.toml``: every one declared once, here.

Each declaration carries the type, default, allowed range and a one-line note on
the trade-off. Loading, validation, the wizard's fields and the README's field
table all read these declarations, so they cannot drift.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

from loratui import CONFIG_VERSION
from loratui.errors import UserError

CONFIG_NAME = "loratui.toml"


class ConfigError(UserError):
    """A config the user must fix; the message names the file, field and what to do."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       choices: tuple[str, ...] | None = None, label: str | None = None) -> Any:
    meta = {"help": help, "min": min, "max": max, "choices": choices, "label": label}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    base: str = _f("builtin:tiny-sd", "builtin:tiny-sd, a hub id, a diffusers folder or one .safetensors file")
    family: str = _f("auto", "auto detects SD1, SD2, SDXL, SD3, FLUX, Z-Image, Qwen-Image, Chroma or FLUX.2 klein; "
                     "set it when detection guesses wrong",
                     choices=("auto", "sd1", "sd2", "sdxl", "sd3", "flux", "zimage", "qwen_image", "chroma",
                              "flux2_klein"))
    prediction_type: str = _f("auto", "auto reads the model's scheduler; v_prediction for SD2-768 style models",
                              choices=("auto", "epsilon", "v_prediction"))
    config_source: str = _f("", "for a single .safetensors file: a diffusers folder or hub id to take configs from")
    allow_pickle: bool = _f(False, "allow .ckpt/.pt/.bin files; pickles can run code, only for files you trust")
    clip_skip: int = _f(1, "2 uses the penultimate text-encoder layer, as many SD1 anime models expect",
                        min=1, max=4)
    t5_max_length: int = _f(0, "SD3/FLUX/Chroma: T5 tokens per caption (Z-Image, Qwen-Image, FLUX.2 klein: Qwen "
                            "tokens); 0 = the model's own (FLUX-dev, Chroma, Z-Image, Qwen-Image and FLUX.2 klein "
                            "512, schnell and SD3 256); shorter is faster, cuts long captions", min=0, max=512)
    base_weights: str = _f("auto", "SD3/FLUX: float8 stores the frozen transformer blocks in 8 bits and computes "
                           "them in bf16 (FLUX-dev then fits a 24 GB card); auto keeps the precision's dtype",
                           choices=("auto", "float8"))
    base_precision: str = _f(
        "auto", "how the frozen base is stored: auto keeps the training precision (or base_weights); bf16; fp8 (a "
        "plain cast); fp8-scaled (block-scaled E4M3, closer to bf16); int8 / int4 (weight-only, per row / per 128 "
        "weights); nf4 (bitsandbytes, CUDA only). Smaller fits a smaller card, at some speed and quality",
        choices=("auto", "bf16", "fp8", "fp8-scaled", "int8", "int4", "nf4"))


@dataclass
class DataConfig:
    images: str = _f("images", "folder of images and same-name .txt captions; N_name/ sub-folders repeat N times")
    caption_extension: str = _f(".txt", "caption file extension; kohya's default is .caption, most tools use .txt", choices=(".txt", ".caption"))
    trigger_word: str = _f("", "word put at the start of every caption that lacks it")
    shuffle_tags: bool = _f(False, "shuffle comma-separated tags each step (keeps the first keep_tokens in place)")
    keep_tokens: int = _f(1, "tags kept in place when shuffling", min=0, max=75)
    caption_dropout: float = _f(0.0, "chance of training a step with an empty caption; helps unconditional quality",
                                min=0.0, max=1.0)
    flip: bool = _f(False, "random horizontal flips; doubles the variety, wrong for text or asymmetric subjects")
    resolution: int = _f(512, "training side length in pixels; buckets keep the area at most resolution²",
                         min=64, max=4096)
    bucket_step: int = _f(64, "bucket sides are multiples of this", min=8, max=256)
    cache_latents: bool = _f(True, "encode images once and reuse; off only to save disk", label="cache latents")
    concepts: list = _f([], "[[data.concepts]] tables, one per image folder (repeats, captions, regularization); "
                        "when present, data.images is not used")
    alpha_mask: bool = _f(False, "masked loss: an image's alpha channel weights its loss (transparent = not learned)")
    masks: str = _f("", "masked loss: folder of same-name greyscale masks (white = learn, black = ignore); "
                    "empty turns it off")


@dataclass
class LoraConfig:
    rank: int = _f(16, "higher fits more detail, costs memory and file size", min=1, max=1024)
    alpha: float = _f(16.0, "scale is alpha/rank; lower alpha trains more gently", min=0.0, max=4096.0)
    preset: str = _f("attention", "which layers get LoRA: attention (small), attention+ff (kohya default), "
                     "all (adds convolutions, LoCon)", choices=("attention", "attention+ff", "all"))
    train_text_encoder: bool = _f(False, "also train the text encoder(s); stronger, easier to overfit")
    init_lora: str = _f("", "start from this LoRA file (ours or kohya's) instead of zeros")
    type: str = _f("lora", "lora (plain); dora adds a trained magnitude (often better, slower steps); loha and "
                   "lokr (LyCORIS) fit more per parameter: use a lower rank (loha 4-16)",
                   choices=("lora", "dora", "loha", "lokr"))
    lokr_factor: int = _f(-1, "lokr only: -1 splits each dimension evenly; N (8, 16) makes the small Kronecker "
                          "factor N wide, a bigger file that fits more", min=-1, max=1024)


@dataclass
class TrainConfig:
    batch_size: int = _f(1, "images per step; more is faster per image, costs memory", min=1, max=1024)
    grad_accum: int = _f(1, "steps whose gradients add up before one optimizer step", min=1, max=1024)
    max_steps: int = _f(1000, "optimizer steps to train (ignored when epochs > 0)", min=1, max=10_000_000)
    epochs: int = _f(0, "if > 0, train this many passes over the images instead of max_steps", min=0, max=100_000)
    learning_rate: float = _f(1e-4, "UNet LoRA learning rate", min=0.0, max=1.0)
    text_encoder_lr: float = _f(5e-5, "text-encoder LoRA learning rate", min=0.0, max=1.0)
    lr_scheduler: str = _f("constant", "how the learning rate changes over the run",
                           choices=("constant", "constant_with_warmup", "linear", "cosine",
                                    "cosine_with_restarts", "polynomial"))
    warmup_steps: int = _f(0, "steps of linear warm-up from zero", min=0, max=1_000_000)
    optimizer: str = _f("adamw", "adamw8bit needs bitsandbytes and saves memory on large ranks; prodigy finds its "
                        "own step size (learning_rate ~1.0); adamw_schedulefree needs no LR schedule",
                        choices=("adamw", "adamw8bit", "prodigy", "adamw_schedulefree"))
    weight_decay: float = _f(0.01, "AdamW weight decay", min=0.0, max=1.0)
    max_grad_norm: float = _f(1.0, "gradient clipping; 0 turns it off", min=0.0, max=1000.0)
    precision: str = _f("no", "mixed precision on GPU: bf16 (Ampere+), fp16 (older cards), no (fp32)",
                        choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: much less memory, ~1.7x slower")
    gradient_checkpointing_every: int = _f(
        1, "1 recomputes every block (least memory); 2 every other: about half the saving for half the time",
        min=1, max=64)
    seed: int = _f(42, "same seed and config give the same run", min=0, max=2**32 - 1)
    min_snr_gamma: float = _f(0.0, "min-SNR loss weighting (5 is typical); 0 turns it off", min=0.0, max=100.0)
    noise_offset: float = _f(0.0, "adds low-frequency noise so the model learns very dark/bright images; ~0.05",
                             min=0.0, max=1.0)
    timestep_sampling: str = _f(
        "auto", "SD3/FLUX: how σ is drawn: uniform, logit_normal (middle of the path), shift (logit-normal "
        "moved toward noise by flow_shift), flux_shift (FLUX's resolution-dependent shift); auto = flux_shift "
        "for FLUX, Qwen-Image, Chroma and FLUX.2 klein (with their schedulers' ranges), shift for SD3 and "
        "Z-Image", choices=("auto", "uniform", "logit_normal", "shift", "flux_shift"))
    sigmoid_scale: float = _f(1.0, "SD3/FLUX: spread of the logit-normal σ draw; larger reaches the ends more",
                              min=0.01, max=10.0)
    flow_shift: float = _f(3.0, "SD3/FLUX with timestep_sampling = shift: higher trains more at high noise "
                           "(composition), lower at low noise (detail)", min=0.1, max=20.0)
    guidance_scale: float = _f(1.0, "FLUX-dev: the guidance value fed to the guidance embedding while training; "
                               "1.0 as sd-scripts and ai-toolkit", min=0.0, max=20.0)
    compile: bool = _f(False, "torch.compile the UNet step (CUDA): slow first steps, faster after")
    compile_mode: str = _f("default", "with compile: reduce-overhead also captures CUDA graphs, which removes "
                           "the host's cost per step (largest gain at batch 1); max-autotune searches kernels",
                           choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    blocks_to_swap: int = _f(0, "transformer families: keep the last N blocks in host memory and stream each to "
                             "the GPU ahead of use; saves their memory, costs PCIe time (0 = off)", min=0, max=1000)
    activation_offload: bool = _f(False, "with gradient checkpointing: the saved block inputs wait in host memory "
                                  "instead of on the GPU; less memory at high resolution, slower steps")
    channels_last: bool = _f(True, "channels_last memory layout for the UNet; faster convolutions on GPU")
    num_processes: int = _f(0, "processes to train with, one per GPU, each taking its share of every step; "
                            "0 uses every visible GPU (1 without a GPU)", min=0, max=1024)
    prior_loss_weight: float = _f(1.0, "loss weight of regularization images (kohya's name and meaning)",
                                  min=0.0, max=100.0)
    ema_decay: float = _f(0.0, "keep an EMA of the LoRA weights (0.999 is typical) for samples and "
                          "output/NAME-ema.safetensors; 0 turns it off", min=0.0, max=0.999999)


@dataclass
class SaveConfig:
    output_name: str = _f("", "name of output/NAME.safetensors; empty uses the project name")
    every_n_steps: int = _f(500, "write a resumable checkpoint every N steps; 0 only at the end",
                            min=0, max=10_000_000)
    keep: int = _f(3, "how many checkpoints to keep; older ones are deleted", min=1, max=1000)
    precision: str = _f("fp16", "dtype of the saved LoRA tensors", choices=("fp16", "bf16", "fp32"))
    format: str = _f("kohya", "kohya loads everywhere (ComfyUI, A1111, diffusers); diffusers for PEFT tools",
                     choices=("kohya", "diffusers"))
    on_error: str = _f("stop", "when a checkpoint cannot be written (disk full): stop cleanly, or keep training "
                       "without it", choices=("stop", "continue"))
    keep_best: bool = _f(True, "with validation on, also keep the checkpoint with the lowest validation loss "
                         "(`loratui export DIR --best`)")


@dataclass
class SamplePrompt:
    prompt: str = _f("", "what to draw; the trigger word belongs here")
    negative: str = _f("", "what to avoid")
    seed: int = _f(1, "noise seed", min=0, max=2**32 - 1)
    steps: int = _f(0, "denoising steps; 0 uses [sample].steps", min=0, max=1000)
    guidance: float = _f(0.0, "classifier-free guidance; 0 uses [sample].guidance", min=0.0, max=50.0)


def _inherit(kind: type, help: str, **limits: Any) -> Any:
    """A concept key that, when left out (None), takes the [data] value of the same name."""
    f = _f(None, help, **limits)
    return field(default=None, metadata={**f.metadata, "kind": kind})


@dataclass
class ConceptConfig:
    """One ``[[data.concepts]]`` table. A key left out (None) takes its value from [data]."""

    folder: str = _f("", "folder of this concept's images, inside the project or absolute; N_name/ sub-folders "
                     "multiply the repeats")
    name: str = _f("", "shown by check and the dashboard; empty uses the folder's name")
    repeats: int = _f(1, "times each image is seen per epoch", min=1, max=100_000)
    is_reg: bool = _f(False, "regularization (prior-preservation) images: loss times train.prior_loss_weight, "
                      "repeated to balance the training images as kohya does")
    loss_weight: float = _f(1.0, "multiplies this concept's loss", min=0.0, max=100.0)
    class_tokens: str = _f("", "caption for images without a caption file (kohya's class_tokens)")
    trigger_word: str | None = _inherit(str, "default data.trigger_word; regularization concepts default to none")
    caption_extension: str | None = _inherit(str, "default data.caption_extension", choices=(".txt", ".caption"))
    shuffle_tags: bool | None = _inherit(bool, "default data.shuffle_tags")
    keep_tokens: int | None = _inherit(int, "default data.keep_tokens", min=0, max=75)
    caption_dropout: float | None = _inherit(float, "default data.caption_dropout", min=0.0, max=1.0)
    alpha_mask: bool | None = _inherit(bool, "default data.alpha_mask")
    masks: str | None = _inherit(str, "default data.masks")


def concept_specs() -> Iterator[FieldSpec]:
    """The keys of a [[data.concepts]] table; the type of an inheriting key is kept in its label."""
    for f in dataclasses.fields(ConceptConfig):
        meta = f.metadata
        typ = meta.get("kind") or {"int": int, "float": float, "bool": bool, "str": str}[str(f.type)]
        yield FieldSpec("data.concepts", f.name, typ, f.default, meta["help"], meta["min"], meta["max"],
                        meta["choices"], None)


@dataclass
class SampleConfig:
    every_n_steps: int = _f(0, "make sample images every N steps; 0 turns it off", min=0, max=10_000_000)
    steps: int = _f(20, "denoising steps per sample", min=1, max=1000)
    guidance: float = _f(7.0, "classifier-free guidance scale", min=0.0, max=50.0)
    width: int = _f(0, "sample width; 0 uses the training resolution", min=0, max=4096)
    height: int = _f(0, "sample height; 0 uses the training resolution", min=0, max=4096)
    prompts: list = _f([], "[[sample.prompts]] tables: prompt, negative, seed, steps, guidance")


@dataclass
class NotifyConfig:
    command: str = _f("", "shell command run when the run ends (after the LoRA is on disk), e.g. "
                          "runpodctl stop pod $RUNPOD_POD_ID; LORATUI_STATUS, _STEP, _LORA, _PROJECT are set")
    webhook: str = _f("", "http(s) URL that receives the same as a JSON POST")
    when: str = _f("always", "which endings notify: always, finished (or stopped) only, failed only",
                   choices=("always", "finished", "failed"))
    cost_per_hour: float = _f(0.0, "what the machine costs per hour, for the spent/projected cost "
                                   "(0 reads $LORATUI_COST_PER_HOUR)", min=0.0, max=100_000.0)
    paused_minutes: float = _f(0.0, "a run paused this long saves a checkpoint and notifies; 0 never",
                               min=0.0, max=100_000.0)
    countdown_s: float = _f(30.0, "seconds an attached dashboard has to cancel the command before it runs",
                            min=0.0, max=3600.0)


@dataclass
class ValidationConfig:
    folder: str = _f("", "a folder of held-out images and captions, never trained on; empty: none")
    split: float = _f(0.0, "share of the images held out for validation (chosen by train.seed, never trained "
                      "on); 0 turns it off", min=0.0, max=0.5)
    every_n_steps: int = _f(0, "validation loss every N steps and at the end; 0 picks an interval that keeps "
                            "it under 5% of the run's time", min=0, max=10_000_000)


@dataclass
class AdvisorConfig:
    enabled: bool = _f(True, "notes in the events pane and the log when the loss curves show a problem")
    budget_hours: float = _f(0.0, "the advisor warns when the projected run time exceeds this; 0 turns it off",
                             min=0.0, max=10_000.0)


@dataclass
class LoggingConfig:
    tensorboard: bool = _f(False, "also write losses, learning rate and samples to logs/tensorboard/ (needs "
                           "`pip install tensorboard`); metrics.jsonl stays the record")


@dataclass
class PublishConfig:
    author: str = _f("", "your name or handle, for modelspec.author and the model card")
    license: str = _f("", "the LoRA's license as the Hub names it (creativeml-openrail-m, openrail++, apache-2.0, "
                      "other...); empty uses the base model's")
    description: str = _f("", "what the LoRA does, in a sentence or a paragraph (markdown); empty writes one from "
                          "the run")
    tags: str = _f("", "comma-separated labels (style, character, ...) for modelspec.tags and the card")


@dataclass
class ProjectConfig:
    name: str = "my_lora"
    version: int = CONFIG_VERSION
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    advisor: AdvisorConfig = field(default_factory=AdvisorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    @property
    def output_name(self) -> str:
        return self.save.output_name or self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "lora": LoraConfig,
    "train": TrainConfig, "save": SaveConfig, "sample": SampleConfig,
    "validation": ValidationConfig, "advisor": AdvisorConfig, "logging": LoggingConfig, "notify": NotifyConfig,
    "publish": PublishConfig,
}
TOP_LEVEL = ("name", "version")


@dataclass(frozen=True)
class FieldSpec:
    section: str
    name: str
    type: type
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple[str, ...] | None
    label: str | None

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


def field_specs(section: str | None = None) -> Iterator[FieldSpec]:
    """Every config field with its declaration, in file order."""
    for sec, cls in SECTIONS.items():
        if section is not None and sec != section:
            continue
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            typ = {"int": int, "float": float, "bool": bool, "str": str, "list": list}[str(f.type)]
            yield FieldSpec(sec, f.name, typ, default, f.metadata.get("help", ""), f.metadata.get("min"),
                            f.metadata.get("max"), f.metadata.get("choices"), f.metadata.get("label"))


def field_spec(path: str) -> FieldSpec:
    section, _, name = path.partition(".")
    for spec in field_specs(section):
        if spec.name == name:
            return spec
    raise KeyError(path)
