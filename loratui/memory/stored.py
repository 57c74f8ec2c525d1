"""Frozen Linear weights held in a smaller format and rebuilt, one layer at a time, for each use.

Every format of ``model.base_precision`` is stored exactly as
:mod:`loratui.memory.precision` describes it (a test counts the bytes), in
plain torch except NF4, which is bitsandbytes' own:

- ``bf16``: the weight rounded to bf16.
- ``fp8``: a plain cast to float8 E4M3, as sd-scripts' ``--fp8_base``.
- ``fp8-scaled``: E4M3 with one float32 scale per 128 weights (amax / 448),
  so small and large rows both use the whole float8 range.
- ``int8``: symmetric per output row, the scale in bf16.
- ``int4``: asymmetric per 128 weights (bf16 scale and minimum), two weights a byte.
- ``nf4``: bitsandbytes' NormalFloat4, 64 weights per float32 absmax, no double quantization.

Why not torchao: 0.18 (the current release) has no int4 weight-only layout
that runs on a CPU (``plain``/``preshuffled`` need the mslk package,
``plain_int32`` refuses the CPU, ``tile_packed_to_4d`` is CUDA and bf16
only; the old CPU layout was removed), and its eager int8 weight-only linear
is ``mm(x, int8.to(bf16)) * scale``, which is what this module does too; its
configuration API has changed shape more than once. Here the same bytes train on
a CPU and a GPU, with no extra package.

The rebuilt weight is never kept for the backward pass: :class:`_StoredMatmul`
rebuilds it again there, so a quantized base costs its stored bytes plus one
layer's dense weight, not a dense copy of every layer held for backward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from loratui.lora.layer import AdapterModule
from loratui.memory.precision import PRECISIONS

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def _groups(w: torch.Tensor, group: int) -> torch.Tensor:
    """The flattened weight as rows of ``group`` values, zero-padded at the end (real layers need no padding)."""
    flat = w.reshape(-1)
    pad = -flat.numel() % group
    if pad:
        flat = F.pad(flat, (0, pad))
    return flat.view(-1, group)


def quantize(w: torch.Tensor, precision: str) -> dict[str, torch.Tensor]:
    """The stored tensors of one weight; the keys become the layer's buffers."""
    w = w.detach().float()
    if precision == "bf16":
        return {"qweight": w.to(torch.bfloat16)}
    if precision == "fp8":
        return {"qweight": w.to(FP8)}
    if precision == "fp8-scaled":
        g = _groups(w, PRECISIONS[precision].group or 1)
        amax = g.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        q = (g / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).reshape(-1)[: w.numel()]
        return {"qweight": q, "qscale": scale}
    if precision == "int8":
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(torch.bfloat16)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        return {"qweight": q, "qscale": scale}
    if precision == "int4":
        g = _groups(w, PRECISIONS[precision].group or 1)
        low, high = g.amin(dim=1), g.amax(dim=1)
        scale = ((high - low) / 15).to(torch.bfloat16)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        low = low.to(torch.bfloat16)
        q = torch.round((g - low.float()[:, None]) / scale.float()[:, None]).clamp(0, 15).to(torch.uint8)
        q = q.reshape(-1)[: w.numel()]
        if q.numel() % 2:
            q = F.pad(q, (0, 1))
        packed = q[0::2] | (q[1::2] << 4)
        return {"qweight": packed, "qscale": scale, "qmin": low}
    if precision == "nf4":
        import bitsandbytes.functional as bnbf  # type: ignore[import-not-found]

        packed, state = bnbf.quantize_4bit(w.to(torch.bfloat16), blocksize=PRECISIONS[precision].group,
                                           compress_statistics=False, quant_type="nf4")
        return {"qweight": packed.reshape(-1), "qscale": state.absmax.float()}
    raise ValueError(f"unknown base precision {precision!r}")


