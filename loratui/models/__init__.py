"""Base models: the built-in tiny ones, loading, family detection, text encoding.

Importing this package is cheap; torch, diffusers and transformers load with
the submodules that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loratui.models.builtin import BUILTIN_MODELS, ensure_builtin
    from loratui.models.loader import LoadedModel, load_model
    from loratui.models.probe import ModelInfo, ModelLoadError, probe_model
    from loratui.models.text import TextEmbedding, encode_prompts, encode_tokens, tokenize

_EXPORTS = {
    "BUILTIN_MODELS": "builtin",
    "ensure_builtin": "builtin",
    "LoadedModel": "loader",
    "ModelInfo": "probe",
    "ModelLoadError": "probe",
    "load_model": "loader",
    "probe_model": "probe",
    "TextEmbedding": "text",
    "encode_prompts": "text",
    "encode_tokens": "text",
    "tokenize": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy so the TUI can import loratui.models without paying for torch.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loratui.models' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"loratui.models.{module}"), name)
