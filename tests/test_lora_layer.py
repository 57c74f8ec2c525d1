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
