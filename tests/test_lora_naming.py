"""kohya names on the real SD1.5 and SDXL architectures (built on the meta device, no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loratui.lora.inject import expected_module_count, inject_lora
from loratui.lora.naming import (
    UNetLayout,
    diffusers_to_sgm,
    guess_family,
    kohya_to_module_path,
    module_path_to_kohya,
    sgm_to_diffusers,
    unet_ldm_key,
)

torch.set_num_threads(1)

CONFIGS = Path(__file__).parent / "data" / "real_configs"


def _json(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def _unet(name: str):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(_json(name))


def _clip(name: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    raw = _json(name)
    cls = CLIPTextModelWithProjection if raw.pop("architectures") == ["CLIPTextModelWithProjection"] else CLIPTextModel
    with torch.device("meta"):
        return cls(CLIPTextConfig(**raw))


@pytest.fixture(scope="module")
def sd15_unet():
    return _unet("sd15_unet.json")


@pytest.fixture(scope="module")
def sdxl_unet():
    return _unet("sdxl_unet.json")


def _names(root, **kw) -> list[str]:
    network = inject_lora(root, rank=4, alpha=1.0, **kw)
    try:
        return list(network)
    finally:
        network.remove()


def test_sd15_counts_and_names(sd15_unet) -> None:
    names = _names(sd15_unet, component="unet", family="sd1", preset="attention+ff")
    assert len(names) == 192 == len(set(names))
    for expected in [
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2",
        "lora_unet_up_blocks_1_attentions_0_proj_out",
    ]:
        assert expected in names
    assert len(_names(sd15_unet, component="unet", family="sd1", preset="attention")) == 128
    convs = _names(sd15_unet, component="unet", family="sd1", preset="all")
    assert len(convs) == 278  # kohya's "create LoRA for U-Net: 278 modules" with conv_dim
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in convs
    assert "lora_unet_down_blocks_0_downsamplers_0_conv" in convs
    assert "lora_unet_up_blocks_0_upsamplers_0_conv" in convs
    assert "lora_unet_up_blocks_0_resnets_0_conv_shortcut" in convs


def test_sdxl_counts_and_sgm_names(sdxl_unet) -> None:
    names = _names(sdxl_unet, component="unet", family="sdxl", preset="attention+ff")
    assert len(names) == 722 == len(set(names))
    for expected in [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2",
        "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_out_0",
        "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_k",
        "lora_unet_output_blocks_5_1_proj_out",
    ]:
        assert expected in names
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)
    convs = _names(sdxl_unet, component="unet", family="sdxl", preset="all")
    for expected in [
        "lora_unet_input_blocks_1_0_in_layers_2",
        "lora_unet_input_blocks_1_0_emb_layers_1",
        "lora_unet_input_blocks_4_0_skip_connection",
        "lora_unet_input_blocks_3_0_op",
        "lora_unet_middle_block_2_out_layers_3",
        "lora_unet_output_blocks_2_2_conv",
    ]:
        assert expected in convs


@pytest.mark.parametrize(
    "config, component, family, count, last",
    [
        ("sd15_text_encoder.json", "te", "sd1", 72, "lora_te_text_model_encoder_layers_11_mlp_fc2"),
        ("sdxl_text_encoder.json", "te1", "sdxl", 72, "lora_te1_text_model_encoder_layers_11_mlp_fc2"),
        ("sdxl_text_encoder_2.json", "te2", "sdxl", 192, "lora_te2_text_model_encoder_layers_31_mlp_fc2"),
    ],
)
def test_text_encoder_names_do_not_depend_on_module_paths(config, component, family, count, last) -> None:
    # transformers 5 dropped "text_model." from CLIPTextModel's paths but not
    # from CLIPTextModelWithProjection's; the kohya names are the same for both.
    names = _names(_clip(config), component=component, family=family, preset="attention+ff")
    assert len(names) == count
    assert names[-1] == last
    assert f"lora_{component}_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert f"lora_{component}_text_model_encoder_layers_0_self_attn_out_proj" in names


def _diffusers_view(names: list[str], unet_config) -> set[str]:
    """Module paths diffusers' own kohya loader resolves our names to."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    sd = {}
    for n in names:
        sd[f"{n}.lora_down.weight"] = torch.zeros(1, 1)
        sd[f"{n}.lora_up.weight"] = torch.zeros(1, 1)
        sd[f"{n}.alpha"] = torch.tensor(1.0)
    if unet_config is not None:
        sd = _maybe_map_sgm_blocks_to_diffusers(sd, unet_config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(sd)
    assert len(alphas) == len(names)
    unet_sd = {k.removeprefix("unet."): v for k, v in converted.items() if k.startswith("unet.")}
    peft = convert_unet_state_dict_to_peft(unet_sd)
    return {k.removesuffix(".lora_A.weight") for k in peft if k.endswith(".lora_A.weight")}


@pytest.mark.parametrize("preset", ["attention+ff", "all"])
def test_sdxl_names_map_back_through_diffusers_to_the_same_modules(sdxl_unet, preset) -> None:
    network = inject_lora(sdxl_unet, component="unet", family="sdxl", preset=preset, rank=4, alpha=1.0)
    ours = dict(network.module_paths)
    network.remove()
    resolved = _diffusers_view(list(ours), sdxl_unet.config)
    assert resolved == set(ours.values())
    existing = {name for name, _ in sdxl_unet.named_modules()}
    assert resolved <= existing


def test_sd15_names_map_through_diffusers_without_unet_config(sd15_unet) -> None:
    # The SD1.5 pipeline passes no unet_config, so its names must already be diffusers-style.
    network = inject_lora(sd15_unet, component="unet", family="sd1", preset="all", rank=4, alpha=1.0)
    ours = dict(network.module_paths)
    network.remove()
    assert _diffusers_view(list(ours), None) == set(ours.values())


@pytest.mark.parametrize(
    "config, family, preset", [("sd15_unet.json", "sd1", "all"), ("sdxl_unet.json", "sdxl", "all")]
)
def test_our_reverse_map_and_sgm_round_trip(config, family, preset) -> None:
    unet = _unet(config)
    layout = UNetLayout.from_config(unet.config)
    network = inject_lora(unet, component="unet", family=family, preset=preset, rank=4, alpha=1.0)
    for name, path in network.module_paths.items():
        assert kohya_to_module_path(name, family, layout) == ("unet", path)
        assert module_path_to_kohya("unet", path, family, layout) == name
        assert sgm_to_diffusers(diffusers_to_sgm(path, layout), layout) == path
    network.remove()


def test_sd15_ldm_names_follow_the_original_checkpoint_layout() -> None:
    layout = UNetLayout.for_family("sd1")
    assert diffusers_to_sgm("down_blocks.1.attentions.0.proj_in", layout) == "input_blocks.4.1.proj_in"
    assert diffusers_to_sgm("down_blocks.0.downsamplers.0.conv", layout) == "input_blocks.3.0.op"
    assert diffusers_to_sgm("up_blocks.0.upsamplers.0.conv", layout) == "output_blocks.2.1.conv"
    assert diffusers_to_sgm("up_blocks.1.upsamplers.0.conv", layout) == "output_blocks.5.2.conv"
    assert diffusers_to_sgm("mid_block.resnets.1.time_emb_proj", layout) == "middle_block.2.emb_layers.1"
    assert diffusers_to_sgm("up_blocks.3.resnets.2.conv_shortcut", layout) == "output_blocks.11.0.skip_connection"


def test_count_check_catches_a_family_that_stopped_matching(sd15_unet, monkeypatch) -> None:
    import loratui.lora.inject as inject

    # As if a diffusers release renamed the transformer block class.
    monkeypatch.setattr(inject, "_TRANSFORMER", ((), ("RenamedTransformer",)))
    assert expected_module_count(sd15_unet, "unet", "attention+ff") == 192
    with pytest.raises(RuntimeError, match="found 0 unet layers.*implies 192"):
        inject_lora(sd15_unet, component="unet", family="sd1", preset="attention+ff", rank=4, alpha=1.0)


def test_family_guess_from_names() -> None:
    assert guess_family({"lora_unet_input_blocks_4_1_proj_in": (4, 640)}, {}) == "sdxl"
    assert guess_family({"lora_unet_down_blocks_0_attentions_0_proj_in": (4, 320, 1, 1)}, {}) == "sd1"
    assert guess_family({"lora_unet_x_attn2_to_k": (4, 1024)}, {}) == "sd2"
    assert guess_family({"lora_unet_x": (4, 8)}, {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"


@pytest.mark.parametrize("config", ["sd15_unet.json", "sdxl_unet.json"])
def test_ldm_names_agree_with_diffusers_single_file_converter(config) -> None:
    # Build an original-layout checkpoint with our names, one distinct value per
    # parameter; diffusers' converter must put every value back where it came from.
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = _unet(config)
    layout = UNetLayout.from_config(unet.config)
    names = [name for name, _ in unet.named_parameters()]
    checkpoint = {}
    for i, name in enumerate(names):
        module, _, leaf = name.rpartition(".")
        checkpoint[f"{unet_ldm_key(module, layout)}.{leaf}"] = torch.tensor([float(i)])
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))
    assert set(converted) == set(names)
    assert all(converted[name].item() == i for i, name in enumerate(names))
