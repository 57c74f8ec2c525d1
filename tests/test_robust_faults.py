"""Faults inside a run — NaN, out of memory, a full disk, hostile paths — injected from test code only."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import loratui.engine.checkpoint as ckpt_module
import loratui.engine.session as session_module
from loratui.cli import main
from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.engine.checkpoint import latest_checkpoint, load_checkpoint
from loratui.engine.runner import run_training
from loratui.engine.trainer import MAX_BAD_STEPS, CheckpointWriteError, NonFiniteLoss
from loratui.events import Event, Failed, Finished, Status, StepDone
from loratui.project import ProjectPaths

torch.set_num_threads(1)


def _set(project: Path, *assignments: str) -> None:
    cfg = load_config(project)
    for a in ["sample.every_n_steps=0", *assignments]:
        apply_override(cfg, a)
    save_config(project, cfg)


def _run(project: Path, max_steps: int) -> list[Event]:
    seen: list[Event] = []
    run_training(project, emit=seen.append, commands=CommandChannel(), max_steps=max_steps)
    return seen


def _loss_from_step(monkeypatch: pytest.MonkeyPatch, first_bad: int, *, last_bad: int | None = None,
                    fault: str = "nan") -> None:
    """Make the loss of optimizer steps first_bad..last_bad NaN (or raise out-of-memory)."""
    real = session_module.diffusion_loss
    calls = {"n": 0}

    def faulty(*args, **kwargs):
        calls["n"] += 1  # one call per micro-batch; grad_accum is 1 here
        step = calls["n"]
        if step >= first_bad and (last_bad is None or step <= last_bad):
            if fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return real(*args, **kwargs) * float("nan")
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "diffusion_loss", faulty)


def test_one_nan_step_is_skipped_counted_and_training_goes_on(sample_project: Path, monkeypatch,
                                                            record_property) -> None:
    _set(sample_project, "save.every_n_steps=0")
    _loss_from_step(monkeypatch, 3, last_bad=3)
    events = _run(sample_project, 6)
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [e.skipped_steps for e in steps] == [0, 0, 1, 1, 1, 1]
    assert any(isinstance(e, Status) and "not finite" in e.text for e in events)
    assert isinstance(events[-1], Finished) and events[-1].step == 6
    record_property("summary", "NaN: one bad step skipped and counted; the run finished")


def test_many_nan_steps_stop_with_a_checkpoint_from_before_them(sample_project: Path, monkeypatch,
                                                               record_property) -> None:
    _set(sample_project, "save.every_n_steps=0")
    # The weights after step 2 are what the final checkpoint must hold.
    reference = _run(sample_project, 2)
    assert isinstance(reference[-1], Finished)
    good = load_file(str(ProjectPaths(sample_project).checkpoints / "step-000002" / "lora.safetensors"))
    _loss_from_step(monkeypatch, 1)  # counted from the resumed run's first step, step 3
    seen: list[Event] = []
    with pytest.raises(NonFiniteLoss, match="learning rate") as info:
        run_training(sample_project, emit=seen.append, commands=CommandChannel(), resume=True, max_steps=40)
    assert f"{MAX_BAD_STEPS} steps in a row" in str(info.value)
    assert any(isinstance(e, Failed) for e in seen)
    latest = latest_checkpoint(ProjectPaths(sample_project).checkpoints)
    assert latest is not None and latest.name == f"step-{2 + MAX_BAD_STEPS:06d}"
    after = load_checkpoint(latest).lora
    assert all(torch.equal(after[k], good[k]) for k in good)
    record_property("summary", f"NaN: {MAX_BAD_STEPS} bad steps in a row stopped the run; "
                               "its checkpoint holds the weights from before them")


def test_out_of_memory_is_reported_with_what_to_change_and_the_last_good_step_kept(
        sample_project: Path, monkeypatch, capsys, record_property) -> None:
    _set(sample_project, "save.every_n_steps=0")
    _loss_from_step(monkeypatch, 4, fault="oom")
    code = main(["train", str(sample_project), "--headless", "--max-steps", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for hint in ("out of memory at step 4", "train.batch_size", "gradient_checkpointing", "adamw8bit",
                 "step-000003"):
        assert hint in err, hint
    assert latest_checkpoint(ProjectPaths(sample_project).checkpoints).name == "step-000003"
    record_property("summary", "OOM: reported with five remedies and the memory figures; step 3 kept")


def _full_disk_on(monkeypatch: pytest.MonkeyPatch, nth_save: int) -> None:
    real = ckpt_module.torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if "optimizer" in str(f):
            calls["n"] += 1
            if calls["n"] == nth_save:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", save)


def test_disk_full_keeps_the_previous_checkpoint_and_stops_cleanly(sample_project: Path, monkeypatch,
                                                                  record_property) -> None:
    _set(sample_project, "save.every_n_steps=2")
    _full_disk_on(monkeypatch, 2)
    with pytest.raises(CheckpointWriteError, match="No space left on device") as info:
        _run(sample_project, 8)
    assert "step-000002 is intact" in str(info.value)
    root = ProjectPaths(sample_project).checkpoints
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]  # no half-written folder left
    assert load_checkpoint(root / "step-000002").state.step == 2
    record_property("summary", "ENOSPC (stop): previous checkpoint intact, no partial folder, clear message")


def test_disk_full_can_continue_without_that_checkpoint(sample_project: Path, monkeypatch,
                                                        record_property) -> None:
    _set(sample_project, "save.every_n_steps=2", "save.on_error=continue", "save.keep=5")
    _full_disk_on(monkeypatch, 2)
    events = _run(sample_project, 6)
    assert isinstance(events[-1], Finished) and events[-1].step == 6
    assert any(isinstance(e, Status) and e.level == "error" and "goes on" in e.text for e in events)
    names = sorted(p.name for p in ProjectPaths(sample_project).checkpoints.iterdir())
    assert names == ["step-000002", "step-000006"]
    record_property("summary", "ENOSPC (continue): the run finished without the failed checkpoint")


def test_output_name_cannot_escape_the_project_and_files_are_not_world_writable(
        sample_project: Path, record_property) -> None:
    import os

    _set(sample_project, "save.every_n_steps=0", "save.output_name=../../../evil")
    old = os.umask(0)
    try:
        assert main(["train", str(sample_project), "--headless", "--max-steps", "1"]) == 0
    finally:
        os.umask(old)
    outputs = list((sample_project / "output").iterdir())
    assert [p.name for p in outputs] == ["evil.safetensors"]
    assert not list(sample_project.parent.parent.glob("evil*"))
    written = [p for p in sample_project.rglob("*") if p.is_file() and "images" not in p.parts]
    assert written
    loose = [p for p in written if p.stat().st_mode & stat.S_IWOTH]
    assert not loose, loose
    record_property("summary", f"paths: '../../../evil' stayed in output/; {len(written)} files, none world-writable")


def test_a_corrupt_or_hostile_lora_file_is_refused_before_allocation(tmp_path: Path, capsys,
                                                                    record_property) -> None:
    huge = tmp_path / "huge.safetensors"
    # A header that claims 2**60 bytes: refused from its length field, nothing allocated.
    huge.write_bytes((2**60).to_bytes(8, "little") + b"{}")
    lying = tmp_path / "lying.safetensors"
    header = b'{"a.lora_down.weight":{"dtype":"F32","shape":[100000,100000],"data_offsets":[0,40000000000]}}'
    lying.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    for path in (huge, lying):
        code = main(["inspect", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and str(path) in err and "Traceback" not in err
    record_property("summary", "safetensors: a 2^60-byte header and a 40 GB tensor claim refused with a message")
