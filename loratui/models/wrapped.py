"""The model inside the wrappers training puts around it."""

from __future__ import annotations

from typing import Any


def unwrap_model(model: Any) -> Any:
    """The module inside DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers.

    A wrapper has neither the inner model's ``config`` nor its named children, so whatever a family reads from
    its model (FLUX-dev's guidance embedding, the block lists, CLIP's layers) is read through this.
    """
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
