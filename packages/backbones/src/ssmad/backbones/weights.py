"""Reading pretrained weights: local state-dict files, the torch.hub cache, torchvision's weights enums.

Everything is loaded with ``torch.load(weights_only=True)``: no pickled objects are ever executed.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssmad.core import DataError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, Any]:
    """Load ``path`` with ``weights_only=True`` and return the mapping stored in it.

    Raises :class:`DataError` (one line, naming the file) when it is missing, unreadable or holds pickled
    objects instead of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{what} {path}: holds pickled Python objects, not a plain state dict ({first[:160]}); "
                        f"re-save it with torch.save(model.state_dict(), path)") from None
    except Exception as exc:  # zip errors, truncated files, random bytes
        raise DataError(f"{what} {path}: not a readable torch file ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''})") from None
    if not isinstance(obj, Mapping):
        raise DataError(f"{what} {path}: expected a state dict (a mapping of names to tensors), "
                        f"got {type(obj).__name__}")
    return dict(obj)


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of a state dict, unwrapping ``{"state_dict": ...}``-style containers and stripping a prefix
    shared by every key (``module.`` from DataParallel, ``model.``, ``backbone.``, ``encoder.``)."""
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            obj = inner
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    changed = True
    while changed and sd:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], *, kept: nn.Module | None, source: str,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Copy ``state_dict`` into ``model`` with checks.

    ``kept`` is the part of ``model`` actually used (its tensors are shared with ``model``): keys missing from
    the file are an error only where they belong to ``kept`` (a headless file is fine for a feature extractor);
    keys the model does not have and shape mismatches are always errors. ``num_batches_tracked`` may be absent.
    Keys starting with one of ``ignore_prefixes`` (parts of the full network that were never built, such as
    VGG's classifier) are skipped.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict(keep_vars=True)
    needed_ids = None if kept is None else {id(t) for t in kept.state_dict(keep_vars=True).values()}
    unexpected = [k for k in state_dict if k not in own]
    if unexpected:
        raise DataError(f"{source}: {len(unexpected)} key(s) this model does not have, e.g. "
                        f"{', '.join(unexpected[:3])} (expected keys like {', '.join(list(own)[:3])})")
    bad = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in state_dict
           if tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if bad:
        raise DataError(f"{source}: {len(bad)} tensor(s) of the wrong shape (file vs model), e.g. {'; '.join(bad[:2])}")
    missing = [k for k, t in own.items() if k not in state_dict and not k.endswith("num_batches_tracked")
               and (needed_ids is None or id(t) in needed_ids)]
    if missing:
        raise DataError(f"{source}: {len(missing)} needed key(s) missing, e.g. {', '.join(missing[:3])}")
    with torch.no_grad():
        for k, v in state_dict.items():
            own[k].copy_(v.to(own[k].dtype))


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded weights: ``torch.hub.get_dir()/checkpoints`` ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_state_dict(model_name: str, weights_enum: Any) -> dict[str, Tensor]:
    """The ImageNet state dict of a torchvision weights enum member.

    Looks in the torch.hub cache first (a file placed there by hand works offline), otherwise downloads through
    ``torch.hub.load_state_dict_from_url`` (hash-checked). Without internet it raises one :class:`DataError`
    naming the file and the folder to put it in.
    """
    url = weights_enum.url
    filename = url.rsplit("/", 1)[-1]
    folder = hub_checkpoint_dir()
    cached = folder / filename
    if cached.is_file():
        return unwrap_state_dict(read_state_dict(cached, f"cached ImageNet weights of {model_name}"))
    try:
        obj = torch.hub.load_state_dict_from_url(url, model_dir=str(folder), map_location="cpu", progress=True,
                                                 check_hash=True, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot get ImageNet weights for {model_name} ({type(exc).__name__}: {reason[:120]}); without "
            f"internet download {url} elsewhere and place {filename} in {folder} "
            f"(i.e. $TORCH_HOME/hub/checkpoints), or pass weights=PATH to a state-dict file") from None
    return unwrap_state_dict(obj)
