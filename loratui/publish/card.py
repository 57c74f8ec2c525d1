"""A publishable folder: the LoRA, ``NAME.preview.png``, the sample images and a Hub-style model card.

The card's YAML front matter carries what the Hugging Face Hub reads (``base_model``,
``instance_prompt``, ``tags``, ``license``, a ``widget`` of sample images with their prompts);
the body says how the LoRA was trained and how to load it in diffusers, ComfyUI and Forge/A1111.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratui.config import ProjectConfig
from loratui.errors import UserError
from loratui.models.family import FAMILY_NAMES
from loratui.publish.licenses import license_for
from loratui.publish.samples import Sample

# The Hub's tags for each family's LoRAs, as the diffusers training scripts write them.
FAMILY_TAGS: dict[str, list[str]] = {
    "sd1": ["stable-diffusion", "stable-diffusion-diffusers"],
    "sd2": ["stable-diffusion", "stable-diffusion-diffusers"],
    "sdxl": ["stable-diffusion-xl", "stable-diffusion-xl-diffusers"],
    "sd3": ["sd3", "sd3-diffusers"],
    "flux": ["flux", "flux-diffusers"],
}
_TYPE_NAMES = {"lora": "LoRA", "dora": "DoRA", "loha": "LoHa (LyCORIS)", "lokr": "LoKr (LyCORIS)"}
WIDGET_IMAGES = 4  # the Hub's carousel shows a few; the folder keeps every sample of the step


class CardError(UserError):
    """The card folder cannot be written; the message says why and what to do."""


@dataclass
class CardInputs:
    """What the card is about: read from the project, the LoRA file's metadata and the samples."""

    cfg: ProjectConfig
    lora: Path
    metadata: dict[str, str]
    samples: list[Sample] = field(default_factory=list)
    repo: str | None = None  # the Hub repository it goes to, when known

    @property
    def name(self) -> str:
        return self.lora.stem

    @property
    def family(self) -> str:
        from loratui.lora.naming import family_from_metadata

        return family_from_metadata(self.metadata) or (self.cfg.model.family
                                                       if self.cfg.model.family != "auto" else "sd1")

    @property
    def trigger(self) -> str:
        return self.metadata.get("modelspec.trigger_phrase", "")


def hub_base_model(cfg: ProjectConfig) -> str | None:
    """The base model's Hub id (``owner/name``) when model.base or model.config_source is one."""
    for value in (cfg.model.base, cfg.model.config_source):
        text = value.strip()
        if (text and not text.startswith("builtin:") and text.count("/") == 1 and not Path(text).exists()
                and not text.endswith((".safetensors", ".ckpt", ".pt", ".bin"))):
            return text
    return None


def front_matter(inputs: CardInputs) -> dict[str, Any]:
    """The YAML header as the Hub's model cards carry it."""
    cfg, meta = inputs.cfg, inputs.metadata
    tags = ["text-to-image", "lora", "diffusers", "template:sd-lora", *FAMILY_TAGS.get(inputs.family, []), "loratui"]
    tags += [t.strip() for t in cfg.publish.tags.split(",") if t.strip() and t.strip() not in tags]
    data: dict[str, Any] = {}
    chosen = license_for(inputs.family, _variant(meta), cfg.publish.license)
    if chosen is not None:
        data["license"] = chosen.hub_id
        if chosen.hub_id == "other" and chosen.name:
            data["license_name"] = chosen.name
            if chosen.link:
                data["license_link"] = chosen.link
    base = hub_base_model(cfg)
    if base:
        data["base_model"] = base
    if inputs.trigger:
        data["instance_prompt"] = inputs.trigger
    data.update(library_name="diffusers", pipeline_tag="text-to-image", tags=tags)
    widget = []
    for sample in inputs.samples[:WIDGET_IMAGES]:
        entry: dict[str, Any] = {"text": sample.prompt, "output": {"url": f"images/{sample.path.name}"}}
        if sample.negative and not sample.negative.startswith("("):
            entry["parameters"] = {"negative_prompt": sample.negative}
        widget.append(entry)
    if widget:
        data["widget"] = widget
    return data


def _variant(meta: dict[str, str]) -> str | None:
    arch = meta.get("modelspec.architecture", "")
    return "schnell" if "schnell" in arch else None


def render_card(inputs: CardInputs) -> str:
    """The whole README.md: front matter, then the description, samples, settings and how to load it."""
    import yaml

    header = yaml.safe_dump(front_matter(inputs), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{header}---\n\n" + "\n".join(_body(inputs)) + "\n"


def _body(inputs: CardInputs) -> list[str]:
    cfg, meta, name = inputs.cfg, inputs.metadata, inputs.name
    title = meta.get("modelspec.title") or name
    lines = [f"# {title}", "", meta.get("modelspec.description", ""), ""]
    if inputs.trigger:
        lines += ["## Trigger words", "", f"Use `{inputs.trigger}` in the prompt to bring out what this LoRA "
                  "learned.", ""]
    if inputs.samples:
        lines += ["## Samples", "", f"Made by the training run at step {inputs.samples[0].step}, with the "
                  "prompts below.", ""]
        for sample in inputs.samples:
            seed = f" (seed {sample.seed})" if sample.seed is not None else ""
            lines += [f"![{sample.prompt}](images/{sample.path.name})", "", f"*{sample.prompt}*{seed}", ""]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in _settings(inputs)]
    lines += ["", *_how_to_load(inputs)]
    return lines


