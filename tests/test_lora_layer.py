"""The LoRA layer: peft-equal numerics, identity at init, what trains, dtype policy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from loratui.lora.layer import LoRAModule

torch.set_num_threads(1)


def _peft_layer(base: nn.Module, rank: int, alpha: float) -> nn.Module:
    """peft's own LoRA layer around ``base``, built through peft's public API."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.Module()
    holder.layer = base
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["layer"]), holder)
    return holder.layer


def _randomised(module: LoRAModule, seed: int = 0) -> LoRAModule:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=g))
    return module


@pytest.mark.parametrize(
    "base, x_shape",
    [
        (nn.Linear(12, 10), (3, 5, 12)),
        (nn.Conv2d(6, 8, 3, padding=1), (2, 6, 7, 7)),
        (nn.Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 9, 9)),
        (nn.Conv2d(6, 8, 1), (2, 6, 5, 5)),
    ],
    ids=["linear", "conv3x3", "conv3x3-stride2", "conv1x1"],
)
def test_matches_peft_with_same_weights(base: nn.Module, x_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    rank, alpha = 4, 3.0
    ours = _randomised(LoRAModule(copy.deepcopy(base), rank, alpha))
    peft = _peft_layer(copy.deepcopy(base), rank, alpha)
    assert peft.lora_A["default"].weight.shape == ours.lora_down.weight.shape
    assert peft.lora_B["default"].weight.shape == ours.lora_up.weight.shape
    with torch.no_grad():
        peft.lora_A["default"].weight.copy_(ours.lora_down.weight)
        peft.lora_B["default"].weight.copy_(ours.lora_up.weight)
    x = torch.randn(x_shape)
    expected = peft(x)
    got = ours(x)
    assert not torch.allclose(got, base(x), atol=1e-3)  # the LoRA does something
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base", [nn.Linear(8, 6), nn.Conv2d(4, 6, 3, padding=1)], ids=["linear", "conv"])
def test_init_equals_base_and_multiplier_zero_too(base: nn.Module) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 8) if isinstance(base, nn.Linear) else torch.randn(2, 4, 6, 6)
    reference = base(x).detach()
    module = LoRAModule(base, 4, 1.0)
    assert module.lora_down.weight.abs().sum() > 0  # kaiming-uniform, not zero
    assert torch.equal(module(x), reference)
    _randomised(module)
    assert not torch.allclose(module(x), reference)
    module.multiplier = 0.0
    assert torch.equal(module(x), reference)


def test_only_lora_parameters_train_and_get_gradients() -> None:
    base = nn.Linear(8, 8)
    module = _randomised(LoRAModule(base, 2, 2.0))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"lora_down.weight", "lora_up.weight"}
    module(torch.randn(4, 8)).square().sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert module.lora_down.weight.grad is not None and module.lora_up.weight.grad is not None
    assert module.alpha.ndim == 0 and not module.alpha.requires_grad


def test_generator_makes_init_reproducible() -> None:
    a = LoRAModule(nn.Linear(8, 8), 4, generator=torch.Generator().manual_seed(7))
    b = LoRAModule(nn.Linear(8, 8), 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.lora_down.weight, b.lora_down.weight)
    assert float(a.alpha) == 4.0  # alpha None -> rank, as kohya does


def test_half_precision_base_keeps_float32_lora() -> None:
    model = nn.Sequential(LoRAModule(nn.Linear(8, 8), 4, 4.0))
    model.to(torch.bfloat16)
    lora = model[0]
    assert lora.base.weight.dtype == torch.bfloat16
    assert lora.lora_down.weight.dtype == torch.float32 and lora.lora_up.weight.dtype == torch.float32
    assert lora.alpha.dtype == torch.float32
    out = model(torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert lora.lora_up.weight.grad is not None and lora.lora_up.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("base", [nn.Linear(8, 6), nn.Conv2d(4, 6, 3, stride=2, padding=1)], ids=["linear", "conv"])
def test_delta_weight_is_the_dense_update(base: nn.Module) -> None:
    torch.manual_seed(2)
    module = _randomised(LoRAModule(base, 3, 1.5))
    x = torch.randn(2, 8) if isinstance(base, nn.Linear) else torch.randn(2, 4, 9, 9)
    merged = copy.deepcopy(base)
    with torch.no_grad():
        merged.weight += module.delta_weight()
    torch.testing.assert_close(merged(x), module(x), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(3)
    module = _randomised(LoRAModule(nn.Linear(8, 8), 4, 4.0))
    x = torch.randn(4, 8)
    module(x).square().sum().backward()
    plain = module.lora_down.weight.grad.clone()
    module.lora_down.weight.grad = None
    checkpoint(module, x, use_reentrant=False).square().sum().backward()
    torch.testing.assert_close(module.lora_down.weight.grad, plain)


def _tiny_model() -> nn.Module:
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
    return model


def _network(model: nn.Module, rank: int = 2):
    from loratui.lora.layer import LoRANetwork

    modules, paths, sites = {}, {}, {}
    for i, layer in enumerate(list(model.encoder.layers)):
        name = f"lora_te_text_model_encoder_layers_{i}_mlp_fc1"
        modules[name] = LoRAModule(layer, rank, 1.0)
        model.encoder.layers[i] = modules[name]
        paths[name] = f"text_model.encoder.layers.{i}.mlp.fc1"
        sites[name] = (model.encoder.layers, str(i), layer)
    return LoRANetwork("te", "sd1", "attention", modules, paths, sites)


def test_network_state_dict_errors_name_the_keys() -> None:
    model = _tiny_model()
    originals = list(model.encoder.layers)
    net = _network(model)
    sd = net.state_dict()
    assert sorted(sd)[:3] == [
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
    ]
    assert net.num_parameters() == 2 * (2 * 4 + 4 * 2)
    partial = {k: v for k, v in sd.items() if "layers_1" not in k}
    partial["lora_te_bogus.lora_down.weight"] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"2 missing keys, 1 unexpected.*layers_1.*lora_te_bogus"):
        net.load_state_dict(partial)
    bigger = {k: torch.zeros(8, 4) if k.endswith("lora_down.weight") else v for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"file rank\(s\) \[8\], network rank\(s\) \[2\]"):
        net.load_state_dict(bigger)
    net.remove()
    assert list(model.encoder.layers) == originals


def test_network_to_keeps_float32_and_multiplier_applies() -> None:
    model = _tiny_model()
    net = _network(model)
    model.to(torch.float16)
    net.to("cpu", dtype=torch.float16)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    net.set_multiplier(0.25)
    assert all(m.multiplier == 0.25 for m in net.values())
