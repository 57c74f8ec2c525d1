"""`loratui caption`: every tiny captioner writes a caption with the trigger word beside each image of a
bare copy of sample_project; a second run skips them; bad input is named, and nothing is ever lost."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from loratui.captioning.backup import BACKUP_DIR
from loratui.cli import main
from loratui.data.captions import read_caption
from tests.captioner_models import build_florence2, build_qwen_vl, build_wd_tagger

pytest.importorskip("onnxruntime")

BUILDERS = {
    "qwen2.5-vl": lambda p: build_qwen_vl(p, "2.5"),
    "qwen3-vl": lambda p: build_qwen_vl(p, "3"),
    "florence-2": build_florence2,
    "wd-tagger": build_wd_tagger,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("captioners")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture
def bare_project(sample_project: Path) -> Path:
    """sample_project with every caption removed."""
    for caption in sample_project.rglob("*.txt"):
        caption.unlink()
    return sample_project


def images_of(project: Path) -> list[Path]:
    return sorted(p for p in (project / "images").rglob("*") if p.suffix in (".jpg", ".png"))


def captions(project: Path) -> dict[str, str]:
    return {p.name: read_caption(p.with_suffix(".txt")).text for p in images_of(project)
            if p.with_suffix(".txt").is_file()}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_each_captioner_captions_every_image_with_the_trigger_and_a_second_run_skips_them(
        kind: str, models: dict[str, Path], bare_project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["caption", str(bare_project), "--model", str(models[kind]), "--max-length", "12"]) == 0
    written = captions(bare_project)
    assert len(written) == len(images_of(bare_project)) == 16
    for name, text in written.items():
        assert text.startswith("zxc toy, "), (name, text)  # data.trigger_word of the project
        assert len(text) > len("zxc toy, ")
    out = capsys.readouterr().out
    assert "wrote 16 caption(s)" in out
    assert "captioned 1/16 (" in out and "s/image, about" in out  # measured, with the time left
    before = {p: p.stat().st_mtime_ns for p in (bare_project / "images").rglob("*.txt")}
    assert main(["caption", str(bare_project), "--model", str(models[kind])]) == 0
    assert "all 16 images already have a caption; nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (bare_project / "images").rglob("*.txt")} == before


def test_tagger_thresholds_blacklist_and_underscores(models: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (40, 40), (250, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (40, 40), (0, 0, 250)).save(folder / "blue.png")
    assert main(["caption", str(folder), "--model", str(models["wd-tagger"]), "--trigger", "sks",
                 "--blacklist", "watermark, Simple_Background"]) == 0
    red = read_caption(folder / "red.txt").text
    blue = read_caption(folder / "blue.txt").text
    # The character comes first, general tags by confidence; ratings are never tags.
    assert red == "sks, zxc character, solo, long hair, ^_^, red theme"
    assert blue == "sks, zxc character, solo, long hair, ^_^"
    assert main(["caption", str(folder), "--model", str(models["wd-tagger"]), "--overwrite", "--keep-underscores",
                 "--general-threshold", "0.997", "--character-threshold", "1.0"]) == 0
    assert read_caption(folder / "red.txt").text == "solo"  # no trigger outside a project unless given


def test_overwrite_keeps_the_old_captions_and_restore_puts_them_back(
        models: dict[str, Path], sample_project: Path, capsys: pytest.CaptureFixture) -> None:
    original = captions(sample_project)
    new = sample_project / "images" / "toy_new.jpg"
    new.write_bytes((sample_project / "images" / "toy_00.jpg").read_bytes())
    assert main(["caption", str(sample_project), "--model", str(models["wd-tagger"]), "--overwrite"]) == 0
    changed = captions(sample_project)
    assert len(changed) == 17 and all(changed[n] != original[n] for n in original)
    backup = next((sample_project / BACKUP_DIR).iterdir())
    manifest = [json.loads(line) for line in (backup / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 17 and sum(r["had"] for r in manifest) == 16
    assert main(["caption", str(sample_project), "--restore"]) == 0
    assert "restored 16 caption(s) and removed 1" in capsys.readouterr().out
    assert captions(sample_project) == original
    assert main(["caption", str(sample_project), "--restore"]) == 2  # nothing left to undo


def test_append_adds_only_new_tags(models: dict[str, Path], sample_project: Path) -> None:
    caption = sample_project / "images" / "toy_00.txt"
    caption.write_text("zxc toy, solo, on a table")
    assert main(["caption", str(sample_project), "--model", str(models["wd-tagger"]), "--append"]) == 0
    assert read_caption(caption).text == ("zxc toy, solo, on a table, zxc character, watermark, long hair, ^_^, "
                                          "simple background, red theme")


def test_unreadable_image_is_named_and_the_rest_captioned(
        models: dict[str, Path], bare_project: Path, capsys: pytest.CaptureFixture) -> None:
    (bare_project / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert main(["caption", str(bare_project), "--model", str(models["wd-tagger"])]) == 1
    out = capsys.readouterr().out
    assert "skipped broken.jpg:" in out
    assert len(captions(bare_project)) == 16
    assert not (bare_project / "images" / "broken.txt").exists()


def test_folders_that_are_not_captioners_are_refused_in_words(
        models: dict[str, Path], bare_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text('{"model_type": "clip_text_model"}')
    no_tags = build_wd_tagger(tmp_path / "no-tags", with_tags=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    remote = tmp_path / "Florence-2-large"
    remote.mkdir()
    (remote / "config.json").write_text('{"model_type": "florence2", "auto_map": {"AutoConfig": "x.Y"}}')
    cases = {
        remote: "Microsoft's original Florence-2, which runs its own code",
        clip: "is a clip_text_model model, not a captioner",
        no_tags: "no tag list beside it. A WD tagger needs selected_tags.csv",
        empty: "holds neither config.json nor model.onnx",
        tmp_path / "nowhere": "no such file or folder",
        "someone/not-downloaded": "not in the local hub cache and the hub cannot be reached",  # the hub is off
    }
    for model, expected in cases.items():
        assert main(["caption", str(bare_project), "--model", str(model)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    assert captions(bare_project) == {}


def test_a_full_disk_stops_with_whole_files_and_says_how_to_resume(
        models: dict[str, Path], bare_project: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from loratui.captioning import backup as backup_module

    real = backup_module.write_caption
    calls = {"n": 0}

    def filling_disk(path: Path, text: str) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(backup_module, "write_caption", filling_disk)
    assert main(["caption", str(bare_project), "--model", str(models["wd-tagger"])]) == 1
    out = capsys.readouterr().out
    assert "stopped: the disk is full" in out and "5 caption(s) were written whole" in out
    assert "run `loratui caption" in out and "again to caption the rest" in out
    assert len(captions(bare_project)) == 5
    assert not [p for p in (bare_project / "images").rglob(".*.tmp")]
    monkeypatch.setattr(backup_module, "write_caption", real)
    assert main(["caption", str(bare_project), "--model", str(models["wd-tagger"])]) == 0
    assert "11 caption(s)" in capsys.readouterr().out and len(captions(bare_project)) == 16


def test_ctrl_c_half_way_keeps_what_was_written(models: dict[str, Path], bare_project: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    from loratui.captioning.tagger import WdTagger

    real = WdTagger.caption
    calls = {"n": 0}

    def interrupted(self, images):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(WdTagger, "caption", interrupted)
    assert main(["caption", str(bare_project), "--model", str(models["wd-tagger"])]) == 130
    out = capsys.readouterr().out
    assert "stopped: interrupted (Ctrl+C). 3 caption(s) were written whole, 13 image(s) were not reached" in out
    assert all(text.startswith("zxc toy, ") for text in captions(bare_project).values())
    assert len(captions(bare_project)) == 3


def test_caption_tools_edit_in_bulk_and_each_change_can_be_undone(
        sample_project: Path, capsys: pytest.CaptureFixture) -> None:
    from loratui.data.captions import tag_frequency

    original = captions(sample_project)
    assert main(["caption", str(sample_project), "--frequency", "--top", "3"]) == 0
    out = capsys.readouterr().out
    expected = tag_frequency(original.values())
    top = list(expected.items())[0]
    assert f"{top[1]:6d}  {top[0]}" in out and f"{len(expected)} distinct tags in 16 captions" in out

    assert main(["caption", str(sample_project), "--remove-trigger"]) == 0
    assert not any(t.startswith("zxc toy") for t in captions(sample_project).values())
    assert main(["caption", str(sample_project), "--add-trigger"]) == 0
    assert all(t.startswith("zxc toy, ") for t in captions(sample_project).values())

    tag = next(t for t, _ in expected.items() if t != "zxc toy")
    assert main(["caption", str(sample_project), "--replace", tag, "REPLACED"]) == 0
    assert any("REPLACED" in t for t in captions(sample_project).values())
    assert main(["caption", str(sample_project), "--remove-tags", "REPLACE*"]) == 0
    assert not any("REPLACED" in t for t in captions(sample_project).values())

    for _ in range(4):  # remove-tags, replace, add-trigger, remove-trigger: newest first
        assert main(["caption", str(sample_project), "--restore"]) == 0
    assert captions(sample_project) == original


@pytest.mark.parametrize("kind", ["qwen2.5-vl", "qwen3-vl"])
def test_a_batch_of_differently_sized_images_gives_the_captions_of_one_at_a_time(
        kind: str, models: dict[str, Path]) -> None:
    from PIL import Image

    from loratui.captioning.base import CaptionOptions
    from loratui.captioning.loading import open_captioner

    images = [Image.linear_gradient("L").convert("RGB").resize((100, 80)), Image.new("RGB", (64, 128), (0, 90, 9))]
    captioner = open_captioner(str(models[kind]), CaptionOptions(max_length=10, batch_size=2))
    assert captioner.batch_size == 2 and captioner.device == "cpu"
    batched = captioner.caption(images)
    assert batched == [captioner.caption([image])[0] for image in images]
    assert batched[0] != batched[1]  # the picture reaches the model: the padding did not hide it


def test_a_captioner_failing_half_way_keeps_what_was_written(models: dict[str, Path], bare_project: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    from loratui.captioning.base import CaptionerError
    from loratui.captioning.tagger import WdTagger

    real = WdTagger.caption
    calls = {"n": 0}

    def out_of_memory(self, images):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise CaptionerError("out of GPU memory captioning 1 image(s) at once: use --batch-size 1")
        return real(self, images)

    monkeypatch.setattr(WdTagger, "caption", out_of_memory)
    assert main(["caption", str(bare_project), "--model", str(models["wd-tagger"])]) == 1
    out = capsys.readouterr().out
    assert "stopped: out of GPU memory" in out and "2 caption(s) were written whole" in out
    assert len(captions(bare_project)) == 2


def test_the_wizard_and_the_tagger_import_no_torch(models: dict[str, Path], bare_project: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; import loratui.tui.wizard.screen, loratui.tui.wizard.caption_run, "
            "loratui.tui.wizard.caption_tools; from loratui.cli import main; "
            f"main(['caption', {str(bare_project)!r}, '--model', {str(models['wd-tagger'])!r}]); "
            "print('loaded:', [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "loaded: []" in out.stdout, out.stdout + out.stderr
    assert len(captions(bare_project)) == 16


def test_a_chat_template_kept_beside_the_processor_is_used(models: dict[str, Path], tmp_path: Path) -> None:
    """Several Qwen-VL repositories keep the template that places images only in chat_template.json."""
    import json
    import shutil

    from PIL import Image

    from loratui.captioning.base import CaptionOptions
    from loratui.captioning.loading import open_captioner
    from tests.captioner_models import QWEN_TEMPLATE

    folder = tmp_path / "qwen"
    shutil.copytree(models["qwen2.5-vl"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE}))
    image = Image.linear_gradient("L").convert("RGB").resize((100, 80))
    original = open_captioner(str(models["qwen2.5-vl"]), CaptionOptions(max_length=10)).caption([image])
    assert open_captioner(str(folder), CaptionOptions(max_length=10)).caption([image]) == original


@pytest.mark.parametrize("kind", ["wd-tagger", "qwen2.5-vl"])
def test_a_hub_id_is_read_from_the_hub_cache(kind: str, models: dict[str, Path], bare_project: Path,
                                             tmp_path: Path) -> None:
    """A hub id goes through huggingface_hub like a download; here the hub is off and the files are in
    its cache, laid out as a download leaves them."""
    import os
    import shutil
    import subprocess
    import sys

    repo = f"someone/tiny-{kind}"
    cache = tmp_path / "hub"
    entry = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(models[kind], entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-m", "loratui", "caption", str(bare_project), "--model", repo,
                          "--max-length", "8"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{repo} ({'tags' if kind == 'wd-tagger' else 'text'}) on cpu" in out.stdout
    assert len(captions(bare_project)) == 16


def test_stopping_on_request_ends_after_the_current_batch(models: dict[str, Path], bare_project: Path) -> None:
    """What the wizard's Stop does: the run checks between batches, so every caption written is whole."""
    from loratui.captioning.backup import CaptionBackup
    from loratui.captioning.base import CaptionOptions
    from loratui.captioning.loading import open_captioner
    from loratui.captioning.run import CaptionRun
    from loratui.captioning.targets import caption_target

    target = caption_target(bare_project)
    run = CaptionRun(open_captioner(str(models["wd-tagger"]), CaptionOptions(batch_size=2)),
                     CaptionBackup(bare_project, "test"))
    seen = []
    out = run.run(target.jobs, progress=seen.append, should_stop=lambda: len(seen) >= 2)
    assert out.stopped == "stopped on request" and len(out.written) == 4 and out.left == 12
    assert [p.done for p in seen] == [2, 4] and seen[-1].eta_seconds is not None
    assert len(captions(bare_project)) == 4
