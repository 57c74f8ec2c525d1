"""The project configuration, ``loratui.toml``: its declared fields (``schema``) and how a
file becomes a checked ``ProjectConfig`` and back (``loading``)."""

from __future__ import annotations

from loratui.config.loading import (apply_override, coerce_value, config_from_dict, cross_check, load_config,
                                    migrate, save_config)
from loratui.config.schema import (CONFIG_NAME, SECTIONS, TOP_LEVEL, AdvisorConfig, ConceptConfig, ConfigError,
                                   DataConfig, FieldSpec, LoggingConfig, LoraConfig, ModelConfig, NotifyConfig,
                                   ProjectConfig, SampleConfig, SamplePrompt, SaveConfig, TrainConfig,
                                   ValidationConfig, concept_specs, field_spec, field_specs)

__all__ = [
    "CONFIG_NAME", "SECTIONS", "TOP_LEVEL", "AdvisorConfig", "ConceptConfig", "ConfigError", "DataConfig",
    "FieldSpec", "LoggingConfig", "LoraConfig", "ModelConfig", "NotifyConfig", "ProjectConfig", "SampleConfig",
    "SamplePrompt", "SaveConfig", "TrainConfig", "ValidationConfig", "concept_specs", "field_spec", "field_specs",
    "apply_override", "coerce_value", "config_from_dict", "cross_check", "load_config", "migrate", "save_config",
]
