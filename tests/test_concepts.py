"""Concepts, regularization images and loss weights: what a kohya user expects an epoch to hold."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from loratui.cli import main
from loratui.config import CONFIG_NAME, ConfigError, config_from_dict, load_config
from loratui.data.concepts import balance_regularization, concept_counts, scan_project
from loratui.data.scan import ImageRecord
from loratui.engine.batches import BatchPlan
from loratui.engine.dataset import Item, PreparedDataset
from loratui.engine.latent_cache import CachedLatent
from loratui.engine.step import diffusion_loss


def _images(folder: Path, n: int, *, caption: str | None = "a photo", size=(128, 128), prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (i * 30 % 255, 90, 160)).save(folder / f"{prefix}{i}.png")
        if caption is not None:
            (folder / f"{prefix}{i}.txt").write_text(f"{caption} {i}")


def _project(root: Path, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_NAME).write_text('name = "c"\n[data]\nresolution = 128\n' + body, encoding="utf-8")
    return root


CONCEPTS = '''
trigger_word = "zxc"
[[data.concepts]]
folder = "alice"
repeats = 3
[[data.concepts]]
folder = "bob"
name = "Bob"
repeats = 2
loss_weight = 0.5
[[data.concepts]]
folder = "reg"
is_reg = true
class_tokens = "person"
'''


def test_per_concept_counts_and_repeats_in_an_epoch(tmp_path: Path) -> None:
    root = _project(tmp_path, CONCEPTS)
    _images(root / "alice", 2)
    _images(root / "bob" / "4_close", 1)  # an N_name folder inside a concept multiplies its repeats
    _images(root / "bob", 1, prefix="wide")
    _images(root / "reg", 3, caption=None)
    report = scan_project(load_config(root), root)
    counts = {c.concept.name: c for c in concept_counts(report)}
    # alice 2×3 = 6; Bob 1×2 + 1×(4·2) = 10: 16 training images per epoch.
    assert (counts["alice"].usable, counts["alice"].per_epoch) == (2, 6)
    assert (counts["Bob"].usable, counts["Bob"].per_epoch) == (2, 10)
    # kohya balancing: 3 reg images of repeats 1 go round until they add up to 16: 6, 5, 5.
    assert counts["reg"].per_epoch == 16
    assert sorted(r.repeats for r in report.records if r.is_reg) == [5, 5, 6]
    assert report.images_per_epoch == 32 and counts["alice"].share == pytest.approx(6 / 32)
    # Class tokens caption the reg images that have no caption file; they are not "missing".
    assert all(r.caption == "person" for r in report.records if r.is_reg) and not report.missing_captions
    assert {r.rel.split("/")[0] for r in report.records} == {"alice", "Bob", "reg"}

    # The epoch the trainer sees holds each image exactly its repeats times.
    usable = report.usable
    plan = BatchPlan(tuple(r.bucket for r in usable), tuple(r.repeats for r in usable), batch_size=2, seed=1)
    seen = Counter(e.item for batch in plan.epoch(0) for e in batch)
    assert [seen[i] for i in range(len(usable))] == [r.repeats for r in usable]


def test_check_prints_every_concept_with_its_share(tmp_path: Path, capsys) -> None:
    root = _project(tmp_path, CONCEPTS)
    _images(root / "alice", 2)
    _images(root / "bob", 2)
    _images(root / "reg", 2, caption=None)
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out  # piped here: one "concept: …" line per concept
    concepts = [line for line in out.splitlines() if line.startswith("concept: ")]
    for name in ("alice", "Bob", "reg"):
        assert any(name in line for line in concepts), (name, concepts)
    assert "30%" in out  # alice: 6 of 20 images per epoch (10 training, 10 regularization)


def test_the_wizard_images_step_lists_every_concept(tmp_path: Path) -> None:
    from loratui.tui.wizard.services import scan
    from loratui.tui.wizard.step_images import summary_text

    root = _project(tmp_path, CONCEPTS)
    _images(root / "alice", 2)
    _images(root / "bob", 2)
    _images(root / "reg", 2, caption=None)
    cfg = load_config(root)
    text = summary_text(scan(root / "images", cfg, project_dir=root), batch_size=2)
    assert "alice [train] 2 images × 3 repeats → 6/epoch (30%)" in text
    assert "reg [reg] 2 images × 1 repeats → 10/epoch (50%)" in text


def _fake_records(train: list[int], reg: list[int]) -> list[ImageRecord]:
    records = []
    for i, n in enumerate(train + reg):
        r = ImageRecord(path=Path(f"/x/{i}.png"), rel=f"{i}.png", repeats=n, base_repeats=n)
        r.is_reg = i >= len(train)
        records.append(r)
    return records


@pytest.mark.parametrize("train, reg, expected", [
    ([7], [1, 1, 1], [3, 2, 2]),  # too few: round again, one more repeat each, until 7
    ([2], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]),  # too many: the surplus is not used
    ([3, 3], [4, 4], [4, 4]),  # the first pass overshoots (8 ≥ 6), as kohya's does
    ([5], [], []),
])
def test_regularization_balancing_matches_kohya(train: list[int], reg: list[int], expected: list[int]) -> None:
    records = _fake_records(train, reg)
    balance_regularization(records)
    assert [r.repeats for r in records if r.is_reg] == expected
    assert [r.repeats for r in records if not r.is_reg] == train
    balance_regularization(records)  # idempotent: it starts again from base_repeats
    assert [r.repeats for r in records if r.is_reg] == expected


class _PixelUNet(torch.nn.Module):
    """A 'UNet' with one weight per latent value, so each loss term's gradient lands on its own weight."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, int(torch.tensor(shape).prod())).view(shape))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(sample=x * self.w)


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000)


