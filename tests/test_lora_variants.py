"""DoRA, LoHa and LoKr: the LyCORIS reference's numbers and file keys, files that load back, merges.

The ``lycoris-lora`` package is the reference here as peft is for plain LoRA:
on the same weights its modules and ours give the same outputs, and its
state dicts have the same keys and shapes our files carry.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from loratui.lora import LoRAFileError, apply_lora_file, inject_from_file, inject_lora, load_lora_file, save_kohya
from loratui.lora.dora import DoRAModule
from loratui.lora.layer import AdapterModule
from loratui.lora.loha import LoHaModule
from loratui.lora.lokr import LoKrModule, factorization
from loratui.lora.merge import merge_networks, unmerge_networks
from loratui.lora.variants import make_adapter

torch.set_num_threads(1)

BASES = {
    "linear": (lambda: nn.Linear(24, 20), (3, 5, 24)),
    "conv3x3": (lambda: nn.Conv2d(12, 16, 3, padding=1), (2, 12, 7, 7)),
    "conv3x3-stride2": (lambda: nn.Conv2d(12, 16, 3, stride=2, padding=1), (2, 12, 9, 9)),
    "conv1x1": (lambda: nn.Conv2d(12, 16, 1), (2, 12, 5, 5)),
}


def _reference(kind: str, base: nn.Module, rank: int, alpha: float, factor: int = -1) -> nn.Module:
    """The LyCORIS module that writes the same file as our ``kind``."""
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    if kind == "dora":
        # wd_on_out=False: the per-input-channel magnitude ComfyUI and Forge apply exactly.
        return LoConModule("m", base, 1.0, rank, alpha, weight_decompose=True, wd_on_out=False)
    if kind == "loha":
        return LohaModule("m", base, 1.0, rank, alpha)
    return LokrModule("m", base, 1.0, rank, alpha, factor=factor)


def _ours(kind: str, base: nn.Module, rank: int, alpha: float, factor: int = -1) -> AdapterModule:
    return make_adapter(kind, base, rank, alpha, lokr_factor=factor)


CASES = [("dora", 4, -1), ("loha", 4, -1), ("lokr", 2, -1), ("lokr", 8, -1), ("lokr", 2, 4)]


@pytest.mark.parametrize("base_id", list(BASES))
@pytest.mark.parametrize("kind, rank, factor", CASES, ids=[f"{k}-r{r}-f{f}" for k, r, f in CASES])
def test_forward_and_keys_match_lycoris(kind: str, rank: int, factor: int, base_id: str) -> None:
    make_base, x_shape = BASES[base_id]
    torch.manual_seed(0)
    base = make_base()
    x = torch.randn(x_shape)
    ref = _reference(kind, copy.deepcopy(base), rank, 3.0, factor)
    ours = _ours(kind, copy.deepcopy(base), rank, 3.0, factor)
    ref_sd = ref.state_dict()
    # Same file keys, same shapes, same alpha.
    assert {k: tuple(v.shape) for k, v in ref_sd.items() if k != "alpha"} == {
        k: tuple(v.shape) for k, v in ours.file_tensors().items()
    }
    assert float(ref_sd["alpha"]) == float(ours.alpha)
    # Random values everywhere (at init the update is zero), loaded into both.
    g = torch.Generator().manual_seed(1)
    values = {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in ours.file_tensors().items()}
    if "dora_scale" in values:
        values["dora_scale"] = values["dora_scale"].abs() + 1.0
    ours.load_file_tensors(values)
    ref.load_state_dict({**values, "alpha": ref_sd["alpha"]})
    with torch.no_grad():
        expected, got, plain = ref(x), ours(x), base(x)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
@pytest.mark.parametrize("base_id", ["linear", "conv3x3"])
def test_init_is_the_base_and_only_adapter_tensors_train(kind: str, base_id: str) -> None:
    make_base, x_shape = BASES[base_id]
    torch.manual_seed(2)
    base = make_base()
    x = torch.randn(x_shape)
    module = _ours(kind, base, 4, 4.0)
    torch.testing.assert_close(module(x), base(x), rtol=1e-5, atol=1e-5)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == set(module.file_tensors())
    module(x).square().sum().backward()
    assert base.weight.grad is None
    # At init one factor is zero, so gradients reach it and training can move away from the base.
    assert all(p.grad is not None for p in module.lora_parameters())
    assert any(p.grad.abs().sum() > 0 for p in module.lora_parameters())


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_half_precision_base_keeps_float32_adapter(kind: str) -> None:
    model = nn.Sequential(_ours(kind, nn.Linear(16, 16), 4, 4.0))
    model.to(torch.bfloat16)
    module = model[0]
    assert module.base.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in module.lora_parameters())
    out = model(torch.randn(2, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.lora_parameters())


def test_factorization_matches_lycoris() -> None:
    from lycoris.functional.general import factorization as reference

    for dim in range(1, 1300):
        for factor in (-1, 2, 4, 8, 16, 5):
            assert factorization(dim, factor) == reference(dim, factor), (dim, factor)


def test_dora_magnitude_is_per_input_channel_and_starts_at_the_base_norm() -> None:
    conv = nn.Conv2d(6, 8, 3)
    dora = DoRAModule(copy.deepcopy(conv), 2, 2.0)
    assert dora.dora_scale.shape == (1, 6, 1, 1)
    torch.testing.assert_close(dora.dora_scale.flatten(), conv.weight.transpose(0, 1).flatten(1).norm(dim=1))
    assert DoRAModule(nn.Linear(5, 3), 2).dora_scale.shape == (1, 5)


# -- ComfyUI's weight rules, re-implemented from comfy/weight_adapter (lora.py, loha.py, lokr.py, base.py) -----


def _comfy_weight_decompose(dora_scale, weight, lora_diff, alpha, strength):
    """comfy/weight_adapter/base.py weight_decompose, float32, identity ``function``."""
    weight_calc = weight + lora_diff * alpha
    if dora_scale.shape[0] == weight_calc.shape[0]:
        # ComfyUI's output-axis branch divides by the norm of the unmodified weight.
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (weight_calc.transpose(0, 1).reshape(weight_calc.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1)).transpose(0, 1))  # fmt: skip
    weight_calc = weight_calc * (dora_scale / (norm + torch.finfo(torch.float32).eps))
    return weight + strength * (weight_calc - weight)


def _comfy_load(lora: dict[str, torch.Tensor], module: str) -> tuple[set[str], tuple[str, dict] | None]:
    """comfy/lora.py load_lora for one module: the keys it consumes and the adapter it builds."""
    loaded, adapter = set(), None
    get = {s: lora[f"{module}.{s}"] for s in ("alpha", "dora_scale") if f"{module}.{s}" in lora}
    loaded |= {f"{module}.{s}" for s in get}
    if f"{module}.lora_up.weight" in lora:
        parts = {s: lora[f"{module}.{s}"] for s in ("lora_up.weight", "lora_down.weight")}
        adapter = ("lora", parts)
    elif f"{module}.hada_w1_a" in lora:
        parts = {s: lora[f"{module}.{s}"] for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
        adapter = ("loha", parts)
    else:
        names = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
        parts = {s: lora[f"{module}.{s}"] for s in names if f"{module}.{s}" in lora}
        if any(s in parts for s in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
            adapter = ("lokr", parts)
    if adapter is not None:
        loaded |= {f"{module}.{s}" for s in adapter[1]}
        adapter[1].update(get)
    return loaded, adapter


def _comfy_calculate_weight(weight: torch.Tensor, adapter: tuple[str, dict], strength: float) -> torch.Tensor:
    kind, p = adapter
    alpha = p["alpha"].item() if "alpha" in p else None
    if kind == "lora":
        up, down = p["lora_up.weight"].float(), p["lora_down.weight"].float()
        diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        scale = alpha / down.shape[0] if alpha is not None else 1.0
    elif kind == "loha":
        scale = alpha / p["hada_w1_b"].shape[0] if alpha is not None else 1.0
        diff = ((p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])).float().reshape(weight.shape)
    else:
        dim = None
        w1 = p.get("lokr_w1")
        if w1 is None:
            dim, w1 = p["lokr_w1_b"].shape[0], p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p.get("lokr_w2")
        if w2 is None:
            dim, w2 = p["lokr_w2_b"].shape[0], p["lokr_w2_a"] @ p["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        diff = torch.kron(w1.float(), w2.float()).reshape(weight.shape)
    if "dora_scale" in p:
        return _comfy_weight_decompose(p["dora_scale"].float(), weight, diff, scale, strength)
    return weight + strength * scale * diff


# -- on the tiny SD1 model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from loratui.models.builtin import build_pipeline

    return build_pipeline("tiny-sd", tmp_path_factory.mktemp("tiny-sd"))


def _randomise(network, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.values():
            for name, p in module.adapter_parameters().items():
                noise = torch.randn(p.shape, generator=g) * 0.1
                p.copy_(p * (1 + noise) if name == "dora_scale" else noise)


def _unet_out(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    context = torch.randn(1, 8, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(latents, 10, context).sample


@pytest.fixture(params=["dora", "loha", "lokr"])
def variant(request, pipe):
    kind = request.param
    nets = {
        "unet": inject_lora(pipe.unet, component="unet", family="sd1", preset="all", rank=4, alpha=2.0, kind=kind),
        "te": inject_lora(pipe.text_encoder, component="te", family="sd1", preset="attention", rank=4, alpha=4.0,
                          kind=kind),
    }
    for i, net in enumerate(nets.values()):
        _randomise(net, i)
    yield kind, nets
    for net in nets.values():
        net.remove()


def test_file_keys_are_lycoris_and_comfyui_consumes_every_key_with_the_same_weights(variant, tmp_path) -> None:
    kind, networks = variant
    path = tmp_path / f"{kind}.safetensors"
    save_kohya(path, networks, {}, dtype=torch.float32)
    lora = load_file(path)
    expected_suffixes = {
        "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"},
        "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
        "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
    }[kind]
    assert {k.partition(".")[2] for k in lora} <= expected_suffixes
    assert all(lora[k].ndim == 0 for k in lora if k.endswith(".alpha"))
    modules = {name: module for net in networks.values() for name, module in net.items()}
    consumed = set()
    for name, module in modules.items():
        keys, adapter = _comfy_load(lora, name)
        consumed |= keys
        assert adapter is not None and adapter[0] == ("lora" if kind == "dora" else kind)
        base = module.base.weight.detach().float()
        for strength in (1.0, 0.5):
            comfy = _comfy_calculate_weight(base.clone(), adapter, strength)
            ours = base + strength * module.delta_weight().detach()
            torch.testing.assert_close(comfy, ours, rtol=1e-4, atol=1e-5)
    assert consumed == set(lora), f"ComfyUI would log 'lora key not loaded': {sorted(set(lora) - consumed)[:3]}"


def test_file_loads_back_into_our_network_with_the_same_outputs(variant, pipe, tmp_path) -> None:
    kind, networks = variant
    path = tmp_path / f"{kind}.safetensors"
    save_kohya(path, networks, {}, dtype=torch.float32)
    expected = _unet_out(pipe)
    ids = torch.arange(10).unsqueeze(0)
    expected_te = pipe.text_encoder(ids).last_hidden_state.detach()
    lora = load_lora_file(path)
    assert lora.family == "sd1" and lora.format == "kohya"
    assert lora.kinds == {kind: sum(len(n) for n in networks.values())}
    # Into the same networks (init_lora / resume): zero them first, then read the file.
    for net in networks.values():
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
    apply_lora_file(lora, networks)
    torch.testing.assert_close(_unet_out(pipe), expected)
    for net in networks.values():
        net.remove()
    # Into a bare model, shaped by the file (sampling, export --merge).
    loaded = inject_from_file(load_lora_file(path), {"unet": pipe.unet, "te": pipe.text_encoder})
    try:
        assert {type(m) for n in loaded.values() for m in n.values()} == {
            {"dora": DoRAModule, "loha": LoHaModule, "lokr": LoKrModule}[kind]}
        torch.testing.assert_close(_unet_out(pipe), expected)
        torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state, expected_te)
    finally:
        for net in loaded.values():
            net.remove()


def test_merge_equals_the_applied_modules_and_unmerge_restores(variant, pipe) -> None:
    _, networks = variant
    with_adapter = _unet_out(pipe)
    weights = {id(m): m.base.weight.detach().clone() for n in networks.values() for m in n.values()}
    networks["unet"].set_multiplier(0.5)
    half = _unet_out(pipe)
    networks["unet"].set_multiplier(1.0)
    merge_networks(networks, 1.0)
    torch.testing.assert_close(_unet_out(pipe), with_adapter, rtol=1e-4, atol=1e-5)
    unmerge_networks(networks, 1.0)
    assert all(torch.allclose(m.base.weight, weights[id(m)], atol=1e-6) for n in networks.values() for m in n.values())
    torch.testing.assert_close(_unet_out(pipe), with_adapter, rtol=1e-4, atol=1e-5)
    merge_networks({"unet": networks["unet"]}, 0.5)
    torch.testing.assert_close(_unet_out(pipe), half, rtol=1e-4, atol=1e-5)
    unmerge_networks({"unet": networks["unet"]}, 0.5)


def test_a_file_of_another_type_is_refused_with_the_type_to_set(variant, pipe, tmp_path) -> None:
    kind, networks = variant
    path = tmp_path / f"{kind}.safetensors"
    save_kohya(path, {"unet": networks["unet"]}, {})
    for net in networks.values():
        net.remove()
    plain = {"unet": inject_lora(pipe.unet, component="unet", family="sd1", preset="all", rank=4, alpha=2.0)}
    try:
        with pytest.raises(LoRAFileError, match=f'is a {kind} but this run trains a lora; set lora.type = "{kind}"'):
            apply_lora_file(path, plain)
    finally:
        plain["unet"].remove()


def test_unsupported_lycoris_layouts_are_named(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "tucker.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.hada_w1_a": torch.zeros(4, 2), f"{name}.hada_w1_b": torch.zeros(2, 4),
               f"{name}.hada_w2_a": torch.zeros(4, 2), f"{name}.hada_w2_b": torch.zeros(2, 4),
               f"{name}.hada_t1": torch.zeros(2, 2, 3, 3)}, path)  # fmt: skip
    with pytest.raises(LoRAFileError, match=r"hada_t1.*Tucker"):
        load_lora_file(path)
    save_file({f"{name}.hada_w1_a": torch.zeros(4, 2), f"{name}.alpha": torch.tensor(1.0)}, path)
    with pytest.raises(LoRAFileError, match=f"module '{name}' has an incomplete or mixed set"):
        load_lora_file(path)


def test_inspect_names_the_type_and_convert_keeps_it_or_says_why_not(variant, tmp_path) -> None:
    import json

    from rich.console import Console

    from loratui.lora import convert_lora_file
    from loratui.lora.inspect import inspect_lora_file, inspection_json, render_inspection

    kind, networks = variant
    path = tmp_path / f"{kind}.safetensors"
    save_kohya(path, networks, {}, dtype=torch.float32)
    summary = inspect_lora_file(path)
    total = sum(len(n) for n in networks.values())
    assert summary["types"] == {kind: total}
    assert sum(summary["ranks"].values()) == total
    assert json.loads(inspection_json(summary))["types"] == {kind: total}
    console = Console(width=120, record=True)
    console.print(render_inspection(summary))
    assert {"dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}[kind] in console.export_text()
    # kohya -> kohya (e.g. to fp16) keeps every tensor of the type.
    half = convert_lora_file(path, tmp_path / "half.safetensors", "kohya", dtype=torch.float16)
    assert half.kinds == {kind: total}
    assert set(load_file(tmp_path / "half.safetensors")) == set(load_file(path))
    # The diffusers/PEFT format has no such tensors: refused, saying what to use.
    with pytest.raises(LoRAFileError, match=f"plain LoRA only, and these modules are {kind}.*kohya"):
        convert_lora_file(path, tmp_path / "d.safetensors", "diffusers")
    assert not (tmp_path / "d.safetensors").exists()


@pytest.mark.parametrize("base_id", ["linear", "conv3x3"])
def test_lycoris_default_output_axis_dora_is_read_as_lycoris_computes_it(base_id: str) -> None:
    from lycoris.modules.locon import LoConModule

    from loratui.lora.variants import adapter_for_tensors

    make_base, x_shape = BASES[base_id]
    torch.manual_seed(4)
    base = make_base()
    x = torch.randn(x_shape)
    ref = LoConModule("m", copy.deepcopy(base), 1.0, 4, 2.0, weight_decompose=True)  # wd_on_out=True
    g = torch.Generator().manual_seed(5)
    sd = {k: v if k == "alpha" else v + torch.randn(v.shape, generator=g) * 0.2 for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    ours = adapter_for_tensors(copy.deepcopy(base), "dora", {k: v for k, v in sd.items() if k != "alpha"},
                               float(sd["alpha"]))
    ours.load_file_tensors({k: v for k, v in sd.items() if k != "alpha"})
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_config_rules_for_the_type() -> None:
    from loratui.config import ConfigError, ProjectConfig, apply_override, cross_check

    cfg = ProjectConfig()
    assert cfg.lora.type == "lora" and cfg.lora.lokr_factor == -1
    with pytest.raises(ConfigError, match="must be one of lora, dora, loha, lokr, not 'lycoris'"):
        apply_override(cfg, "lora.type=lycoris")
    apply_override(cfg, "lora.type=loha")
    with pytest.raises(ConfigError, match='lora.type = "loha" needs save.format = "kohya"'):
        apply_override(cfg, "save.format=diffusers")
    cfg.save.format, cfg.lora.lokr_factor = "diffusers", 0
    problems = "\n".join(cross_check(cfg))
    assert 'lora.type = "loha" needs save.format = "kohya"' in problems
    assert "lora.lokr_factor must be -1 (even split) or a positive factor" in problems


def test_resume_of_a_checkpoint_from_before_the_type_existed_is_not_refused() -> None:
    from loratui.config import ProjectConfig
    from loratui.engine.compat import config_digest, describe_differences

    now = config_digest(ProjectConfig(), "data")
    old = {k: v for k, v in now.items() if k not in ("lora.type", "lora.lokr_factor")}
    assert describe_differences(old, now) == ([], [])
    changed = dict(now, **{"lora.type": "dora"})
    assert describe_differences(old, changed)[0] == ["lora.type: None → 'dora'"]


def test_sdxl_files_of_every_type_use_sgm_names_and_load_back(tmp_path) -> None:
    """SDXL: SGM UNet names and lora_te1_/lora_te2_ prefixes, whatever the adapter type."""
    from loratui.models.builtin import build_pipeline

    xl = build_pipeline("tiny-sdxl", tmp_path / "xl")
    roots = {"unet": xl.unet, "te1": xl.text_encoder, "te2": xl.text_encoder_2}
    ids = torch.arange(10).unsqueeze(0)
    for kind in ("dora", "loha", "lokr"):
        nets = {c: inject_lora(r, component=c, family="sdxl", preset="attention", rank=4, alpha=2.0, kind=kind)
                for c, r in roots.items()}  # fmt: skip
        for i, net in enumerate(nets.values()):
            _randomise(net, 10 + i)
        expected = xl.text_encoder_2(ids)[0].detach()
        path = tmp_path / f"xl-{kind}.safetensors"
        save_kohya(path, nets, {}, dtype=torch.float32)
        for net in nets.values():
            net.remove()
        assert not torch.allclose(xl.text_encoder_2(ids)[0], expected, atol=1e-4)  # the adapter did something
        lora = load_lora_file(path)
        assert lora.family == "sdxl" and lora.kinds == {kind: len(lora.modules)}
        assert any(n.startswith("lora_unet_input_blocks_") for n in lora.modules)
        assert {n.split("_text_model")[0] for n in lora.modules if "_te" in n} == {"lora_te1", "lora_te2"}
        loaded = inject_from_file(lora, roots)
        try:
            torch.testing.assert_close(xl.text_encoder_2(ids)[0], expected)
        finally:
            for net in loaded.values():
                net.remove()
