"""Several synthesis families in one synthesiser: each anomalous draw picks one of them.

Training a detector on one kind of synthetic anomaly teaches it that kind; real defects that look otherwise may
go unseen. ``mixed`` draws each anomaly from one family of ``families`` with probability ``weights``: ``perlin``
(the Perlin-mask texture blending of :mod:`ssmad.synth.perlin`, with every one of its parameters here) or one of
the structural defects of :mod:`ssmad.synth.defects` (``scratch``, ``dent``, ``hole``, ``stain``, ``cutpaste``).
Rotation of the clean image (``p_rotate``) and clean draws (``p_clean``) are as in ``perlin``; a structural
defect whose mask comes out with fewer than 4 pixels is redrawn (``max_retries``), then the draw is clean.
"""

from __future__ import annotations

import attrs
import numpy as np

from ssmad.core import configclass, field

from .defects import DEFECTS
from .perlin import PerlinConfig, PerlinSynth, SynthSample, clean_sample

FAMILIES = ("perlin", *DEFECTS)


def _check_families(inst, attribute, value):
    unknown = [f for f in value if f not in FAMILIES]
    if unknown or not value or len(set(value)) != len(value):
        raise ValueError(f"parameter {attribute.name!r} must be distinct names among {list(FAMILIES)}, got "
                         f"{list(value)!r}")


def _check_weights(inst, attribute, value):
    if value and (len(value) != len(inst.families) or any(not w >= 0 for w in value) or sum(value) <= 0):
        raise ValueError(f"parameter {attribute.name!r} must be one weight >= 0 per family ({len(inst.families)}), "
                         f"not all 0, or empty for equal weights; got {list(value)!r}")


@configclass
class MixedConfig(PerlinConfig):
    """Parameters of the ``mixed`` synthesiser: ``perlin``'s, the families and their weights."""

    families: tuple[str, ...] = field(default=FAMILIES, converter=tuple, validator=_check_families)
    weights: tuple[float, ...] = field(default=(), converter=lambda v: tuple(float(x) for x in v),
                                       validator=_check_weights)   # () : every family equally often


class MixedSynth:
    """``synth(image, rng) -> (clean, anomalous, mask)``; ``synth.sample(image, rng)`` → :class:`SynthSample`
    (``augmentations`` names the family of a structural defect). Same generator state → identical outputs."""

    def __init__(self, cfg: MixedConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else MixedConfig()
        own = {a.name: getattr(self.cfg, a.name) for a in attrs.fields(PerlinConfig)}
        self.perlin = PerlinSynth(PerlinConfig(**own))
        w = np.asarray(self.cfg.weights or [1.0] * len(self.cfg.families), dtype=np.float64)
        self.p = w / w.sum()

    def __repr__(self) -> str:
        return f"MixedSynth(families={dict(zip(self.cfg.families, self.p.round(3).tolist()))})"

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.sample(image, rng).as_tuple()

    def sample(self, image: np.ndarray, rng: np.random.Generator) -> SynthSample:
        work, clean, angle = self.perlin.rotated(image, rng)
        if rng.random() < self.cfg.p_clean:
            return clean_sample(clean, angle)
        # (one family: no draw, so that a perlin-only mix is the perlin synthesiser draw for draw)
        family = self.cfg.families[int(rng.choice(len(self.p), p=self.p)) if len(self.p) > 1 else 0]
        if family == "perlin":
            return self.perlin.blend(work, clean, angle, rng)
        rgb = work if work.shape[2] == 3 else np.repeat(work, 3, axis=2)
        for _ in range(self.cfg.max_retries + 1):
            out, mask = DEFECTS[family](rgb, rng)
            if mask.sum() >= 4:
                if work.shape[2] == 1:   # grey image: the defect's luma (ITU-R 601), the rest untouched
                    luma = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
                    out = np.where(mask, luma, work[..., 0])
                return SynthSample(clean=clean, anomalous=out.reshape(clean.shape).astype(np.float32),
                                   mask=mask.astype(np.float32), alpha=1.0, angle=angle, augmentations=(family,))
        return clean_sample(clean, angle)


def build_mixed(cfg: MixedConfig) -> MixedSynth:
    """Each anomaly from one of several families: Perlin texture blending or a structural defect."""
    return MixedSynth(cfg)
