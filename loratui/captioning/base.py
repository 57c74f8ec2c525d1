"""The one interface every captioner has, and the settings they read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from loratui.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

# The defaults the README names: one natural-language model, one tagger.
DEFAULT_VLM = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_TAGGER = "SmilingWolf/wd-eva02-large-tagger-v3"
SHORTHANDS = {"vlm": DEFAULT_VLM, "tags": DEFAULT_TAGGER}
BACKUP_DIR = ".caption-backup"  # in the project (or image folder): what each run replaced

DEFAULT_PROMPT = ("Describe this image in one or two sentences for an image-generation caption: "
                  "the subject, what it wears or holds, the setting, the lighting and the style. "
                  "Do not begin with 'The image'.")
# Florence-2 is steered by task tokens rather than free text.
FLORENCE_PROMPT = "<DETAILED_CAPTION>"


class CaptionerError(UserError):
    """The captioner cannot be opened or run; the message says what to use instead."""


@dataclass
class CaptionOptions:
    """What the user chose on the command line or in the wizard's captioning panel."""

    prompt: str = ""  # empty: the model kind's own default
    max_length: int = 160  # new tokens a vision-language model may write per caption
    general_threshold: float = 0.35  # tagger: lower gives more (and less certain) tags
    character_threshold: float = 0.85
    blacklist: list[str] = field(default_factory=list)  # tags never written
    underscores_to_spaces: bool = True  # "long_hair" -> "long hair", as most SD prompts are written
    batch_size: int = 0  # 0: a size that suits the device (several on a GPU, one on a CPU)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"


class Captioner(Protocol):
    """Opened once, asked for captions a batch at a time, closed to free its memory."""

    name: str  # the model as the user gave it
    kind: str  # "text" (sentences) or "tags" (comma-separated tags)
    device: str  # where it runs, for the estimate the user sees
    batch_size: int

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order, without the trigger word."""
        ...

    def close(self) -> None:
        ...


def pick_device(requested: str) -> str:
    """The device a captioner runs on: a GPU when there is one, unless the user said otherwise."""
    import torch

    if requested not in ("", "auto"):
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise CaptionerError(f"--device {requested}: this machine has no CUDA GPU that torch can see; "
                                 "use --device cpu (slow) or auto.")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def batch_size_for(options: CaptionOptions, device: str, *, gpu_default: int) -> int:
    if options.batch_size > 0:
        return options.batch_size
    # On a CPU a batch gains nothing and delays the first progress report.
    return gpu_default if device.startswith("cuda") else 1


def clean_generated(text: str) -> str:
    """A model's answer as one caption line: no surrounding quotes, no line breaks."""
    from loratui.data.captions import clean_caption

    text, _ = clean_caption(text)
    text = text.strip().strip('"').strip("'").strip()
    return text
