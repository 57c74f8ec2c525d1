"""LoRA files: kohya layout, hashes, atomic writes, conversion, corrupt files, reuse, merge, inspect."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from loratui.lora import (
    LoRAFileError,
    apply_lora_file,
    convert_lora_file,
    inject_from_file,
    inject_lora,
    load_lora_file,
    save_diffusers,
    save_kohya,
)
from loratui.lora.inspect import inspect_lora_file, render_inspection
from loratui.lora.merge import bake_networks, merge_networks, unmerge_networks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from loratui.models.builtin import build_pipeline

    return build_pipeline("tiny-sd", tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture()
def networks(pipe):
    g = torch.Generator().manual_seed(3)
    nets = {
        "unet": inject_lora(pipe.unet, component="unet", family="sd1", preset="all", rank=4, alpha=1.0,
                            generator=g, conv_rank=2, conv_alpha=1.5),  # fmt: skip
        "te": inject_lora(pipe.text_encoder, component="te", family="sd1", preset="attention", rank=4, alpha=8.0),
    }
    with torch.no_grad():
        for net in nets.values():
            for module in net.values():
                module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=g) * 0.2)
    yield nets
    for net in nets.values():
        net.remove()


def _unet_out(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    context = torch.randn(1, 8, pipe.unet.config.cross_attention_dim, generator=g)
    return pipe.unet(latents, 10, context).sample.detach()


def test_kohya_file_layout_and_metadata(networks, tmp_path) -> None:
    path = tmp_path / "out" / "lora.safetensors"
    save_kohya(path, networks, {"ss_output_name": "lora", "ss_steps": 12, "ss_tag_frequency": {"a": {"b": 1}}})
    tensors = load_file(path)
    modules = len(networks["unet"]) + len(networks["te"])
    assert len(tensors) == 3 * modules
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert all(tensors[k].ndim == 0 for k in tensors if k.endswith(".alpha"))
    assert tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].item() == 8.0
    down = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
    up = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"]
    assert down.shape[0] == 2 and down.shape[2:] == (3, 3) and up.shape[2:] == (1, 1)  # conv_rank for 3x3
    assert down.dtype == torch.float16

    lora = load_lora_file(path)
    meta = lora.metadata
    assert meta["ss_steps"] == "12" and json.loads(meta["ss_tag_frequency"]) == {"a": {"b": 1}}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_module"] == "networks.lora"
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header :]).hexdigest()
    assert len(meta["sshs_legacy_hash"]) == 8
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["lora.safetensors"]  # no temp file left behind
    assert lora.format == "kohya" and lora.family == "sd1"
    assert lora.component_counts() == {"unet": len(networks["unet"]), "te": len(networks["te"])}


def test_model_hash_does_not_depend_on_metadata(networks, tmp_path) -> None:
    save_kohya(tmp_path / "a.safetensors", networks, {"ss_output_name": "a"})
    save_kohya(tmp_path / "b.safetensors", networks, {"ss_output_name": "something else", "ss_seed": 1})
    a, b = load_lora_file(tmp_path / "a.safetensors"), load_lora_file(tmp_path / "b.safetensors")
    assert a.metadata["sshs_model_hash"] == b.metadata["sshs_model_hash"]


def test_failed_write_keeps_the_old_file(networks, tmp_path, monkeypatch) -> None:
    path = tmp_path / "lora.safetensors"
    path.write_bytes(b"previous")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_kohya(path, networks, {})
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["lora.safetensors"]


def test_kohya_diffusers_kohya_round_trip_is_exact(networks, tmp_path) -> None:
    src = tmp_path / "k.safetensors"
    save_kohya(src, networks, {"ss_output_name": "k"}, dtype=torch.float32)
    mid = convert_lora_file(src, tmp_path / "d.safetensors", to="diffusers")
    assert mid.format == "diffusers"
    assert any(k.startswith("unet.") and k.endswith(".lora_A.weight") for k in load_file(tmp_path / "d.safetensors"))
    convert_lora_file(tmp_path / "d.safetensors", tmp_path / "k2.safetensors", to="kohya")
    a, b = load_file(src), load_file(tmp_path / "k2.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load_lora_file(tmp_path / "k2.safetensors").metadata["ss_output_name"] == "k"


@pytest.mark.parametrize(
    "cut, message",
    [(0, "not a safetensors file"), (4, "not a safetensors file"), (200, "header claims"), (-100, "beyond the end")],
)
def test_truncated_file_gives_a_clear_error(networks, tmp_path, cut, message) -> None:
    good = tmp_path / "good.safetensors"
    save_kohya(good, networks, {})
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(LoRAFileError, match=message) as info:
        load_lora_file(bad)
    assert str(bad) in str(info.value) and "again" in str(info.value)


def test_garbage_header_gives_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((20).to_bytes(8, "little") + b"not json at all!!!!!" + b"\0" * 16)
    with pytest.raises(LoRAFileError, match="not valid JSON"):
        load_lora_file(bad)


def test_missing_alpha_reads_as_rank_and_old_diffusers_spellings_load(tmp_path) -> None:
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 16, 1, 1),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(16, 4, 1, 1),
        },
        tmp_path / "noalpha.safetensors",
    )
    assert load_lora_file(tmp_path / "noalpha.safetensors").alphas == {
        "lora_unet_down_blocks_0_attentions_0_proj_in": 4.0
    }
    save_file(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.ones(2, 8),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.ones(8, 2),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.down.weight": torch.ones(2, 8),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.up.weight": torch.ones(8, 2),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": torch.ones(2, 8),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": torch.ones(8, 2),
        },
        tmp_path / "old.safetensors",
    )
    old = load_lora_file(tmp_path / "old.safetensors")
    assert old.format == "diffusers-old" and old.family == "sd1"
    assert sorted(old.modules) == [
        "lora_te_text_model_encoder_layers_0_mlp_fc1",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    ]
    assert set(old.alphas.values()) == {2.0}


def test_continue_from_a_file_and_rank_mismatch(pipe, networks, tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    save_kohya(path, networks, {}, dtype=torch.float32)
    expected = _unet_out(pipe)
    state = {k: v.clone() for k, v in networks["unet"].state_dict().items()}
    for net in networks.values():
        net.remove()

    fresh = {
        "unet": inject_lora(pipe.unet, component="unet", family="sd1", preset="all", rank=4, alpha=1.0,
                            conv_rank=2, conv_alpha=1.5),  # fmt: skip
        "te": inject_lora(pipe.text_encoder, component="te", family="sd1", preset="attention", rank=4, alpha=1.0),
    }
    apply_lora_file(path, fresh)
    loaded = fresh["unet"].state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert float(fresh["te"]["lora_te_text_model_encoder_layers_0_self_attn_q_proj"].alpha) == 8.0
    torch.testing.assert_close(_unet_out(pipe), expected)
    for net in fresh.values():
        net.remove()

    wrong = {"unet": inject_lora(pipe.unet, component="unet", family="sd1", preset="all", rank=8, alpha=1.0,
                                 conv_rank=2)}  # fmt: skip
    with pytest.raises(ValueError, match=r"file rank\(s\) \[2, 4\], network rank\(s\) \[2, 8\]"):
        apply_lora_file(path, wrong)
    wrong["unet"].remove()

    # The file has text-encoder modules too; a UNet-only run must say so, not drop them silently.
    unet_only = {"unet": inject_lora(pipe.unet, component="unet", family="sd1", preset="all", rank=4, alpha=1.0,
                                     conv_rank=2)}  # fmt: skip
    try:
        with pytest.raises(ValueError, match="no network here takes"):
            apply_lora_file(path, unet_only)
        apply_lora_file(path, unet_only, strict=False)
        torch.testing.assert_close(_unet_out(pipe), expected)
    finally:
        unet_only["unet"].remove()


def test_inject_from_file_uses_the_files_own_layers_ranks_and_alphas(pipe, networks, tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    save_kohya(path, networks, {}, dtype=torch.float32)
    expected = _unet_out(pipe)
    te_ids = torch.arange(10).unsqueeze(0)
    expected_te = pipe.text_encoder(te_ids).last_hidden_state.detach()
    counts = {c: len(n) for c, n in networks.items()}
    for net in networks.values():
        net.remove()

    loaded = inject_from_file(load_lora_file(path, family="sd1"), {"unet": pipe.unet, "te": pipe.text_encoder})
    try:
        assert {c: len(n) for c, n in loaded.items()} == counts
        assert sorted(set(loaded["unet"].ranks.values())) == [2, 4]
        torch.testing.assert_close(_unet_out(pipe), expected)
        torch.testing.assert_close(pipe.text_encoder(te_ids).last_hidden_state, expected_te)
    finally:
        for net in loaded.values():
            net.remove()

    lora = load_lora_file(path, family="sd1")
    lora.modules["lora_unet_down_blocks_9_resnets_0_conv1"] = next(iter(lora.modules.values()))
    with pytest.raises(ValueError, match="1 modules this sd1 model does not have.*down_blocks_9"):
        inject_from_file(lora, {"unet": pipe.unet, "te": pipe.text_encoder})
    assert not any(type(m).__name__ == "LoRAModule" for m in pipe.unet.modules())  # nothing left behind


def test_merge_at_scale_one_equals_the_lora_output(pipe, networks) -> None:
    with_lora = _unet_out(pipe)
    merge_networks(networks, 1.0)
    torch.testing.assert_close(_unet_out(pipe), with_lora, rtol=1e-4, atol=1e-5)
    unmerge_networks(networks, 1.0)
    torch.testing.assert_close(_unet_out(pipe), with_lora, rtol=1e-4, atol=1e-5)
    networks["unet"].set_multiplier(0.0)
    assert not torch.allclose(_unet_out(pipe), with_lora, atol=1e-4)


def test_bake_leaves_a_plain_model_with_the_lora_in_its_weights(tmp_path_factory) -> None:
    from loratui.models.builtin import build_pipeline

    pipe = build_pipeline("tiny-sd", tmp_path_factory.mktemp("bake"))
    keys = set(pipe.unet.state_dict())
    network = inject_lora(pipe.unet, component="unet", family="sd1", preset="all", rank=4, alpha=2.0)
    with torch.no_grad():
        for module in network.values():
            module.lora_up.weight.normal_(0, 0.2)
    with_lora = _unet_out(pipe)
    bake_networks({"unet": network})
    assert set(pipe.unet.state_dict()) == keys
    assert len(network) == 0
    torch.testing.assert_close(_unet_out(pipe), with_lora, rtol=1e-4, atol=1e-5)


def test_file_from_another_family_is_refused(pipe, networks, tmp_path) -> None:
    path = tmp_path / "xl.safetensors"
    save_kohya(path, networks, {"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(ValueError, match="trained on sdxl but the base model is sd1"):
        apply_lora_file(path, networks)


def test_inspect_summarises_the_file(networks, tmp_path) -> None:
    from rich.console import Console

    path = tmp_path / "lora.safetensors"
    save_diffusers(path, networks, {"ss_output_name": "mine"})
    summary = inspect_lora_file(path)
    assert summary["format"] == "diffusers" and summary["family"] == "sd1"
    assert summary["modules_per_component"] == {"unet": len(networks["unet"]), "te": len(networks["te"])}
    assert summary["text_encoder"] is True
    convs = sum(1 for m in networks["unet"].values() if m.rank == 2)
    assert convs > 0
    assert summary["ranks"] == {2: convs, 4: len(networks["unet"]) - convs + len(networks["te"])}
    assert summary["alphas"] == {1.0: len(networks["unet"]) - convs, 1.5: convs, 8.0: len(networks["te"])}
    assert summary["hash_matches_metadata"] is True
    console = Console(width=120, record=True)
    console.print(render_inspection(summary))
    text = console.export_text()
    assert "SD 1.x" in text and "mine" in text and summary["sshs_model_hash"] in text
