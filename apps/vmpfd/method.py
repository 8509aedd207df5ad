"""VMPFD-AD: patch-feature distribution (PDN + mixture density) ⊕ Vision-Mamba autoencoder, quantile fusion.

- Local branch (PFDMM): frozen PDN features, pooled to the shared grid (256/32 = 8×8) → learnable 1×1 conv
  adapter G_θ, fused with the ViM autoencoder's encoder map F_φ on the same grid (``method.local_features``:
  ``"sum"`` adds them, the adapter then has the encoder's width; ``"concat"`` stacks them; ``"pdn"`` leaves the
  encoder out) → T → mixture density head (π softmax, μ linear, σ softplus + floor) → per-position negative
  log-likelihood → upsampled: LAM.
- Global branch (VMARN): ViM autoencoder reconstructs the image; GAM = pixel-wise squared error (Gaussian
  smoothed by the ``smooth_global`` role).
- Loss: NLL − λ_vol·log-volume(G_θ)/C_T + λ₁·MSE + (1 − SSIM), λ₁ = 5 (the log-volume term is ours, see
  below). After training, LAM and GAM are normalised with the 0.9/0.995 quantiles of normal validation images and
  fused; image score = max of the fused map (``method.image_score = "local"``: of the normalised LAM).

Anti-collapse. The adapter is trained by the NLL alone, and the NLL of T falls whenever G_θ makes T easier to
predict: the cheapest way is to make it *low-rank* (every channel a mix of a few directions, which the density's
bottleneck then copies exactly, anomalies included). The batch norm without affine parameters after G_θ only fixes
each channel's variance, which does not stop that: on the Magnetic-tile split a PDN-only adapter trained this way
drove the NLL to within 0.05 of its floor and the local map fell to chance. So the loss carries the adapter's
log-volume (:class:`Adapter`): the NLL of T becomes, by the change of variables, the NLL of the PDN features seen
through G_θ, and a map that squeezes directions together is charged exactly what it gains (``method.
lambda_volume``, 1 by default; 0 gives the plain NLL). Beside it, the encoder map enters T detached (trained by
reconstruction only, not pulled towards the density), and the density head has a bottleneck and a σ floor
(``ssmad.heads`` mdn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssmad.core import AnomalyOutput, ConfigError
from ssmad.heads.losses import ssim

from ..common.config import build_role, component
from ..common.method import Method, fused_if_possible
from ..common.settings import read_section
from .settings import VMPFDSettings
from .torch_model import Adapter, VMPFDModel


class VMPFD(Method):
    app = "vmpfd"
    # the "pdn" role is the local patch descriptor: EfficientAD's PDN (the paper's), or any frozen feature backbone
    alternatives = {"autoencoder": ["vim_ae", "cnn_ae"],
                    "pdn": ["pdn_small", "pdn_medium", "efficientnet_lite0", "resnet18", "wide_resnet50_2"],
                    # one working choice each (a role is switched off with enabled = false where optional)
                    "density": [], "smooth_global": [], "norm_local": [], "norm_global": [], "fusion": []}
    branch_maps = ("local", "global")
    settings = VMPFDSettings

    def __init__(self, config: dict[str, Any], device: torch.device, for_training: bool = True):
        super().__init__(config, device, for_training)
        m = read_section(VMPFDSettings, config, "method")
        self.image_size = int(config["data"]["image_size"])
        self.grid, adapter_dim, self.local_features = m.grid, m.adapter_dim, m.local_features
        self.lambda_volume, self.lambda_mse, self.lambda_ssim = m.lambda_volume, m.lambda_mse, m.lambda_ssim
        self.image_score = m.image_score
        self.pdn_size = m.pdn_input_size or self.image_size   # the PDN may see a smaller image
        self.pdn_cache: dict[str, torch.Tensor] = {}  # pooled PDN features of the training images (frozen PDN)
        # the PDN's distillation (when it has no weights file), checked before any training starts
        self.distill = {"teacher": m.distill_teacher, "steps": m.distill_steps, "batch_size": m.distill_batch_size,
                        "lr": m.distill_lr}
        # the PDN's weights come from the checkpoint when scoring, not from its file
        pdn = build_role(config, "pdn", unweighted=not for_training)
        if pdn is None:
            raise ConfigError("pipeline.pdn: VMPFD-AD needs a local descriptor (backbone pdn_small, pdn_medium, or "
                              "a frozen feature backbone such as efficientnet_lite0)")
        ae = build_role(config, "autoencoder", img_size=self.image_size)
        if ae is None:
            raise ConfigError("pipeline.autoencoder: VMPFD-AD needs an autoencoder (vim_ae or cnn_ae)")
        with torch.no_grad():
            latent = ae.encode(torch.zeros(1, 3, self.image_size, self.image_size))
        if latent.shape[-1] != self.grid and self.local_features != "pdn":   # "pdn": T holds no encoder map
            raise ConfigError(f"method.grid = {self.grid} but the autoencoder's encoder map is "
                              f"{latent.shape[-2]}×{latent.shape[-1]}: set method.grid or the autoencoder's patch "
                              f"(image_size / patch)")
        pdn_channels = int(sum(pdn.channels))
        if self.local_features == "sum":
            adapter_dim = latent.shape[1]  # the adapter's output is added to the encoder map
            if adapter_dim > pdn_channels:
                raise ConfigError(f"method.local_features = \"sum\" adds the adapted PDN features to the encoder "
                                  f"map, but the encoder is wider ({adapter_dim}) than the PDN ({pdn_channels}):"
                                  f" lower pipeline.autoencoder.d_model or use \"concat\"")
        modules: dict[str, nn.Module] = {"pdn": pdn, "autoencoder": ae, "adapter": Adapter(pdn_channels, adapter_dim)}
        t_dim = adapter_dim
        if self.local_features != "pdn":
            modules["latent_norm"] = nn.BatchNorm2d(latent.shape[1], affine=False)
            t_dim += latent.shape[1] if self.local_features == "concat" else 0
        density = component(config, "density") or {}
        modules["density"] = build_role(config, "density", in_channels=t_dim,
                                        **({"grid": self.grid} if density.get("position") else {}))
        self.modules = VMPFDModel(modules, grid=self.grid, pdn_size=self.pdn_size, local_features=self.local_features,
                                precision=self.precision, device=device, channels_last=self.channels_last)
        self.smooth = build_role(config, "smooth_global") if component(config, "smooth_global") else None
        self.norm_local = build_role(config, "norm_local")
        self.norm_global = build_role(config, "norm_global")
        self.fusion = build_role(config, "fusion")
        self.modules.to(device)

    # -- parameters -------------------------------------------------------------------------------------------
    def parameters(self):
        return [p for name, mod in self.modules.items() if name != "pdn" for p in mod.parameters()
                if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config["train"]
        return fused_if_possible(torch.optim.AdamW, self.parameters(), lr=float(t["lr"]),
                                 weight_decay=float(t.get("weight_decay", 0)))

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self.modules["pdn"].eval()

    # -- PDN weights: distilled on the training images when no teacher file is given ----------------------------
    def prepare(self, run_dir: Path, samples, indices: list[int]) -> None:
        entry = component(self.config, "pdn")
        if entry["name"].startswith("pdn_") and entry.get("weights") in (None, "none", ""):
            self.use_distilled_pdn(run_dir, entry, samples, indices)
        # the PDN is frozen and the training images are not augmented: its pooled features are computed once
        bs = int(self.config["train"]["eval_batch_size"])
        for i in range(0, len(indices), bs):
            chunk = [samples[j] for j in indices[i:i + bs]]
            feats = self.model.pdn_features(torch.stack([s.image for s in chunk]).to(self.device)).cpu()
            self.pdn_cache.update({s.path: f for s, f in zip(chunk, feats)})

    def use_distilled_pdn(self, run_dir: Path, entry: dict[str, Any], samples, indices: list[int]) -> None:
        out = run_dir / "pdn.pt"
        if not out.is_file():
            self.distill_pdn(out, samples, indices)
        # the distilled weights also travel inside every checkpoint (the PDN's state is saved with the model),
        # so the config keeps weights = "none" and a run folder can be moved
        pdn = build_role({"pipeline": [dict(entry, weights=str(out))]}, "pdn").to(self.device)
        self.modules["pdn"] = pdn

    def distill_pdn(self, out: Path, samples, indices: list[int]) -> None:
        """Distil the PDN from ``method.distill_teacher`` on the training images only (never the test split), as
        they are in memory (also for datasets without files, such as demo)."""
        from ssmad.backbones import DistillSettings, distill

        d = self.distill
        print(f"distilling {component(self.config, 'pdn')['name']} from {d['teacher']} on "
              f"{len(indices)} training images, {d['steps']} steps -> {out}", flush=True)
        distill(DistillSettings(
            teacher=d["teacher"], images=f"{len(indices)} training images", out=str(out), steps=d["steps"],
            pdn=component(self.config, "pdn")["name"].removeprefix("pdn_"), image_size=self.pdn_size,
            batch_size=d["batch_size"], lr=d["lr"], seed=int(self.config["train"]["seed"]),
            device=str(self.device), workers=0, log_every=max(1, d["steps"] // 20),
            # fp32 whatever train.precision: runs that differ in it then score with the same distilled PDN
            precision="fp32"),
            images=[samples[i].image for i in indices])

    # -- model ------------------------------------------------------------------------------------------------
    def train_item(self, sample, rng) -> dict[str, torch.Tensor]:
        item = {"image": sample.image}
        if sample.path in self.pdn_cache:
            item["pdn"] = self.pdn_cache[sample.path]
        return item

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        target = images * 2 - 1
        recon, nll, log_volume = self.train_forward(images, batch.get("pdn"))  # NLL and log-volume per dimension
        l_nll = nll.mean()
        l_mse = F.mse_loss(recon, target)
        l_ssim = 1 - ssim(recon, target, data_range=2.0)
        loss = l_nll + self.lambda_mse * l_mse + self.lambda_ssim * l_ssim
        if self.lambda_volume:  # (0 · a collapsed adapter's −∞ would be NaN)
            loss = loss - self.lambda_volume * log_volume
        return {"loss": loss, "nll": l_nll, "log_volume": log_volume, "mse": l_mse, "ssim": l_ssim}

    @torch.no_grad()
    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon, nll, _ = self.model(images)
        size = images.shape[-2:]
        lam = F.interpolate(nll[:, None], size=size, mode="bilinear", align_corners=False)
        gam = ((recon - (images * 2 - 1)) ** 2).mean(1, keepdim=True)
        if self.smooth is not None:
            gam = self.smooth(gam)
        return lam, gam

    def after_training(self, normal_images: list[torch.Tensor], train_images=None) -> None:
        if not normal_images:
            raise ConfigError("train.val_fraction: VMPFD-AD needs normal validation images to fit the quantile "
                              "normalisation; set train.val_fraction > 0")
        lams, gams = [], []
        bs = int(self.config["train"]["eval_batch_size"])
        for i in range(0, len(normal_images), bs):
            lam, gam = self.raw_maps(torch.stack(normal_images[i:i + bs]).to(self.device))
            lams.append(lam.cpu())
            gams.append(gam.cpu())
        self.norm_local.fit(torch.cat(lams))
        self.norm_global.fit(torch.cat(gams))

    def scoring_parts(self) -> dict[str, Any]:
        return {"smooth_global": self.smooth, "norm_local": self.norm_local, "norm_global": self.norm_global,
                "fusion": self.fusion}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        lam, gam = self.raw_maps(images)
        lam, gam = self.norm_local(lam), self.norm_global(gam)
        tam = self.fusion([lam, gam])
        scored = lam if self.image_score == "local" else tam
        return AnomalyOutput(anomaly_map=tam, score=scored.flatten(1).amax(1),
                             extras={"local": lam, "global": gam})

    # -- state ------------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        # epoch checkpoints are written before after_training has fitted the normalisation
        return {name: getattr(self, name).state_dict() for name in ("norm_local", "norm_global")
                if getattr(self, name).fitted}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for name in ("norm_local", "norm_global"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])
