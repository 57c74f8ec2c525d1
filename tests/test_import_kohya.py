"""`loratui import`: a kohya sd-scripts config and dataset TOML (and the kohya_ss GUI's JSON) become a
project that trains what the kohya user meant, with every unmapped key named."""

from __future__ import annotations

import json
from pathlib import Path

from loratui.cli import main
from loratui.config import CONFIG_NAME, load_config
from loratui.importers.kohya import import_kohya

# The argument file `train_network.py --output_config` writes (sections are only grouping to kohya).
ARGS_TOML = '''
[model_arguments]
pretrained_model_name_or_path = "/models/sd15.safetensors"
v2 = false

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=8", "conv_alpha=4"]
unet_lr = 0.0002
text_encoder_lr = 0.00005

[optimizer_arguments]
optimizer_type = "Prodigy"
optimizer_args = ["weight_decay=0.05", "d_coef=2", "use_bias_correction=True"]
learning_rate = 1.0
lr_scheduler = "cosine"
lr_warmup_steps = 100
max_grad_norm = 1.0

[dataset_arguments]
cache_latents = true
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"
resolution = "768,768"
debug_dataset = false

[training_arguments]
output_name = "alice_v1"
output_dir = "/out"
save_every_n_steps = 250
save_precision = "fp16"
mixed_precision = "bf16"
train_batch_size = 2
max_train_steps = 2000
seed = 1234
gradient_checkpointing = true
xformers = true
min_snr_gamma = 5.0
noise_offset = 0.05
prior_loss_weight = 0.7
clip_skip = 2
max_token_length = 225
'''

# The dataset config format of docs/config_README-en.md: [general], [[datasets]], [[datasets.subsets]].
DATASET_TOML = '''
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 512
batch_size = 4
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "train/alice"
  class_tokens = "alice woman"
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = "train/bob"
  class_tokens = "bob man"
  keep_tokens = 3
  num_repeats = 5
  color_aug = true

  [[datasets.subsets]]
  is_reg = true
  image_dir = "reg/person"
  class_tokens = "person"
  keep_tokens = 1
'''


def test_args_and_dataset_toml_reproduce_the_intended_fields(tmp_path: Path, capsys) -> None:
    (tmp_path / "args.toml").write_text(ARGS_TOML)
    (tmp_path / "dataset.toml").write_text(DATASET_TOML)
    project = tmp_path / "alice"
    code = main(["import", str(project), "--kohya", str(tmp_path / "args.toml"),
                 "--dataset", str(tmp_path / "dataset.toml")])
    out = capsys.readouterr().out
    assert code == 0, out
    cfg = load_config(project)  # the written file loads and validates
    assert cfg.model.base == "/models/sd15.safetensors" and cfg.model.clip_skip == 2
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.preset) == (32, 16.0, "all")  # conv_dim → LoCon
    assert cfg.lora.train_text_encoder  # kohya trains it unless network_train_unet_only
    t = cfg.train
    assert t.optimizer == "prodigy" and t.weight_decay == 0.05
    assert (t.learning_rate, t.text_encoder_lr) == (0.0002, 0.00005)  # unet_lr wins over learning_rate
    assert (t.lr_scheduler, t.warmup_steps, t.max_steps, t.seed) == ("cosine", 100, 2000, 1234)
    assert (t.precision, t.gradient_checkpointing, t.min_snr_gamma, t.noise_offset) == ("bf16", True, 5.0, 0.05)
    assert t.prior_loss_weight == 0.7
    assert t.batch_size == 4  # the dataset's batch_size is the one kohya uses
    assert (cfg.save.output_name, cfg.save.every_n_steps, cfg.save.precision) == ("alice_v1", 250, "fp16")
    assert cfg.data.resolution == 512 and cfg.data.caption_extension == ".txt"
    alice, bob, reg = cfg.data.concepts
    assert (alice.folder, alice.repeats, alice.class_tokens, alice.keep_tokens) == ("train/alice", 10,
                                                                                     "alice woman", 2)
    assert (bob.repeats, bob.keep_tokens, bob.shuffle_tags) == (5, 3, True)
    assert (reg.folder, reg.is_reg, reg.repeats, reg.class_tokens) == ("reg/person", True, 1, "person")
    # What could not come over is listed by name, and the import still succeeded.
    ignored = out[out.index("Ignored"):]
    for key in ("xformers", "output_dir", "max_token_length", "debug_dataset", "optimizer_args d_coef",
                "datasets[0].subsets[1].color_aug"):
        assert key in ignored, key
    changed = out[out.index("Changed"):out.index("Ignored")]
    assert "conv_dim" in changed and "conv_alpha" in changed
    assert "train/alice does not exist here" in out


def test_kohya_defaults_that_differ_from_ours_are_kept_and_said(tmp_path: Path) -> None:
    (tmp_path / "args.toml").write_text('train_data_dir = "img"\nreg_data_dir = "reg"\nnetwork_dim = 8\n'
                                        'network_train_unet_only = true\noptimizer_type = "Lion"\n'
                                        'lr_scheduler = "adafactor"\n')
    cfg, report = import_kohya(tmp_path / "args.toml")
    assert cfg.data.caption_extension == ".caption" and cfg.data.keep_tokens == 0
    assert cfg.lora.alpha == 1.0 and not cfg.lora.train_text_encoder
    assert cfg.train.optimizer == "adamw" and cfg.train.lr_scheduler == "constant"
    assert [(c.folder, c.is_reg) for c in cfg.data.concepts] == [("img", False), ("reg", True)]
    said = " ".join(f"{k} {w}" for k, w in report.changed)
    assert "Lion" in said and "adafactor" in said and ".caption" in said and "alpha is 1" in said


