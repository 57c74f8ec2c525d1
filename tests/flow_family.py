"""What the flow-family test files share: a trainable copy of sample_project, a short run, and the checks
each family makes the same way (the evaluation loss falls, resume is bit-exact, ``loratui train`` and
``loratui sample`` work, diffusers and ComfyUI take every module of the file, merged models hold the LoRA).

The checks are plain functions taking the built-in's name (``builtin:tiny-…``) and the family's own
settings; each family's test file calls them from tests of its own name.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.runner import run_training
from loratui.events import Event, Finished, Started
from loratui.project import ProjectPaths

SAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "sample_project"
OUTPUT = "zxc_toy.safetensors"


def make_project(root: Path, base: str, *settings: str) -> Path:
    project = root / "p"
    shutil.copytree(SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py"))
    cfg = load_config(project)
    for item in (f"model.base={base}", "save.every_n_steps=0", "sample.every_n_steps=0", "save.precision=fp32",
                 *settings):
        apply_override(cfg, item)
    save_config(project, cfg)
    return project


def train(project: Path, steps: int, **kwargs) -> list[Event]:
    seen: list[Event] = []
    run_training(project, emit=seen.append, commands=CommandChannel(), max_steps=steps, **kwargs)
    assert isinstance(seen[-1], Finished), seen[-1]
    return seen


def output_with_lora(path: Path, family: str, transformer, output: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``output()`` with the LoRA file injected into ``transformer`` by our own loader, then removed."""
    from loratui.lora import inject_from_file, load_lora_file

    networks = inject_from_file(load_lora_file(path, family=family), {"unet": transformer})
    try:
        return output()
    finally:
        for net in networks.values():
            net.remove()


# -- training ------------------------------------------------------------------------------------


def check_training_lowers_the_evaluation_loss(sample_project: Path, name: str, *settings: str) -> None:
    """40 optimizer steps on sample_project lower the fixed-noise, fixed-sigma evaluation loss by 5%."""
    from loratui.engine.evaluate import fixed_eval_loss
    from loratui.engine.trainer import Trainer

    cfg = load_config(sample_project)
    for a in ("save.every_n_steps=0", "sample.every_n_steps=0", f"model.base=builtin:{name}", *settings):
        apply_override(cfg, a)
    steps = 40
    trainer = Trainer(sample_project, cfg, emit=lambda e: None, commands=CommandChannel(), max_steps=steps)
    trainer.setup()
    try:
        before = fixed_eval_loss(trainer.session)
        for _ in range(steps):
            trainer._optimizer_step()
        after = fixed_eval_loss(trainer.session)
    finally:
        trainer.cleanup()
    print(f"{name}: fixed-noise, fixed-sigma evaluation loss {before:.4f} -> {after:.4f} after {steps} steps "
          f"({(before - after) / before:.1%} lower)")
    assert after < before * 0.95


