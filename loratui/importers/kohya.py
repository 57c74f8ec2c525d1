"""kohya sd-scripts (``train_network.py --config_file ARGS.toml``, ``--dataset_config DATASET.toml``)
and the kohya_ss GUI's saved JSON, as a loratui project.

The argument names and defaults are sd-scripts' own (``library/train_util.py``,
``train_network.py``); where kohya's default differs from ours (``caption_extension`` is
``.caption``, ``keep_tokens`` 0, ``network_alpha`` 1, the text encoder trained unless
``network_train_unet_only``), the imported project keeps kohya's behaviour and says so.
"""

from __future__ import annotations

import json
import math
import shlex
import tomllib
from pathlib import Path
from typing import Any

from loratui.config import ConceptConfig, ConfigError, ProjectConfig, SamplePrompt, field_spec
from loratui.importers import ImportReport

# kohya_ss GUI keys that are sd-scripts arguments under another name.
_GUI_NAMES = {
    "optimizer": "optimizer_type", "max_resolution": "resolution", "lora_network_weights": "network_weights",
    "epoch": "max_train_epochs",
}
_OPTIMIZERS = {
    "adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "adamwschedulefree": "adamw_schedulefree",
    "schedulefree.adamwschedulefree": "adamw_schedulefree", "prodigyopt.prodigy": "prodigy",
    "bitsandbytes.optim.adamw8bit": "adamw8bit", "torch.optim.adamw": "adamw",
}
_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# Keys with nothing to do in loratui, and why, so the report can say more than "unknown".
_NO_EQUIVALENT = {
    "xformers": "loratui always uses PyTorch's scaled-dot-product attention",
    "sdpa": "loratui always uses PyTorch's scaled-dot-product attention",
    "mem_eff_attn": "loratui always uses PyTorch's scaled-dot-product attention",
    "output_dir": "loratui writes output/ inside the project folder",
    "logging_dir": "loratui logs to logs/ inside the project folder",
    "log_with": "loratui logs metrics to logs/metrics.jsonl",
    "max_data_loader_n_workers": "loratui trains from cached latents, no data-loader workers",
    "persistent_data_loader_workers": "loratui trains from cached latents, no data-loader workers",
    "cache_latents_to_disk": "loratui always caches latents on disk (data.cache_latents)",
    "save_state": "every loratui checkpoint is resumable",
    "save_model_as": "loratui writes .safetensors",
    "min_bucket_reso": "bucket sizes follow data.resolution and data.bucket_step",
    "max_bucket_reso": "bucket sizes follow data.resolution and data.bucket_step",
    "bucket_no_upscale": "bucket sizes follow data.resolution and data.bucket_step",
    "vae": "a separate VAE is not supported; the base model's own VAE is used",
    "config_file": "this file itself", "output_config": "not a training setting",
    "dataset_config": "read as the dataset file",
}


class KohyaImportError(ConfigError):
    pass


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KohyaImportError(f"{path} cannot be read: {exc}.") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise KohyaImportError(f"{path} is not valid {kind}: {exc}.") from None
    if not isinstance(data, dict):
        raise KohyaImportError(f"{path} does not hold a table of settings.")
    return data


def read_args(path: Path) -> dict[str, Any]:
    """sd-scripts' argument file: sections are only grouping (kohya flattens them); GUI names renamed."""
    raw = _load(path)
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or value == "":
            continue  # the GUI writes "" for "not set"
        out[_GUI_NAMES.get(key, key)] = value
    return out


def _number(value: Any, kind: type = float) -> Any:
    if isinstance(value, (list, tuple)) and value:
        value = value[0]  # kohya accepts a list of text-encoder LRs; one per encoder
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    return int(number) if kind is int else number


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


