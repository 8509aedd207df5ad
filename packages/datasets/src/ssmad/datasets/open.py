"""``open_dataset("KIND:PATH", **params)``: the command-line way to name a dataset."""

from __future__ import annotations

from typing import Any

from ssmad.core import ConfigError, build, registry, suggest

from .base import AnomalyDataset


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"mvtec:/data/mvtec"`` → ``("mvtec", "/data/mvtec")``; ``"demo"`` → ``("demo", None)``.

    Only the first ``:`` separates, so the path may contain colons."""
    text = spec.strip()
    if not text:
        raise ConfigError("dataset spec is empty; expected KIND:PATH (e.g. mvtec:/data/mvtec) or demo")
    kind, sep, path = text.partition(":")
    kind = kind.strip().lower()
    path = path.strip()
    if sep and not path:
        raise ConfigError(f"dataset spec {spec!r}: no path after ':'; expected KIND:PATH")
    return kind, (path if sep else None)


def open_dataset(spec: str, **params: Any) -> AnomalyDataset:
    """Build a registered dataset from ``KIND:PATH`` (``mvtec:/data/mvtec``, ``mtd:/data/mt``, ``demo``).

    ``PATH`` becomes ``root``; ``params`` are the dataset's other parameters (``category=...``)."""
    kind, path = parse_spec(spec)
    names = sorted(c.name for c in registry().components("dataset"))
    if kind not in names:
        raise ConfigError(f"dataset spec {spec!r}: unknown dataset kind {kind!r}; available: {suggest(kind, names)}")
    if path is not None:
        if "root" in params and params["root"] != path:
            raise ConfigError(f"dataset spec {spec!r}: root given twice ({path!r} and {params['root']!r})")
        params["root"] = path
    elif kind != "demo" and "root" not in params and kind != "folder":
        raise ConfigError(f"dataset spec {spec!r}: expected {kind}:PATH (the dataset folder)")
    return build("dataset", kind, **params)