def dequantize(stored: dict[str, torch.Tensor], precision: str, shape: tuple[int, int],
               dtype: torch.dtype) -> torch.Tensor:
    """The dense ``shape`` weight in ``dtype`` from the stored tensors."""
    q = stored["qweight"]
    numel = shape[0] * shape[1]
    if precision in ("bf16", "fp8"):
        return q.to(dtype).view(shape)
    # The rebuild runs in the dtype asked for: in bf16 on a GPU its rounding (0.4 %) is far below the
    # format's own, and a layer's temporaries stay at two bytes a weight.
    if precision == "fp8-scaled":
        g = _groups(q.to(dtype), PRECISIONS[precision].group or 1)
        return (g * stored["qscale"].to(dtype)[:, None]).reshape(-1)[:numel].view(shape)
    if precision == "int8":
        return q.to(dtype) * stored["qscale"].to(dtype)[:, None]
    if precision == "int4":
        nibbles = torch.stack((q & 15, q >> 4), dim=1).reshape(-1)[:numel]
        g = _groups(nibbles.to(dtype), PRECISIONS[precision].group or 1)
        w = g * stored["qscale"].to(dtype)[:, None] + stored["qmin"].to(dtype)[:, None]
        return w.reshape(-1)[:numel].view(shape)
    if precision == "nf4":
        import bitsandbytes.functional as bnbf  # type: ignore[import-not-found]

        state = bnbf.QuantState(absmax=stored["qscale"], shape=torch.Size(shape), blocksize=PRECISIONS[precision].group,
                                quant_type="nf4", dtype=torch.bfloat16, code=bnbf.get_4bit_type("nf4", q.device))
        return bnbf.dequantize_4bit(q.view(-1, 1), state).to(dtype)
    raise ValueError(f"unknown base precision {precision!r}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Under autocast the matmul runs in autocast's dtype anyway: rebuild the weight straight into it.
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _StoredMatmul(torch.autograd.Function):
    """``x @ W.T`` with W rebuilt from storage in the forward and again in the backward, never saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: StoredLinear) -> torch.Tensor:  # type: ignore[override]
        dtype = _compute_dtype(x)
        ctx.layer, ctx.dtype, ctx.x_dtype = layer, dtype, x.dtype
        return F.linear(x.to(dtype), layer.dense(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        # The base is frozen: only the input's gradient is wanted, grad @ W.
        return (grad.to(ctx.dtype) @ ctx.layer.dense(ctx.dtype)).to(ctx.x_dtype), None


class StoredLinear(nn.Linear):
    """A frozen nn.Linear whose weight lives as ``qweight`` (+ ``qscale``, ``qmin``) buffers in one format.

    Made from an existing nn.Linear in place (:func:`store_linear`), so module
    names, the bias and any LoRA wrapped around it stay as they were.
    """

    precision: str
    shape: tuple[int, int]

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        # For code that reads a base weight (DoRA's norm, LoHa's shape, the LoRA factors' device): the dense
        # weight, rebuilt on demand. The training forward does not come through here.
        return self.dense(torch.float32)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {name: buf for name, buf in self._buffers.items() if name.startswith("q") and buf is not None}

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_tensors().values())

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.stored_tensors(), self.precision, self.shape, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _StoredMatmul.apply(x, self)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # model.to(bfloat16) must not undo the storage format: moves keep each stored tensor's dtype.
        dtypes = {name: t.dtype for name, t in self.stored_tensors().items()}
        super()._apply(fn, recurse)
        for name, dtype in dtypes.items():
            buf = self._buffers[name]
            if buf is not None and buf.dtype != dtype:
                self._buffers[name] = buf.to(dtype)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored={self.precision}"


def store_linear(layer: nn.Linear, precision: str, *, work_device: torch.device | str | None = None,
                 keep_device: torch.device | str | None = None) -> int:
    """Turn ``layer`` into a StoredLinear in ``precision``; returns the bytes its weight took before.

    The arithmetic runs on ``work_device`` (the GPU when there is one: one layer's float32 copy at a time)
    and the stored tensors end on ``keep_device`` (the host for a block that will be swapped).
    """
    weight = layer.weight
    before = weight.numel() * weight.element_size()
    work = work_device if work_device is not None else weight.device
    keep = keep_device if keep_device is not None else weight.device
    stored = quantize(weight.detach().to(work), precision)
    shape = (layer.out_features, layer.in_features)
    del layer._parameters["weight"]
    layer.__class__ = StoredLinear
    layer.precision, layer.shape = precision, shape
    for name, tensor in stored.items():
        layer.register_buffer(name, tensor.to(keep))
    if layer.bias is not None:
        layer.bias.requires_grad_(False)
        layer.bias.data = layer.bias.data.to(keep)
    return before


def block_linears(block: nn.Module) -> Iterator[nn.Linear]:
    """The plain nn.Linear layers inside one transformer block: a LoRA's base, never its factors (those
    train in float32); layers already stored are left as they are."""
    if isinstance(block, AdapterModule):
        yield from block_linears(block.base)
        return
    if type(block) is nn.Linear:
        yield block
        return
    for child in block.children():
        yield from block_linears(child)