class _Importer:
    def __init__(self, args: dict[str, Any], base_dir: Path) -> None:
        self.args = dict(args)
        self.base_dir = base_dir
        self.cfg = ProjectConfig()
        self.report = ImportReport()

    # ---------------------------------------------------------------- helpers
    def take(self, key: str) -> Any:
        return self.args.pop(key, None)

    def set(self, source: str, target: str, value: Any) -> bool:
        """Check ``value`` against our field and set it; a value our field refuses is reported, not fatal."""
        from loratui.config import coerce_value

        section, name = target.split(".")
        try:
            value = coerce_value(field_spec(target), value)
        except (ValueError, KeyError) as exc:
            self.report.ignore(source, f"{value!r} does not fit {target} ({exc})")
            return False
        setattr(getattr(self.cfg, section), name, value)
        self.report.map(source, target, value)
        return True

    def simple(self, pairs: dict[str, str], kind: dict[str, type] | None = None) -> None:
        for source, target in pairs.items():
            value = self.take(source)
            if value is None:
                continue
            spec = field_spec(target)
            try:
                if spec.type is bool:
                    value = _flag(value)
                elif spec.type in (int, float):
                    value = _number(value, spec.type)
            except (TypeError, ValueError):
                self.report.ignore(source, f"{value!r} is not a number")
                continue
            self.set(source, target, value)

    # ---------------------------------------------------------------- sections
    def model(self) -> None:
        base = self.take("pretrained_model_name_or_path")
        if base is not None:
            self.set("pretrained_model_name_or_path", "model.base", str(base))
        sdxl, v2, vpred = _flag(self.take("sdxl")), _flag(self.take("v2")), _flag(self.take("v_parameterization"))
        if sdxl:
            self.set("sdxl", "model.family", "sdxl")
        elif v2:
            self.set("v2", "model.family", "sd2")
        if vpred:
            self.set("v_parameterization", "model.prediction_type", "v_prediction")
        elif v2:
            self.report.change("v2", "kohya's --v2 without --v_parameterization is an epsilon model; "
                                     "model.prediction_type = \"epsilon\"")
            self.cfg.model.prediction_type = "epsilon"
        self.simple({"clip_skip": "model.clip_skip"})

    def network(self) -> None:
        module = self.take("network_module")
        lora_type = str(self.take("LoRA_type") or "")
        gui_conv_dim, gui_conv_alpha = self.take("conv_dim"), self.take("conv_alpha")
        net_args = self.take("network_args") or []
        if isinstance(net_args, str):
            net_args = shlex.split(net_args)
        parsed = dict(str(a).split("=", 1) for a in net_args if "=" in str(a))
        dim = self.take("network_dim")
        if dim is not None:
            self.set("network_dim", "lora.rank", _number(dim, int))
        alpha = self.take("network_alpha")
        if alpha is not None:
            self.set("network_alpha", "lora.alpha", _number(alpha))
        elif dim is not None:
            self.cfg.lora.alpha = 1.0
            self.report.change("network_alpha", "not set: kohya's default alpha is 1, so lora.alpha = 1.0 "
                                                "(loratui's own default would be the rank)")
        self.cfg.lora.preset = "attention+ff"
        algo = parsed.pop("algo", "").lower()
        lt = lora_type.lower()
        if lt:
            if lt == "lycoris/loha":
                algo = "loha"
            elif lt == "lycoris/lokr":
                algo = "lokr"
            elif "locon" in lt:
                algo = algo or "locon"
            elif lt != "standard":
                self.report.change("LoRA_type", f"{lora_type!r} is not available; trained as plain LoRA")
            # The GUI stores conv_dim for every type but passes it only for the LoCon-style ones.
            if algo in ("locon", "loha", "lokr") and gui_conv_dim is not None:
                parsed.setdefault("conv_dim", str(gui_conv_dim))
            elif gui_conv_dim is not None:
                self.report.ignore("conv_dim", f"not used by LoRA_type {lora_type!r}")
            if gui_conv_alpha is not None:
                parsed.setdefault("conv_alpha", str(gui_conv_alpha))
        conv_dim = parsed.pop("conv_dim", None)
        conv_alpha = parsed.pop("conv_alpha", None)
        if conv_dim is not None and _number(conv_dim, int) > 0:
            self.set("network_args conv_dim", "lora.preset", "all")
            if dim is not None and _number(conv_dim, int) != _number(dim, int):
                self.report.change("network_args conv_dim", f"convolutions train at lora.rank ({dim}), "
                                   f"not conv_dim {conv_dim}: loratui uses one rank for all layers")
            if conv_alpha is not None and alpha is not None and _number(conv_alpha) != _number(alpha):
                self.report.change("network_args conv_alpha", f"convolutions use lora.alpha ({alpha}), not "
                                   f"conv_alpha {conv_alpha}")
        else:
            self.report.change("network_module", "kohya's LoRA targets every Linear in the transformer blocks: "
                                                 "lora.preset = \"attention+ff\"")
        self._variant(module, algo, parsed)
        for key in sorted(parsed):
            self.report.ignore(f"network_args {key}", "no loratui equivalent")
        te_only = _flag(self.take("network_train_text_encoder_only"))
        if te_only:
            self.report.ignore("network_train_text_encoder_only", "loratui always trains the UNet LoRA")
        unet_only = _flag(self.take("network_train_unet_only"))
        self.set("network_train_unet_only" if unet_only else "network_train_unet_only (absent)",
                 "lora.train_text_encoder", not unet_only)
        weights = self.take("network_weights")
        if weights is not None:
            self.set("network_weights", "lora.init_lora", str(weights))

    def _variant(self, module: Any, algo: str, parsed: dict[str, str]) -> None:
        """LyCORIS algorithms map to lora.type where this loratui has it."""
        if module not in (None, "networks.lora", "lycoris.kohya"):
            self.report.ignore("network_module", f"{module!r} is not a network loratui trains; plain LoRA used")
        if not algo or algo in ("lora", "locon"):
            algo = ""
        wanted = {"loha": "loha", "lokr": "lokr", "dora": "dora"}.get(algo)
        try:
            spec = field_spec("lora.type")
        except KeyError:
            spec = None
        if not algo:
            pass
        elif wanted and spec is not None and spec.choices and wanted in spec.choices:
            self.set("network_args algo", "lora.type", wanted)
        else:
            self.report.change("network_args algo", f"LyCORIS {algo!r} is not available here; trained as plain LoRA")
        if _flag(parsed.pop("dora_wd", False)):
            if spec is not None and spec.choices and "dora" in spec.choices:
                self.set("network_args dora_wd", "lora.type", "dora")
            else:
                self.report.change("network_args dora_wd", "DoRA is not available here; trained as plain LoRA")

    def optimizer(self) -> None:
        name = self.take("optimizer_type")
        if _flag(self.take("use_8bit_adam")):
            name = name or "AdamW8bit"
        if name is not None:
            ours = _OPTIMIZERS.get(str(name).lower())
            if ours is None:
                self.report.change("optimizer_type", f"{name!r} is not available; train.optimizer = \"adamw\"")
            else:
                self.set("optimizer_type", "train.optimizer", ours)
        opt_args = self.take("optimizer_args") or []
        if isinstance(opt_args, str):
            opt_args = shlex.split(opt_args)
        for item in opt_args:
            key, _, value = str(item).partition("=")
            if key.strip() == "weight_decay":
                try:
                    self.set("optimizer_args weight_decay", "train.weight_decay", _number(value))
                except ValueError:
                    self.report.ignore("optimizer_args weight_decay", f"{value!r} is not a number")
            else:
                self.report.ignore(f"optimizer_args {key.strip()}",
                                   "loratui sets this optimizer's other arguments itself")
        lr = self.take("learning_rate")
        unet_lr = self.take("unet_lr")
        if unet_lr is not None and _number(unet_lr) > 0:
            self.set("unet_lr", "train.learning_rate", _number(unet_lr))
            if lr is not None:
                self.report.change("learning_rate", "unet_lr is set and takes its place, as in kohya")
        elif lr is not None:
            self.set("learning_rate", "train.learning_rate", _number(lr))
        te_lr = self.take("text_encoder_lr")
        if te_lr is not None and _number(te_lr) > 0:
            self.set("text_encoder_lr", "train.text_encoder_lr", _number(te_lr))
        elif lr is not None:
            self.cfg.train.text_encoder_lr = self.cfg.train.learning_rate if unet_lr is None else _number(lr)
            self.report.change("text_encoder_lr", "not set: kohya trains the text encoder at learning_rate, so "
                               f"train.text_encoder_lr = {self.cfg.train.text_encoder_lr:g}")
        sched = self.take("lr_scheduler")
        if sched is not None:
            if str(sched) in _SCHEDULERS:
                self.set("lr_scheduler", "train.lr_scheduler", str(sched))
            else:
                self.report.change("lr_scheduler", f"{sched!r} is not available; train.lr_scheduler = \"constant\"")
        if self.cfg.train.optimizer == "adamw_schedulefree" and self.cfg.train.lr_scheduler not in (
                "constant", "constant_with_warmup"):
            self.report.change("lr_scheduler", "schedule-free replaces the schedule: train.lr_scheduler = "
                                               "\"constant\"")
            self.cfg.train.lr_scheduler = "constant"
        self.simple({"max_grad_norm": "train.max_grad_norm"})

    def training(self) -> None:
        self.simple({
            "train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
            "max_train_steps": "train.max_steps", "max_train_epochs": "train.epochs", "seed": "train.seed",
            "gradient_checkpointing": "train.gradient_checkpointing", "min_snr_gamma": "train.min_snr_gamma",
            "noise_offset": "train.noise_offset", "prior_loss_weight": "train.prior_loss_weight",
            "torch_compile": "train.compile",
        })
        warmup = self.take("lr_warmup_steps")
        if warmup is not None:
            value = _number(warmup)
            if 0 < value < 1:  # kohya reads a fraction as a share of the total steps
                value = round(value * self.cfg.train.max_steps)
                self.report.change("lr_warmup_steps", f"{warmup} of max_train_steps = {value} steps")
            self.set("lr_warmup_steps", "train.warmup_steps", int(value))
        pct = self.take("lr_warmup")  # the GUI's percentage
        if pct is not None and _number(pct) > 0:
            steps = round(_number(pct) / 100 * self.cfg.train.max_steps)
            self.report.change("lr_warmup", f"{pct}% of {self.cfg.train.max_steps} steps = {steps} warm-up steps")
            self.set("lr_warmup", "train.warmup_steps", steps)
        precision = self.take("mixed_precision")
        if precision is not None:
            self.set("mixed_precision", "train.precision", str(precision))
        save_precision = self.take("save_precision")
        if save_precision is not None:
            value = {"float": "fp32"}.get(str(save_precision), str(save_precision))
            self.set("save_precision", "save.precision", value)
        self.simple({"save_every_n_steps": "save.every_n_steps", "sample_every_n_steps": "sample.every_n_steps"})
        every_epochs = self.take("save_every_n_epochs")
        if every_epochs and _number(every_epochs) > 0:
            self.report.change("save_every_n_epochs", "loratui saves every N steps; set save.every_n_steps "
                               "(loratui check prints the steps per epoch)")
        name = self.take("output_name")
        if name is not None:
            self.cfg.name = str(name)
            self.set("output_name", "save.output_name", str(name))
        prompts = self.take("sample_prompts")
        if prompts is not None:
            self._prompts(str(prompts))

    def _prompts(self, value: str) -> None:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
        elif "\n" in value or not value.endswith((".txt", ".toml", ".json")):
            lines = value.splitlines()  # the GUI stores the prompts themselves
        else:
            self.report.ignore("sample_prompts", f"{path} not found; add [[sample.prompts]] by hand")
            return
        for line in lines:
            prompt = parse_prompt_line(line)
            if prompt is not None:
                self.cfg.sample.prompts.append(prompt)
        if self.cfg.sample.prompts:
            self.report.map("sample_prompts", "sample.prompts", f"{len(self.cfg.sample.prompts)} prompts")

    def captions(self) -> None:
        ext = self.take("caption_extension")
        if ext is None:
            ext = self.take("caption_extention")  # kohya still reads its old misspelling
        if ext is None:
            self.cfg.data.caption_extension = ".caption"
            self.report.change("caption_extension", "not set: kohya's default is .caption, so "
                                                    "data.caption_extension = \".caption\"")
        elif str(ext) in (".txt", ".caption"):
            self.set("caption_extension", "data.caption_extension", str(ext))
        else:
            self.report.change("caption_extension", f"{ext!r} is not supported; data.caption_extension = \".txt\"")
        keep = self.take("keep_tokens")
        self.set("keep_tokens" if keep is not None else "keep_tokens (absent)", "data.keep_tokens",
                 _number(keep, int) if keep is not None else 0)
        self.simple({"shuffle_caption": "data.shuffle_tags", "caption_dropout_rate": "data.caption_dropout",
                     "flip_aug": "data.flip", "cache_latents": "data.cache_latents",
                     "bucket_reso_steps": "data.bucket_step"})
        enable_bucket = self.take("enable_bucket")
        if enable_bucket is not None and not _flag(enable_bucket):
            self.report.change("enable_bucket", "loratui always uses aspect-ratio buckets")
        self.resolution(self.take("resolution"), "resolution")
        masked = _flag(self.take("masked_loss"))
        alpha = _flag(self.take("alpha_mask"))
        if alpha or (masked and self.args.get("conditioning_data_dir") is None):
            self.set("alpha_mask" if alpha else "masked_loss", "data.alpha_mask", True)
        cond = self.take("conditioning_data_dir")
        if cond is not None and masked:
            self.set("conditioning_data_dir", "data.masks", str(cond))

    def resolution(self, value: Any, source: str) -> None:
        if value is None:
            return
        if isinstance(value, str):
            parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            parts = [value]
        try:
            sides = [int(float(p)) for p in parts]
        except ValueError:
            self.report.ignore(source, f"{value!r} is not a resolution")
            return
        side = sides[0] if len(sides) == 1 or sides[0] == sides[1] else int(math.sqrt(sides[0] * sides[1]))
        step = self.cfg.data.bucket_step
        rounded = max(step, round(side / step) * step)
        if rounded != side or len(set(sides)) > 1:
            self.report.change(source, f"{value!r}: loratui trains at one square area; data.resolution = {rounded}")
        self.set(source, "data.resolution", rounded)

    # ---------------------------------------------------------------- data
    def folders(self) -> None:
        train = self.take("train_data_dir")
        reg = self.take("reg_data_dir")
        if train is None:
            return
        if reg is None:
            self.set("train_data_dir", "data.images", str(train))
            return
        # kohya's folders hold N_name sub-folders; as concepts the repeats come from those names still.
        self.cfg.data.concepts = [ConceptConfig(folder=str(train)), ConceptConfig(folder=str(reg), is_reg=True)]
        self.report.map("train_data_dir", "data.concepts[0].folder", str(train))
        self.report.map("reg_data_dir", "data.concepts[1].folder (is_reg = true)", str(reg))

    def leftovers(self) -> None:
        for key in sorted(self.args):
            self.report.ignore(key, _NO_EQUIVALENT.get(key, "no loratui equivalent"))
        self.args.clear()


