"""The events pane: paths short and whole, wrapped between folders rather than inside names."""

from __future__ import annotations

from pathlib import Path

from loratui.events import Status
from loratui.tui.widgets.log_view import wrap_at_separators
from loratui.tui.widgets.run_state import RunState, paths_relative_to


def test_paths_wrap_between_folders_not_inside_names() -> None:
    rows = wrap_at_separators("saved /data/projects/cat/output/cat_lora_v2.safetensors (fp16, 12.6 MB)", 40)
    assert all(len(r) <= 40 for r in rows)
    assert any(r.strip() == "cat_lora_v2.safetensors (fp16, 12.6 MB)" or
               r.strip().startswith("cat_lora_v2.safetensors") for r in rows), rows
    assert not any(r.rstrip().endswith(".sa") for r in rows)
    # Only a name wider than a row is cut.
    assert wrap_at_separators("short line", 40) == ["short line"]
    long = wrap_at_separators("x" * 50, 20)
    assert all(len(r) <= 20 for r in long) and "".join(r.strip() for r in long) == "x" * 50


def test_status_lines_show_paths_from_the_project(tmp_path: Path) -> None:
    project = tmp_path / "my_lora"
    project.mkdir()
    assert paths_relative_to(f"saved {project}/output/my_lora.safetensors", project) == \
        "saved output/my_lora.safetensors"
    state = RunState(root=project)
    state.apply(Status(text=f"saved {project}/output/my_lora.safetensors"))
    assert state.log[-1] == "saved output/my_lora.safetensors"
