"""Component parameter classes: attrs classes checked field by field, with errors that name the key.

A component declares its parameters as::

    @configclass
    class ResNetConfig:
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
        weights: str | None = "imagenet"
        depth: int = field(default=8, validator=positive)

:func:`make_config` builds one from a plain mapping (TOML, command line, checkpoint), checking that every key
exists (closest matches suggested), that each value fits the annotation (``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, ``X | None``, ``tuple[...]``/``list[...]``) and then running the field validators.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

import attrs

from .errors import ConfigError, MissingParameterError

field = attrs.field


def configclass(cls=None, /, **kwargs):
    """``attrs.frozen(kw_only=True)`` — the decorator for component parameter classes."""
    kwargs.setdefault("kw_only", True)

    def wrap(c):
        return attrs.frozen(c, **kwargs)

    return wrap if cls is None else wrap(cls)


#: attrs metadata key of a parameter that names a file or folder (see :func:`path_field`)
PATH_METADATA = "ssmad.path"


def path_field(default: Any = attrs.NOTHING, *, keywords: tuple[str, ...] = ("none",), **kwargs):
    """A parameter naming a file or folder, relative to the working directory unless absolute. ``keywords`` are
    its values that are not paths (``"imagenet"``, ``"none"``; compared without case). Applications make such
    values absolute when they store a configuration (:func:`absolute_paths`), so that it means the same from
    any working directory."""
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[PATH_METADATA] = tuple(k.lower() for k in keywords)
    return attrs.field(default=default, metadata=metadata, **kwargs)


def absolute_path(value: str, base: str | os.PathLike | None = None) -> str:
    """``value`` as an absolute path (``~`` expanded; relative to ``base``, default the working directory) when
    it names an existing file or folder; else ``value`` unchanged, so that whatever reads it reports the path as
    the user wrote it."""
    expanded = os.path.expanduser(value)
    candidate = os.path.abspath(os.path.join(os.fspath(base) if base is not None else os.getcwd(), expanded))
    return candidate if os.path.exists(candidate) else value


def absolute_paths(cls: type | None, params: Mapping[str, Any], base: str | os.PathLike | None = None
                   ) -> dict[str, Any]:
    """``params`` of the attrs config ``cls`` with the value of every :func:`path_field` made absolute by
    :func:`absolute_path` (a list of paths item by item); keywords, ``None`` and other parameters are kept."""
    out = dict(params)
    if cls is None:
        return out
    fields = attrs.fields_dict(cls)
    for key, value in params.items():
        f = fields.get(key)
        if f is None or PATH_METADATA not in f.metadata:
            continue
        keywords = f.metadata[PATH_METADATA]
        if isinstance(value, (list, tuple)):
            out[key] = [_absolute_unless(v, keywords, base) for v in value]
        else:
            out[key] = _absolute_unless(value, keywords, base)
    return out


def _absolute_unless(value: Any, keywords: tuple[str, ...], base) -> Any:
    return absolute_path(value, base) if isinstance(value, str) and value.lower() not in keywords else value


def closest(word: str, choices, n: int = 3) -> list[str]:
    """Choices ordered closest first (difflib), then the rest in their order."""
    choices = [str(c) for c in choices]
    near = difflib.get_close_matches(str(word), choices, n=len(choices), cutoff=0.0)[:n]
    return near + [c for c in choices if c not in near]


def suggest(word: str, choices) -> str:
    choices = list(choices)
    if not choices:
        return "(none available)"
    return ", ".join(closest(word, choices))


# ---- validators (usable in field(validator=...)) -------------------------------------------------------

def positive(inst, attribute, value):
    if value is not None and not value > 0:
        raise ValueError(f"parameter {attribute.name!r} must be > 0, got {value!r}")


def non_negative(inst, attribute, value):
    if value is not None and not value >= 0:
        raise ValueError(f"parameter {attribute.name!r} must be >= 0, got {value!r}")


def in_range(lo: float, hi: float):
    def check(inst, attribute, value):
        if value is not None and not lo <= value <= hi:
            raise ValueError(f"parameter {attribute.name!r} must be in [{lo}, {hi}], got {value!r}")

    return check


def non_empty(inst, attribute, value):
    if value is not None and len(value) == 0:
        raise ValueError(f"parameter {attribute.name!r} must not be empty")


# ---- type checking against annotations ----------------------------------------------------------------

def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = _describe(args[0]) if args else "values"
        return f"a list of {inner}"
    if tp is type(None):
        return "none (omit it)"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp) -> Any:
    """Return ``value`` fitted to annotation ``tp`` (lists become tuples, ints become floats) or raise."""
    if tp is Any or tp is typing.Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        bool_ok = any(isinstance(a, bool) for a in choices)
        if value in choices and (bool_ok or not isinstance(value, bool)):
            return value
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except (ValueError, TypeError):
                continue
        raise ValueError
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            out = tuple(coerce(v, args[0]) for v in value)
        elif args:
            if len(args) != len(value):
                raise ValueError
            out = tuple(coerce(v, a) for v, a in zip(value, args, strict=True))
        else:
            out = tuple(value)
        return out if origin is tuple else list(out)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ValueError
    return value


def make_config(cls: type, params: Mapping[str, Any] | None, where: str) -> Any:
    """Build the attrs config ``cls`` from ``params``; every error is a :class:`ConfigError` naming ``where``."""
    params = dict(params or {})
    fields = attrs.fields_dict(cls)
    hints = typing.get_type_hints(cls)
    unknown = [k for k in params if k not in fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{where}: unknown parameter {key!r}; allowed: {suggest(key, fields)}")
    values = {}
    for key, value in params.items():
        tp = hints.get(key, Any)
        try:
            values[key] = coerce(value, tp)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{where}: parameter {key!r} must be {_describe(tp)}, got {value!r}"
            ) from None
    missing = [k for k, f in fields.items() if f.init and f.default is attrs.NOTHING and k not in values]
    if missing:
        raise MissingParameterError(f"{where}: missing required parameter{'s' if len(missing) > 1 else ''} "
                                    f"{', '.join(repr(k) for k in missing)}", tuple(missing))
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_to_dict(cfg) -> dict[str, Any]:
    """Plain (TOML/JSON-friendly) parameters of a config instance; tuples become lists."""
    def plain(v):
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in attrs.asdict(cfg, recurse=False).items()}
