"""ssmad core: plugin registry, component configs, shared records and errors.

    from ssmad.core import build, components
    backbone = build("backbone", "resnet50", layers=["layer1", "layer2", "layer3"])
"""

from __future__ import annotations

from .configs import (
                      absolute_path,
                      absolute_paths,
                      closest,
                      config_to_dict,
                      configclass,
                      field,
                      in_range,
                      make_config,
                      non_empty,
                      non_negative,
                      path_field,
                      positive,
                      suggest,
)
from .errors import (
                      CheckpointError,
                      ConfigError,
                      DataError,
                      MissingParameterError,
                      PluginWarning,
                      SsmadError,
                      TrainingError,
                      UnknownComponentError,
)
from .hookspecs import hookimpl, hookspec
from .records import AnomalyOutput, Sample
from .registry import KINDS, ComponentInfo, Registry, build, build_spec, components, describe, registry, reset_registry
from .text import fmt_time

__version__ = "0.7.0"

__all__ = [
    "KINDS", "AnomalyOutput", "CheckpointError", "ComponentInfo", "ConfigError", "DataError", "MissingParameterError",
    "PluginWarning", "Registry", "Sample", "SsmadError", "TrainingError", "UnknownComponentError", "absolute_path",
    "absolute_paths",
    "build", "build_spec", "closest",
    "components", "config_to_dict", "configclass", "describe", "field", "fmt_time", "hookimpl", "hookspec", "in_range",
    "make_config", "non_empty", "non_negative", "path_field", "positive", "registry", "reset_registry", "suggest",
]
