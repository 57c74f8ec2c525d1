"""Our files load in diffusers and give exactly the outputs our LoRA-applied model gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loratui.lora import inject_lora, load_lora_file, save_diffusers, save_kohya

torch.set_num_threads(1)


def _pipeline(name: str, tmp_path: Path):
    from loratui.models.builtin import build_pipeline

    return build_pipeline(name, tmp_path)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return _pipeline("tiny-sd", tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return _pipeline("tiny-sdxl", tmp_path_factory.mktemp("tiny-sdxl"))


def _outputs(pipe) -> dict[str, torch.Tensor]:
    """UNet and text-encoder outputs on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, pipe.tokenizer.vocab_size, (1, 12), generator=g)
    out = {"te": pipe.text_encoder(ids).last_hidden_state}
    context = torch.randn(1, 12, pipe.unet.config.cross_attention_dim, generator=g)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    extra = {}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out["te2"] = pipe.text_encoder_2(ids).last_hidden_state
        pooled = pipe.unet.config.projection_class_embeddings_input_dim - 6 * pipe.unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=g),
            "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]]),
        }
    out["unet"] = pipe.unet(latents, 500, context, **extra).sample
    return {k: v.detach() for k, v in out.items()}


def _inject(pipe, family: str, preset: str) -> dict:
    g = torch.Generator().manual_seed(1)
    components = {"unet": pipe.unet}
    if family == "sdxl":
        components.update(te1=pipe.text_encoder, te2=pipe.text_encoder_2)
    else:
        components["te"] = pipe.text_encoder
    networks = {}
    for component, model in components.items():
        # alpha != rank, so a loader that ignores alpha gives different outputs.
        networks[component] = inject_lora(
            model, component=component, family=family, preset=preset, rank=4, alpha=2.0, generator=g
        )
        with torch.no_grad():
            for module in networks[component].values():
                module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=g) * 0.5)
    return networks


def _check_round_trip(pipe, family: str, preset: str, path: Path, save) -> None:
    base = _outputs(pipe)
    networks = _inject(pipe, family, preset)
    expected = _outputs(pipe)
    save(path, networks, {"ss_output_name": "test"}, dtype=torch.float32)
    for network in networks.values():
        network.remove()
    torch.testing.assert_close(_outputs(pipe)["unet"], base["unet"])  # remove() restored the base model

    pipe.load_lora_weights(str(path), adapter_name="ours")
    try:
        got = _outputs(pipe)
    finally:
        pipe.unload_lora_weights()
    for key in expected:
        assert not torch.allclose(expected[key], base[key], atol=1e-4), f"LoRA had no effect on {key}"
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4, msg=f"{key} differs")


@pytest.mark.parametrize("preset", ["attention+ff", "all"])
def test_sd1_kohya_file_loads_in_diffusers(tiny_sd, tmp_path, preset) -> None:
    _check_round_trip(tiny_sd, "sd1", preset, tmp_path / "lora.safetensors", save_kohya)


def test_sd1_diffusers_file_keeps_alpha(tiny_sd, tmp_path) -> None:
    path = tmp_path / "peft.safetensors"
    _check_round_trip(tiny_sd, "sd1", "all", path, save_diffusers)
    lora = load_lora_file(path)
    assert lora.format == "diffusers" and lora.family == "sd1"
    assert set(lora.alphas.values()) == {2.0}


@pytest.mark.parametrize("save", [save_kohya, save_diffusers], ids=["kohya", "diffusers"])
def test_sdxl_file_loads_in_diffusers(tiny_sdxl, tmp_path, save) -> None:
    # SDXL kohya names are SGM names; the SDXL pipeline maps them back with the UNet config.
    _check_round_trip(tiny_sdxl, "sdxl", "all", tmp_path / "xl.safetensors", save)
