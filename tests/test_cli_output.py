"""Output that scripts and logs can read: `check` and `inspect` piped or with --json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from loratui.data.scan import scan_images
from loratui.project import create_project

_spec = importlib.util.spec_from_file_location("make_bad_corpus", Path(__file__).with_name("make_bad_corpus.py"))
assert _spec and _spec.loader
make_bad_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_bad_corpus)


def _loratui(*args: str) -> subprocess.CompletedProcess[str]:
    # stdout is a pipe here, as with `| grep` or a redirect to a CI log.
    return subprocess.run([sys.executable, "-m", "loratui", *args], capture_output=True, text=True, timeout=120,
                          errors="replace")


def test_piped_check_names_every_problem_file_whole(tmp_path: Path) -> None:
    project = tmp_path / "p"
    create_project(project)
    make_bad_corpus.make_corpus(project / "images")
    report = scan_images(project / "images", resolution=512)
    result = _loratui("check", str(project))
    assert result.returncode == report.exit_code, result.stderr
    lines = result.stdout.splitlines()
    problem_files = [r for r in report.records if r.problems and "\n" not in r.rel and r.rel.isprintable()]
    assert len(problem_files) > 5
    for record in problem_files:
        prefix = f"images/{record.rel}: {record.status}: "
        hits = [line for line in lines if line.startswith(prefix) and not line.startswith(prefix + "note: ")]
        # Every problem of the file is on a line of its own that `grep NAME` finds.
        assert len(hits) == len(record.problems), (record.rel, hits)
    assert not any("│" in line or "┃" in line for line in lines), "a table was printed to a pipe"
    assert lines[-1].startswith("verdict: ")


def test_check_json_has_one_object_per_file_and_the_summary(tmp_path: Path) -> None:
    project = tmp_path / "p"
    create_project(project)
    make_bad_corpus.make_corpus(project / "images")
    report = scan_images(project / "images", resolution=512)
    result = _loratui("check", str(project), "--json")
    data = json.loads(result.stdout)
    assert len(data["files"]) == len(report.records)
    assert data["summary"]["skipped"] == len(report.skipped) and data["summary"]["exit_code"] == result.returncode
    by_path = {f["path"]: f for f in data["files"]}
    for record in report.records:
        entry = by_path[f"images/{record.rel}"] if "\n" not in record.rel else None
        if entry is not None:
            assert entry["status"] == record.status and entry["problems"] == record.problems


def _tiny_kohya_file(path: Path) -> None:
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 320), f"{name}.lora_up.weight": torch.zeros(320, 4),
               f"{name}.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_output_name": "tiny"})


def test_inspect_piped_and_json(tmp_path: Path) -> None:
    lora = tmp_path / "a_rather_long_file_name_that_a_table_would_break.safetensors"
    _tiny_kohya_file(lora)
    piped = _loratui("inspect", str(lora))
    assert piped.returncode == 0, piped.stderr
    assert f"file: {lora}" in piped.stdout.splitlines()
    assert "rank: 4" in piped.stdout.splitlines()
    data = json.loads(_loratui("inspect", str(lora), "--json").stdout)
    assert data["modules"] == 1 and data["ranks"] == {"4": 1}
