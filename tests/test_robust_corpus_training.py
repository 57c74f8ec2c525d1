"""Training on the bad-input corpus uses or skips each file exactly as `loratui check` reported it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from loratui.commands import CommandChannel
from loratui.config import apply_override, load_config, save_config
from loratui.data.scan import scan_images
from loratui.engine.trainer import Trainer
from loratui.events import Event, Status
from loratui.project import create_project
from tests.make_bad_corpus import make_corpus

torch.set_num_threads(1)


def _tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            try:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                out[str(p.relative_to(root))] = "unreadable"
    return out


def test_training_uses_exactly_what_the_scan_reported_and_never_stops(tmp_path: Path, record_property) -> None:
    project = tmp_path / "p"
    cfg = create_project(project)
    make_corpus(project / "images")
    for a in ("data.resolution=128", "sample.every_n_steps=0", "save.every_n_steps=0", "train.batch_size=2"):
        apply_override(cfg, a)
    save_config(project, cfg)
    before = _tree_digest(project / "images")
    report = scan_images(project / "images", resolution=128)
    seen: list[Event] = []
    trainer = Trainer(project, load_config(project), emit=seen.append, commands=CommandChannel(), max_steps=2)
    trainer.setup()
    try:
        trained = sorted(item.rel for item in trainer.session.dataset.items)
        trainer.run_steps(2)
    finally:
        trainer.cleanup()
    assert trained == sorted(r.rel for r in report.usable)
    skipped_lines = [e.text for e in seen if isinstance(e, Status) and e.text.startswith("skipping ")]
    assert len(skipped_lines) == len(report.skipped)
    for rec in report.skipped:
        assert any(rec.rel in line for line in skipped_lines), rec.rel
    assert _tree_digest(project / "images") == before
    record_property("summary", f"bad-input corpus: {len(report.records)} files scanned, {len(report.usable)} trained "
                               f"on, {len(report.skipped)} skipped exactly as reported; images/ unchanged")
