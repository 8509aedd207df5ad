"""What a method (ALMRR, VMPFD-AD) provides to the shared skeleton."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ssmad.core import AnomalyOutput, Sample
from ssmad.core.device import allow_tf32, resolve_precision

from .config import build_role
from .networks import Networks
from .settings import TrainSettings, read_section


class UnfittedWarning(RuntimeWarning):
    """A method scores with statistics that are not fitted (a checkpoint of a training that did not finish, or no
    held-out normal images) and says what it does instead."""


@dataclass
class Validation:
    """What :meth:`Method.validation_score` returns: the ``score`` (higher is better), ``what`` it is (for the log)
    and, when the score is an average precision over images, ``grouped``: the same AP recomputable per image weight
    (``ssmad.scoring.GroupedAP``), with which ``train.select = "best"`` tests whether the best epoch truly beats the
    last one."""

    score: float
    what: str
    grouped: Any = None


def fused_if_possible(cls: type[torch.optim.Optimizer], params, **kwargs) -> torch.optim.Optimizer:
    """``cls(params, fused=True, **kwargs)`` where the parameters' device has the fused kernel (one pass over all
    parameters: on a CPU, ALMRR's Adam step takes 39 ms instead of 115), else ``cls(params, **kwargs)``. The
    optimizer state is the same either way, so checkpoints resume across the two."""
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # a device or dtype without the fused kernel, an old torch
        return cls(params, **kwargs)


class Method(ABC):
    """Base class. Subclasses build their modules from ``config["pipeline"]`` in ``__init__``.

    The skeleton calls, in order: ``train_item`` (per training sample, in the data loader),
    ``train_step`` (per batch), ``after_training`` (once, with normal validation images), then
    ``predict`` (per batch) for ``test``/``predict``. ``state_dict``/``load_state_dict`` cover every
    learned tensor and statistic.
    """

    app: str = ""
    #: the attrs class of the method's ``[method]`` section (``apps.common.settings``), or None
    settings: type | None = None
    #: the components that can fill each pipeline role (listed by ``components``); every role of the app's
    #: pipeline.toml has an entry (an empty list: the default is the only working choice)
    alternatives: dict[str, list[str]] = {}

    def __init__(self, config: dict[str, Any], device: torch.device, for_training: bool = True):
        """``for_training=False``: the state will come from a checkpoint (``test``, ``predict``), so what only
        training reads (initial weight files, synthetic-anomaly textures) is not read now; a run then scores images
        on a machine that lacks them. Subclasses honour it in their own ``__init__``."""
        self.config = config
        self.device = device
        #: the networks by role (a method may replace this with its own torch model, a :class:`Networks`)
        train = read_section(TrainSettings, config, "train")
        allow_tf32(device, train.precision)
        self.modules: Networks = Networks(precision=resolve_precision(train.precision, device), device=device,
                                          channels_last=train.memory_format != "contiguous")

    @property
    def model(self) -> Networks:
        """The method's torch model (:attr:`modules`, under the name its own class gives it)."""
        return self.modules

    @property
    def channels_last(self) -> bool:
        """Whether the networks run in the channels-last memory format (``train.memory_format``)."""
        return self.modules.channels_last

    @property
    def precision(self) -> str:
        """The networks' precision ("fp32", "bf16", "fp16"; ``train.precision`` resolved for the device)."""
        return self.modules.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.modules.precision = value

    def train_forward(self, *args: Any, **kwargs: Any) -> Any:
        """The torch model's ``forward`` for a training step: through ``DistributedDataParallel`` when the training
        runs in several processes (:mod:`apps.common.distributed`; the engine sets :attr:`parallel`), so that the
        gradients of the step are averaged over them. A method calls its trained networks in a step only through
        this (once per step)."""
        return (self.parallel or self.model)(*args, **kwargs)

    #: the DistributedDataParallel around :attr:`model` while a distributed training runs, else None
    parallel: torch.nn.Module | None = None

    def run_module(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``self.modules[name](*args, **kwargs)`` in the method's precision (``train.precision``), its floating
        outputs in fp32 (:meth:`Networks.run`)."""
        return self.modules.run(name, *args, **kwargs)

    # -- training ---------------------------------------------------------------------------------------
    def train_item(self, sample: Sample, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Turn one training sample into tensors for :meth:`train_step` (runs in the data loader)."""
        return {"image": sample.image}

    def parameters(self):
        return [p for p in self.modules.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config["train"]
        return fused_if_possible(torch.optim.Adam, self.parameters(), lr=float(t["lr"]),
                                 weight_decay=float(t.get("weight_decay", 0.0)))

    @abstractmethod
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms of one batch; key ``loss`` is minimised."""

    def prepare(self, run_dir, samples, indices: list[int]) -> None:
        """Once before training (and on resume): e.g. distil a feature extractor. Default: nothing."""

    def after_training(self, normal_images: Sequence[torch.Tensor],
                       train_images: Sequence[torch.Tensor] | None = None) -> list[str] | None:
        """Fit statistics (normalisation quantiles...) on normal validation images; lines it returns go to the
        training log. ``train_images``, the training images (read when indexed), are for statistics that need
        more normal images than are held out. Default: nothing."""

    #: whether :meth:`validation_score` exists (``train.select = "best"`` needs it)
    can_validate: bool = False

    def validation_score(self, normal_images: list[torch.Tensor]) -> Validation:
        """The model as it stands, scored on held-out normal images only (never the test set):
        ``train.select = "best"`` keeps the epoch that scores highest unless the last one is as good within the
        score's noise. May fit what :meth:`after_training` fits (it runs again on all held-out images once training
        ends). Methods that set :attr:`can_validate` override this."""
        raise NotImplementedError(f"{self.app} has no validation score")

    # -- inference --------------------------------------------------------------------------------------
    @abstractmethod
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        """Anomaly maps B×1×H×W at input resolution and scores B (called under ``torch.no_grad``)."""

    def map_note(self) -> str | None:
        """A setting of the map that the test report's title should state (e.g. a weight chosen after training), or
        None."""
        return None

    def scoring_parts(self) -> dict[str, Any]:
        """The components outside :attr:`modules` that ``predict`` uses, by pipeline role (fitted statistics, map
        post-processing, the score): an export checks that each can be exported. Default: none."""
        return {}

    def branch_score(self, maps: np.ndarray) -> np.ndarray:
        """Image scores of a branch map reported alone (N×H×W numpy): its maximum. Methods whose own score is not the
        plain maximum override this, so that a branch scores as the method would score it."""
        return maps.reshape(len(maps), -1).max(1)

    def train(self, mode: bool = True) -> None:
        self.modules.train(mode)

    def describe(self) -> str:
        """Parameter counts, and the selective-scan backend that the model's Mamba mixers run here (``auto``
        resolved: a user sees at once when a CPU or GPU falls back to the slower pure-PyTorch scan, and why)."""
        from ssmad.ssm import cpu_kernel_status

        n = sum(p.numel() for p in self.modules.parameters())
        t = sum(p.numel() for p in self.parameters())
        text = f"{n / 1e6:.2f} M parameters ({t / 1e6:.2f} M trainable)"
        scans = self.scan_backends()
        if scans:
            text += f"; selective scan {', '.join(scans)}"
            if self.device.type == "cpu" and "torch" in scans:
                text += f" (compiled CPU kernel {cpu_kernel_status()})"
            elif self.device.type == "cuda" and "torch" in scans:
                from ssmad.ssm.triton_scan import triton_status

                text += f" (Triton kernels {triton_status(self.device)})"
        return text + f"; precision {self.precision}"

    def scan_backends(self) -> list[str]:
        """The selective-scan backends the model's Mamba mixers run on its device (``auto`` resolved); a ConfigError
        naming the pipeline role when a mixer's ``scan`` names a backend that cannot run there (``cpu`` on a GPU,
        ``triton`` on a CPU), before any image is scored."""
        from ssmad.core import ConfigError
        from ssmad.ssm import BiMambaMixer

        scans = set()
        for role, module in self.modules.items():
            for m in module.modules():
                if isinstance(m, BiMambaMixer):
                    try:
                        scans.add(m.scan_backend(self.device))
                    except ConfigError as exc:
                        raise ConfigError(f"pipeline.{role}: {exc}") from None
        return sorted(scans)

    # -- state --------------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Every module's tensors, a frozen pretrained backbone's included: a run scores images with nothing but its
        checkpoint (no weights file to keep beside it, nothing to download on an offline machine)."""
        return {"modules": self.modules.state_dict(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing, unexpected = self.modules.load_state_dict(state["modules"], strict=False)
        pretrained = self.pretrained_modules()
        absent = sorted({k.split(".", 1)[0] for k in missing} & set(pretrained))
        missing = [k for k in missing if k.split(".", 1)[0] not in absent]
        if missing or unexpected:
            from ssmad.core import CheckpointError
            raise CheckpointError(f"checkpoint does not fit the pipeline: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}")
        for name in absent:   # a checkpoint from before apps 0.10.0: these weights come from their source again
            self.modules[name] = build_role(self.config, name).to(self.device)
        self.load_extra_state(state.get("extra", {}))

    def pretrained_modules(self) -> tuple[str, ...]:
        """Modules (named as their pipeline role) with pretrained weights that checkpoints written before apps 0.10.0
        left out: loading such a checkpoint builds them from their source (weights file, download) again."""
        return ()
