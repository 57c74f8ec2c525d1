"""From what the user typed (a folder, an .onnx file, a hub id, or ``vlm``/``tags``) to an
open captioner; and why a folder is not a captioner, in words."""

from __future__ import annotations

import json
from pathlib import Path

from loratui.captioning.base import SHORTHANDS, Captioner, CaptionerError, CaptionOptions
from loratui.captioning.tagger import TAGS_FILE
from loratui.captioning.vlm import FLORENCE_TYPES, QWEN_TYPES, VLM_TYPES

WHAT_WORKS = ("loratui captions with Qwen2-VL / Qwen2.5-VL / Qwen3-VL and Florence-2 models "
              "(a folder with config.json, or a hub id) and WD v3 taggers (model.onnx with selected_tags.csv)")


def resolve_name(model: str) -> str:
    return SHORTHANDS.get(model.strip(), model.strip())


def model_type_of(folder: Path) -> tuple[str, dict]:
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CaptionerError(f"{config}: cannot read it ({exc}); {WHAT_WORKS}.") from exc
    return str(data.get("model_type", "")), data


def _check_vlm(name: str, model_type: str, data: dict) -> None:
    if model_type not in VLM_TYPES:
        what = f"a {model_type} model" if model_type else "a model without a model_type"
        raise CaptionerError(f"{name} is {what}, not a captioner: {WHAT_WORKS}.")
    if model_type in FLORENCE_TYPES and data.get("auto_map"):
        raise CaptionerError(f"{name} is Microsoft's original Florence-2, which runs its own code; loratui "
                             "loads only what transformers implements. Use the converted "
                             "florence-community/Florence-2-large (or -base) instead.")


def open_captioner(model: str, options: CaptionOptions) -> Captioner:
    """Open the captioner ``model`` names; raises CaptionerError with advice when it is not one."""
    name = resolve_name(model)
    if not name:
        raise CaptionerError(f"no captioner given: pass --model with a folder or hub id; {WHAT_WORKS}.")
    path = Path(name).expanduser()
    if path.exists():
        return _open_local(name, path, options)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise CaptionerError(f"{name}: no such file or folder, and not a hub id (owner/name).")
    return _open_hub(name, options)


def _open_local(name: str, path: Path, options: CaptionOptions) -> Captioner:
    from loratui.captioning.tagger import WdTagger
    from loratui.captioning.vlm import VlmCaptioner

    if path.is_file():
        if path.suffix != ".onnx":
            raise CaptionerError(f"{path} is a file but not an .onnx tagger; {WHAT_WORKS}.")
        return WdTagger(name, path, options)
    if any(path.glob("*.onnx")):
        return WdTagger(name, path, options)
    if not (path / "config.json").is_file():
        raise CaptionerError(f"{path} holds neither config.json nor model.onnx, so it is not a captioner; "
                             f"{WHAT_WORKS}.")
    model_type, data = model_type_of(path)
    _check_vlm(name, model_type, data)
    return VlmCaptioner(name, str(path), model_type, options)


def _open_hub(name: str, options: CaptionOptions) -> Captioner:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    from loratui.captioning.tagger import WdTagger
    from loratui.captioning.vlm import VlmCaptioner

    offline: list[str] = []

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(name, filename))
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: it goes first
            offline.append(filename)  # not cached and the hub is off: whether it exists is unknown
            return None
        except EntryNotFoundError:
            return None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise CaptionerError(f"{name}: cannot download from the hub ({str(exc).splitlines()[0]}).") from exc

    # WD taggers also carry a timm config.json, so the tag list decides first.
    tags = fetch(TAGS_FILE)
    if tags is not None:
        onnx_file = fetch("model.onnx")
        if onnx_file is None:
            raise CaptionerError(f"{name}: has {TAGS_FILE} but no model.onnx; {WHAT_WORKS}.")
        return WdTagger(name, onnx_file, options)
    config = fetch("config.json")
    if config is None and offline:
        raise CaptionerError(f"{name}: not in the local hub cache and the hub cannot be reached (offline?). "
                             "Download it where there is a network, or give a local folder.")
    if config is None:
        raise CaptionerError(f"{name}: neither config.json nor {TAGS_FILE} on the hub; {WHAT_WORKS}.")
    model_type, data = model_type_of(config.parent)
    _check_vlm(name, model_type, data)
    return VlmCaptioner(name, name, model_type, options)


__all__ = ["open_captioner", "resolve_name", "QWEN_TYPES", "FLORENCE_TYPES"]
