"""Config files and command-line errors, as a user meets them: one paragraph, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratui.cli import main
from loratui.config import CONFIG_NAME, ConfigError, ProjectConfig, field_specs, load_config, save_config
from loratui.project import create_project

REPO = Path(__file__).resolve().parent.parent


def _write(project: Path, text: str) -> None:
    project.mkdir(parents=True, exist_ok=True)
    (project / "images").mkdir(exist_ok=True)
    (project / CONFIG_NAME).write_text(text, encoding="utf-8")


def _train_error(project: Path, capsys, *extra: str) -> str:
    code = main(["train", str(project), "--headless", *extra])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    return captured.err


def test_malformed_toml_names_line_and_column(tmp_path: Path, capsys) -> None:
    _write(tmp_path, 'name = "x"\n[train]\nbatch_size = = 2\n')
    err = _train_error(tmp_path, capsys)
    assert "line 3" in err and "column" in err and CONFIG_NAME in err


def test_unknown_keys_suggest_the_nearest_name_and_all_problems_are_listed(tmp_path: Path, capsys) -> None:
    _write(tmp_path, '[train]\nlearnig_rate = 1e-4\nbatch_size = "two"\n[lora]\nrank = 0\n[sampel]\n')
    err = _train_error(tmp_path, capsys)
    assert "train.learnig_rate is not a known setting (did you mean 'learning_rate'?)" in err
    assert "train.batch_size must be a whole number, not 'two'" in err
    assert "lora.rank must be at least 1, not 0" in err
    assert "did you mean 'sample'?" in err


def test_newer_config_version_is_refused_by_name(tmp_path: Path, capsys) -> None:
    _write(tmp_path, "version = 99\n")
    assert "newer loratui (config version 99" in _train_error(tmp_path, capsys)


def test_missing_images_folder_and_missing_model_are_clear(tmp_path: Path, capsys) -> None:
    _write(tmp_path, '[data]\nimages = "pics"\n')
    err = _train_error(tmp_path, capsys)
    assert "data.images = 'pics'" in err and "does not exist" in err
    _write(tmp_path, '[model]\nbase = "/nowhere/model.safetensors"\n')
    from PIL import Image

    Image.new("RGB", (128, 128)).save(tmp_path / "images" / "a.png")
    assert "/nowhere/model.safetensors" in _train_error(tmp_path, capsys)


def test_set_override_checks_like_the_file(tmp_path: Path, capsys) -> None:
    create_project(tmp_path / "p")
    err = _train_error(tmp_path / "p", capsys, "--set", "train.bach_size=2")
    assert "did you mean 'train.batch_size'" in err


def test_wizard_saves_keep_the_users_comments(tmp_path: Path) -> None:
    _write(tmp_path, '# my notes on this run\nname = "mine"\n\n[train]\n# tried 2e-4, too strong\n'
                     'learning_rate = 1e-4\n')
    cfg = load_config(tmp_path)
    cfg.train.batch_size = 4
    save_config(tmp_path, cfg)
    text = (tmp_path / CONFIG_NAME).read_text()
    assert "# my notes on this run" in text and "# tried 2e-4, too strong" in text
    assert load_config(tmp_path).train.batch_size == 4


def test_fresh_config_round_trips_and_documents_every_field(tmp_path: Path) -> None:
    cfg = create_project(tmp_path / "new", name="demo")
    assert load_config(tmp_path / "new") == cfg
    text = (tmp_path / "new" / CONFIG_NAME).read_text()
    assert "# higher fits more detail" in text


def test_readme_documents_every_config_field() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [s.path for s in field_specs() if f"`{s.name}`" not in readme or f"[{s.section}]" not in readme]
    assert not missing, f"README lacks: {missing}"


def test_help_is_fast_and_does_not_import_torch() -> None:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "loratui", "--help"], capture_output=True,
                         text=True, check=True)
    elapsed = time.perf_counter() - start
    assert "train" in out.stdout and "sample_project" in out.stdout
    assert " torch" not in out.stderr.replace("torch_", "")
    print(f"loratui --help took {elapsed:.2f}s")


def test_config_defaults_validate() -> None:
    from loratui.config import config_from_dict

    assert config_from_dict({}) == ProjectConfig()
    with pytest.raises(ConfigError, match="multiple of 8"):
        config_from_dict({"data": {"resolution": 100, "bucket_step": 10}})


def test_an_output_folder_that_cannot_be_written_is_explained(tmp_path: Path, capsys) -> None:
    project = tmp_path / "p"
    create_project(project)
    from PIL import Image

    Image.new("RGB", (128, 128)).save(project / "images" / "a.png")
    (project / "output").write_text("a file where the output folder should be")
    err = _train_error(project, capsys)
    assert str(project / "output") in err and "cannot write" in err
