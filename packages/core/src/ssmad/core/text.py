"""Text for people: durations in logs and progress lines."""

from __future__ import annotations

import math


def fmt_time(seconds: float) -> str:
    """A duration as ``H:MM:SS`` (``M:SS`` under an hour), rounded down to the second; ``?`` when it is not finite
    (an ETA before any rate is known). Negative durations count as 0."""
    if not math.isfinite(seconds):
        return "?"
    total = int(max(0.0, seconds))
    hours, rem = divmod(total, 3600)
    minutes, secs = divmod(rem, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
