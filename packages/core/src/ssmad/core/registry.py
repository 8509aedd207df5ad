"""The component registry: pluggy hooks fed by the ``ssmad`` entry-point group.

Built-in packages (distributions named ``ssmad-*``, listed in :data:`BUILTIN_DISTRIBUTIONS`) are registered
first, third-party plugins after them, so a third-party component with an existing ``(kind, name)`` overrides
the built-in one. ``SSMAD_PLUGINS`` restricts discovery:

- unset or ``all``: every distribution with an ``ssmad`` entry point;
- ``builtin`` (or ``none``): only the ssmad packages themselves;
- ``builtin,my-dist,other-dist``: the ssmad packages plus the named distributions.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .configs import absolute_paths, make_config, suggest
from .errors import ConfigError, PluginWarning, UnknownComponentError

KINDS = ("backbone", "scan", "mixer", "reconstructor", "autoencoder", "synth", "head", "score", "smooth",
         "normaliser", "distance", "fusion", "dataset", "metric")
#: kinds that were split, and what they became (an error names the new kinds)
RETIRED_KINDS = {"postprocess": ("score", "smooth", "normaliser")}
ENTRY_POINT_GROUP = "ssmad"
ENV_VAR = "SSMAD_PLUGINS"
BUILTIN_DISTRIBUTIONS = frozenset({
    "ssmad", "ssmad-core", "ssmad-ssm", "ssmad-backbones", "ssmad-synth", "ssmad-heads", "ssmad-scoring",
    "ssmad-datasets",
})


def _unknown_kind(kind: str) -> str:
    if kind in RETIRED_KINDS:
        return (f"component kind {kind!r} was split (ssmad-core 0.6.0) into "
                f"{', '.join(repr(k) for k in RETIRED_KINDS[kind])}: register and name the one that fits")
    return f"unknown component kind {kind!r}; allowed: {suggest(kind, KINDS)}"


def _norm(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


@attrs.frozen
class ComponentInfo:
    kind: str
    name: str
    factory: Callable[..., Any]
    config: type | None
    summary: str
    distribution: str
    version: str
    overrides: str | None = None  # distribution whose component this one replaced

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "distribution": self.distribution,
                "version": self.version, "summary": self.summary, "overrides": self.overrides,
                "parameters": self.defaults()}

    def defaults(self) -> dict[str, Any]:
        if self.config is None:
            return {}
        out = {}
        for f in attrs.fields(self.config):
            if f.default is attrs.NOTHING:
                out[f.name] = "<required>"
            elif isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
                out[f.name] = f.default.factory()
            else:
                out[f.name] = f.default
        return out


def _summary(factory, summary: str | None) -> str:
    if summary:
        return summary
    doc = (getattr(factory, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _allowed_third_party() -> set[str] | None:
    """None: all allowed; else the allowed distribution names (normalised)."""
    raw = os.environ.get(ENV_VAR, "all").strip()
    if raw in ("", "all"):
        return None
    names = {_norm(p.strip()) for p in raw.split(",") if p.strip()}
    names -= {"builtin", "none"}
    return names


class Registry:
    """All components by ``(kind, name)``, filled from the entry points on first use."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], ComponentInfo] = {}
        self._loaded = False
        self._lock = threading.RLock()
        self.plugin_errors: list[str] = []
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    # -- discovery ----------------------------------------------------------------------------------------
    def _entry_points(self):
        """(entry point, distribution, version) of every plugin to load, built-in first. Each distribution that
        ``SSMAD_PLUGINS`` names but that provides no ``ssmad`` entry point is recorded in :attr:`plugin_errors`
        (a misspelt name would otherwise be ignored without a word)."""
        allowed = _allowed_third_party()
        seen = set()
        builtin, third = [], []
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            key = (_norm(dist), ep.name, ep.value)
            if key in seen:
                continue
            seen.add(key)
            if _norm(dist) in BUILTIN_DISTRIBUTIONS:
                builtin.append((ep, dist, version))
            elif allowed is None or _norm(dist) in allowed:
                third.append((ep, dist, version))
        for name in sorted((allowed or set()) - {_norm(t[1]) for t in third} - BUILTIN_DISTRIBUTIONS):
            self.plugin_errors.append(f"{ENV_VAR} names {name!r}, but no installed distribution of that name "
                                      f"provides an {ENTRY_POINT_GROUP!r} entry point; it is ignored")
        key = lambda t: (_norm(t[1]), t[0].name)  # noqa: E731 - deterministic order
        return sorted(builtin, key=key) + sorted(third, key=key)

    def load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for ep, dist, version in self._entry_points():
                try:
                    module = ep.load()
                except Exception as exc:  # a broken third-party plugin must not take the program down
                    self.plugin_errors.append(f"plugin {ep.name!r} from {dist}: {type(exc).__name__}: {exc}")
                    continue
                self.add_plugin(module, dist, version)
            for message in self.plugin_errors:   # one line each where the program shows warnings
                warnings.warn(message, PluginWarning, stacklevel=2)

    def add_plugin(self, plugin, distribution: str = "<local>", version: str = "") -> None:
        """Register the components of a plugin object/module (also used by tests and notebooks)."""
        with self._lock:
            if self.pm.is_registered(plugin):
                return
            self.pm.register(plugin, name=f"{distribution}:{getattr(plugin, '__name__', id(plugin))}")
            impl = getattr(plugin, "ssmad_register", None)
            if impl is None:
                return

            def register(kind, name, factory, *, config=None, summary=None):
                self.add(kind, name, factory, config=config, summary=summary,
                         distribution=distribution, version=version)

            impl(register)

    def add(self, kind: str, name: str, factory, *, config=None, summary=None,
            distribution: str = "<local>", version: str = "") -> None:
        if kind not in KINDS:
            raise ConfigError(f"component {name!r} from {distribution}: {_unknown_kind(kind)}")
        if config is not None and not attrs.has(config):
            raise ConfigError(f"component {kind}/{name}: config must be an attrs class, got {config!r}")
        with self._lock:
            old = self._components.get((kind, name))
            self._components[(kind, name)] = ComponentInfo(
                kind, name, factory, config, _summary(factory, summary), distribution, version,
                overrides=old.distribution if old is not None else None)

    # -- queries -----------------------------------------------------------------------------------------
    def info(self, kind: str, name: str) -> ComponentInfo:
        self.load()
        if kind not in KINDS:
            raise UnknownComponentError(_unknown_kind(kind))
        try:
            return self._components[(kind, name)]
        except KeyError:
            names = sorted(n for k, n in self._components if k == kind)
            raise UnknownComponentError(
                f"unknown {kind} {name!r}; available: {suggest(str(name), names)}") from None

    def components(self, kind: str | None = None) -> list[ComponentInfo]:
        self.load()
        if kind is not None and kind not in KINDS:
            raise UnknownComponentError(_unknown_kind(kind))
        return sorted((c for c in self._components.values() if kind is None or c.kind == kind),
                      key=lambda c: (KINDS.index(c.kind), c.name))

    def config(self, kind: str, name: str, **params) -> Any:
        """The validated config instance (or None for components without parameters)."""
        info = self.info(kind, name)
        where = f"{kind} {name!r}"
        if info.config is None:
            if params:
                raise ConfigError(f"{where}: takes no parameters, got {sorted(params)}")
            return None
        return make_config(info.config, params, where)

    def absolute_paths(self, kind: str, name: str, params: dict[str, Any], base=None) -> dict[str, Any]:
        """``params`` of component ``kind``/``name`` with its path parameters made absolute
        (:func:`ssmad.core.configs.absolute_paths`)."""
        return absolute_paths(self.info(kind, name).config, params, base)

    def build(self, kind: str, name: str, **params) -> Any:
        info = self.info(kind, name)
        cfg = self.config(kind, name, **params)
        return info.factory() if cfg is None else info.factory(cfg)


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry (created and filled on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the cached registry (entry points are read again on next use)."""
    global _REGISTRY
    _REGISTRY = None
    importlib.invalidate_caches()


def build(kind: str, name: str, **params) -> Any:
    """Build a ready component: ``build("backbone", "resnet50", layers=["layer1"])``."""
    return registry().build(kind, name, **params)


def build_spec(spec: dict[str, Any], kind: str | None = None, where: str | None = None) -> Any:
    """Build from a declarative spec ``{"kind": ..., "name": ..., **params}`` (``kind`` may be implied)."""
    spec = dict(spec)
    k = spec.pop("kind", kind)
    n = spec.pop("name", None)
    label = where or "component spec"
    if k is None or n is None:
        raise ConfigError(f"{label}: needs 'kind' and 'name', got {sorted(spec)}")
    if kind is not None and k != kind:
        raise ConfigError(f"{label}: expected a {kind}, got kind {k!r}")
    return registry().build(k, n, **spec)


def components(kind: str | None = None) -> list[ComponentInfo]:
    """Everything registered (optionally of one kind), sorted by kind then name."""
    return registry().components(kind)


def describe(kind: str, name: str) -> ComponentInfo:
    return registry().info(kind, name)
