"""ALMRR: frozen backbone features → Mamba feature reconstruction (MFRM) → refinement U-Net (FRM).

Training (DESIGN §5): a Perlin-mask synthetic anomaly I_a is made from each clean image I; both go through
the frozen backbone (shared weights); the reconstructor maps F = φ(I_a) to F̂ and is pulled towards φ(I)
(L_rec, mean squared distance); the refiner sees concat(channel-mean(F̂), channel-mean(F)) and segments
the synthetic mask (focal γ=2 + dice). ``method.refiner_inputs`` can add the log feature distance
log ‖F̂ − F‖² as a third input channel (not in the paper, whose refiner sees only the two channel means, from
which the distance cannot be recovered). At test time the anomaly map is the refiner's anomalous-class
probability at input resolution (without a refiner: the squared feature distance ‖F̂ − F‖² per position),
and the image score is the max of its 9×9 box-filtered map.

``method.distance_weight`` w > 0 (not in the paper; the cpu preset) adds the feature-distance map to the
refined map: refined + w · (d − q_low) / (q_high − q_low), with d the distance map below and q_low / q_high its 0.9 /
0.999 quantiles over the held-out normal images (``distance_scale``, fitted after training). The refiner's output
is a segmentation, about 0 wherever it sees nothing; defects it misses then tie with the background, which costs
pixel AUROC. The scaled distance orders those pixels. ``distance_weight = "auto"`` chooses w after training, from
``method.distance_weight_candidates``, as the one whose map has the highest pixel AP on synthetic anomalies of the
held-out normal images (the run's own synthesiser, seeded by ``train.seed``; never the test set): the weight helps
a weak refined map and costs a good one, and which one a run has shows there. ``method.fusion`` (apps/almrr/fusion.py)
says how the two join: the sum above, or their maximum.

The distance of the map is ``pipeline.distance`` (kind ``distance``): ``mse`` (‖F̂ − F‖² / C, the default) or
``mahalanobis`` (the residual F̂ − F whitened by its mean and covariance over the held-out normal images, fitted
after training) or ``position_mahalanobis`` (a mean and covariance per position of the feature grid, fitted after
training on the residuals of the training images, which it needs many of; while ``train.select = "best"`` scores
epochs, on up to ``VALIDATION_FIT_IMAGES`` of them, never on the held-out images it scores; its statistics then stay
out of the epoch checkpoints). The refiner's ``distance`` input is always the mean squared distance (it is trained
on it, before anything could be fitted).

The feature distance is also reported on its own (``extras["distance"]``: the test report's "distance only" table),
after the optional ``distance_norm`` post-processing (``position_norm``: minus the mean distance at each position
over the held-out normal images, fitted after training). Without it, on Magnetic-tile-defect the largest distance
of every test image lay within 16 px of the border, normal or not, and the map's maximum ranked images worse than
chance.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssmad.core import AnomalyOutput, ConfigError, Sample
from ssmad.heads.losses import dice_loss, focal_loss
from ssmad.scoring import GroupedAP, MeanSquared

from ..common.config import build_role, component
from ..common.data import LazyImages
from ..common.method import Method, UnfittedWarning, Validation
from ..common.settings import read_section
from .fusion import describe, fuse
from .settings import AUTO_WEIGHTS, REFINER_INPUTS, ALMRRSettings

__all__ = ["ALMRR", "AUTO_WEIGHTS", "REFINER_INPUTS"]

AUTO_REPEATS = 2                                       # synthetic anomalies per held-out image for that choice
AUTO_MAX_IMAGES = 100                                  # held-out images it uses at most (a random subset already)
AUTO_FEW_IMAGES = 20                                   # below this many the log says the choice is noisy
VALIDATION_FIT_IMAGES = 128   # training images a distance that wants many images is fitted on to score an epoch


def _pixel_ap(mask: torch.Tensor, amap: torch.Tensor) -> float:
    from ssmad.scoring import evaluate

    return float(evaluate(None, None, mask, amap, ["pixel_ap"])["pixel_ap"])


class ALMRR(Method):
    app = "almrr"
    settings = ALMRRSettings
    alternatives = {
        "backbone": ["resnet18", "resnet34", "resnet50", "wide_resnet50_2", "vgg19", "efficientnet_lite0"],
        "reconstructor": ["vim", "cnn1x1", "cnn3x3", "transformer"],
        "distance": ["mse", "mahalanobis", "position_mahalanobis"],
        "distance_norm": ["position_norm", "quantile_norm"],
        # the rest have one working choice here (a role is switched off with enabled = false)
        "synth": [], "refiner": [], "distance_smooth": [], "distance_scale": [], "score": [],
    }

    def __init__(self, config: dict[str, Any], device: torch.device, for_training: bool = True):
        super().__init__(config, device, for_training)
        from ssmad.backbones import concat_stages

        self.concat_stages = concat_stages
        m = read_section(ALMRRSettings, config, "method")
        self.image_size = int(config["data"]["image_size"])
        self.feature_size = m.feature_size
        self.lambdas = {"rec": m.lambda_rec, "focal": m.lambda_focal, "dice": m.lambda_dice}
        self.gamma = m.focal_gamma
        # for scoring, the backbone's weights come from the checkpoint: no weights file or download is needed
        backbone = build_role(config, "backbone", unweighted=not for_training)
        if backbone is None:
            raise ConfigError("pipeline.backbone: ALMRR needs a backbone")
        channels = int(sum(backbone.channels))
        self.modules["backbone"] = backbone
        self.modules["reconstructor"] = build_role(config, "reconstructor", in_channels=channels,
                                                   feature_size=self.feature_size)
        if self.modules["reconstructor"] is None:
            raise ConfigError("pipeline.reconstructor: ALMRR needs a reconstructor")
        self.refiner_inputs = list(m.refiner_inputs)
        refiner = build_role(config, "refiner", in_channels=len(self.refiner_inputs), out_channels=2)
        if refiner is not None:
            self.modules["refiner"] = refiner
        if component(config, "synth") is None:
            raise ConfigError("pipeline.synth: ALMRR trains on synthetic anomalies and needs a synthesiser")
        # built now for training (a bad texture folder fails at once), else when first used (scoring images needs
        # no synthetic anomalies, nor the texture folder they are made of)
        self._synth = build_role(config, "synth") if for_training else None
        self.score = build_role(config, "score")
        # the distance of the map; runs stored before the role existed used the mean squared distance
        self.metric = build_role(config, "distance") or MeanSquared()
        if hasattr(self.metric, "check_size"):   # a fit too large for memory is a ConfigError now, not after training
            try:
                self.metric.check_size(channels, self.feature_size ** 2)
            except ConfigError as exc:
                raise ConfigError(f"pipeline.distance: {exc}") from None
        self.distance_norm = build_role(config, "distance_norm")
        self.distance_smooth = build_role(config, "distance_smooth")
        self.distance_scale = build_role(config, "distance_scale")
        self.auto_weight = m.distance_weight == "auto"
        self.weight_candidates = list(m.distance_weight_candidates)
        self.weight_choice: dict[str, Any] | None = None     # what "auto" chose, and the pixel AP of each candidate
        self.distance_weight = 0.0 if self.auto_weight else float(m.distance_weight)
        self.fusion = m.fusion
        # the image score's own weight (None: the map's): the refined map localises what the refiner finds, the
        # distance ranks images
        self.image_weight = None if m.image_distance_weight == "map" else float(m.image_distance_weight)
        if self._scaled and self.distance_scale is None:
            raise ConfigError("method.distance_weight > 0 or \"auto\" (or method.image_distance_weight > 0) adds the "
                              "scaled distance map to the refined map and needs the pipeline.distance_scale role "
                              "(quantile_norm); enable it or set the weights to 0")
        self._warned_unfitted = self._warned_unscaled = self._warned_metric = False
        self._final_fit = False      # whether the distance was fitted by after_training (or loaded), not for an epoch
        self.fit_images: Sequence[torch.Tensor] | None = None   # training images to score epochs with (prepare)
        self.eval_batch_size = int(config["train"].get("eval_batch_size", 8))
        self.modules.to(device)

    @property
    def synth(self):
        """The synthesiser of training anomalies (built on first use when the method was made for scoring)."""
        if self._synth is None:
            self._synth = build_role(self.config, "synth")
        return self._synth

    def pretrained_modules(self) -> tuple[str, ...]:
        # random weights (weights = "none", the smoke preset) were always saved
        entry = component(self.config, "backbone") or {}
        return () if entry.get("weights", "imagenet") in ("none", None) else ("backbone",)

    def parameters(self):
        return [p for name, mod in self.modules.items() if name != "backbone" for p in mod.parameters()
                if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self.modules["backbone"].eval()

    # -- data -------------------------------------------------------------------------------------------------
    def train_item(self, sample: Sample, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self._synthesise(sample.image, rng)

    def _synthesise(self, image: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        clean, anomalous, mask = self.synth(image.permute(1, 2, 0).numpy(), rng)
        return {"clean": torch.from_numpy(np.ascontiguousarray(clean, np.float32)).permute(2, 0, 1),
                "anomalous": torch.from_numpy(np.ascontiguousarray(anomalous, np.float32)).permute(2, 0, 1),
                "mask": torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None]}

    # -- model --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.concat_stages(self.run_module("backbone", images), self.feature_size)

    def refine(self, recon: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        parts = {"recon_mean": lambda: recon.mean(1, keepdim=True), "feature_mean": lambda: feats.mean(1, keepdim=True),
                 "distance": lambda: self.distance(recon, feats).clamp_min(1e-8).log()}  # its range spans decades
        return self.run_module("refiner", torch.cat([parts[k]() for k in self.refiner_inputs], 1))

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = batch["clean"].shape[0]
        both = self.features(torch.cat([batch["clean"], batch["anomalous"]]))
        target, feats = both[:n], both[n:]
        recon = self.run_module("reconstructor", feats)
        l_rec = F.mse_loss(recon, target)
        out = {"rec": l_rec}
        loss = self.lambdas["rec"] * l_rec
        if "refiner" in self.modules:
            logits = F.interpolate(self.refine(recon, feats), size=batch["mask"].shape[-2:], mode="bilinear",
                                   align_corners=False)
            l_focal = focal_loss(logits, batch["mask"], gamma=self.gamma)
            l_dice = dice_loss(torch.softmax(logits, 1)[:, 1:], batch["mask"])
            loss = loss + self.lambdas["focal"] * l_focal + self.lambdas["dice"] * l_dice
            out.update(focal=l_focal, dice=l_dice)
        out["loss"] = loss
        return out

    @staticmethod
    def distance(recon: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """‖F̂ − F‖² per position (mean over channels), B×1×S×S: the refiner's ``distance`` input."""
        return ((recon - feats) ** 2).mean(1, keepdim=True)

    def map_distance(self, recon: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The distance of the map, B×1×S×S: ``pipeline.distance`` (the mean squared distance while a fitted one
        is not fitted yet, with a warning)."""
        if self.metric.fitted:
            return self.metric(recon - feats)
        if not self._warned_metric:
            self._warned_metric = True
            warnings.warn(f"pipeline.distance ({self.metric!r}): not fitted (a checkpoint of a training that did not "
                          f"finish, or no held-out normal images); the distance map is the mean squared distance",
                          UnfittedWarning, stacklevel=3)
        return self.distance(recon, feats)

    @torch.no_grad()
    def raw_distance(self, images: torch.Tensor) -> torch.Tensor:
        """The feature distance of images before any normalisation, B×1×S×S on the feature grid."""
        feats = self.features(images)
        return self.map_distance(self.run_module("reconstructor", feats), feats)

    @torch.no_grad()
    def _residuals(self, normal_images: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """F̂ − F of ``normal_images``, a batch at a time (what a fitted ``pipeline.distance`` is fitted on)."""
        for i in range(0, len(normal_images), self.eval_batch_size):
            feats = self.features(torch.stack(normal_images[i:i + self.eval_batch_size]).to(self.device))
            yield self.run_module("reconstructor", feats) - feats

    @property
    def _scaled(self) -> bool:
        """Whether the refined map can get the scaled distance map added (a weight > 0, or "auto"; for the map or
        for the image score)."""
        return (self.distance_weight > 0 or self.auto_weight or bool(self.image_weight)) and "refiner" in self.modules

    def prepare(self, run_dir, samples, indices: list[int]) -> None:
        """Keep (lazily) up to ``VALIDATION_FIT_IMAGES`` training images, evenly spread over them: a distance that
        wants many images is fitted on them while epochs are scored (fitted on the held-out images it scores, it
        would know their normal parts by heart and make every epoch look alike)."""
        step = max(1, -(-len(indices) // VALIDATION_FIT_IMAGES))
        self.fit_images = LazyImages(samples, list(indices)[::step])

    @property
    def _fits_on_training(self) -> bool:
        return self.metric.needs_fit and getattr(self.metric, "wants_many_images", False)

    @torch.no_grad()
    def after_training(self, normal_images: Sequence[torch.Tensor],
                       train_images: Sequence[torch.Tensor] | None = None) -> list[str]:
        """Fit ``pipeline.distance`` (mahalanobis) on the normal images' residuals (a distance that wants many
        images, position_mahalanobis, on the training images' when given), ``distance_norm`` on their raw
        distances, then (``distance_weight`` > 0 or "auto") ``distance_scale`` on their distance maps as ``predict``
        makes them, then ("auto") choose the weight on synthetic anomalies of the first ``AUTO_MAX_IMAGES`` (which
        bounds the time and memory of the choice)."""
        start = time.perf_counter()
        fitted = self._fit_distance(normal_images, train_images)
        self._final_fit = True
        lines = []
        if normal_images and train_images and self._fits_on_training:
            lines.append(f"pipeline.distance ({component(self.config, 'distance')['name']}) fitted on the residuals "
                         f"of the {len(train_images)} training images ({time.perf_counter() - start:.0f} s with the "
                         f"other distance statistics)")
        if not fitted or not self.auto_weight:
            return lines
        images = normal_images[:AUTO_MAX_IMAGES]
        return lines + self.choose_distance_weight(self.synthetic_maps(images, self._synthetic_rng(), AUTO_REPEATS),
                                                   len(images))

    def _fit_distance(self, normal_images: Sequence[torch.Tensor],
                      many_images: Sequence[torch.Tensor] | None = None) -> bool:
        """The fits of :meth:`after_training`, on ``normal_images`` (held out), except that of a distance that wants
        many images, on ``many_images`` (training images) when given; whether ``distance_scale`` was fitted (a
        weight > 0 or "auto")."""
        if not normal_images:
            return False
        if self.metric.needs_fit:
            self.metric.fit(self._residuals(many_images if self._fits_on_training and many_images else normal_images))
        size = normal_images[0].shape[-2:]
        raw = []
        for i in range(0, len(normal_images), self.eval_batch_size):
            images = torch.stack(normal_images[i:i + self.eval_batch_size]).to(self.device)
            raw.append(self.raw_distance(images))
        if self.distance_norm is not None:
            self.distance_norm.fit(torch.cat(raw).cpu())
        if not self._scaled:
            return False
        self.distance_scale.fit(torch.cat([self.distance_map(r, size).cpu() for r in raw]))
        return True

    def _synthetic_rng(self) -> np.random.Generator:
        """The rng of the synthetic anomalies that choose and validate: seeded by ``train.seed``, so the same
        anomalies every time."""
        return np.random.default_rng(int(self.config["train"]["seed"]))

    @torch.no_grad()
    def synthetic_maps(self, images: list[torch.Tensor], rng: np.random.Generator,
                       repeats: int) -> dict[str, torch.Tensor]:
        """The maps of ``repeats`` synthetic anomalies of every image, made by the run's synthesiser, and of the clean
        image of each draw (which the synthesiser may have rotated): ``refined`` (the refiner's map, no distance
        added) and ``distance`` (N×1×H×W, on the CPU), ``mask`` (N×1×H×W, > 0.5 anomalous), ``clean`` (N, bool),
        ``repeat`` (N) and ``image`` (N, the index of the image in ``images``). Per repeat and batch of images:
        their anomalous versions, then their clean versions. Without a refiner both maps are the distance map."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in ("refined", "distance", "mask", "clean", "repeat",
                                                              "image")}
        with self.refined_map_only():
            for rep in range(repeats):
                for start in range(0, len(images), self.eval_batch_size):
                    items = [self._synthesise(im, rng) for im in images[start:start + self.eval_batch_size]]
                    for key, is_clean in (("anomalous", False), ("clean", True)):
                        pred = self.predict(torch.stack([it[key] for it in items]).to(self.device))
                        out["refined"].append(pred.anomaly_map.cpu())
                        out["distance"].append(pred.extras.get("distance", pred.anomaly_map).cpu())
                        mask = torch.stack([it["mask"] for it in items]) > 0.5
                        out["mask"].append(torch.zeros_like(mask) if is_clean else mask)
                        out["clean"].append(torch.full((len(items),), is_clean))
                        out["repeat"].append(torch.full((len(items),), rep))
                        out["image"].append(torch.arange(start, start + len(items)))
        return {k: torch.cat(v) for k, v in out.items()}

    @contextlib.contextmanager
    def refined_map_only(self) -> Iterator[None]:
        """Within: ``predict``'s map is the refined map alone, whatever the distance weight (and without warnings
        about it); the weight and the "auto" state come back on exit."""
        saved = self.distance_weight, self.auto_weight, self.image_weight
        self.distance_weight, self.auto_weight, self.image_weight = 0.0, False, None
        try:
            yield
        finally:
            self.distance_weight, self.auto_weight, self.image_weight = saved

    def choose_distance_weight(self, maps: dict[str, torch.Tensor], n_images: int) -> list[str]:
        """``distance_weight = "auto"``: the candidate whose map has the highest pixel AP on the synthetic-anomaly
        ``maps`` (:meth:`synthetic_maps` of ``n_images`` held-out images; ties: the smaller weight). Sets and records
        the choice; returns lines for the log."""
        what = f"{n_images} held-out normal images x {AUTO_REPEATS} synthetic anomalies"
        if not maps["mask"].any():
            self.distance_weight = 0.0
            self.weight_choice = {"weight": 0.0, "pixel_ap": {}, "images": n_images}
            return [f"method.distance_weight = auto: the synthesiser made no anomaly in {what}; weight 0 (the refined "
                    f"map alone)"]
        scaled = self.distance_scale(maps["distance"])
        ap = {w: _pixel_ap(maps["mask"], fuse(maps["refined"], scaled, self.fusion, w)) for w in self.weight_candidates}
        best = max(self.weight_candidates, key=lambda w: (ap[w], -w))
        self.distance_weight = best
        self.weight_choice = {"weight": best, "pixel_ap": {str(w): v for w, v in ap.items()}, "images": n_images}
        table = ", ".join(f"{w:g}: {100 * v:.1f}" for w, v in ap.items())
        lines = [f"method.distance_weight = auto: {best:g}, the highest pixel AP on {what} ({table})"]
        if n_images < AUTO_FEW_IMAGES:
            lines.append(f"note: only {n_images} held-out images, so this choice is noisy; hold out more "
                         f"(train.val_fraction) or set method.distance_weight to a number")
        return lines

    can_validate = True

    @torch.no_grad()
    def validation_score(self, normal_images: list[torch.Tensor]) -> Validation:
        """The pixel AP, on ``AUTO_REPEATS`` synthetic anomalies of each of ``normal_images`` (seeded by
        ``train.seed``: the same anomalies every time), of the map ``predict`` would make if training ended here:
        the distance statistics fitted and ("auto") the weight chosen on these images, as ``after_training`` does."""
        what = f"pixel AP on synthetic anomalies of {len(normal_images)} held-out images"
        scaled = self._fit_distance(normal_images, self.fit_images)
        self._final_fit = False
        maps = self.synthetic_maps(normal_images, self._synthetic_rng(), AUTO_REPEATS)
        if scaled and self.auto_weight:
            self.choose_distance_weight(maps, len(normal_images))
            what += f" (weight {self.distance_weight:g} chosen on them)"
        amap = maps["refined"]
        if scaled and self.distance_weight > 0:
            amap = fuse(amap, self.distance_scale(maps["distance"]), self.fusion, self.distance_weight)
        if not maps["mask"].any():
            return Validation(0.0, what + ": no anomaly was made")
        # every second pixel each way: a quarter of the memory for the paired comparison, no visible loss
        sub = (slice(None), 0, slice(None, None, 2), slice(None, None, 2))
        grouped = GroupedAP(amap[sub], maps["mask"][sub], maps["image"][:, None, None].expand_as(amap[sub]))
        return Validation(_pixel_ap(maps["mask"], amap), what, grouped)

    def distance_map(self, dist: torch.Tensor, size) -> torch.Tensor:
        """The raw distance (feature grid) → the reported map: ``distance_norm``, resized to ``size``,
        ``distance_smooth``."""
        if self.distance_norm is not None:
            if self.distance_norm.fitted:
                dist = self.distance_norm(dist)
            elif not self._warned_unfitted:
                self._warned_unfitted = True
                warnings.warn("pipeline.distance_norm: not fitted (a checkpoint of a training that did not finish, "
                              "or no held-out normal images); the distance map is reported raw", UnfittedWarning,
                              stacklevel=3)
        dist = F.interpolate(dist, size=size, mode="bilinear", align_corners=False)
        return self.distance_smooth(dist) if self.distance_smooth is not None else dist

    def extra_state(self) -> dict[str, Any]:
        # (the epoch checkpoints of a training are written before after_training fits these). A distance that wants
        # many images is large (position_mahalanobis: 255 MB for Lite0 at 64×64) and, while epochs are scored, fitted
        # on a part of the training images only: the statistics fitted then (it and those fitted on it) stay out of
        # the epoch checkpoints and best.pt; after_training fits them all again
        if self._fits_on_training and not self._final_fit:
            return {}
        state: dict[str, Any] = {name: getattr(self, name).state_dict() for name in ("distance_norm", "distance_scale")
                                 if getattr(self, name) is not None and getattr(self, name).fitted}
        if self.metric.needs_fit and self.metric.fitted:
            state["distance"] = self.metric.state_dict()
        if self.auto_weight and self.weight_choice is not None:
            state["distance_weight"] = dict(self.weight_choice)
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for name in ("distance_norm", "distance_scale"):
            if getattr(self, name) is not None and name in state:
                getattr(self, name).load_state_dict(state[name])
        if self.metric.needs_fit and "distance" in state:
            self.metric.load_state_dict(state["distance"])
            self._final_fit = True
        if self.auto_weight and "distance_weight" in state:
            self.weight_choice = dict(state["distance_weight"])
            self.distance_weight = float(self.weight_choice["weight"])

    def map_note(self) -> str | None:
        if not self._scaled:
            return None
        how = "chosen after training" if self.auto_weight and self.weight_choice is not None else (
            "auto, not chosen yet: the refined map alone" if self.auto_weight else "method.distance_weight")
        which = "" if not self.metric.needs_fit else f"{component(self.config, 'distance')['name']} "
        note = f"map = {describe(self.fusion, self.distance_weight, which + 'distance')} ({how})"
        if self.image_weight is not None and self.image_weight != self.distance_weight:
            note += f"; image score of refined + {self.image_weight:g} x scaled distance"
        return note

    def branch_score(self, maps):
        """The distance map alone scores as with the refiner disabled: by the pipeline's ``score`` (box-filter max)."""
        return self.score(maps)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        feats = self.features(images)
        recon = self.run_module("reconstructor", feats)
        size = images.shape[-2:]
        dist = self.distance_map(self.map_distance(recon, feats), size)
        if "refiner" not in self.modules:
            return AnomalyOutput(anomaly_map=dist, score=self.score(dist))
        refined = F.interpolate(torch.softmax(self.refine(recon, feats), 1)[:, 1:], size=size, mode="bilinear",
                                align_corners=False)
        amap, score = refined, None
        if self._scaled:
            if self.distance_scale.fitted and (self.weight_choice is not None or not self.auto_weight):
                scaled = self.distance_scale(dist)
                if self.distance_weight > 0:
                    amap = fuse(refined, scaled, self.fusion, self.distance_weight)
                if self.image_weight is not None and self.image_weight != self.distance_weight:
                    score = self.score(refined + self.image_weight * scaled)
            elif not self._warned_unscaled:
                self._warned_unscaled = True
                what = ("method.distance_weight = auto: no weight chosen" if self.distance_scale.fitted
                        else "pipeline.distance_scale: not fitted")
                warnings.warn(f"{what} (a checkpoint of a training that did not finish, or no held-out normal "
                              f"images); the map is the refined map alone", UnfittedWarning, stacklevel=2)
        return AnomalyOutput(anomaly_map=amap, score=self.score(amap) if score is None else score,
                             extras={"distance": dist})
