"""A finished run's LoRA carries what every app reads, and exports as a folder ready to publish."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat
from safetensors import safe_open

from loratui.cli import main
from loratui.lora import modelspec
from loratui.project import ProjectPaths


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The sample project trained 4 steps with samples at step 4, then exported with --card."""
    from tests.conftest import SAMPLE_PROJECT

    project = tmp_path_factory.mktemp("publish") / "sample_project"
    shutil.copytree(SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(
        "output", "checkpoints", "samples", "logs", ".cache", ".loratui.lock", "*.py"))
    with open(project / "loratui.toml", "a", encoding="utf-8") as f:
        f.write('\n[publish]\nauthor = "Jane Doe"\ntags = "toy,object"\n')
    code = main(["train", str(project), "--headless", "--max-steps", "4", "--set", "save.every_n_steps=4",
                 "--set", "sample.every_n_steps=4", "--set", "sample.steps=2"])
    assert code == 0
    assert main(["export", str(project), "--card"]) == 0
    return project


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def _front_matter(card: Path) -> tuple[dict, str]:
    import yaml

    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(header), body


def test_the_run_file_keeps_modelspec_rules_and_says_what_apps_read(finished: Path) -> None:
    lora = ProjectPaths(finished).output / "zxc_toy.safetensors"
    meta = _metadata(lora)
    assert modelspec.problems(meta, lora.read_bytes()) == []
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.hash_sha256"] == "0x" + meta["sshs_model_hash"]
    assert meta["modelspec.trigger_phrase"] == "zxc toy" and meta["modelspec.usage_hint"] == "Trigger word: zxc toy"
    assert meta["modelspec.author"] == "Jane Doe" and meta["modelspec.tags"] == "toy,object"
    assert meta["modelspec.license"] == "creativeml-openrail-m"
    # The tag picker's counts: every trained caption once, trigger word included, lower case as sd-scripts.
    tags = json.loads(meta["ss_tag_frequency"])
    assert tags["images"]["zxc toy"] == 12 and tags["2_closeups"]["zxc toy"] == 4
    assert all(tag == tag.lower() for folder in tags.values() for tag in folder)
    # No loratui-only preset name LyCORIS or sd-scripts would misread.
    assert json.loads(meta["ss_network_args"]) == {}


def test_the_thumbnail_is_the_newest_sample(finished: Path) -> None:
    paths = ProjectPaths(finished)
    meta = _metadata(paths.output / "zxc_toy.safetensors")
    url = meta["modelspec.thumbnail"]
    assert url.startswith("data:image/jpeg;base64,")
    thumb = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))
    sample = Image.open(paths.samples / "step-000004" / "00-seed1.png").convert("RGB")
    assert thumb.size == sample.size  # the tiny model's samples are under 256 px: kept at their size
    other = Image.open(paths.samples / "step-000004" / "01-seed2.png").convert("RGB")

    def distance(a: Image.Image, b: Image.Image) -> float:
        return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3

    # A JPEG of the same picture (these are noise-like, so JPEG loses a lot), not of the other sample.
    assert distance(thumb.convert("RGB"), sample) < distance(thumb.convert("RGB"), other) / 2
    assert url == modelspec.thumbnail_data_url(paths.samples / "step-000004" / "00-seed1.png")


def test_export_card_writes_a_folder_whose_picture_caption_and_trigger_match_the_run(finished: Path) -> None:
    paths = ProjectPaths(finished)
    folder = paths.output / "zxc_toy-card"
    assert (folder / "zxc_toy.safetensors").read_bytes() == (paths.output / "zxc_toy.safetensors").read_bytes()
    newest = paths.samples / "step-000004"
    assert (folder / "zxc_toy.preview.png").read_bytes() == (newest / "00-seed1.png").read_bytes()
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["00-seed1.png", "01-seed2.png"]
    data, body = _front_matter(folder / "README.md")
    assert data["instance_prompt"] == "zxc toy"
    assert data["license"] == "creativeml-openrail-m"
    assert {"lora", "text-to-image", "stable-diffusion", "toy", "object"} <= set(data["tags"])
    assert "base_model" not in data  # a built-in model has no Hub id
    assert data["widget"][0] == {"text": "zxc toy, red ball, blue background",
                                 "output": {"url": "images/00-seed1.png"}}
    assert (folder / data["widget"][1]["output"]["url"]).is_file()
    assert "*zxc toy, red ball, blue background* (seed 1)" in body
    assert "<lora:zxc_toy:1>" in body and "load_lora_weights('path/to/this/folder'" in body
    assert _metadata(folder / "zxc_toy.safetensors")["modelspec.hash_sha256"] in body


