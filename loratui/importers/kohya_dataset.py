"""kohya's dataset config (``--dataset_config DATASET.toml``): [general] → [[datasets]] →
[[datasets.subsets]], each subset one loratui concept; the keys as docs/config_README-en.md names them."""

from __future__ import annotations

from pathlib import Path

from loratui.config import ConceptConfig
from loratui.importers.kohya import _flag, _Importer, _load, _number


def import_dataset(imp: _Importer, path: Path) -> None:
    """kohya's dataset TOML: [general] → [[datasets]] → [[datasets.subsets]], the lower one winning."""
    raw = _load(path)
    general = raw.get("general", {}) or {}
    datasets = raw.get("datasets", []) or []
    if not datasets:
        imp.report.ignore(f"{path.name}", "no [[datasets]] in it")
        return
    for key in raw:
        if key not in ("general", "datasets"):
            imp.report.ignore(f"{path.name} {key}", "not a kohya dataset section")
    first = {**general, **{k: v for k, v in datasets[0].items() if k != "subsets"}}
    if "batch_size" in first:
        imp.set("dataset batch_size", "train.batch_size", _number(first["batch_size"], int))
    if "bucket_reso_steps" in first:
        imp.set("dataset bucket_reso_steps", "data.bucket_step", _number(first["bucket_reso_steps"], int))
    imp.resolution(first.get("resolution"), "dataset resolution")
    concepts: list[ConceptConfig] = []
    flips = []
    handled = {"image_dir", "num_repeats", "is_reg", "class_tokens", "caption_extension", "keep_tokens",
               "shuffle_caption", "caption_dropout_rate", "flip_aug", "alpha_mask", "conditioning_data_dir",
               "caption_prefix", "batch_size", "resolution", "bucket_reso_steps", "enable_bucket",
               "min_bucket_reso", "max_bucket_reso", "bucket_no_upscale"}
    for d_index, dataset in enumerate(datasets):
        subsets = dataset.get("subsets", []) or []
        if d_index > 0:
            imp.report.change(f"datasets[{d_index}]", "loratui trains one resolution and batch size: its subsets "
                                                     "join as concepts with the first dataset's settings")
        for s_index, subset in enumerate(subsets):
            where = f"datasets[{d_index}].subsets[{s_index}]"
            merged = {**general, **{k: v for k, v in dataset.items() if k != "subsets"}, **subset}
            if "metadata_file" in merged:
                imp.report.ignore(f"{where}.metadata_file", "fine-tuning metadata is not supported; use captions "
                                                            "beside the images")
            if "image_dir" not in subset:
                imp.report.ignore(where, "no image_dir")
                continue
            repeats = _number(merged.get("num_repeats", 1), int)
            if repeats < 1:
                imp.report.change(where, f"num_repeats = {repeats}: kohya ignores such a subset; left out")
                continue
            c = ConceptConfig(folder=str(subset["image_dir"]), repeats=repeats,
                              is_reg=_flag(merged.get("is_reg", False)),
                              class_tokens=str(merged.get("class_tokens", "")))
            ext = merged.get("caption_extension", imp.cfg.data.caption_extension)
            c.caption_extension = str(ext) if str(ext) in (".txt", ".caption") else ".txt"
            c.keep_tokens = _number(merged.get("keep_tokens", 0), int)
            c.shuffle_tags = _flag(merged.get("shuffle_caption", False))
            c.caption_dropout = _number(merged.get("caption_dropout_rate", 0.0))
            if "alpha_mask" in merged:
                c.alpha_mask = _flag(merged["alpha_mask"])
            if "conditioning_data_dir" in merged:
                c.masks = str(merged["conditioning_data_dir"])
            prefix = str(merged.get("caption_prefix", "")).strip().rstrip(",").strip()
            if prefix:
                c.trigger_word = prefix
                imp.report.change(f"{where}.caption_prefix", f"trigger_word = {prefix!r}: put before every caption "
                                  "that lacks it (kohya adds it to every caption)")
            elif c.is_reg:
                c.trigger_word = ""
            flips.append(_flag(merged.get("flip_aug", False)))
            for key in sorted(set(subset) - handled):
                imp.report.ignore(f"{where}.{key}", "no loratui equivalent")
            concepts.append(c)
            imp.report.map(f"{where}.image_dir", f"data.concepts[{len(concepts) - 1}]",
                           f"{c.folder} ×{c.repeats}" + (" (reg)" if c.is_reg else ""))
    if concepts:
        imp.cfg.data.concepts = concepts
        if any(flips):
            imp.cfg.data.flip = True
            if not all(flips):
                imp.report.change("flip_aug", "set for some subsets only; data.flip applies to all of them")
    for key in sorted(set(general) | {k for d in datasets for k in d if k != "subsets"}):
        if key not in handled and key != "subsets":
            imp.report.ignore(f"{path.name} {key}", "no loratui equivalent")