def test_kohya_ss_gui_json(tmp_path: Path, capsys) -> None:
    gui = {
        "LoRA_type": "Standard", "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
        "sdxl": True, "v2": False, "train_data_dir": "/data/img", "reg_data_dir": "", "output_name": "gui_lora",
        "max_resolution": "1024,1024", "learning_rate": 1.0, "unet_lr": 1.0, "text_encoder_lr": 1.0,
        "optimizer": "Prodigy", "optimizer_args": "weight_decay=0.01 decouple=True d0=0.0001",
        "lr_scheduler": "constant", "lr_warmup": 0, "train_batch_size": 8, "epoch": 160, "max_train_steps": "",
        "network_dim": 32, "network_alpha": 16, "conv_dim": 32, "conv_alpha": 32, "keep_tokens": "0",
        "clip_skip": "1", "mixed_precision": "bf16", "seed": "", "xformers": "xformers", "cache_latents": True,
        "caption_extension": ".txt", "masked_loss": True, "sample_prompts": "alice, smiling --n blurry --d 7",
        "sample_every_n_steps": 100, "use_wandb": False,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(gui))
    assert main(["import", str(tmp_path / "p"), "--kohya", str(tmp_path / "cfg.json")]) == 0
    out = capsys.readouterr().out
    cfg = load_config(tmp_path / "p")
    assert (cfg.model.family, cfg.data.resolution, cfg.data.images) == ("sdxl", 1024, "/data/img")
    assert (cfg.train.optimizer, cfg.train.epochs, cfg.train.batch_size) == ("prodigy", 160, 8)
    assert cfg.lora.preset == "attention+ff"  # Standard: the GUI's conv_dim is not passed on
    assert "attention+ff" in out[out.index("Changed"):out.index("Ignored")]
    assert cfg.data.alpha_mask and cfg.sample.every_n_steps == 100
    assert [(p.prompt, p.negative, p.seed) for p in cfg.sample.prompts] == [("alice, smiling", "blurry", 7)]
    assert "use_wandb" in out[out.index("Ignored"):]


def test_import_never_overwrites_a_project_without_force(tmp_path: Path, capsys) -> None:
    (tmp_path / "args.toml").write_text("network_dim = 4\n")
    project = tmp_path / "p"
    project.mkdir()
    (project / CONFIG_NAME).write_text('name = "mine"\n')
    assert main(["import", str(project), "--kohya", str(tmp_path / "args.toml")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (project / CONFIG_NAME).read_text() == 'name = "mine"\n'
    assert main(["import", str(project), "--kohya", str(tmp_path / "args.toml"), "--force"]) == 0
    assert (project / (CONFIG_NAME + ".bak")).read_text() == 'name = "mine"\n'
    assert load_config(project).lora.rank == 4
    assert main(["import", str(tmp_path / "q"), "--kohya", str(tmp_path / "missing.toml")]) == 2
    (tmp_path / "bad.toml").write_text("network_dim = = 4\n")
    assert main(["import", str(tmp_path / "q"), "--kohya", str(tmp_path / "bad.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_an_imported_kohya_project_trains_a_dora_with_prodigy_on_two_concepts_and_reg(tmp_path: Path) -> None:
    """The user's path end to end: import the files, then train the project they describe, and the
    file passes ComfyUI's LoRA key rules (every key consumed, a DoRA adapter on every module)."""
    from PIL import Image

    from loratui.commands import CommandChannel
    from loratui.engine.runner import run_training
    from loratui.events import Event, Finished, Started

    project = tmp_path / "alice"
    for folder, n in (("train/alice", 2), ("train/bob", 1), ("reg/person", 3)):
        (project / folder).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (128, 128), (60 * i, 120, len(folder) * 9)).save(project / folder / f"{i}.png")
    (tmp_path / "args.toml").write_text(
        '[model]\npretrained_model_name_or_path = "builtin:tiny-sd"\n[net]\nnetwork_dim = 4\n'
        'network_alpha = 4\nnetwork_train_unet_only = true\nnetwork_module = "lycoris.kohya"\n'
        'network_args = ["algo=lora", "dora_wd=True"]\n[opt]\noptimizer_type = "Prodigy"\n'
        'learning_rate = 1.0\n[train]\ntrain_batch_size = 2\nmax_train_steps = 2\nprior_loss_weight = 0.5\n')
    (tmp_path / "dataset.toml").write_text(DATASET_TOML.replace("resolution = 512", "resolution = 128")
                                           .replace("batch_size = 4", "batch_size = 2"))
    assert main(["import", str(project), "--kohya", str(tmp_path / "args.toml"),
                 "--dataset", str(tmp_path / "dataset.toml")]) == 0
    seen: list[Event] = []
    run_training(project, emit=seen.append, commands=CommandChannel())
    started = next(e for e in seen if isinstance(e, Started))
    # alice 2×10 + bob 1×5 = 25 training images; 3 reg images go round to 25 as well.
    assert [(c[0], c[3]) for c in started.concepts] == [("alice", 20), ("bob", 5), ("person", 25)]
    assert any(isinstance(e, Finished) and not e.stopped_early for e in seen)
    out = project / "output" / "alice.safetensors"  # named after the folder without output_name
    assert load_config(project).lora.type == "dora"
    from safetensors.torch import load_file

    from .test_lora_variants import _comfy_load

    tensors = load_file(str(out))
    modules = {k.split(".", 1)[0] for k in tensors}
    consumed = set()
    for module in modules:
        keys, adapter = _comfy_load(tensors, module)
        assert adapter is not None and "dora_scale" in adapter[1], module
        consumed |= keys
    assert consumed == set(tensors)
