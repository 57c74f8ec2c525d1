"""``ss_network_args`` rebuilds the network in LyCORIS, as sd-scripts does from a file's recorded args."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loratui.config import ProjectConfig
from loratui.engine.export import training_metadata
from loratui.lora import inject_lora, save_kohya

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from loratui.models.builtin import build_pipeline

    return build_pipeline("tiny-sd", tmp_path_factory.mktemp("tiny-sd"))


def _saved(pipe, tmp_path, kind: str, preset: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    cfg = ProjectConfig()
    cfg.lora.type, cfg.lora.preset, cfg.lora.rank, cfg.lora.alpha = kind, preset, 4, 2.0
    cfg.lora.train_text_encoder = True
    nets = {"unet": inject_lora(pipe.unet, component="unet", family="sd1", preset=preset, rank=4, alpha=2.0,
                                kind=kind),
            "te": inject_lora(pipe.text_encoder, component="te", family="sd1", preset=preset, rank=4, alpha=2.0,
                              kind=kind)}
    try:
        meta = training_metadata(cfg, family="sd1", prediction_type="epsilon", steps=1, epoch=1, num_images=1,
                                 tag_frequency={})
        path = tmp_path / f"{kind}.safetensors"
        save_kohya(path, nets, meta, dtype=torch.float32)
    finally:
        for net in nets.values():
            net.remove()
    with safe_open(str(path), "pt") as f:
        return load_file(path), dict(f.metadata())


def _rebuilt(pipe, meta: dict[str, str]) -> dict[str, torch.Tensor]:
    """What sd-scripts does with a file's metadata: import the module and create_network(**args)."""
    module = importlib.import_module(meta["ss_network_module"])
    args = json.loads(meta["ss_network_args"])
    network = module.create_network(1.0, int(meta["ss_network_dim"]), float(meta["ss_network_alpha"]), None,
                                    pipe.text_encoder, pipe.unet, **args)
    # The modules as apply_to would register them, without patching the shared pipeline's forwards.
    return {f"{lora.lora_name}.{key}": t for lora in network.text_encoder_loras + network.unet_loras
            for key, t in lora.state_dict().items()}


def _lycoris_names(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Loaders expect lora_te_text_model_…; LyCORIS names text-encoder modules by whatever this
    # transformers version's named_modules() says (transformers 5 dropped "text_model.").
    if any(k.startswith("lora_te_text_model_") for k in theirs):
        return ours
    return {k.replace("lora_te_text_model_", "lora_te_", 1): v for k, v in ours.items()}


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_create_network_from_the_recorded_args_rebuilds_the_same_network(pipe, tmp_path, kind: str) -> None:
    ours, meta = _saved(pipe, tmp_path, kind, "attention+ff")
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert "preset" in json.loads(meta["ss_network_args"])
    theirs = _rebuilt(pipe, meta)
    ours = _lycoris_names(ours, theirs)
    # Every module and tensor of the file, with its shape, is in the rebuilt network: the file loads into it.
    assert {k: tuple(v.shape) for k, v in ours.items()}.items() <= {k: tuple(v.shape)
                                                                   for k, v in theirs.items()}.items()
    # LyCORIS 4's attn-mlp also lists TimestepEmbedding (for Anima), so on an SD UNet it adds the time
    # embedding's two layers; nothing else differs.
    extra = {k.partition(".")[0] for k in theirs if k not in ours}
    assert extra <= {"lora_unet_time_embedding_linear_1", "lora_unet_time_embedding_linear_2"}


@pytest.mark.parametrize("preset", ["attention", "all"])
def test_the_other_presets_record_lycoris_builtin_presets(pipe, tmp_path, preset: str) -> None:
    from lycoris.config import PRESET

    _, meta = _saved(pipe, tmp_path, "loha", preset)
    args = json.loads(meta["ss_network_args"])
    assert args["preset"] in PRESET  # a name LyCORIS knows, never a path it would try to read
    assert args == ({"algo": "loha", "preset": "attn-only"} if preset == "attention" else
                    {"algo": "loha", "preset": "full", "conv_dim": "4", "conv_alpha": "2"})
