"""Caption tokenizing and encoding, and the character tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from loratui.models.loader import LoadedModel, load_model
from loratui.models.text import (
    encode_prompts,
    encode_tokens,
    sdxl_add_time_ids,
    sdxl_added_cond_kwargs,
    tokenize,
)
from loratui.models.tokenizer import build_char_tokenizer

torch.set_num_threads(1)

CAPTIONS = ["a photo of a cat", "Ein Hund mit Hut, très élégant — 犬"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORATUI_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return {name: load_model(f"builtin:{name}") for name in ("tiny-sd", "tiny-sd2", "tiny-sdxl")}


def test_char_tokenizer_round_trips_and_never_fails(tmp_path: Path) -> None:
    tok = build_char_tokenizer(tmp_path / "made", pad_token="!")
    tok.save_pretrained(tmp_path / "saved")
    again = CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert again.model_max_length == 77
    assert again.pad_token == "!"
    for text in CAPTIONS + ["", "\x00\x07 \t\n", "x" * 500]:
        ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77
        assert ids == again(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert ids[0] == tok.bos_token_id
    # One token per character, lower-cased as CLIP does.
    assert tok.decode(tok("Cat").input_ids, skip_special_tokens=True) == "cat"
    assert len(tok("cat").input_ids) == 3 + 2


@pytest.mark.parametrize(
    ("name", "dim", "pooled"), [("tiny-sd", 32, None), ("tiny-sd2", 48, None), ("tiny-sdxl", 80, 32)]
)
def test_encode_prompts_shapes(models: dict[str, LoadedModel], name: str, dim: int, pooled: int | None) -> None:
    model = models[name]
    ids = tokenize(model, CAPTIONS)
    assert [t.shape for t in ids] == [(2, 77)] * len(model.tokenizers)
    with torch.no_grad():
        emb = encode_prompts(model, CAPTIONS)
        skipped = encode_prompts(model, CAPTIONS, clip_skip=2)
    assert emb.hidden.shape == (2, 77, dim)
    assert emb.hidden.shape[-1] == model.unet.config.cross_attention_dim
    assert (None if emb.pooled is None else emb.pooled.shape) == (None if pooled is None else (2, pooled))
    assert skipped.hidden.shape == emb.hidden.shape
    assert not torch.allclose(skipped.hidden, emb.hidden)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl"])
def test_encoding_matches_the_diffusers_pipeline(models: dict[str, LoadedModel], name: str) -> None:
    model = models[name]
    pipe = model.make_pipeline()
    with torch.no_grad():
        ours = encode_prompts(model, CAPTIONS)
        if name == "tiny-sdxl":
            hidden, _, pooled, _ = pipe.encode_prompt(CAPTIONS, device="cpu", do_classifier_free_guidance=False)
            assert torch.equal(ours.pooled, pooled)
            # diffusers' clip_skip=1 is one layer further back, our clip_skip=2.
            hidden2 = pipe.encode_prompt(CAPTIONS, device="cpu", do_classifier_free_guidance=False, clip_skip=1)[0]
            assert torch.equal(encode_prompts(model, CAPTIONS, clip_skip=2).hidden, hidden2)
        else:
            hidden = pipe.encode_prompt(CAPTIONS, "cpu", 1, False)[0]
    assert torch.equal(ours.hidden, hidden)


def test_clip_skip_two_is_the_normed_penultimate_layer(models: dict[str, LoadedModel]) -> None:
    model = models["tiny-sd"]
    encoder = model.text_encoders[0]
    ids = tokenize(model, CAPTIONS)
    with torch.no_grad():
        states = encoder(ids[0], output_hidden_states=True).hidden_states
        expected = encoder.final_layer_norm(states[-2]) if hasattr(encoder, "final_layer_norm") else (
            encoder.text_model.final_layer_norm(states[-2])
        )
        assert torch.equal(encode_tokens(model, ids, clip_skip=2).hidden, expected)
    with pytest.raises(ValueError, match="clip_skip"):
        encode_tokens(model, ids, clip_skip=9)


def test_encoding_carries_gradients_for_text_encoder_training(models: dict[str, LoadedModel]) -> None:
    model = models["tiny-sdxl"]
    params = [p for te in model.text_encoders for p in te.parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        emb = encode_prompts(model, CAPTIONS)
        (emb.hidden.square().mean() + emb.pooled.square().mean()).backward()
        assert all(p.grad is not None for p in model.text_encoders[0].encoder.layers[0].parameters())
        assert model.text_encoders[1].text_projection.weight.grad is not None
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def test_sdxl_size_conditioning_drives_the_unet(models: dict[str, LoadedModel]) -> None:
    model = models["tiny-sdxl"]
    ids = sdxl_add_time_ids((96, 128), (0, 16), (64, 64))
    assert ids.tolist() == [96.0, 128.0, 0.0, 16.0, 64.0, 64.0]
    with torch.no_grad():
        emb = encode_prompts(model, CAPTIONS)
        latents = torch.randn(2, 4, 8, 8)
        t = torch.tensor([10, 900])
        out = model.unet(latents, t, emb.hidden, added_cond_kwargs=sdxl_added_cond_kwargs(emb.pooled, ids)).sample
        other = sdxl_added_cond_kwargs(emb.pooled, torch.stack([ids, sdxl_add_time_ids((64, 64), (0, 0), (64, 64))]))
        out2 = model.unet(latents, t, emb.hidden, added_cond_kwargs=other).sample
    assert out.shape == latents.shape
    assert torch.equal(out[0], out2[0])
    assert not torch.allclose(out[1], out2[1])
