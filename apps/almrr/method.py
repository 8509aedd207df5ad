"""ALMRR (Qu et al.): frozen backbone features → Mamba feature reconstruction (MFRM) → refinement U-Net (FRM),
trained on synthetic anomalies. The networks are :class:`~apps.almrr.torch_model.ALMRRModel`; this is their
training and scoring glue.

Training (DESIGN §5): a Perlin-mask synthetic anomaly I_a is made from each clean image I; both go through the
frozen backbone; the reconstructor maps F = φ(I_a) to F̂ and is pulled towards φ(I) (L_rec, mean squared
distance); the refiner sees concat(channel-mean(F̂), channel-mean(F)) (``method.refiner_inputs`` can add the log
feature distance, not in the paper) and segments the synthetic mask (focal γ=2 + dice). At test time the map is
the refiner's anomalous-class probability at input resolution (without a refiner: the distance branch's map,
apps/almrr/distance.py) and the image score the max of its 9×9 box-filtered map (``pipeline.score``).

``method.distance_weight`` w > 0 (not in the paper; the cpu preset) joins the scaled distance map to the refined map
by ``method.fusion`` (apps/almrr/fusion.py): the refiner's output is a segmentation, about 0 wherever it sees
nothing, and the distance orders the pixels of defects it misses. ``"auto"`` chooses w after training on synthetic
anomalies of held-out normal images (apps/almrr/weight_choice.py). The distance map is also reported alone
(``extras["distance"]``: the test report's "distance only" table).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssmad.core import AnomalyOutput, ConfigError, Sample
from ssmad.heads.losses import dice_loss, focal_loss
from ssmad.scoring import GroupedAP

from ..common.config import build_role, component
from ..common.data import LazyImages
from ..common.feature_cache import FeatureCache
from ..common.method import Method, UnfittedWarning, Validation
from ..common.settings import read_section
from . import weight_choice
from .distance import DistanceBranch
from .fusion import describe, fuse
from .settings import AUTO_WEIGHTS, REFINER_INPUTS, ALMRRSettings
from .torch_model import ALMRRModel

__all__ = ["ALMRR", "AUTO_WEIGHTS", "REFINER_INPUTS"]

VALIDATION_FIT_IMAGES = 128   # training images a distance that wants many images is fitted on to score an epoch


class ALMRR(Method):
    app = "almrr"
    settings = ALMRRSettings
    alternatives = {
        "backbone": ["resnet18", "resnet34", "resnet50", "wide_resnet50_2", "vgg19", "efficientnet_lite0"],
        "reconstructor": ["vim", "cnn1x1", "cnn3x3", "transformer"],
        "distance": ["mse", "mahalanobis", "position_mahalanobis"],
        "distance_norm": ["position_norm", "quantile_norm"],
        "synth": ["perlin", "mixed"],
        # the rest have one working choice here (a role is switched off with enabled = false)
        "refiner": [], "distance_smooth": [], "distance_scale": [], "score": [],
    }

    def __init__(self, config: dict[str, Any], device: torch.device, for_training: bool = True):
        super().__init__(config, device, for_training)
        m = read_section(ALMRRSettings, config, "method")
        self.lambdas = {"rec": m.lambda_rec, "focal": m.lambda_focal, "dice": m.lambda_dice}
        self.gamma = m.focal_gamma
        # for scoring, the backbone's weights come from the checkpoint: no weights file or download is needed
        backbone = build_role(config, "backbone", unweighted=not for_training)
        if backbone is None:
            raise ConfigError("pipeline.backbone: ALMRR needs a backbone")
        channels = int(sum(backbone.channels))
        reconstructor = build_role(config, "reconstructor", in_channels=channels, feature_size=m.feature_size)
        if reconstructor is None:
            raise ConfigError("pipeline.reconstructor: ALMRR needs a reconstructor")
        refiner = build_role(config, "refiner", in_channels=len(m.refiner_inputs), out_channels=2)
        self.modules = ALMRRModel(backbone, reconstructor, refiner, feature_size=m.feature_size,
                                refiner_inputs=m.refiner_inputs, precision=self.precision, device=device,
                                  channels_last=self.channels_last)
        if component(config, "synth") is None:
            raise ConfigError("pipeline.synth: ALMRR trains on synthetic anomalies and needs a synthesiser")
        # built now for training (a bad texture folder fails at once), else when first used (scoring images needs
        # no synthetic anomalies, nor the texture folder they are made of)
        self._synth = build_role(config, "synth") if for_training else None
        self.score = build_role(config, "score")
        self.distance = DistanceBranch(config, channels, m.feature_size ** 2)
        self.auto_weight = m.distance_weight == "auto"
        self.weight_candidates = list(m.distance_weight_candidates)
        self.weight_choice: dict[str, Any] | None = None     # what "auto" chose, and the pixel AP of each candidate
        self.distance_weight = 0.0 if self.auto_weight else float(m.distance_weight)
        self.fusion = m.fusion
        # the image score's own weight (None: the map's)
        self.image_weight = None if m.image_distance_weight == "map" else float(m.image_distance_weight)
        if self._scaled and self.distance.scale is None:
            raise ConfigError("method.distance_weight > 0 or \"auto\" (or method.image_distance_weight > 0) adds the "
                              "scaled distance map to the refined map and needs the pipeline.distance_scale role "
                              "(quantile_norm); enable it or set the weights to 0")
        self._warned_unscaled = False
        self._final_fit = False      # whether the distance was fitted by after_training (or loaded), not for an epoch
        self.fit_images: Sequence[torch.Tensor] | None = None   # training images to score epochs with (prepare)
        self.eval_batch_size = int(config["train"].get("eval_batch_size", 8))
        self.modules.to(device)
        # the frozen backbone's outputs of unrotated clean training images (train_features); bf16 outputs are kept
        # in bf16, which holds them exactly
        self.feature_cache = FeatureCache(int(m.feature_cache_mb * 2**20), torch.bfloat16)

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

    @property
    def has_refiner(self) -> bool:
        return "refiner" in self.modules

    # -- data -------------------------------------------------------------------------------------------------
    def train_item(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        """:meth:`synthesise`'s item of ``sample`` and its ``key`` (the image's path), so that :meth:`train_step`
        can keep the backbone's outputs of a clean image the draw left as it was."""
        return {**self.synthesise(sample.image, rng), "key": sample.path}

    def synthesise(self, image: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``clean``, ``anomalous`` (3×H×W) and ``mask`` (1×H×W) of one synthetic anomaly of ``image``;
        ``as_given`` (whether ``clean`` is ``image`` unchanged: not rotated) and ``same`` (whether ``anomalous``
        is ``clean``: a draw left clean), 0-d bool tensors that let a training step skip repeated work."""
        given = image.permute(1, 2, 0).numpy()
        clean, anomalous, mask = self.synth(given, rng)
        clean = np.ascontiguousarray(clean, np.float32)
        anomalous = np.ascontiguousarray(anomalous, np.float32)
        return {"clean": torch.from_numpy(clean).permute(2, 0, 1),
                "anomalous": torch.from_numpy(anomalous).permute(2, 0, 1),
                "mask": torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None],
                "as_given": torch.tensor(bool(np.array_equal(clean, given))),
                "same": torch.tensor(bool(np.array_equal(anomalous, clean)))}

    # -- training ---------------------------------------------------------------------------------------------
    def train_features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F of the clean images, F of the anomalous ones)`` of a training batch, in one backbone call on only
        what has to be computed: an anomalous image that is its clean one (``same``) is not run again, and a
        clean image the draw left as it was (``as_given``, with the batch's ``key``) comes from the feature cache
        (``method.feature_cache_mb``) from its second epoch on. Equal to running the backbone on both halves,
        up to the backbone's own batch-to-batch rounding."""
        clean, anomalous = batch["clean"], batch["anomalous"]
        n = len(clean)
        same = batch["same"].tolist() if "same" in batch else [False] * n
        keys = batch.get("key")
        cacheable = [False] * n if keys is None or "as_given" not in batch else batch["as_given"].tolist()
        cached = [self.feature_cache.get((keys[i], self.precision)) if cacheable[i] else None for i in range(n)]
        run_clean = [i for i in range(n) if cached[i] is None]
        run_anomalous = [i for i in range(n) if not same[i]]
        todo = torch.cat([clean[run_clean], anomalous[run_anomalous]])
        stages = self.model.stages(todo) if len(todo) else []
        parts: dict[tuple[str, int], tuple[torch.Tensor, ...]] = {}
        for j, (kind, i) in enumerate([("clean", i) for i in run_clean] + [("anomalous", i) for i in run_anomalous]):
            parts[kind, i] = tuple(s[j] for s in stages)
        for i in run_clean:
            if cacheable[i]:
                self.feature_cache.put((keys[i], self.precision), parts["clean", i])
        clean_parts = [parts["clean", i] if cached[i] is None else cached[i] for i in range(n)]
        target = self.model.join([torch.stack(s) for s in zip(*clean_parts, strict=True)])
        if not run_anomalous:
            return target, target
        anomalous_parts = [clean_parts[i] if same[i] else parts["anomalous", i] for i in range(n)]
        return target, self.model.join([torch.stack(s) for s in zip(*anomalous_parts, strict=True)])

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        target, feats = self.train_features(batch)
        _, recon, logits = self.train_forward(batch["anomalous"], feats)
        l_rec = F.mse_loss(recon, target)
        out = {"rec": l_rec}
        loss = self.lambdas["rec"] * l_rec
        if self.has_refiner:
            logits = F.interpolate(logits, size=batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
            l_focal = focal_loss(logits, batch["mask"], gamma=self.gamma)
            l_dice = dice_loss(torch.softmax(logits, 1)[:, 1:], batch["mask"])
            loss = loss + self.lambdas["focal"] * l_focal + self.lambdas["dice"] * l_dice
            out.update(focal=l_focal, dice=l_dice)
        out["loss"] = loss
        return out

    # -- the distance branch's fits ---------------------------------------------------------------------------
    @torch.no_grad()
    def raw_distance(self, images: torch.Tensor) -> torch.Tensor:
        """The feature distance of images before any normalisation, B×1×S×S on the feature grid."""
        feats = self.model.features(images)
        return self.distance.raw(self.model.reconstruct(feats), feats)

    @torch.no_grad()
    def _residuals(self, normal_images: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """F̂ − F of ``normal_images``, a batch at a time (what a fitted distance is fitted on)."""
        for i in range(0, len(normal_images), self.eval_batch_size):
            feats = self.model.features(torch.stack(normal_images[i:i + self.eval_batch_size]).to(self.device))
            yield self.model.reconstruct(feats) - feats

    @property
    def _scaled(self) -> bool:
        """Whether the refined map can get the scaled distance map added (a weight > 0 or "auto", for the map or
        for the image score)."""
        return (self.distance_weight > 0 or self.auto_weight or bool(self.image_weight)) and self.has_refiner

    def prepare(self, run_dir, samples, indices: list[int]) -> None:
        """Keep (lazily) up to ``VALIDATION_FIT_IMAGES`` training images, evenly spread over them: a distance that
        wants many images is fitted on them while epochs are scored (fitted on the held-out images it scores, it
        would know their normal parts by heart and make every epoch look alike)."""
        step = max(1, -(-len(indices) // VALIDATION_FIT_IMAGES))
        self.fit_images = LazyImages(samples, list(indices)[::step])

    @torch.no_grad()
    def _fit_distance(self, normal_images: Sequence[torch.Tensor],
                      many_images: Sequence[torch.Tensor] | None = None) -> bool:
        """Fit the distance branch on ``normal_images`` (held out), a distance that wants many images on
        ``many_images`` (training images) when given; whether its scale was fitted (a weight > 0 or "auto")."""
        if not normal_images:
            return False
        on_many = self.distance.wants_many_images and many_images
        self.distance.fit_metric(self._residuals(many_images if on_many else normal_images))
        raw = torch.cat([self.raw_distance(torch.stack(normal_images[i:i + self.eval_batch_size]).to(self.device))
                         for i in range(0, len(normal_images), self.eval_batch_size)])
        return self.distance.fit_maps(raw, normal_images[0].shape[-2:], self._scaled)

    @torch.no_grad()
    def after_training(self, normal_images: Sequence[torch.Tensor],
                       train_images: Sequence[torch.Tensor] | None = None) -> list[str]:
        """Fit the distance branch on the held-out ``normal_images`` (a distance that wants many images on
        ``train_images``), then ("auto") choose the distance weight on synthetic anomalies of at most
        ``weight_choice.MAX_IMAGES`` of them."""
        cache = self.feature_cache
        lines = []
        if cache.hits + cache.misses:
            lines.append(f"feature cache: the backbone's outputs of {len(cache)} unrotated clean training images "
                         f"kept ({cache.nbytes / 2**20:.0f} MB of method.feature_cache_mb); {cache.hits} of "
                         f"{cache.hits + cache.misses} look-ups found them")
        cache.clear()   # training is over: the memory goes back
        start = time.perf_counter()
        fitted = self._fit_distance(normal_images, train_images)
        self._final_fit = True
        if normal_images and train_images and self.distance.wants_many_images:
            lines.append(f"pipeline.distance ({self.distance.metric_name}) fitted on the residuals of the "
                         f"{len(train_images)} training images ({time.perf_counter() - start:.0f} s with the other "
                         f"distance statistics)")
        if not fitted or not self.auto_weight:
            return lines
        images = list(normal_images[:weight_choice.MAX_IMAGES])
        maps = weight_choice.synthetic_maps(self, images, weight_choice.synthetic_rng(self.config))
        return lines + self._choose_weight(maps, len(images))

    def _choose_weight(self, maps: dict[str, torch.Tensor], n_images: int) -> list[str]:
        weight, self.weight_choice, lines = weight_choice.choose(
            maps, self.distance.scaled(maps["distance"]), self.weight_candidates, self.fusion, n_images)
        self.distance_weight = weight
        return lines

    can_validate = True

    @torch.no_grad()
    def validation_score(self, normal_images: list[torch.Tensor]) -> Validation:
        """The pixel AP, on synthetic anomalies of ``normal_images`` (the same ones every time), of the map
        ``predict`` would make if training ended here: the distance branch fitted and ("auto") the weight chosen on
        these images, as ``after_training`` does."""
        what = f"pixel AP on synthetic anomalies of {len(normal_images)} held-out images"
        scaled = self._fit_distance(normal_images, self.fit_images)
        self._final_fit = False
        maps = weight_choice.synthetic_maps(self, normal_images, weight_choice.synthetic_rng(self.config))
        if scaled and self.auto_weight:
            self._choose_weight(maps, len(normal_images))
            what += f" (weight {self.distance_weight:g} chosen on them)"
        amap = maps["refined"]
        if scaled and self.distance_weight > 0:
            amap = fuse(amap, self.distance.scaled(maps["distance"]), self.fusion, self.distance_weight)
        if not maps["mask"].any():
            return Validation(0.0, what + ": no anomaly was made")
        # every second pixel each way: a quarter of the memory for the paired comparison, no visible loss
        sub = (slice(None), 0, slice(None, None, 2), slice(None, None, 2))
        grouped = GroupedAP(amap[sub], maps["mask"][sub], maps["image"][:, None, None].expand_as(amap[sub]))
        return Validation(weight_choice.pixel_ap(maps["mask"], amap), what, grouped)

    # -- state ------------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        # (the epoch checkpoints of a training are written before after_training fits these). A distance that wants
        # many images is large (position_mahalanobis: 255 MB for Lite0 at 64×64) and, while epochs are scored, fitted
        # on a part of the training images only: its fits stay out of the epoch checkpoints and best.pt then;
        # after_training fits them all again
        if self.distance.wants_many_images and not self._final_fit:
            return {}
        state = self.distance.state_dict()
        if self.auto_weight and self.weight_choice is not None:
            state["distance_weight"] = dict(self.weight_choice)
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.distance.load_state_dict(state):
            self._final_fit = True
        if self.auto_weight and "distance_weight" in state:
            self.weight_choice = dict(state["distance_weight"])
            self.distance_weight = float(self.weight_choice["weight"])

    # -- scoring ----------------------------------------------------------------------------------------------
    def map_note(self) -> str | None:
        if not self._scaled:
            return None
        how = "chosen after training" if self.auto_weight and self.weight_choice is not None else (
            "auto, not chosen yet: the refined map alone" if self.auto_weight else "method.distance_weight")
        which = f"{self.distance.metric_name} " if self.distance.fits_metric else ""
        note = f"map = {describe(self.fusion, self.distance_weight, which + 'distance')} ({how})"
        if self.image_weight is not None and self.image_weight != self.distance_weight:
            note += f"; image score of refined + {self.image_weight:g} x scaled distance"
        return note

    def scoring_parts(self) -> dict[str, Any]:
        d = self.distance
        return {"distance": d.metric, "distance_norm": d.norm, "distance_smooth": d.smooth, "distance_scale": d.scale,
                "score": self.score}

    def branch_score(self, maps):
        """The distance map alone scores as with the refiner disabled: by the pipeline's ``score`` (box-filter max)."""
        return self.score(maps)

    @torch.no_grad()
    def branch_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(refined, distance)`` maps B×1×H×W of images, before they are joined (without a refiner both are the
        distance map)."""
        feats, recon, logits = self.model(images)
        size = images.shape[-2:]
        dist = self.distance(recon, feats, size)
        if logits is None:
            return dist, dist
        return F.interpolate(torch.softmax(logits, 1)[:, 1:], size=size, mode="bilinear", align_corners=False), dist

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        refined, dist = self.branch_maps(images)
        if not self.has_refiner:
            return AnomalyOutput(anomaly_map=dist, score=self.score(dist))
        amap, score = refined, None
        if self._scaled:
            if self.distance.scale_fitted and (self.weight_choice is not None or not self.auto_weight):
                scaled = self.distance.scaled(dist)
                if self.distance_weight > 0:
                    amap = fuse(refined, scaled, self.fusion, self.distance_weight)
                if self.image_weight is not None and self.image_weight != self.distance_weight:
                    score = self.score(refined + self.image_weight * scaled)
            elif not self._warned_unscaled:
                self._warned_unscaled = True
                what = ("method.distance_weight = auto: no weight chosen" if self.distance.scale_fitted
                        else "pipeline.distance_scale: not fitted")
                warnings.warn(f"{what} (a checkpoint of a training that did not finish, or no held-out normal "
                              f"images); the map is the refined map alone", UnfittedWarning, stacklevel=2)
        return AnomalyOutput(anomaly_map=amap, score=self.score(amap) if score is None else score,
                             extras={"distance": dist})
