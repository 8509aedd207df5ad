"""VMPFD-AD's ``[method]`` section (read with :func:`apps.common.settings.read_section`). A default is the paper's
value, or what a run stored before the key existed did."""

from __future__ import annotations

import attrs

from ..common.settings import NUMBER, setting

LOCAL_FEATURES = ("sum", "concat", "pdn")
IMAGE_SCORES = ("fused", "local")


@attrs.frozen(kw_only=True)
class VMPFDSettings:
    """``grid``: the grid both feature maps share; ``local_features``: what the density sees (``sum``: adapter(PDN)
    + encoder map; ``concat``; ``pdn``: adapter(PDN) alone); ``adapter_dim``: the adapter's width ("concat",
    "pdn"); ``lambda_*``: the losses (``lambda_volume``: the adapter's log-volume); ``pdn_input_size``: the image
    size the PDN sees (0: the image size); ``distill_*``: the PDN's distillation when it has no weights file;
    ``image_score``: the map whose maximum is the image score (``fused``, the paper's, or ``local``)."""

    grid: int = setting(8, int, lambda v: v >= 1, "an integer >= 1")
    adapter_dim: int = setting(128, int, lambda v: v >= 1, "an integer >= 1")
    # "fused": the name of "concat" in runs from ssmad-apps <= 0.2.2
    local_features: str = setting("sum", str, lambda v: v in (*LOCAL_FEATURES, "fused"), '"sum", "concat" or "pdn"',
                                  lambda v: "concat" if v == "fused" else v)
    # runs stored before the log-volume term existed trained without it
    lambda_volume: float = setting(0.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    lambda_mse: float = setting(5.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    lambda_ssim: float = setting(1.0, NUMBER, lambda v: v >= 0, "a number >= 0", float)
    pdn_input_size: int = setting(0, int, lambda v: v == 0 or v >= 32, "0 (the image size) or an integer >= 32")
    distill_teacher: str = setting("efficientnet_lite0", str, None, "a backbone name")
    distill_steps: int = setting(2000, int, lambda v: v >= 1, "an integer >= 1")
    distill_batch_size: int = setting(8, int, lambda v: v >= 1, "an integer >= 1")
    distill_lr: float = setting(5e-4, NUMBER, lambda v: v > 0, "a number > 0", float)
    image_score: str = setting("fused", str, lambda v: v in IMAGE_SCORES, '"fused" or "local"')
