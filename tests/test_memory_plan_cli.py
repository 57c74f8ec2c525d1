"""`loratui plan`, `loratui check` and Review's lines: the planner for a project, as the user reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratui.cli import main
from loratui.config import load_config, save_config
from loratui.memory.project_plan import review_lines
from loratui.project import create_project


def make(tmp_path: Path, base: str, **fields: object) -> Path:
    project = tmp_path / "p"
    create_project(project)
    cfg = load_config(project)
    cfg.model.base = base
    cfg.data.resolution = 1024
    cfg.train.precision = "bf16"
    cfg.train.gradient_checkpointing = True
    for path, value in fields.items():
        section, name = path.split("__")
        setattr(getattr(cfg, section), name, value)
    save_config(project, cfg)
    return project


def test_plan_json_for_qwen_image_on_a_24_gb_card(tmp_path, capsys):
    project = make(tmp_path, "Qwen/Qwen-Image")
    assert main(["plan", str(project), "--gpu-memory", "24", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == "qwen_image" and data["card_gib"] == 24
    assert data["current"]["fits"] is False  # 20 B parameters in bf16 are 38 GiB
    best = [row for row in data["options"] if row["best"]]
    assert len(best) == 1 and best[0]["fits"] and best[0]["peak_gib"] <= 24
    assert data["best"] == best[0]["settings"]
    # the table is ordered by step time, each row with the memory it needs
    times = [row["relative_time"] for row in data["options"]]
    assert times == sorted(times) and all(row["peak_gib"] > 0 for row in data["options"])


def test_plan_says_what_to_change_for_a_swap_count_beyond_the_blocks(tmp_path, capsys):
    project = make(tmp_path, "black-forest-labs/FLUX.1-dev", train__blocks_to_swap=90)
    assert main(["plan", str(project), "--gpu-memory", "24"]) == 2
    out = capsys.readouterr().out
    assert "train.blocks_to_swap = 90, but black-forest-labs/FLUX.1-dev has 57 blocks: set it to at most 56" in out


def test_plan_nf4_without_a_gpu_here_names_the_alternative(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    project = make(tmp_path, "black-forest-labs/FLUX.1-dev", model__base_precision="nf4")
    assert main(["plan", str(project), "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert any("runs only on an NVIDIA GPU" in p and "int4" in p for p in data["problems"])


def test_review_without_a_gpu_plans_for_24_48_and_80_gb(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("with a GPU Review plans for that card")
    project = make(tmp_path, "Qwen/Qwen-Image")
    lines = review_lines(project, load_config(project))
    text = "\n".join(lines)
    assert "Qwen/Qwen-Image at 1024 px" in lines[0]
    for card in (24, 48, 80):
        assert f"  {card} GB: " in text
    assert "24 GB: does not fit as set; fastest that fits:" in text
    assert "80 GB: as set" in text


def test_check_prints_the_memory_plan(tmp_path, capsys):
    project = make(tmp_path, "black-forest-labs/FLUX.1-dev")
    main(["check", str(project), "--json"])
    memory = json.loads(capsys.readouterr().out)["summary"]["memory"]
    assert memory["model"] == "black-forest-labs/FLUX.1-dev" and memory["current"]["peak_gib"] > 20


def test_swapped_blocks_larger_than_host_memory_are_refused_before_the_run(tmp_path):
    from loratui.memory import planner as P
    from loratui.memory.project_plan import host_memory_problems, project_model

    cfg = load_config(make(tmp_path, "black-forest-labs/FLUX.1-dev", train__blocks_to_swap=40))
    model = project_model(tmp_path / "p", cfg)
    plan = P.plan(model, P.Options("bf16", True, 1, blocks_to_swap=40), None)
    assert plan.current.memory.host > 8 * P.GIB
    [problem] = host_memory_problems(plan, 8 * P.GIB)
    assert "train.blocks_to_swap = 40 keeps" in problem and "swap fewer blocks" in problem
    assert host_memory_problems(plan, 256 * P.GIB) == []


def test_a_precision_whose_package_is_missing_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    project = make(tmp_path, "black-forest-labs/FLUX.1-dev", model__base_precision="nf4")
    main(["plan", str(project), "--gpu-memory", "24", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert any("needs bitsandbytes" in line and ".[quant]" in line for line in data["problems"] + data["notes"])
