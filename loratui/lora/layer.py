"""One adapter around a frozen Linear or Conv2d layer, and the network of them in one model component.

The tensor layout is kohya's (``lora_down`` / ``lora_up`` submodules and a
0-dim ``alpha`` buffer) so a state dict maps onto the file format one to one;
the LyCORIS variants (DoRA, LoHa, LoKr) live beside this module and share
:class:`AdapterModule` and :class:`LoRANetwork`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

# LoRA factors are trained in float32 even when the base model runs in
# fp16/bf16: the updates are tiny relative to the weights and vanish when
# rounded to half precision, which is what makes half-precision LoRA unstable.
LORA_DTYPE = torch.float32


class AdapterModule(nn.Module):
    """What every adapter type shares: a frozen Linear/Conv2d, a rank, a 0-dim ``alpha`` and a multiplier.

    Subclasses name their trainable tensors by the suffix the file uses
    (``lora_down.weight``, ``dora_scale``, ``hada_w1_a``, ``lokr_w2``...), so a
    network's state dict maps onto a kohya/LyCORIS file one to one.
    """

    kind: ClassVar[str] = ""

    def __init__(self, base: nn.Module, rank: int, alpha: float | None) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"LoRA wraps nn.Linear or nn.Conv2d, not {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        if isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ValueError(
                    f"LoRA cannot wrap a grouped convolution (groups={base.groups}); "
                    "leave this layer out of the target preset"
                )
            if isinstance(base.padding, str):
                raise ValueError(f"LoRA needs numeric conv padding, got padding={base.padding!r}")
        # kohya reads a missing or zero alpha as alpha = rank (scale 1).
        if alpha is None or alpha == 0:
            alpha = float(rank)
        self.base = base
        self.rank = int(rank)
        self.multiplier = 1.0
        for p in base.parameters():
            p.requires_grad_(False)
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=LORA_DTYPE, device=base.weight.device))

    # -- what subclasses provide ----------------------------------------------

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable tensors by file suffix, in file order."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """The dense change to the base weight at multiplier 1, in its shape (float32)."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    # Code that peeks at a layer's weight (its dtype, its device) keeps
    # working when the layer is wrapped.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def lora_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter_parameters().values())

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by file suffix, detached (alpha is written by the network)."""
        return {suffix: p.detach() for suffix, p in self.adapter_parameters().items()}

    @torch.no_grad()
    def load_file_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        own = self.adapter_parameters()
        for suffix, value in tensors.items():
            if tuple(value.shape) != tuple(own[suffix].shape):
                raise ValueError(f"{suffix}: shape {list(value.shape)} does not fit {list(own[suffix].shape)}")
            own[suffix].copy_(value.to(own[suffix].dtype))

    def move_adapter(self, device: torch.device | str | None) -> None:
        for p in self.adapter_parameters().values():
            p.data = p.data.to(device)
            if p.grad is not None:
                p.grad.data = p.grad.data.to(device)
        self.alpha = self.alpha.to(device=device)

    def base_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base layer's operation with another weight and no bias."""
        if isinstance(self.base, nn.Linear):
            return F.linear(x, weight)
        b = self.base
        if b.padding_mode != "zeros":
            x = F.pad(x, b._reversed_padding_repeated_twice, mode=b.padding_mode)
            return F.conv2d(x, weight, None, b.stride, 0, b.dilation)
        return F.conv2d(x, weight, None, b.stride, b.padding, b.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Weight-space adapters (DoRA, LoHa, LoKr): build the dense change in
        # float32, then run it as the base layer's own op in the input dtype.
        out = self.base(x)
        if self.multiplier == 0.0:
            return out
        delta = self.delta_weight() * self.multiplier
        return out + self.base_op(x, delta.to(x.dtype)).to(out.dtype)

    # -- dtype policy ---------------------------------------------------------

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # model.half() / model.to(bfloat16) reach us through _apply; let the
        # base follow, then put the adapter tensors back to float32.
        super()._apply(fn, recurse)
        for tensor in (*self.adapter_parameters().values(), self.alpha):
            if tensor.is_floating_point() and tensor.dtype != LORA_DTYPE:
                tensor.data = tensor.data.to(LORA_DTYPE)
                if tensor.grad is not None:
                    tensor.grad.data = tensor.grad.data.to(LORA_DTYPE)
        return self

    def extra_repr(self) -> str:
        return f"type={self.kind}, rank={self.rank}, alpha={float(self.alpha):g}, multiplier={self.multiplier:g}"


def uniform_init_(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    """Kaiming-uniform (a=sqrt(5), as nn.Linear does) from ``generator`` on any device."""
    if weight.is_meta:
        return
    # kaiming_uniform_(a=sqrt(5)) reduces to this bound; spelled out so a
    # generator can be passed (reproducible init on any device).
    bound = 1.0 / math.sqrt(weight[0].numel())
    with torch.no_grad():
        if generator is not None and generator.device != weight.device:
            sample = torch.rand(weight.shape, generator=generator, device=generator.device, dtype=weight.dtype)
            weight.copy_(sample.to(weight.device) * (2 * bound) - bound)
        else:
            weight.uniform_(-bound, bound, generator=generator)


def normal_init_(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    if weight.is_meta:
        return
    with torch.no_grad():
        device = generator.device if generator is not None else weight.device
        sample = torch.randn(weight.shape, generator=generator, device=device, dtype=weight.dtype)
        weight.copy_(sample.to(weight.device) * std)


class LoRAModule(AdapterModule):
    """``base(x) + multiplier * (alpha / rank) * lora_up(lora_down(x))``.

    ``base`` stays frozen; only ``lora_down`` and ``lora_up`` train. At
    initialisation ``lora_up`` is zero, so the wrapped layer computes exactly
    what the base layer computes.
    """

    kind: ClassVar[str] = "lora"

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(base, rank, alpha)
        device = base.weight.device
        if isinstance(base, nn.Linear):
            self.lora_down: nn.Module = nn.Linear(base.in_features, rank, bias=False, device=device, dtype=LORA_DTYPE)
            self.lora_up: nn.Module = nn.Linear(rank, base.out_features, bias=False, device=device, dtype=LORA_DTYPE)
        else:
            self.lora_down = nn.Conv2d(
                base.in_channels,
                rank,
                kernel_size=base.kernel_size,
                stride=base.stride,
                padding=base.padding,
                dilation=base.dilation,
                padding_mode=base.padding_mode,
                bias=False,
                device=device,
                dtype=LORA_DTYPE,
            )
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, bias=False, device=device, dtype=LORA_DTYPE)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform ``lora_down`` (as nn.Linear does), zero ``lora_up``."""
        if self.lora_down.weight.is_meta:
            return
        uniform_init_(self.lora_down.weight, generator)
        with torch.no_grad():
            self.lora_up.weight.zero_()

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {"lora_down.weight": self.lora_down.weight, "lora_up.weight": self.lora_up.weight}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.multiplier == 0.0:
            return out
        # Under autocast the factors' matmuls cast both operands themselves: a float32 copy of x would be cast
        # straight back (two copies and their backward per layer). On a GPU the step is bound by the host
        # launching ops, so every op per layer counts (benchmarks/README.md, GPU section).
        h = x if torch.is_autocast_enabled(x.device.type) else x.to(self.lora_down.weight.dtype)
        delta = self.lora_up(self.lora_down(h))
        # alpha is a buffer so it travels with the state dict; as a 0-dim tensor it scales delta without a
        # host sync on CUDA and without changing delta's dtype.
        delta = delta * self.alpha * (self.multiplier / self.rank)
        return out + delta.to(out.dtype)

    def low_rank_weight(self) -> torch.Tensor:
        """``up @ down`` in the base weight's shape, unscaled (float32)."""
        down = self.lora_down.weight
        up = self.lora_up.weight
        if isinstance(self.base, nn.Linear):
            return up @ down
        # up is 1x1, so composing it after the down conv is a conv with
        # kernel up·down and the down conv's stride/padding.
        return torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)

    def delta_weight(self) -> torch.Tensor:
        """Dense ``(alpha / rank) * up @ down`` in the base weight's shape (float32).

        The runtime ``multiplier`` is not included: merging applies its own scale.
        """
        return self.low_rank_weight() * self.scale


# Tensors whose first dimension is the rank, for messages about a rank mismatch.
_RANK_SUFFIXES = ("lora_down.weight", "hada_w1_b", "lokr_w2_b")


class LoRANetwork(Mapping[str, AdapterModule]):
    """The LoRA modules injected into one model component, keyed by kohya name.

    Not an ``nn.Module`` on purpose: its state dict holds only LoRA tensors in
    kohya keys, never the frozen base weights the modules wrap.
    """

    def __init__(
        self,
        component: str,
        family: str,
        preset: str,
        modules: dict[str, AdapterModule],
        module_paths: dict[str, str],
        sites: dict[str, tuple[nn.Module, str, nn.Module]],
    ) -> None:
        self.component = component
        self.family = family
        self.preset = preset
        self._modules = dict(modules)
        # kohya name -> canonical diffusers/PEFT module path (for the diffusers format).
        self.module_paths = dict(module_paths)
        # kohya name -> (parent module, attribute, original child) for remove().
        self._sites = dict(sites)

    # -- mapping -----------------------------------------------------------------

    def __getitem__(self, name: str) -> AdapterModule:
        return self._modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        return f"LoRANetwork(component={self.component!r}, family={self.family!r}, preset={self.preset!r}, modules={len(self)})"

    # -- parameters ----------------------------------------------------------------

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Every trainable adapter tensor of every type (LoRA factors, DoRA magnitudes, LoHa/LoKr factors)."""
        for name, module in self._modules.items():
            for suffix, p in module.adapter_parameters().items():
                yield f"{name}.{suffix}", p

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def requires_grad_(self, flag: bool = True) -> LoRANetwork:
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def set_multiplier(self, multiplier: float) -> None:
        """Runtime strength for sampling; 0 gives the base model."""
        for module in self._modules.values():
            module.multiplier = float(multiplier)

    @property
    def ranks(self) -> dict[str, int]:
        return {name: m.rank for name, m in self._modules.items()}

    @property
    def kinds(self) -> set[str]:
        """The adapter types in this network (``lora``, ``dora``, ``loha``, ``lokr``)."""
        return {m.kind for m in self._modules.values()}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LoRANetwork:
        """Move the LoRA factors to ``device``; they stay float32 whatever ``dtype`` says.

        ``dtype`` is accepted so callers can treat this like ``nn.Module.to``;
        the compute dtype of the model is the base layers' dtype, which is set
        on the model itself.
        """
        for module in self._modules.values():
            module.move_adapter(device)
        return self

    # -- state dict ------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {}
        for name, module in self._modules.items():
            for suffix, tensor in module.file_tensors().items():
                sd[f"{name}.{suffix}"] = tensor
            sd[f"{name}.alpha"] = module.alpha.detach()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy kohya-keyed tensors in; returns (missing, unexpected) when not strict.

        A missing ``.alpha`` is read as alpha = rank, as every loader does.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict and not k.endswith(".alpha")]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [
            f"{k}: file {list(v.shape)} vs network {list(own[k].shape)}"
            for k, v in state_dict.items()
            if k in own and not k.endswith(".alpha") and tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatched:
            file_ranks = sorted({int(state_dict[k].shape[0]) for k in state_dict if k.endswith(_RANK_SUFFIXES)})
            raise ValueError(
                f"LoRA weights do not fit this {self.component} network ({len(mismatched)} shape mismatches, "
                f"file rank(s) {file_ranks}, network rank(s) {sorted(set(self.ranks.values()))}); set the rank "
                + ("and lora.lokr_factor " if "lokr" in self.kinds else "")
                + "to match the file. First mismatches: " + "; ".join(mismatched[:5])
            )
        if strict and (missing or unexpected):
            raise ValueError(
                f"LoRA weights do not match the {self.component} network ({self.preset} preset): "
                f"{len(missing)} missing keys, {len(unexpected)} unexpected keys. "
                f"Missing: {missing[:5]}; unexpected: {unexpected[:5]}. "
                "Pick the layer preset the file was trained with."
            )
        with torch.no_grad():
            for name, module in self._modules.items():
                own = {suffix: state_dict.get(f"{name}.{suffix}") for suffix in module.adapter_parameters()}
                if any(v is None for v in own.values()):
                    continue
                module.load_file_tensors(own)  # type: ignore[arg-type]
                alpha = state_dict.get(f"{name}.alpha")
                value = float(alpha.float().reshape(-1)[0]) if alpha is not None else float(module.rank)
                module.alpha.fill_(value)
        return missing, unexpected

    # -- removal ------------------------------------------------------------------------

    def remove(self) -> None:
        """Put the original layers back into the model; the network is empty afterwards."""
        for name, (parent, attr, original) in self._sites.items():
            if getattr(parent, attr) is self._modules[name]:
                setattr(parent, attr, original)
        self._sites.clear()
        self._modules.clear()
        self.module_paths.clear()
