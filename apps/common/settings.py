"""The ``[train]`` and ``[method]`` sections as attrs classes, checked like a component's parameters.

A section is a frozen attrs class whose fields are made with :func:`setting`: a default (the value for
configurations stored before the key existed), a check and the words for what is allowed. :func:`read_section`
builds one from a configuration's section: an unknown key is a ConfigError listing the allowed keys closest first
(``config: unknown key train.lrr; allowed: lr, ...``), a bad value one naming the key and what it may be
(``config: train.lr must be a number > 0, got -1``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from ssmad.core import ConfigError, suggest
from ssmad.core.device import PRECISIONS

T = TypeVar("T")
NUMBER = (int, float)
_META = "ssmad.setting"


def setting(default: Any, types: type | tuple[type, ...], check: Callable[[Any], bool] | None, what: str,
            convert: Callable[[Any], Any] | None = None):
    """An attrs field of a settings class: ``default``, the allowed ``types`` (a bool is never a number), a
    ``check`` of the value and ``what`` the message says it must be; ``convert`` turns the checked value into the
    attribute (e.g. ``float``)."""
    return attrs.field(default=default, metadata={_META: (types, check, what, convert)})


def read_section(cls: type[T], config: Mapping[str, Any], section: str) -> T:
    """``cls`` built from ``config[section]`` (missing keys take their defaults), checked key by key."""
    values = dict(config.get(section) or {})
    fields = attrs.fields_dict(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"config: unknown key {section}.{unknown[0]}; allowed: {suggest(unknown[0], fields)}")
    out = {}
    for name, f in fields.items():
        if name not in values:
            continue
        types, check, what, convert = f.metadata[_META]
        value = values[name]
        allowed = types if isinstance(types, tuple) else (types,)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed) or (
                check is not None and not check(value)):
            raise ConfigError(f"config: {section}.{name} must be {what}, got {value!r}")
        out[name] = convert(value) if convert is not None else value
    return cls(**out)


def is_weight(value: Any) -> bool:
    """A weight: a finite number >= 0 (not a bool)."""
    return isinstance(value, NUMBER) and not isinstance(value, bool) and 0 <= value < float("inf")


#: train.select: keep the last epoch's model, or the epoch whose model scores best on held-out normal images with
#: synthetic anomalies (methods with Method.validation_score only)
SELECT = ("last", "best")
#: ``train.memory_format``: of the networks' 4-D weights and inputs; "auto" is channels-last (the faster layout of
#: convolutions on CPUs and GPUs alike, measured in docs/speed.md)
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@attrs.frozen(kw_only=True)
class TrainSettings:
    """``[train]``: the training loop's settings (the defaults are for configurations stored before a key existed;
    every app's pipeline.toml sets them all)."""

    epochs: int = setting(1, int, lambda v: v >= 1, "an integer >= 1")
    batch_size: int = setting(8, int, lambda v: v >= 1, "an integer >= 1")
    eval_batch_size: int = setting(8, int, lambda v: v >= 1, "an integer >= 1")
    lr: float = setting(1e-4, NUMBER, lambda v: v > 0, "a number > 0", float)
    weight_decay: float = setting(0.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    seed: int = setting(0, int, lambda v: v >= 0, "an integer >= 0")
    val_fraction: float = setting(0.1, NUMBER, lambda v: 0 <= v < 1, "a number in [0, 1)", float)
    threshold_quantile: float = setting(0.99, NUMBER, lambda v: 0 < v <= 1, "a number in (0, 1]", float)
    workers: int = setting(0, int, lambda v: v >= 0, "an integer >= 0")
    log_every_s: float = setting(10.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    max_minutes: float = setting(0, NUMBER, lambda v: v >= 0, "a number >= 0 (0: no time limit)")
    select: str = setting("last", str, lambda v: v in SELECT, f"one of {', '.join(repr(v) for v in SELECT)}")
    select_images: int = setting(32, int, lambda v: v >= 1, "an integer >= 1")
    precision: str = setting("fp32", str, lambda v: v in PRECISIONS, f"one of {', '.join(map(repr, PRECISIONS))}")
    memory_format: str = setting("contiguous", str, lambda v: v in MEMORY_FORMATS,
                                 f"one of {', '.join(map(repr, MEMORY_FORMATS))}")