def test_regularization_loss_weighting_against_a_hand_computation() -> None:
    torch.manual_seed(0)
    latents = torch.randn(3, 4, 8, 8)
    unet = _PixelUNet((1, 4, 8, 8))
    sched = _scheduler()
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 900])
    cond = SimpleNamespace(unet_kwargs=lambda: {})
    # A concept with loss_weight 0.5, a training image, a reg image with prior_loss_weight 0.25.
    weights = torch.tensor([0.5, 1.0, 0.25])
    loss = diffusion_loss(unet, sched, latents, cond, None, prediction_type="epsilon", timesteps=t, noise=noise,
                          sample_weight=weights)
    noisy = sched.add_noise(latents, noise, t)
    per_image = [((noisy[i] * unet.w[0] - noise[i]) ** 2).mean() for i in range(3)]
    hand = (0.5 * per_image[0] + 1.0 * per_image[1] + 0.25 * per_image[2]) / 3
    assert loss.item() == pytest.approx(hand.item(), rel=1e-6)
    plain = diffusion_loss(unet, sched, latents, cond, None, prediction_type="epsilon", timesteps=t, noise=noise)
    assert plain.item() == pytest.approx(sum(p.item() for p in per_image) / 3, rel=1e-6)


def test_batches_carry_each_concepts_weight_and_captions(tmp_path: Path) -> None:
    root = _project(tmp_path, CONCEPTS + "[train]\nprior_loss_weight = 0.25\n")
    cfg = load_config(root)
    from loratui.data.concepts import resolve_concepts

    concepts = resolve_concepts(cfg, root)
    latent = CachedLatent(torch.zeros(4, 16, 16), torch.zeros(4, 16, 16), (128, 128), (0, 0), (128, 128))
    items = [Item(Path(f"/x/{i}.png"), f"{i}.png", "h", (128, 128), 1, "a cat", {False: latent}, concept=i,
                  weight=concepts[i].sample_weight(cfg.train.prior_loss_weight)) for i in range(3)]
    ds = PreparedDataset(items, BatchPlan(((128, 128),) * 3, (1, 1, 1), 3, 0), [], concepts)
    from loratui.engine.batches import Entry

    half = torch.zeros(1, 16, 16)
    half[..., 8:] = 1.0
    items[1].masks = {False: half}
    batch = ds.batch([Entry(0), Entry(1), Entry(2)], micro_batch=0, seed=0, generator=torch.Generator())
    assert batch.loss_weights.tolist() == [1.0, 0.5, 0.25]
    # Only the masked image's weights vary per pixel; the others count everywhere.
    assert batch.masks.shape == (3, 1, 16, 16)
    assert torch.equal(batch.masks[1], half) and torch.all(batch.masks[[0, 2]] == 1)
    # The trigger word goes on the training concepts' captions, not on the regularization images'.
    assert batch.captions == ["zxc, a cat", "zxc, a cat", "a cat"]


