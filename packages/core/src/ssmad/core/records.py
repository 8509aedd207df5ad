"""Records that flow between components (attrs classes; tensors are torch tensors where noted)."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(kw_only=True)
class Sample:
    """One image of a dataset.

    ``image``: float32 tensor 3×H×W in [0, 1] (always RGB); ``mask``: float32 tensor 1×H×W with values in
    {0, 1} (all zero for normal images); ``label``: 0 normal, 1 anomalous; ``path``: the image file;
    ``original_size``: (height, width) of the file before resizing; ``defect_type``: ``"good"`` or the class.
    """

    image: Any
    mask: Any
    label: int
    path: str
    original_size: tuple[int, int]
    defect_type: str = "good"
    category: str = ""


@attrs.define(kw_only=True)
class AnomalyOutput:
    """What a model returns: ``anomaly_map`` B×1×H×W at input resolution and one ``score`` per image (B)."""

    anomaly_map: Any
    score: Any
    extras: dict[str, Any] = attrs.field(factory=dict)
