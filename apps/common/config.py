"""App configuration: the pipeline TOML shipped with each app, presets, ``--config`` files and ``--set``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmad.core import ConfigError
from ssmad.core.files import apply_overrides, load_toml, merge

SECTIONS = ("data", "train", "method", "pipeline")
PIPELINE_META = ("role", "enabled")  # keys of a pipeline entry that are the app's, not the component's


def presets(app_dir: Path) -> list[str]:
    return sorted(p.stem for p in (app_dir / "presets").glob("*.toml"))


def load_config(app_dir: Path, preset: str | None, config_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """pipeline.toml ← presets/<preset>.toml ← --config FILE ← --set key=value (later wins)."""
    config = load_toml(app_dir / "pipeline.toml")
    if preset:
        path = app_dir / "presets" / f"{preset}.toml"
        if not path.is_file():
            from ssmad.core import suggest
            raise ConfigError(f"--preset {preset!r}: unknown preset; available: {suggest(preset, presets(app_dir))}")
        config = merge_config(config, load_toml(path), str(path))
    if config_file:
        config = merge_config(config, load_toml(config_file), config_file)
    # a component swapped with --set pipeline.<role>.name=NEW keeps only the parameters NEW accepts; the other
    # --set values are applied after the swap, so one that NEW does not accept is still an error
    swaps = [o for o in overrides if _is_name_swap(o)]
    config = apply_overrides(config, swaps)
    for item in swaps:
        role = item.split("=", 1)[0].split(".")[1]
        _prune_to_component(config, role)
    config = apply_overrides(config, [o for o in overrides if o not in swaps])
    check_known_keys(config, load_toml(app_dir / "pipeline.toml"))
    check_config(config)
    return config


def check_known_keys(config: dict[str, Any], base: dict[str, Any]) -> None:
    """[data] may hold only the keys of the app's pipeline.toml (a misspelt key would otherwise be stored and
    silently ignored); [train] is checked by :func:`check_config`, [method] by the method's settings class,
    pipeline entries by their components."""
    from ssmad.core import suggest

    for section in ("data",):
        allowed = list(base.get(section, {}))
        unknown = [k for k in config.get(section, {}) if k not in allowed]
        if unknown:
            raise ConfigError(f"config: unknown key {section}.{unknown[0]}; allowed: {suggest(unknown[0], allowed)}")


def _is_name_swap(item: str) -> bool:
    key = item.split("=", 1)[0].strip().split(".")
    return len(key) == 3 and key[0] == "pipeline" and key[2] == "name"


def _prune_to_component(config: dict[str, Any], role: str) -> None:
    import sys

    import attrs

    from ssmad.core import UnknownComponentError, describe

    for entry in config["pipeline"]:
        if entry.get("role") != role:
            continue
        try:
            info = describe(entry["kind"], entry["name"])
        except UnknownComponentError as exc:   # the key the user set, and the names it may take, closest first
            raise UnknownComponentError(f"pipeline.{role}.name: {exc}") from None
        allowed = set(attrs.fields_dict(info.config)) if info.config is not None else set()
        dropped = [k for k in entry if k not in PIPELINE_META + ("kind", "name") and k not in allowed]
        for k in dropped:
            del entry[k]
        if dropped:
            print(f"note: pipeline.{role} is now {entry['name']}; dropped parameters it does not take: "
                  f"{', '.join(dropped)}", file=sys.stderr)


def merge_config(base: dict[str, Any], over: dict[str, Any], where: str) -> dict[str, Any]:
    """Merge a config file over ``base``; pipeline entries merge by ``role`` (a file names only what it changes)."""
    unknown = [k for k in over if k not in SECTIONS]
    if unknown:
        from ssmad.core import suggest
        raise ConfigError(f"{where}: unknown section {unknown[0]!r}; allowed: {suggest(unknown[0], SECTIONS)}")
    pipeline = over.get("pipeline")
    out = merge(base, {k: v for k, v in over.items() if k != "pipeline"})
    if pipeline is not None:
        entries = {e["role"]: dict(e) for e in out.get("pipeline", [])}
        order = [e["role"] for e in out.get("pipeline", [])]
        for item in pipeline:
            role = item.get("role")
            if role is None:
                raise ConfigError(f"{where}: every [[pipeline]] entry needs a 'role'")
            if role in entries and item.get("name", entries[role].get("name")) != entries[role].get("name"):
                entries[role] = dict(item, kind=item.get("kind", entries[role].get("kind")))  # swapped component
            elif role in entries:
                entries[role] = merge(entries[role], item)
            else:
                entries[role] = dict(item)
                order.append(role)
        out["pipeline"] = [entries[r] for r in order]
    return out


#: what a resume may change, with ``--set``, ``--epochs`` or an edit of config.toml (the rest of a run's stored
#: configuration is what it was trained with)
RESUME_KEYS = ("train.epochs", "train.max_minutes", "train.log_every_s", "train.workers", "train.eval_batch_size",
               "train.threshold_quantile")


def check_config(config: dict[str, Any]) -> None:
    """The sections exist, ``[train]`` is valid (:class:`~apps.common.settings.TrainSettings`), ``[data]`` names a
    dataset and an image size, every pipeline entry has a role, kind and name; a ConfigError naming the key
    otherwise. What an older release wrote differently is upgraded first (:mod:`apps.common.migrate`)."""
    from .migrate import upgrade_config
    from .settings import TrainSettings, read_section

    for section in SECTIONS:
        if section not in config:
            raise ConfigError(f"config: missing section [{section}]")
    upgrade_config(config)
    read_section(TrainSettings, config, "train")
    data = config["data"]
    if not isinstance(data.get("spec"), str):
        raise ConfigError(f"config: data.spec must be a string KIND:PATH, got {data.get('spec')!r}")
    size = data.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ConfigError(f"config: data.image_size must be an integer >= 32, got {size!r}")
    for entry in config["pipeline"]:
        for key in ("role", "kind", "name"):
            if key not in entry:
                raise ConfigError(f"config: pipeline entry {entry.get('role', entry)!r} lacks {key!r}")


def anchor_paths(config: dict[str, Any]) -> None:
    """Make the configuration's relative file and folder paths absolute, against the working directory, in place
    (a value is changed only where it names something that exists; the rest fail later, as the user wrote them):

    - the dataset's ``KIND:PATH`` and ``[data.params] root``; a ``folder`` dataset without a root gets the working
      directory as its root, against which it reads its relative folders, as before;
    - every pipeline component's path parameters (``ssmad.core.path_field``: ``texture_dir``, weights files).

    A new run stores its configuration so: ``test`` and ``--resume`` then find its data and files from any
    directory."""
    import os

    from ssmad.core import absolute_path, registry
    from ssmad.datasets import parse_spec

    data = config["data"]
    kind, path = parse_spec(str(data["spec"]))
    if path is not None:
        data["spec"] = f"{kind}:{absolute_path(path)}"
    params = data.setdefault("params", {})
    if isinstance(params.get("root"), str):
        params["root"] = absolute_path(params["root"])
    elif kind == "folder" and path is None and "root" not in params:
        params["root"] = os.getcwd()
    for entry in config["pipeline"]:
        own = {k: v for k, v in entry.items() if k not in PIPELINE_META + ("kind", "name")}
        try:
            entry.update(registry().absolute_paths(entry["kind"], entry["name"], own))
        except ConfigError:  # an unknown component: building the pipeline reports it with its role
            continue


def component(config: dict[str, Any], role: str) -> dict[str, Any] | None:
    """The pipeline entry of ``role`` or None when absent or ``enabled = false``."""
    for entry in config["pipeline"]:
        if entry["role"] == role:
            return entry if entry.get("enabled", True) else None
    return None


def component_params(entry: dict[str, Any]) -> dict[str, Any]:
    """The component's own parameters; the string "none" stands for None (TOML has no null)."""
    return {k: (None if v == "none" else v) for k, v in entry.items() if k not in PIPELINE_META + ("kind", "name")}


def build_role(config: dict[str, Any], role: str, unweighted: bool = False, **extra):
    """Build the component of ``role`` (``extra`` fills parameters the entry does not set). ``unweighted``: with
    ``weights = "none"`` instead of the entry's (no weights file read, nothing downloaded), for a module whose
    weights will come from a checkpoint."""
    from ssmad.core import UnknownComponentError, build

    entry = component(config, role)
    if entry is None:
        return None
    if unweighted:
        entry = dict(entry, weights="none")
    params = {**extra, **component_params(entry)}
    try:
        return build(entry["kind"], entry["name"], **params)
    except UnknownComponentError as exc:
        raise UnknownComponentError(f"pipeline.{role}.name: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"pipeline.{role}: {exc}") from None
