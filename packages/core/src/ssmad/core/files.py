"""File helpers shared by every package: atomic writes, TOML configs with ``--set`` overrides."""

from __future__ import annotations

import copy
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temporary file beside it, then rename over it.

    A crash or an exception leaves the previous file untouched. The file gets the previous file's permissions, or
    those of any new file (0666 less the umask; the temporary file alone would be 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            perms = path.stat().st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            perms = 0o666 & ~umask
        os.chmod(tmp, perms)
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: not UTF-8 text (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r}); is it a TOML file?") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc}") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``3``, ``1e-4``, ``true``, ``"x"``, ``[1, 2]``); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; lists and scalars in ``over`` replace those in ``base``."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings. Path segments that name a list item may be its index or the
    ``name``/``role`` of a component in a list of tables (``pipeline.reconstructor.depth=4``).
    Unknown top-level sections are errors; new keys inside a component are checked later by its config."""
    out = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = _step(node, part, ".".join(parts[: i + 1]), create=i > 0)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = parse_value(text.strip())
        else:
            if len(parts) == 1 and last not in node:
                raise ConfigError(f"--set {key}: unknown key; top-level keys: {', '.join(sorted(node))}")
            node[last] = parse_value(text.strip())
    return out


def _index(node: list, part: str, where: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for i, item in enumerate(node):
        if isinstance(item, dict) and part in (item.get("role"), item.get("name"), item.get("kind")):
            return i
    labels = [str(item.get("role") or item.get("name")) for item in node if isinstance(item, dict)]
    raise ConfigError(f"--set {where}: no list entry {part!r}; entries: {', '.join(labels) or len(node)}")


def _step(node: Any, part: str, where: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if part not in node:
        if not create:
            raise ConfigError(f"--set {where}: unknown section; sections: {', '.join(sorted(node))}")
        node[part] = {}
    return node[part]
