"""The WD v3 booru taggers (SmilingWolf/wd-*-tagger-v3) through onnxruntime.

A tagger folder holds ``model.onnx`` and ``selected_tags.csv`` (tag_id,name,category,count).
The network takes a batch of square BGR pictures, 0-255, channels last, and answers one
probability per row of the csv. Category 9 is the rating, 4 characters, 0 general tags.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loratui.captioning.base import CaptionerError, CaptionOptions, batch_size_for

if TYPE_CHECKING:
    from PIL import Image

TAGS_FILE = "selected_tags.csv"
GENERAL, CHARACTER, RATING = 0, 4, 9
# Emoticons whose underscores are part of the face, not word separators.
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
           "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}

INSTALL_HINT = "pip install -e '.[caption]' (or onnxruntime-gpu on a CUDA machine)"


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def read_tags(path: Path) -> list[Tag]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise CaptionerError(f"{path}: cannot read the tag list ({exc.strerror or exc}).") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CaptionerError(f"{path}: not a readable CSV tag list ({exc}).") from exc
    if not rows or "name" not in rows[0] or "category" not in rows[0]:
        raise CaptionerError(f"{path}: a WD tag list needs the columns name and category "
                             "(tag_id,name,category,count, as in the SmilingWolf repositories).")
    try:
        return [Tag(row["name"], int(row["category"])) for row in rows]
    except (TypeError, ValueError) as exc:
        raise CaptionerError(f"{path}: a category is not a number ({exc}).") from exc


def tagger_files(model: Path) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) for a tagger folder or its .onnx file."""
    onnx_file = model if model.is_file() else model / "model.onnx"
    if model.is_dir() and not onnx_file.is_file():
        found = sorted(model.glob("*.onnx"))
        if len(found) != 1:
            raise CaptionerError(f"{model}: a tagger folder holds one model.onnx; found {len(found)} .onnx files.")
        onnx_file = found[0]
    tags = onnx_file.parent / TAGS_FILE
    if not tags.is_file():
        raise CaptionerError(f"{onnx_file}: no tag list beside it. A WD tagger needs {TAGS_FILE} in the same "
                             "folder (download it from the model's page with model.onnx); without it the "
                             "scores cannot be turned into tags.")
    return onnx_file, tags


def format_tag(name: str, underscores_to_spaces: bool) -> str:
    if underscores_to_spaces and name not in KAOMOJI:
        name = name.replace("_", " ")
    return name


def _blacklist_key(tag: str) -> str:
    return tag.replace("_", " ").strip().casefold()


class WdTagger:
    """Tags per image: characters first (as booru captions are read), then general tags by confidence."""

    kind = "tags"

    def __init__(self, name: str, model: Path, options: CaptionOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CaptionerError(f"the tagger {name} runs through onnxruntime, which is not installed: "
                                 f"{INSTALL_HINT}.") from exc
        onnx_file, tags_file = tagger_files(model)
        self.name = name
        self.tags = read_tags(tags_file)
        self.options = options
        self.blacklist = {_blacklist_key(t) for t in options.blacklist if t.strip()}
        wanted = "CUDAExecutionProvider"
        gpu = options.device != "cpu" and wanted in ort.get_available_providers()
        providers = [wanted, "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_file), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for a bad file
            raise CaptionerError(f"{onnx_file}: onnxruntime cannot load it ({str(exc).splitlines()[0]}); "
                                 "is it a complete download?") from exc
        self.device = "cuda" if gpu else "cpu"
        self.batch_size = batch_size_for(options, self.device, gpu_default=16)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[3] != 3:
            raise CaptionerError(f"{onnx_file}: expected a WD v3 tagger input of (batch, size, size, 3); "
                                 f"this model takes {shape}.")
        self.size = shape[1]
        out = self.session.get_outputs()[0].shape
        if out and isinstance(out[-1], int) and out[-1] != len(self.tags):
            raise CaptionerError(f"{onnx_file}: the model scores {out[-1]} tags but {tags_file.name} lists "
                                 f"{len(self.tags)}; they come from different taggers.")

    def _pixels(self, image: Image.Image):  # noqa: ANN202 - a numpy array
        import numpy as np
        from PIL import Image as PILImage

        # Pad to a square on white, as the taggers were trained, then scale to the input size.
        side = max(image.size)
        square = PILImage.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        square = square.resize((self.size, self.size), PILImage.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR

    def caption(self, images: list[Image.Image]) -> list[str]:
        import numpy as np

        batch = np.stack([self._pixels(im) for im in images])
        probs = self.session.run(None, {self.input_name: batch})[0]
        return [self._tags_for(row) for row in probs]

    def _tags_for(self, scores) -> str:  # noqa: ANN001
        o = self.options
        chosen: list[tuple[int, float, str]] = []
        for tag, score in zip(self.tags, scores.tolist()):
            if tag.category == CHARACTER and score >= o.character_threshold:
                chosen.append((0, -score, tag.name))
            elif tag.category == GENERAL and score >= o.general_threshold:
                chosen.append((1, -score, tag.name))
        chosen.sort()
        out = []
        for _, _, name in chosen:
            if _blacklist_key(name) in self.blacklist:
                continue
            out.append(format_tag(name, o.underscores_to_spaces))
        return ", ".join(out)

    def close(self) -> None:
        self.session = None
