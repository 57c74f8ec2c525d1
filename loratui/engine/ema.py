"""An exponential moving average of the LoRA weights (``train.ema_decay``).

After every optimizer step that changed the weights, ``ema = decay · ema + (1 − decay) · weights``,
starting from the weights the run began with. The average is kept in fp32 whatever the training
precision, on the weights' device, and saved in every checkpoint, so a resumed run continues the
same average. Samples are drawn with it when it is on, and the final export writes it beside the
raw LoRA as ``output/NAME-ema.safetensors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class LoraEMA:
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1, not {decay}")
        self.decay = decay
        self._params = named_params
        self.shadow: dict[str, torch.Tensor] = {k: p.detach().float().clone() for k, p in named_params}

    @torch.no_grad()
    def update(self, skipped: torch.Tensor | None = None) -> None:
        """One step of the average. ``skipped`` (a 0-dim tensor, 1.0 when the optimizer skipped a
        non-finite update) leaves it unchanged without making the host wait for the GPU."""
        shadows = list(self.shadow.values())
        weights = [p.detach().float() for _, p in self._params]
        # One fused launch per operation for all tensors, not two per LoRA factor.
        if skipped is None:
            torch._foreach_mul_(shadows, self.decay)
            torch._foreach_add_(shadows, weights, alpha=1.0 - self.decay)
            return
        step = (1.0 - self.decay) * (1.0 - skipped.to(shadows[0].device, torch.float32))
        torch._foreach_mul_(shadows, 1.0 - step)
        torch._foreach_add_(shadows, torch._foreach_mul(weights, step))

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the current weights."""
        for key, p in self._params:
            self.shadow[key].copy_(p.detach().float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"the saved EMA lacks {len(missing)} LoRA tensors (first: {missing[0]})")
        for key, value in self.shadow.items():
            value.copy_(state[key].to(value.device, torch.float32))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the LoRA holds the averaged weights; afterwards exactly the training weights again."""
        kept = [p.detach().clone() for _, p in self._params]
        with torch.no_grad():
            for key, p in self._params:
                p.copy_(self.shadow[key].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), saved in zip(self._params, kept):
                    p.copy_(saved)
