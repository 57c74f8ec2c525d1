"""Vision-language captioners through transformers: Qwen2-VL, Qwen2.5-VL and Qwen3-VL
(chat models asked with an editable prompt) and Florence-2 (steered by a task token).

Only architectures transformers implements itself are loaded; ``trust_remote_code`` is
never passed, so a model repository cannot run its own code here. Florence-2 is native
in transformers 5 as the ``florence-community/Florence-2-*`` conversions; Microsoft's
original repositories need remote code and are refused with that advice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loratui.captioning.base import (
    DEFAULT_PROMPT,
    FLORENCE_PROMPT,
    CaptionerError,
    CaptionOptions,
    batch_size_for,
    clean_generated,
    pick_device,
)

if TYPE_CHECKING:
    from PIL import Image

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
FLORENCE_TYPES = ("florence2",)
VLM_TYPES = QWEN_TYPES + FLORENCE_TYPES

# Qwen-VL spends one token per 28x28 pixels (after merging); a 1-megapixel cap keeps a caption
# to about 1,300 image tokens however large the photo, which is plenty to describe it.
MAX_PIXELS = 1024 * 1024


def _limit_pixels(image: Image.Image) -> Image.Image:
    w, h = image.size
    if w * h <= MAX_PIXELS:
        return image
    scale = (MAX_PIXELS / (w * h)) ** 0.5
    return image.resize((max(28, int(w * scale)), max(28, int(h * scale))))


def _processor_chat_template(source: str, tokenizer: Any) -> str | None:
    """The chat template that places images, when the tokenizer's own does not.

    Several VL repositories keep it only beside the processor (chat_template.jinja or
    chat_template.json), which AutoProcessor would read and the tokenizer does not.
    """
    import json

    from transformers.utils import cached_file

    if "image" in (tokenizer.chat_template or ""):
        return None
    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path is None:
            continue
        text = open(path, encoding="utf-8").read()
        return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


class VlmCaptioner:
    """A transformers image-text-to-text model that writes a sentence or two per image."""

    kind = "text"

    def __init__(self, name: str, source: str, model_type: str, options: CaptionOptions) -> None:
        import torch
        import transformers

        if tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit()) < (4, 57):
            raise CaptionerError(f"captioning with {name} needs transformers 4.57 or newer (Qwen3-VL and "
                                 f"Florence-2 are built in from there); this is {transformers.__version__}: "
                                 "pip install -U transformers")
        from transformers import AutoModelForImageTextToText, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()

        self.name = name
        self.model_type = model_type
        self.device = pick_device(options.device)
        self.batch_size = batch_size_for(options, self.device, gpu_default=8)
        self.max_length = max(1, int(options.max_length))
        self.florence = model_type in FLORENCE_TYPES
        self.prompt = options.prompt.strip() or (FLORENCE_PROMPT if self.florence else DEFAULT_PROMPT)
        on_gpu = self.device.startswith("cuda")
        dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else (
            torch.float16 if on_gpu else torch.float32)
        try:
            if self.florence:
                from transformers import AutoProcessor

                self.processor: Any = AutoProcessor.from_pretrained(source)
                self.tokenizer = self.processor.tokenizer
            else:
                from transformers import AutoImageProcessor

                # Not AutoProcessor: the Qwen-VL processors also build a video processor, which
                # needs torchvision; the image processor and tokenizer are all captioning uses.
                self.processor = AutoImageProcessor.from_pretrained(source)
                self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionerError(f"{name}: cannot load this {model_type} model ({str(exc).splitlines()[0]}). "
                                 "Check that the folder or hub id holds a complete model "
                                 "(config.json, weights, tokenizer and preprocessor files).") from exc
        self.chat_template = None if self.florence else _processor_chat_template(source, self.tokenizer)
        self.model.to(self.device).eval()
        self.dtype = dtype
        # Batches are padded on the left so every prompt ends where generation begins.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.florence and self.prompt.startswith("<") and self.prompt not in \
                self.processor.tasks_answer_post_processing_type:
            raise CaptionerError(f"prompt {self.prompt!r}: Florence-2 knows the task tokens "
                                 f"{', '.join(sorted(self.processor.tasks_answer_post_processing_type))}; "
                                 "for captions use <CAPTION>, <DETAILED_CAPTION> or <MORE_DETAILED_CAPTION>.")

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        inputs = self._florence_inputs(images) if self.florence else self._qwen_inputs(images)
        inputs = {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                  for k, v in inputs.items()}
        try:
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_length, do_sample=False, num_beams=1)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise CaptionerError(f"out of GPU memory captioning {len(images)} image(s) at once with {self.name}: "
                                 "use --batch-size 1 (or a smaller model)") from exc
        if not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1]:]  # a decoder-only model repeats the prompt first
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [clean_generated(t) for t in texts]

    def _qwen_inputs(self, images: list[Image.Image]) -> dict[str, Any]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        template = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                      chat_template=self.chat_template)
        image_token = getattr(self.tokenizer, "image_token", None) or "<|image_pad|>"
        if image_token not in template:
            raise CaptionerError(f"{self.name}: its chat template has no {image_token} placeholder, so the "
                                 "picture cannot be put in the prompt; use an Instruct model's folder.")
        vision = self.processor(images=[_limit_pixels(im) for im in images], return_tensors="pt")
        merge = int(getattr(self.processor, "merge_size", 2)) ** 2
        texts = []
        for grid in vision["image_grid_thw"]:
            count = int(grid.prod()) // merge
            texts.append(template.replace(image_token, image_token * count, 1))
        text = self.tokenizer(texts, return_tensors="pt", padding=True)
        return {**text, **vision}

    def _florence_inputs(self, images: list[Image.Image]) -> dict[str, Any]:
        return dict(self.processor(text=[self.prompt] * len(images), images=images, return_tensors="pt",
                                   padding=True))

    def close(self) -> None:
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