def test_a_masked_region_receives_no_gradient() -> None:
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    unet = _PixelUNet((1, 4, 8, 8))
    mask = torch.ones(2, 1, 8, 8)
    mask[:, :, :, :4] = 0.0  # the left half of both pictures is masked out
    cond = SimpleNamespace(unet_kwargs=lambda: {})
    loss = diffusion_loss(unet, _scheduler(), latents, cond, torch.Generator().manual_seed(1),
                          prediction_type="epsilon", pixel_weight=mask)
    loss.backward()
    grad = unet.w.grad[0]
    assert torch.all(grad[:, :, :4] == 0)
    assert torch.all(grad[:, :, 4:] != 0)


def test_bad_concepts_are_refused_with_the_setting_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"concepts": [{"folder": "a", "repeats": 0}, {"folder": "r", "is_reg": True}]}})
    assert "data.concepts[0].repeats must be at least 1, not 0" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"concepts": [{"folder": "r", "is_reg": True}]}})
    assert "all regularization images" in str(err.value)

    root = _project(tmp_path, CONCEPTS)
    _images(root / "alice", 2)
    (root / "bob").mkdir()
    # reg is missing altogether, bob is empty: training names the missing one before loading anything.
    code = main(["train", str(root), "--headless", "--max-steps", "1"])
    err_text = capsys.readouterr().err
    assert code == 2 and "data.concepts[2]" in err_text and "does not exist" in err_text
    assert "Traceback" not in err_text
    _images(root / "reg", 1)
    assert main(["check", str(root)]) == 2
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "data.concepts[1]" in out and "holds no images" in out


def test_two_concepts_regularization_and_masks_train_end_to_end(tmp_path: Path) -> None:
    from loratui.commands import CommandChannel
    from loratui.engine.runner import run_training
    from loratui.events import Event, Finished, Started, event_from_dict
    from loratui.tui.widgets.stats_panel import concepts_text

    root = _project(tmp_path, CONCEPTS + 'masks = "masks"\n[model]\nbase = "builtin:tiny-sd"\n'
                    "[lora]\nrank = 4\n[train]\nbatch_size = 2\nprior_loss_weight = 0.5\n"
                    "[save]\nevery_n_steps = 0\n")
    _images(root / "alice", 2)
    _images(root / "bob", 1)
    _images(root / "reg", 2, caption=None)
    (root / "masks").mkdir()
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 64, 128))
    mask.save(root / "masks" / "img0.png")  # alice/img0.png and bob/img0.png share the masks folder
    seen: list[Event] = []
    run_training(root, emit=seen.append, commands=CommandChannel(), max_steps=2)
    started = next(e for e in seen if isinstance(e, Started))
    assert [c[:4] for c in started.concepts] == [("alice", "train", 2, 6), ("Bob", "train", 1, 2),
                                                 ("reg", "reg", 2, 8)]
    again = event_from_dict(json_roundtrip(started))  # the dashboard gets it over a pipe as JSON
    assert concepts_text(again.concepts).startswith("alice 2 → 6/epoch (38%) · Bob 1 → 2/epoch (12%)")
    assert any(isinstance(e, Finished) for e in seen)


def json_roundtrip(event) -> dict:  # noqa: ANN001
    import json

    return json.loads(event.to_json())
