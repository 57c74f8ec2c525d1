"""The base storage formats of ``model.base_precision``: bytes, accuracy and the gradient through them."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from loratui.memory.precision import PRECISIONS, stored_bytes
from loratui.memory.stored import StoredLinear, store_linear

torch.set_num_threads(1)

FORMATS = ["bf16", "fp8", "fp8-scaled", "int8", "int4"]
if importlib.util.find_spec("bitsandbytes") is not None:
    FORMATS.append("nf4")  # bitsandbytes quantizes on a CPU too; training with it is kept to CUDA

# Largest error of the rebuilt weight, relative to the row's largest weight (Gaussian weights).
TOLERANCE = {"bf16": 0.004, "fp8": 0.07, "fp8-scaled": 0.07, "int8": 0.005, "int4": 0.07, "nf4": 0.16}


def layer(out_features: int = 96, in_features: int = 256, seed: int = 0) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_features, out_features)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.05)
    return lin.requires_grad_(False)


@pytest.mark.parametrize("precision", FORMATS)
@pytest.mark.parametrize("shape", [(96, 256), (32, 32), (33, 17)])
def test_stored_tensors_take_exactly_the_bytes_the_planner_counts(precision: str, shape: tuple[int, int]) -> None:
    lin = layer(*shape)
    store_linear(lin, precision)
    assert isinstance(lin, StoredLinear)
    measured = sum(t.numel() * t.element_size() for t in lin.stored_tensors().values())
    assert measured == stored_bytes(precision, *shape) == lin.stored_bytes()
    # Nothing else of the weight is left behind: the module's tensors are the stored ones plus the bias.
    held = {n: t for n, t in lin.state_dict().items() if n != "bias"}
    assert sum(t.numel() * t.element_size() for t in held.values()) == measured


@pytest.mark.parametrize("precision", FORMATS)
def test_rebuilt_weight_is_close_and_the_input_gradient_uses_it(precision: str) -> None:
    lin = layer()
    dense = lin.weight.detach().clone()
    x = torch.randn(5, 256, requires_grad=True)
    store_linear(lin, precision)
    rebuilt = lin.dense(torch.float32)
    err = ((rebuilt - dense).abs().amax(dim=1) / dense.abs().amax(dim=1)).max().item()
    assert err < TOLERANCE[precision], err
    if precision != "bf16":
        assert err > 0  # it really is stored in fewer bits
    half = lin.dense(torch.bfloat16)  # what a GPU step rebuilds: bf16, close to the float32 rebuild
    assert half.dtype == torch.bfloat16
    assert (half.float() - rebuilt).abs().max() <= 0.01 * rebuilt.abs().max()
    out = lin(x)
    assert torch.allclose(out, x @ rebuilt.T + lin.bias, atol=1e-5)
    out.square().sum().backward()
    expected = (2 * (x @ rebuilt.T + lin.bias)) @ rebuilt
    assert torch.allclose(x.grad, expected, atol=1e-4)


def test_moving_the_model_to_bf16_keeps_the_storage() -> None:
    model = nn.Sequential(layer())
    store_linear(model[0], "fp8-scaled")
    model.to(torch.bfloat16)
    stored = model[0].stored_tensors()
    assert stored["qweight"].dtype == torch.float8_e4m3fn and stored["qscale"].dtype == torch.float32
    assert model[0].bias.dtype == torch.bfloat16


def test_precisions_table_names_every_config_choice() -> None:
    from loratui.config.schema import ModelConfig
    from dataclasses import fields

    choices = next(f for f in fields(ModelConfig) if f.name == "base_precision").metadata["choices"]
    assert set(choices) - {"auto"} == set(PRECISIONS)


def test_scaled_fp8_keeps_small_weights_that_a_plain_cast_loses() -> None:
    from loratui.memory.stored import dequantize, quantize

    gen = torch.Generator().manual_seed(0)
    for std, plain_worse_than in ((0.002, 0.2), (1.0, 0.0)):
        w = torch.randn(256, 256, generator=gen) * std

        def error(precision: str) -> float:
            rebuilt = dequantize(quantize(w, precision), precision, tuple(w.shape), torch.float32)
            return float((rebuilt - w).norm() / w.norm())

        assert error("fp8-scaled") < 0.03
        assert error("fp8") > plain_worse_than
