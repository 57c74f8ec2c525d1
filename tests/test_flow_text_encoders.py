"""Text-encoder LoRA on SD3 and FLUX: the CLIP encoders train, T5 stays as it was, and the file loads.

FLUX writes CLIP-L as sd-scripts does (``lora_te1_…``), SD3 writes CLIP-L and
CLIP-G as diffusers does (``text_encoder.`` / ``text_encoder_2.``). Each
file is loaded by diffusers' own pipeline (its text encoders then give our
outputs) and put through ComfyUI's published key rules for the CLIP models
(``model_lora_keys_clip`` and the LoRA weight loader in comfy/lora.py), which
must consume every text-encoder key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratui.commands import CommandChannel
from loratui.config import load_config
from loratui.engine.trainer import Trainer
from tests.test_flow_families import make_project, pipeline

torch.set_num_threads(1)

# comfy/lora.py LORA_CLIP_MAP: the CLIP layers ComfyUI patches, HF name -> sd-scripts' underscore spelling.
COMFY_CLIP_LAYERS = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                     "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                     "self_attn.out_proj": "self_attn_out_proj"}


def comfy_clip_key_map(encoders: dict[str, torch.nn.Module]) -> dict[str, str]:
    """ComfyUI's ``model_lora_keys_clip`` for a model whose CLIPs are ``clip_l`` (and ``clip_g``).

    ``encoders`` maps ComfyUI's name (``clip_l``, ``clip_g``) to the HF CLIP text model it holds; the
    result maps each LoRA module name ComfyUI accepts to the weight it patches. CLIP-G takes the ``te2``
    names only beside a CLIP-L (SD3, SDXL), as in ComfyUI.
    """
    key_map: dict[str, str] = {}
    for comfy_name, model in encoders.items():
        # ComfyUI's own CLIP keeps HF's ``text_model.`` level, which transformers 5 no longer names.
        weights = {"text_model." + k.removeprefix("text_model.") for k in model.state_dict() if k.endswith(".weight")}
        for b in range(32):
            for layer, under in COMFY_CLIP_LAYERS.items():
                hf = f"text_model.encoder.layers.{b}.{layer}.weight"
                if hf not in weights:
                    continue
                target = f"{comfy_name}.transformer.{hf}"
                if comfy_name == "clip_l":
                    key_map[f"lora_te_text_model_encoder_layers_{b}_{under}"] = target
                    key_map[f"lora_te1_text_model_encoder_layers_{b}_{under}"] = target
                    key_map[f"text_encoder.text_model.encoder.layers.{b}.{layer}"] = target
                elif comfy_name == "clip_g" and "clip_l" in encoders:
                    key_map[f"lora_te2_text_model_encoder_layers_{b}_{under}"] = target
                    key_map[f"text_encoder_2.text_model.encoder.layers.{b}.{layer}"] = target
    return key_map


def comfy_consumed(keys: set[str], key_map: dict[str, str]) -> dict[str, set[str]]:
    """The keys ComfyUI's LoRA loader reads for each mapped module: ``.alpha`` and one up/down pair in
    the spellings it tries (``lora_up``/``lora_down``, diffusers' ``lora_B``/``lora_A``)."""
    used: dict[str, set[str]] = {}
    for module in key_map:
        names = {f"{module}.alpha"} & keys
        for up, down in (("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight")):
            if f"{module}.{up}" in keys:
                names |= {f"{module}.{up}", f"{module}.{down}"} & keys
                break
        if names:
            used[module] = names
    return used


def train_with_text_encoders(project: Path, steps: int) -> tuple[Path, dict[str, torch.Tensor], list[str]]:
    """Train a few steps; the file written, how far each CLIP LoRA moved, and T5 tensors that changed."""
    cfg = load_config(project)
    trainer = Trainer(project, cfg, emit=lambda e: None, commands=CommandChannel(), max_steps=steps)
    trainer.setup()
    try:
        session = trainer.session
        t5 = session.model.text_encoders[-1]
        assert type(t5).__name__.startswith("T5")
        t5_before = {k: v.clone() for k, v in t5.state_dict().items()}
        te_networks = {k: n for k, n in session.networks.items() if k != "unet"}
        start = {k: [p.detach().clone() for p in n.parameters()] for k, n in te_networks.items()}
        for _ in range(steps):
            trainer._optimizer_step()
        moved = {k: max(float((p.detach() - p0).abs().max()) for p, p0 in zip(n.parameters(), start[k]))
                 for k, n in te_networks.items()}
        t5_after = t5.state_dict()
        t5_changed = [k for k, v in t5_before.items() if not torch.equal(v, t5_after[k])]
        path = trainer.export()
    finally:
        trainer.cleanup()
    return path, moved, t5_changed


def clip_outputs(encoders: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 256, (1, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return {k: te(ids)[0] for k, te in encoders.items()}


@pytest.mark.parametrize("name, family, fmt, encoder_names, comfy_names, te_prefixes", [
    ("tiny-flux", "flux", "kohya", ["te1"], ["clip_l"], {"lora_te1"}),
    ("tiny-flux", "flux", "diffusers", ["te1"], ["clip_l"], {"text_encoder"}),
    ("tiny-sd3", "sd3", "kohya", ["te1", "te2"], ["clip_l", "clip_g"], {"text_encoder", "text_encoder_2"}),
])
def test_clip_lora_trains_t5_stays_and_diffusers_and_comfyui_load_every_key(
        tmp_path: Path, name: str, family: str, fmt: str, encoder_names: list[str], comfy_names: list[str],
        te_prefixes: set[str]) -> None:
    from safetensors.torch import load_file, save_file

    from loratui.lora import inject_from_file, load_lora_file

    project = make_project(tmp_path, f"builtin:{name}", "lora.train_text_encoder=true", "lora.alpha=4",
                           "train.text_encoder_lr=0.001", f"save.format={fmt}")
    path, moved, t5_changed = train_with_text_encoders(project, 2)
    # Each CLIP encoder's LoRA moved; T5 is bit for bit the base model's.
    assert sorted(moved) == encoder_names and all(v > 0 for v in moved.values()), moved
    assert t5_changed == []

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    te_keys = {k for k in keys if not k.startswith(("lora_unet_", "transformer."))}
    by_prefix = {k.split("_text_model" if k.startswith("lora_te") else ".", 1)[0] for k in te_keys}
    assert by_prefix == te_prefixes  # no T5 (lora_te2_/lora_te3_/text_encoder_3) keys

    pipe = pipeline(name)
    encoders = dict(zip(encoder_names, [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]))
    base = clip_outputs(encoders)
    clip_models = dict(zip(comfy_names, encoders.values()))
    key_map = comfy_clip_key_map(clip_models)  # before PEFT renames the wrapped weights
    shapes = {f"{c}.transformer.text_model.{k.removeprefix('text_model.')}": tuple(v.shape)
              for c, model in clip_models.items() for k, v in model.state_dict().items()}
    networks = inject_from_file(load_lora_file(path, family=family), {"unet": pipe.transformer, **encoders})
    ours = clip_outputs(encoders)
    for net in networks.values():
        net.remove()
    given = path
    if family == "flux" and fmt == "kohya":
        # diffusers' converter of sd-scripts' FLUX transformer keys hard-codes FLUX.1's 3072 widths (that part
        # is checked at FLUX.1's width in test_flow_families); its text-encoder part is given our te keys.
        given = tmp_path / "te_only.safetensors"
        save_file({k: v for k, v in load_file(str(path)).items() if k in te_keys}, str(given))
    pipe.load_lora_weights(str(given), adapter_name="x")
    theirs = clip_outputs(encoders)
    for k in encoders:
        assert not torch.allclose(ours[k], base[k], atol=1e-6), k
        assert torch.allclose(theirs[k], ours[k], atol=1e-5), (k, float((theirs[k] - ours[k]).abs().max()))

    # ComfyUI: every text-encoder key consumed, each up/down pair the shape of the weight it patches.
    used = comfy_consumed(te_keys, key_map)
    assert set().union(*used.values()) == te_keys, sorted(te_keys - set().union(*used.values()))[:5]
    with safe_open(str(path), "pt") as f:
        for module in used:
            up = f.get_tensor(f"{module}.lora_up.weight" if f"{module}.lora_up.weight" in te_keys
                              else f"{module}.lora_B.weight")
            down = f.get_tensor(f"{module}.lora_down.weight" if f"{module}.lora_down.weight" in te_keys
                                else f"{module}.lora_A.weight")
            assert (up.shape[0], down.shape[1]) == shapes[key_map[module]], module