def parse_prompt_line(line: str) -> SamplePrompt | None:
    """One line of kohya's prompt file: ``text --n negative --d seed --s steps --l scale`` (# comments)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split(" --")
    prompt = SamplePrompt(prompt=parts[0].strip())
    for part in parts[1:]:
        flag, _, value = part.partition(" ")
        value = value.strip()
        try:
            if flag == "n":
                prompt.negative = value
            elif flag == "d":
                prompt.seed = int(value)
            elif flag == "s":
                prompt.steps = int(value)
            elif flag == "l":
                prompt.guidance = float(value)
        except ValueError:
            continue
    return prompt


def import_kohya(args_path: Path | None, dataset_path: Path | None = None) -> tuple[ProjectConfig, ImportReport]:
    """Build a project config from kohya's argument file (TOML, or the GUI's JSON) and dataset TOML."""
    args = read_args(args_path) if args_path is not None else {}
    base = (args_path or dataset_path or Path(".")).parent
    imp = _Importer(args, base)
    dataset_from_args = imp.take("dataset_config")
    imp.model()
    imp.network()
    imp.training()  # before optimizer: a warm-up fraction needs max_train_steps
    imp.optimizer()
    imp.captions()
    if dataset_path is None and dataset_from_args:
        candidate = Path(str(dataset_from_args)).expanduser()
        candidate = candidate if candidate.is_absolute() else base / candidate
        if candidate.is_file():
            dataset_path = candidate
        else:
            imp.report.ignore("dataset_config", f"{candidate} not found; pass it with --dataset")
    if dataset_path is not None:
        imp.take("train_data_dir")  # kohya ignores these when a dataset config is given
        imp.take("reg_data_dir")
        from loratui.importers.kohya_dataset import import_dataset

        import_dataset(imp, dataset_path)
    else:
        imp.folders()
    imp.leftovers()
    return imp.cfg, imp.report