def test_the_card_parses_as_the_hub_reads_it(finished: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(ProjectPaths(finished).output / "zxc_toy-card" / "README.md")
    data = card.data.to_dict()
    assert data["instance_prompt"] == "zxc toy" and data["library_name"] == "diffusers"
    assert data["pipeline_tag"] == "text-to-image" and card.data.license == "creativeml-openrail-m"
    assert card.text.lstrip().startswith("# zxc_toy")


def test_a_hub_base_model_and_a_flux_license_reach_the_front_matter(finished: Path) -> None:
    from loratui.config import load_config
    from loratui.publish.card import CardInputs, front_matter

    cfg = load_config(finished)
    cfg.model.base = "black-forest-labs/FLUX.1-dev"
    meta = {"modelspec.architecture": "flux-1-dev/lora", "modelspec.trigger_phrase": "zxc toy"}
    data = front_matter(CardInputs(cfg, Path("x.safetensors"), meta))
    assert data["base_model"] == "black-forest-labs/FLUX.1-dev"
    assert (data["license"], data["license_name"]) == ("other", "flux-1-dev-non-commercial-license")
    assert "flux" in data["tags"]


def test_inspect_prints_the_publishing_fields(finished: Path, capsys) -> None:
    assert main(["inspect", str(ProjectPaths(finished).output / "zxc_toy.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "modelspec.trigger_phrase: zxc toy" in out
    assert "modelspec.architecture: stable-diffusion-v1/lora" in out
    assert "modelspec.hash_sha256: 0x" in out and "(matches the tensors)" in out
    assert "modelspec.thumbnail: data:image/jpeg" in out and "ModelSpec: follows the rules" in out


def test_push_uploads_exactly_the_card_folder(finished: Path, tmp_path: Path, monkeypatch) -> None:
    from loratui.publish import hub
    from loratui.publish.hub import upload_plan

    class LocalHub:
        """Stands in for HfApi: the upload is a copy into a local folder per repository, never the network."""

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            assert repo_type == "model" and exist_ok and not private
            (tmp_path / "hub" / repo_id).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, repo_type, folder_path, commit_message, ignore_patterns):
            shutil.copytree(folder_path, tmp_path / "hub" / repo_id, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(*ignore_patterns))

    monkeypatch.setattr(hub, "_hub_api", LocalHub)
    folder = tmp_path / "card"
    assert main(["export", str(finished), "--card", str(folder), "--push", "jane/zxc-toy"]) == 0
    assert upload_plan(tmp_path / "hub" / "jane/zxc-toy") == upload_plan(folder)
    assert {name for name, _ in upload_plan(folder)} == {
        "README.md", "zxc_toy.safetensors", "zxc_toy.preview.png", "images/00-seed1.png", "images/01-seed2.png"}
    # The card tells diffusers to load from the repository it was pushed to.
    assert "load_lora_weights('jane/zxc-toy'" in (folder / "README.md").read_text(encoding="utf-8")
    with pytest.raises(hub.HubError, match="OWNER/NAME"):
        hub.push_folder(folder, "not a repo", api=LocalHub())


def test_push_without_a_login_says_how_to_log_in(finished: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    code = main(["export", str(finished), "--card", str(tmp_path / "card"), "--push", "jane/zxc-toy"])
    err = capsys.readouterr().err
    assert code != 0 and "hf auth login" in err and "Traceback" not in err
    assert (tmp_path / "card" / "README.md").is_file()  # the folder is written before the upload is tried


def test_architecture_names_per_family() -> None:
    assert modelspec.architecture("sd2", "v_prediction") == "stable-diffusion-v2-768-v/lora"
    assert modelspec.architecture("sd2", "epsilon") == "stable-diffusion-v2-512/lora"
    assert modelspec.architecture("sdxl") == "stable-diffusion-xl-v1-base/lora"
    sd35m = {"num_layers": 24, "dual_attention_layers": [0, 1]}
    assert modelspec.architecture("sd3", "flow", modelspec.model_variant("sd3", sd35m)) \
        == "stable-diffusion-v3.5-medium/lora"
    assert modelspec.architecture("sd3", "flow", modelspec.model_variant("sd3", {"num_layers": 38})) \
        == "stable-diffusion-v3.5-large/lora"
    assert modelspec.architecture("flux", "flow", modelspec.model_variant("flux", {"guidance_embeds": False})) \
        == "flux-1-schnell/lora"
    # Every family has a name, so a new family's file cannot be written without one.
    from loratui.models.family import FAMILIES

    assert set(FAMILIES) <= set(modelspec.ARCHITECTURES)


def test_modelspec_rules_catch_a_broken_file(finished: Path, tmp_path: Path) -> None:
    lora = ProjectPaths(finished).output / "zxc_toy.safetensors"
    data = bytearray(lora.read_bytes())
    data[-1] ^= 0xFF  # one tensor byte changed after saving
    meta = _metadata(lora)
    assert modelspec.problems(meta, bytes(data)) == ["modelspec.hash_sha256 differs from the file's tensor bytes"]
    del meta["modelspec.title"]
    meta["modelspec.architecture"] = "stable-diffusion-v1-lora"
    assert set(modelspec.problems(meta)) == {"modelspec.title is missing", "modelspec.architecture "
                                             "'stable-diffusion-v1-lora' is not a known LoRA architecture"}


def test_trigger_phrase_comes_from_the_concepts_trained() -> None:
    from loratui.config import ConceptConfig, ProjectConfig
    from loratui.engine.export import trigger_words

    cfg = ProjectConfig()
    cfg.data.trigger_word = "zxc toy"
    assert trigger_words(cfg) == ["zxc toy"]
    cfg.data.concepts = [ConceptConfig(folder="a"), ConceptConfig(folder="b", trigger_word="qwe cat"),
                         ConceptConfig(folder="reg", is_reg=True, trigger_word="dog"),
                         ConceptConfig(folder="c", trigger_word="qwe cat")]
    assert trigger_words(cfg) == ["zxc toy", "qwe cat"]  # inherited, own; regularization images excluded
    cfg.data.concepts[0].trigger_word = ""
    assert trigger_words(cfg) == ["qwe cat"]


def test_tag_frequency_counts_each_trained_caption_as_trained() -> None:
    from loratui.engine.export import caption_tag_frequency

    trained = [("dogs", "a.png", "Brown Dog, grass", "qwe"), ("dogs", "2_close/b.png", "qwe, dog", "qwe"),
               ("cats", "c.png", "cat", "zxc"), ("dogs", "d.png", "", "qwe")]
    assert caption_tag_frequency(trained) == {
        "dogs": {"qwe": 2, "brown dog": 1, "grass": 1},  # trigger prepended once, lower case
        "2_close": {"dog": 1, "qwe": 1},  # already had the trigger word: not doubled
        "cats": {"cat": 1, "zxc": 1},
    }


def test_a_run_without_samples_still_gets_a_card_without_pictures(tmp_path: Path) -> None:
    from loratui.config import ProjectConfig
    from loratui.publish.card import CardInputs, write_card_folder

    lora = tmp_path / "mine.safetensors"
    lora.write_bytes(b"tensors")
    out = tmp_path / "card"
    (out / "images").mkdir(parents=True)
    (out / "images" / "old.png").write_bytes(b"old")  # from an earlier export
    (out / "mine.preview.png").write_bytes(b"old")
    write_card_folder(CardInputs(ProjectConfig(), lora, {"modelspec.title": "mine"}), out)
    data, body = _front_matter(out / "README.md")
    assert "widget" not in data and "instance_prompt" not in data and data["license"] == "creativeml-openrail-m"
    assert not (out / "mine.preview.png").exists() and list((out / "images").iterdir()) == []
    assert body.startswith("\n# mine") and "## Samples" not in body
