"""One place that upgrades what older releases stored — a run's configuration (in its checkpoints and config.toml, or
a config file given to ``train --config``) — to what this release reads, so that no method carries branches for
"runs stored before the option existed".

:func:`upgrade_config` is idempotent and changes only what an older release wrote differently:

- apps < 0.14 (ssmad-core < 0.6): the ``postprocess`` kind was split into ``score`` (``box_max``), ``smooth``
  (``gaussian``) and ``normaliser`` (``quantile_norm``, ``position_norm``), and the image autoencoders
  (``vim_ae``, ``cnn_ae``) left the ``reconstructor`` kind for ``autoencoder``;
- ``[train]`` keys added after the first release (:data:`TRAIN_DEFAULTS`) get the value runs trained with before;
- ALMRR runs before the ``distance`` role (apps < 0.9) measured the mean squared distance: the role is added as
  ``mse``.

A component of another kind whose kind was retired (a third-party ``postprocess``) is left as it is: building it
then names the new kinds.
"""

from __future__ import annotations

from typing import Any

#: (old kind, component name) → its kind now
KIND_UPGRADES = {
    ("postprocess", "box_max"): "score",
    ("postprocess", "gaussian"): "smooth",
    ("postprocess", "quantile_norm"): "normaliser",
    ("postprocess", "position_norm"): "normaliser",
    ("reconstructor", "vim_ae"): "autoencoder",
    ("reconstructor", "cnn_ae"): "autoencoder",
}
#: ``[train]`` keys that configurations written before them lack, and the values those runs trained with
TRAIN_DEFAULTS = {"select": "last", "select_images": 32, "precision": "fp32"}
#: pipeline roles an app's older configurations lack, and the component those runs used
ROLE_DEFAULTS = {"almrr": {"distance": {"role": "distance", "kind": "distance", "name": "mse"}}}


def upgrade_config(config: dict[str, Any], app: str | None = None) -> dict[str, Any]:
    """``config`` (changed in place, and returned) as this release reads it; ``app`` (the app that wrote it, when
    known) adds the roles that app's older configurations lack. Anything malformed is left for
    :func:`apps.common.config.check_config` to name."""
    pipeline = config.get("pipeline")
    if isinstance(pipeline, list):
        for entry in pipeline:
            if isinstance(entry, dict):
                new = KIND_UPGRADES.get((entry.get("kind"), entry.get("name")))
                if new is not None:
                    entry["kind"] = new
        roles = {e.get("role") for e in pipeline if isinstance(e, dict)}
        for role, entry in ROLE_DEFAULTS.get(app or "", {}).items():
            if role not in roles:
                pipeline.append(dict(entry))
    train = config.get("train")
    if isinstance(train, dict):
        for key, value in TRAIN_DEFAULTS.items():
            train.setdefault(key, value)
    return config


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A loaded checkpoint (changed in place, and returned) with its configuration upgraded."""
    if isinstance(ckpt.get("config"), dict):
        upgrade_config(ckpt["config"], ckpt.get("app"))
    return ckpt