def check_resume_is_bit_exact(tmp_path: Path, base: str) -> None:
    """4 steps straight and 2 + 2 resumed from the step-2 checkpoint give the same weights bit for bit."""
    from safetensors.torch import load_file

    straight = make_project(tmp_path / "a", base, "train.batch_size=3")
    resumed = make_project(tmp_path / "b", base, "train.batch_size=3", "save.every_n_steps=2")
    train(straight, 4)
    train(resumed, 2)
    shutil.rmtree(ProjectPaths(resumed).output)
    events = train(resumed, 4, resume=True)
    assert next(e for e in events if isinstance(e, Started)).start_step == 2
    a = load_file(str(ProjectPaths(straight).checkpoints / "step-000004" / "lora.safetensors"))
    b = load_file(str(ProjectPaths(resumed).checkpoints / "step-000004" / "lora.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- the command line ----------------------------------------------------------------------------


def check_loratui_train_in_a_subprocess(tmp_path: Path, base: str, family: str) -> None:
    """``python -m loratui train --headless`` on a copy of sample_project: the file, two samples at step 2,
    and the family named in what it prints."""
    import subprocess
    import sys

    project = make_project(tmp_path, base, "sample.every_n_steps=2", "sample.steps=2", "train.max_steps=2")
    done = subprocess.run([sys.executable, "-m", "loratui", "train", str(project), "--headless"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (ProjectPaths(project).output / OUTPUT).is_file()
    assert len(sorted((project / "samples" / "step-000002").glob("*.png"))) == 2
    assert family in done.stdout


def check_samples_at_scale_0_are_the_base(project: Path, tmp_path: Path, steps: str) -> None:
    """``loratui sample`` at LoRA scale 0 gives the base model's picture (``--no-lora``), at scale 1 another."""
    import numpy as np
    from PIL import Image

    from loratui.cli import main

    images = {}
    for scale in ("0", "1"):
        out = tmp_path / f"s{scale}.png"
        assert main(["sample", str(project), "--prompt", "zxc toy", "--scale", scale, "--steps", steps,
                     "--out", str(out)]) == 0
        images[scale] = np.asarray(Image.open(out)).astype(int)
    base = tmp_path / "base.png"
    assert main(["sample", str(project), "--prompt", "zxc toy", "--no-lora", "--steps", steps,
                 "--out", str(base)]) == 0
    assert (np.asarray(Image.open(base)).astype(int) == images["0"]).all()
    assert (images["0"] != images["1"]).any()


def check_sample_after_training(tmp_path: Path, base: str, *settings: str) -> None:
    """3 steps at preset all and learning rate 0.01, then three-step samples at scale 0, 1 and without the LoRA."""
    project = make_project(tmp_path, base, "lora.preset=all", "train.learning_rate=0.01", *settings)
    train(project, 3)
    check_samples_at_scale_0_are_the_base(project, tmp_path, "3")


def check_cli_train_then_sample(tmp_path: Path, base: str) -> None:
    """``loratui train --headless`` in process: a sample at the end, then the file; then two-step samples at
    scale 0, 1 and without the LoRA."""
    from loratui.cli import main

    project = make_project(tmp_path, base, "train.max_steps=2", "sample.every_n_steps=2", "sample.steps=2",
                           "train.learning_rate=0.01")
    assert main(["train", str(project), "--headless"]) == 0
    paths = ProjectPaths(project)
    assert (paths.output / OUTPUT).is_file()
    assert list(paths.samples.rglob("*.png"))
    check_samples_at_scale_0_are_the_base(project, tmp_path, "2")


def check_inspect_and_convert(tmp_path: Path, capsys, base: str, starts: dict[str, str]) -> None:
    """``loratui inspect`` prints lines starting as ``starts`` says (``{"model family": "Chroma"}``), and
    ``convert`` to diffusers' layout and back gives the file's own tensors."""
    from safetensors.torch import load_file

    from loratui.cli import main

    project = make_project(tmp_path, base, "lora.preset=all")
    train(project, 1)
    path = ProjectPaths(project).output / OUTPUT
    assert main(["inspect", str(path)]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    for key, start in starts.items():
        assert lines[key].startswith(start)
    as_diffusers, back = tmp_path / "d.safetensors", tmp_path / "k.safetensors"
    assert main(["convert", str(path), str(as_diffusers), "--to", "diffusers"]) == 0
    assert main(["convert", str(as_diffusers), str(back), "--to", "kohya"]) == 0
    original, again = load_file(str(path)), load_file(str(back))
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)


# -- files: diffusers and ComfyUI ----------------------------------------------------------------


def check_diffusers_loads_every_key(tmp_path: Path, base: str, family: str, pipeline: Callable[[], object],
                                    transformer_output: Callable[[object], torch.Tensor]) -> None:
    """A diffusers-layout file (preset all, alpha 4 != rank: the scale must survive) loads in the family's
    diffusers pipeline with every key read and every module wrapped, and gives our LoRA-applied output."""
    project = make_project(tmp_path, base, "lora.preset=all", "lora.alpha=4")
    train(project, 3)
    path = ProjectPaths(project).output / OUTPUT
    pipe = pipeline()
    base_output = transformer_output(pipe)
    ours = output_with_lora(path, family, pipe.transformer, lambda: transformer_output(pipe))
    state = type(pipe).lora_state_dict(str(path))
    state = state[0] if isinstance(state, tuple) else state
    pipe.load_lora_weights(str(path), adapter_name="x")
    theirs = transformer_output(pipe)
    wrapped = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and "x" in m.lora_A]
    with safe_open(str(path), "pt") as f:
        file_modules = {k.rsplit(".lora_", 1)[0] for k in f.keys()}
    assert len(state) == 2 * len(file_modules)  # every key read, none dropped
    assert sorted("transformer." + n for n in wrapped) == sorted(file_modules)
    assert not torch.allclose(ours, base_output, atol=1e-5)
    assert torch.allclose(theirs, ours, atol=1e-5), float((theirs - ours).abs().max())


def kohya_modules(keys) -> set[str]:
    """The module names of an sd-scripts-layout file's keys (``….lora_up.weight``, ``….alpha``)."""
    return {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}


def comfy_modules_of_both_layouts(tmp_path: Path, base: str, family: str, pipeline: Callable[[], object],
                                  comfy_weights: Callable[[object], dict[str, int]]) -> tuple[object, set[str]]:
    """Trains a step at preset all and checks the sd-scripts file against ComfyUI's model (``comfy_weights``:
    weight name -> rows): every module is ``lora_unet_`` + a weight's name with its rows, and every weight
    has one. Returns the transformer's config and the modules of the file converted to diffusers' layout."""
    from loratui.lora.fileformat import convert_lora_file

    project = make_project(tmp_path, base, "lora.preset=all")
    train(project, 1)
    config = pipeline().transformer.config
    weights = comfy_weights(config)
    key_map = {"lora_unet_" + name.replace(".", "_"): name for name in weights}
    kohya = ProjectPaths(project).output / OUTPUT
    with safe_open(str(kohya), "pt") as f:
        modules = kohya_modules(f.keys())
        for module in modules:
            assert module in key_map, module
            assert f.get_tensor(f"{module}.lora_up.weight").shape[0] == weights[key_map[module]], module
    assert len(modules) == len(weights)
    peft = tmp_path / "d.safetensors"
    convert_lora_file(kohya, peft, "diffusers", family=family)
    with safe_open(str(peft), "pt") as f:
        return config, {k.rsplit(".lora_", 1)[0] for k in f.keys()}


# -- merged models -------------------------------------------------------------------------------


def check_single_file_is_the_folder(single: Path, folder: Path, merged) -> None:
    """The merged single file, loaded with the merged folder as its config source, has the folder's weights."""
    from loratui.models.loader import load_model

    from_file = load_model(str(single), config_source=str(folder))
    a, b = from_file.unet.state_dict(), merged.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def check_merged_folder_and_file(tmp_path: Path, base: str, family: str, loaded: Callable[[], object],
                                 prediction: Callable[[object, object], torch.Tensor]) -> None:
    """2 steps at preset all and learning rate 0.01, merged at scale 1: the folder is the family's and its
    transformer gives our LoRA-applied output; the single file holds the folder's weights."""
    from loratui.engine.merge_export import export_merged
    from loratui.models.loader import load_model

    project = make_project(tmp_path, base, "lora.preset=all", "train.learning_rate=0.01")
    train(project, 2)
    lora = ProjectPaths(project).output / OUTPUT
    folder, single = export_merged(project, scale=1.0)
    model = loaded()
    ours = output_with_lora(lora, family, model.unet, lambda: prediction(model.unet, model))
    merged = load_model(str(folder))
    assert merged.family == family
    assert torch.allclose(prediction(merged.unet, model), ours, atol=1e-4)
    check_single_file_is_the_folder(single, folder, merged)
