"""Each memory option trains the tiny FLUX end to end, and bad settings stop before training with what to change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.config import ConfigError, ProjectConfig, load_config
from loratui.engine.build import build_session
from loratui.events import Failed
from loratui.memory import hold
from loratui.project import ProjectPaths
from tests.test_flow_families import make_project, train

STEPS = 3
# Loss over the same steps, relative to a bf16-stored base (README: "Memory options").
LOSS_TOLERANCE = {"fp8": 5e-3, "fp8-scaled": 2e-3, "int8": 1e-3, "int4": 5e-3}
SETTINGS = ("lora.preset=all", "train.learning_rate=0.01")


def losses_and_file(tmp_path: Path, *settings: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    project = make_project(tmp_path, "builtin:tiny-flux", *SETTINGS, *settings)
    events = train(project, STEPS)
    losses = [e.loss for e in events if type(e).__name__ == "StepDone"]
    with safe_open(str(ProjectPaths(project).output / "zxc_toy.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return losses, tensors


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> tuple[list[float], dict[str, torch.Tensor]]:
    return losses_and_file(tmp_path_factory.mktemp("bf16"), "model.base_precision=bf16")


@pytest.mark.parametrize("precision", sorted(LOSS_TOLERANCE))
def test_each_stored_base_trains_close_to_bf16_and_writes_the_same_file(tmp_path: Path, bf16_run,
                                                                      precision: str) -> None:
    reference, ref_file = bf16_run
    losses, tensors = losses_and_file(tmp_path, f"model.base_precision={precision}")
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    for ours, theirs in zip(losses, reference):
        assert abs(ours - theirs) <= LOSS_TOLERANCE[precision] * abs(theirs), (precision, losses, reference)
    # The file does not depend on how the base was stored: same keys, shapes and dtypes, and trained.
    assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == {k: (v.shape, v.dtype) for k, v in ref_file.items()}
    assert any(v.abs().sum() > 0 for k, v in tensors.items() if k.endswith("lora_up.weight"))


@pytest.mark.parametrize("settings", [
    ("train.blocks_to_swap=4",),
    ("train.blocks_to_swap=2", "train.gradient_checkpointing=true", "train.activation_offload=true"),
])
def test_block_swap_and_activation_offload_train_bit_for_bit_like_without(tmp_path: Path, settings) -> None:
    checkpointed = ("train.gradient_checkpointing=true",) if "train.gradient_checkpointing=true" in settings else ()
    reference, ref_file = losses_and_file(tmp_path / "plain", *checkpointed)
    losses, tensors = losses_and_file(tmp_path / "swap", *settings)
    assert losses == reference
    assert set(tensors) == set(ref_file) and all(torch.equal(tensors[k], ref_file[k]) for k in tensors)


def test_activation_offload_trains_a_unet_family_too(tmp_path: Path) -> None:
    settings = ("lora.preset=attention", "train.learning_rate=0.01", "train.gradient_checkpointing=true")
    ref = train(make_project(tmp_path / "plain", "builtin:tiny-sd", *settings), STEPS)
    off = train(make_project(tmp_path / "offload", "builtin:tiny-sd", *settings, "train.activation_offload=true"),
                STEPS)
    ref_losses, losses = ([e.loss for e in run if type(e).__name__ == "StepDone"] for run in (ref, off))
    assert len(losses) == STEPS and all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(losses, ref_losses))
    assert any("activation offload" in getattr(e, "text", "") for e in off)


def test_stored_and_swapped_blocks_are_where_they_should_be(tmp_path: Path) -> None:
    from loratui.memory.stored import StoredLinear

    project = make_project(tmp_path, "builtin:tiny-flux", *SETTINGS, "model.base_precision=int4",
                           "train.blocks_to_swap=3")
    messages: list[str] = []
    session = build_session(ProjectPaths(project), load_config(project),
                            status=lambda text, *a, **k: messages.append(text))
    try:
        stored = [m for m in session.unet.modules() if isinstance(m, StoredLinear)]
        assert stored and {m.precision for m in stored} == {"int4"}
        assert any("stored as int4" in m for m in messages)
        assert any("the last 3 of 4 blocks wait in host memory" in m for m in messages)
    finally:
        session.close()


# -- bad input ------------------------------------------------------------------------------------


def cfg_with(*settings: str) -> ProjectConfig:
    from loratui.config import apply_override

    cfg = ProjectConfig()
    for item in settings:
        apply_override(cfg, item)
    return cfg


@pytest.mark.parametrize("settings, family, blocks, cuda, says", [
    (("model.base_precision=int8",), "sd1", 0, True, ['model.base_precision = "int8"', "UNet", 'to "auto"']),
    (("model.base_weights=float8",), "sdxl", 0, True, ['model.base_weights = "float8"', 'to "auto"']),
    (("train.blocks_to_swap=2",), "sdxl", 0, True, ["train.blocks_to_swap = 2", "train.blocks_to_swap = 0"]),
    (("train.blocks_to_swap=58",), "flux", 57, True, ["has 57 blocks", "at most 57"]),
    (("model.base_precision=nf4",), "flux", 57, False, ["NVIDIA GPU", '"int4"']),
    (("train.activation_offload=true", "train.gradient_checkpointing=false"), "flux", 57, True,
     ["train.gradient_checkpointing = true"]),
    (("model.base_weights=float8", "model.base_precision=int8"), "flux", 57, True, ["remove model.base_weights"]),
    (("train.blocks_to_swap=4", "train.compile=true"), "flux", 57, True, ["train.compile"]),
])
def test_unsupported_settings_say_what_to_change(settings, family, blocks, cuda, says) -> None:
    with pytest.raises(ConfigError) as err:
        hold.check_memory_options(cfg_with(*settings), family=family, block_count=blocks, cuda=cuda)
    for text in says:
        assert text in str(err.value)


def test_nf4_without_bitsandbytes_names_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(hold, "_library_present", lambda name: False)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[quant\]'"):
        hold.check_memory_options(cfg_with("model.base_precision=nf4"), family="flux", block_count=57, cuda=True)


def test_supported_settings_pass_the_check() -> None:
    hold.check_memory_options(cfg_with("model.base_precision=int8", "train.blocks_to_swap=57",
                                       "train.gradient_checkpointing=true", "train.activation_offload=true"),
                              family="flux", block_count=57, cuda=False)


def test_too_little_host_memory_for_the_swapped_blocks_stops_before_training(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hold, "host_memory_available", lambda: 1024)
    project = make_project(tmp_path, "builtin:tiny-flux", "train.blocks_to_swap=2")
    from loratui.commands import CommandChannel
    from loratui.engine.runner import run_training

    seen = []
    with pytest.raises(ConfigError):
        run_training(project, emit=seen.append, commands=CommandChannel(), max_steps=1)
    failed = [e for e in seen if isinstance(e, Failed)]
    assert failed and failed[0].step in (None, 0)
    assert "train.blocks_to_swap = 2 keeps" in failed[0].message and "Lower train.blocks_to_swap" in failed[0].message
    assert not [e for e in seen if type(e).__name__ == "StepDone"]
    assert not any("encoding images" in getattr(e, "text", "") for e in seen)  # stopped before the slow part


def test_a_unet_project_with_a_transformer_option_fails_with_the_message(tmp_path: Path) -> None:
    project = make_project(tmp_path, "builtin:tiny-sd", "model.base_precision=int8")
    with pytest.raises(ConfigError, match="UNet"):
        build_session(ProjectPaths(project), load_config(project), status=lambda *a, **k: None)


def test_a_run_resumes_with_the_base_held_differently(tmp_path: Path) -> None:
    from loratui.config import apply_override, save_config
    from loratui.events import Started

    project = make_project(tmp_path, "builtin:tiny-flux", *SETTINGS, "save.every_n_steps=2")
    train(project, 2)
    cfg = load_config(project)
    for item in ("model.base_precision=int8", "train.blocks_to_swap=2", "train.gradient_checkpointing=true",
                 "train.activation_offload=true"):
        apply_override(cfg, item)
    save_config(project, cfg)
    events = train(project, 4, resume=True)
    assert next(e for e in events if isinstance(e, Started)).start_step == 2
    losses = [e.loss for e in events if type(e).__name__ == "StepDone"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
