"""Plugin hook specifications of ssmad.

A plugin is a module (or object) listed under the entry-point group ``ssmad``::

    [project.entry-points.ssmad]
    mything = "mypackage.ssmad_plugin"

It implements :func:`ssmad_register` with the ``hookimpl`` marker from :mod:`ssmad.core`.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

PROJECT = "ssmad"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    def __call__(self, kind: str, name: str, factory, *, config: type | None = None,
                 summary: str | None = None) -> None: ...


@hookspec
def ssmad_register(register: Register) -> None:
    """Register components.

    Call ``register(kind, name, factory, config=ConfigClass, summary="one line")`` once per component.

    - ``kind`` is one of :data:`ssmad.core.registry.KINDS` (``backbone``, ``scan``, ``mixer``,
      ``reconstructor`` (features → features), ``autoencoder`` (image → image), ``synth``, ``head``,
      ``score`` (maps → image scores), ``smooth`` (maps → maps), ``normaliser`` (``fit`` on normal maps,
      then maps → maps), ``distance``, ``fusion``, ``dataset``, ``metric``); docs/components.md states
      each kind's contract.
    - ``name`` is short and stable (``resnet50``, ``vim``, ``perlin``...). Registering a name that already
      exists overrides it; third-party plugins are registered after the built-in packages, so they win.
    - ``config`` is an ``attrs`` class (use :func:`ssmad.core.configclass`) whose fields are the component's
      parameters; ``build(kind, name, **params)`` validates the parameters against it (unknown keys,
      wrong types, ``Literal`` choices and the field validators) and calls ``factory(cfg)``.
      Without a config the factory is called with no argument and accepts no parameters.
    - ``summary`` is a one-line description shown by ``python -m ssmad.core plugins``; by default the
      first line of the factory's docstring.
    """