def _settings(inputs: CardInputs) -> list[tuple[str, str]]:
    cfg, meta = inputs.cfg, inputs.metadata
    args = json.loads(meta.get("ss_network_args") or "{}")
    rows = [
        ("base model", f"{cfg.model.base} ({FAMILY_NAMES.get(inputs.family, inputs.family)})"),
        ("type", _TYPE_NAMES.get(cfg.lora.type, cfg.lora.type) + (f", preset {args['preset']}"
                                                                  if "preset" in args else "")),
        ("rank / alpha", f"{cfg.lora.rank} / {cfg.lora.alpha:g}"),
        ("layers", cfg.lora.preset + (", text encoder too" if cfg.lora.train_text_encoder else "")),
        ("steps", meta.get("ss_steps", "")),
        ("epochs", meta.get("ss_epoch", "")),
        ("images per epoch", meta.get("ss_num_train_images", "")),
        ("resolution", meta.get("modelspec.resolution", "")),
        ("batch size × accumulation", f"{cfg.train.batch_size} × {cfg.train.grad_accum}"),
        ("optimizer", cfg.train.optimizer),
        ("learning rate", f"{cfg.train.learning_rate:g} ({cfg.train.lr_scheduler}, {cfg.train.warmup_steps} "
                          "warm-up steps)"),
        ("precision", {"no": "fp32"}.get(cfg.train.precision, cfg.train.precision)),
        ("seed", str(cfg.train.seed)),
        ("file hash (SHA-256 of the tensors)", meta.get("modelspec.hash_sha256", "")),
    ]
    return [(label, value.replace("|", "\\|")) for label, value in rows if value]


def _how_to_load(inputs: CardInputs) -> list[str]:
    name, trigger, family = inputs.name, inputs.trigger, inputs.family
    base = hub_base_model(inputs.cfg)
    where = [] if base else [f"# the {FAMILY_NAMES.get(family, family)} model it was trained on: "
                             f"{inputs.cfg.model.base}"]
    prompt = inputs.samples[0].prompt if inputs.samples else (trigger or "a photo")
    dtype = "torch.bfloat16" if family in ("sd3", "flux") else "torch.float16"
    prompt_tag = f"{trigger}, " if trigger else ""
    source = inputs.repo or "path/to/this/folder"
    return [
        "## How to use it", "", "### diffusers", "", "```python", "import torch",
        "from diffusers import AutoPipelineForText2Image", "", *where,
        f"pipe = AutoPipelineForText2Image.from_pretrained({base or 'BASE_MODEL'!r}, torch_dtype={dtype})"
        ".to(\"cuda\")",
        f"pipe.load_lora_weights({source!r}, weight_name=\"{name}.safetensors\")",
        f"image = pipe({prompt!r}).images[0]", "```", "",
        "### ComfyUI", "",
        f"Copy `{name}.safetensors` and `{name}.preview.png` to `ComfyUI/models/loras/` and add a "
        "*Load LoRA* node after the checkpoint loader" + (f"; put `{trigger}` in the prompt." if trigger else "."),
        "", "### Forge / AUTOMATIC1111", "",
        f"Copy `{name}.safetensors` and `{name}.preview.png` to `models/Lora/` and write "
        f"`{prompt_tag}<lora:{name}:1>` in the prompt.", "",
    ]


def write_card_folder(inputs: CardInputs, out: Path) -> Path:
    """Write the LoRA, ``NAME.preview.png``, ``images/`` and ``README.md`` into ``out`` (made if absent)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        images = out / "images"
        if images.is_dir():
            shutil.rmtree(images)  # samples of an earlier export would stay in the widget otherwise
        images.mkdir()
        if inputs.lora.resolve() != (out / inputs.lora.name).resolve():
            shutil.copy2(inputs.lora, out / inputs.lora.name)
        for sample in inputs.samples:
            shutil.copy2(sample.path, images / sample.path.name)
        preview = out / f"{inputs.name}.preview.png"
        if inputs.samples:
            shutil.copy2(inputs.samples[0].path, preview)
        elif preview.exists():
            preview.unlink()
        (out / "README.md").write_text(render_card(inputs), encoding="utf-8")
    except OSError as exc:
        raise CardError(f"cannot write the card folder {out}: {exc.strerror or exc}; free space or pick another "
                        "folder with --out") from exc
    return out


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's ``__metadata__``, read from its header alone (no torch, no tensors)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > 100 * 1024 * 1024:
            raise ValueError("the safetensors header is larger than the format allows")
        header = json.loads(f.read(size))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (meta or {}).items()}


def default_card_folder(lora: Path) -> Path:
    return lora.with_name(f"{lora.stem}-card")


def card_for_project(project: Path, lora: Path, out: Path | None = None, *, repo: str | None = None) -> Path:
    """Write the card folder of ``lora`` (a file this project trained) from the project's config and samples."""
    from loratui.config import load_config
    from loratui.project import ProjectPaths
    from loratui.publish.samples import newest_samples

    if not lora.is_file():
        raise CardError(f"{lora} does not exist; train the project or run `loratui export {project}` first")
    cfg = load_config(project)
    try:
        metadata = read_metadata(lora)
    except (OSError, ValueError) as exc:
        raise CardError(f"cannot read the metadata of {lora} ({exc}); export it again") from exc
    steps = metadata.get("ss_steps", "")
    samples = newest_samples(ProjectPaths(project).samples, int(steps) if steps.isdigit() else None)
    return write_card_folder(CardInputs(cfg, lora, metadata, samples, repo), out or default_card_folder(lora))
