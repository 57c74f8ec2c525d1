"""Gradient checkpointing of every Nth UNet unit: less memory than none, same gradients."""

from __future__ import annotations

import pytest
import torch

from loratui.engine.grad_checkpoint import EveryNth, enable_unet_checkpointing
from loratui.models.builtin import _sd_unet

torch.set_num_threads(1)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]),
            torch.randn(2, 7, 32, generator=g))


def _saved_bytes_and_grads(every: int | None) -> tuple[int, int, dict[str, torch.Tensor]]:
    """Bytes autograd keeps for backward in two forwards (outside checkpoints), and the gradients."""
    unet = _sd_unet(cross_attention_dim=32, linear_projection=False)
    if every is not None:
        enable_unet_checkpointing(unet, every)
    unet.train()
    sample, t, text = _inputs()
    sizes: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes[-1] += tensor.numel() * tensor.element_size()
        return tensor

    per_forward = []
    for _ in range(2):
        unet.zero_grad(set_to_none=True)
        sizes.append(0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = unet(sample, t, encoder_hidden_states=text).sample
        out.square().mean().backward()
        per_forward.append(sizes[-1])
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
    return per_forward[0], per_forward[1], grads


def test_every_nth_trades_memory_for_recomputation_and_keeps_gradients(record_property) -> None:
    none_a, none_b, reference = _saved_bytes_and_grads(None)
    all_a, all_b, grads_all = _saved_bytes_and_grads(1)
    half_a, half_b, grads_half = _saved_bytes_and_grads(2)
    third_a, third_b, grads_third = _saved_bytes_and_grads(3)

    # The same units are recomputed at every step: the count starts over with each forward.
    assert (none_a, all_a, half_a, third_a) == (none_b, all_b, half_b, third_b)
    assert all_a < half_a < third_a < none_a
    for grads in (grads_all, grads_half, grads_third):
        assert grads.keys() == reference.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)
    record_property("summary", f"gradient checkpointing on the tiny UNet keeps {all_a / none_a:.0%} (every "
                               f"block), {half_a / none_a:.0%} (every 2nd), {third_a / none_a:.0%} (every 3rd) "
                               "of the activations; gradients equal to no checkpointing")


def test_interval_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EveryNth(0)
