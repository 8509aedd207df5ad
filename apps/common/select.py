"""``train.select``: which epoch's model a run keeps (the last, or the best on held-out normal images with synthetic
anomalies when it beats the last beyond the noise)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from ssmad.core import ConfigError

from .method import Method
from .runs import load_checkpoint, log, save_checkpoint

SELECT_FEW_IMAGES = 20        # train.select = "best" on fewer held-out images says its choice is noisy
SELECT_COMPARE_MAX = 100      # held-out images on which the best epoch and the last are compared, at most
SELECT_BOOTSTRAP = 200        # bootstrap draws of that comparison


class Selector:
    """``train.select``: with "best", scores the model after every epoch (:meth:`Method.validation_score` on the
    first ``train.select_images`` held-out normal images), keeps the best one's state in ``best.pt``, and when
    training ends brings it back if it beats the last epoch's beyond the noise (:meth:`restore`); with "last",
    nothing. The scoring time counts toward ``train.max_minutes``."""

    def __init__(self, method: Method, config: dict[str, Any], run_dir: Path, samples, val_idx: list[int]):
        t = config["train"]
        self.method, self.run_dir, self.path = method, run_dir, run_dir / "best.pt"
        self.active = t["select"] == "best"
        self.best: dict[str, float] | None = None          # {"epoch", "score"} of the model in best.pt
        if not self.active:
            return
        if not method.can_validate:
            raise ConfigError(f'train.select = "best": {method.app} has no validation score to select an epoch by; '
                              f'use train.select = "last"')
        if not val_idx:
            raise ConfigError('train.select = "best" scores every epoch on held-out normal images, and '
                              'train.val_fraction holds out none; raise train.val_fraction or use '
                              'train.select = "last"')
        # (read only when selecting: a "last" run reads the held-out images once, after training)
        self.all_images, self.seed = [samples[i].image for i in val_idx], int(t["seed"])
        self.images = self.all_images[: int(t["select_images"])]
        few = (f"; only {len(self.images)}, so the choice is noisy (raise train.val_fraction)"
               if len(self.images) < SELECT_FEW_IMAGES else "")
        log(run_dir, f"train.select = best: every epoch's model is scored on {len(self.images)} held-out normal "
                     f"images{few}")

    def resume(self, best: dict[str, float] | None) -> None:
        if not self.active or best is None:
            return
        if self.path.is_file():
            self.best = dict(best)
        else:
            log(self.run_dir, f"warning: {self.path} is missing, so the best model before this resume is lost; "
                              f"train.select = best chooses among the epochs from here on")

    def after_epoch(self, record: dict[str, Any]) -> None:
        """Score the model of the epoch that ``record`` ends; record the score; keep the model when it is the best."""
        if not self.active:
            return
        t0 = time.perf_counter()
        self.method.train(False)
        v = self.method.validation_score(self.images)
        score, what = v.score, v.what
        record["select"] = score
        best = self.best is None or score > self.best["score"]
        if best:
            self.best = {"epoch": record["epoch"], "score": score}
            save_checkpoint(self.path, {"app": self.method.app, "state": self.method.state_dict(), **self.best})
        log(self.run_dir, f"epoch {record['epoch']}: {what} {100 * score:.1f}"
                          f"{' (best so far, kept in ' + self.path.name + ')' if best else ''} "
                          f"[{time.perf_counter() - t0:.0f} s]")

    def restore(self, history: list[dict[str, Any]]) -> float:
        """The model to keep when training ends; returns its epoch. The best-scoring epoch's model (``best.pt``) is
        kept only when, scored again on all held-out images (at most ``SELECT_COMPARE_MAX``; fresh images temper
        the luck of the maximum), it beats the last epoch's by more than twice the standard error of the
        difference (a paired bootstrap over the images); otherwise the last, longest-trained model stays."""
        last = history[-1]["epoch"] if history else 0
        if not self.active or self.best is None or self.best["epoch"] == last:
            return last
        from ssmad.scoring import bootstrap_difference

        t0 = time.perf_counter()
        images = self.all_images[:SELECT_COMPARE_MAX]
        last_state = copy.deepcopy(self.method.state_dict())
        v_last = self.method.validation_score(images)
        self.method.load_state_dict(load_checkpoint(self.path, self.method.app)["state"])
        v_best = self.method.validation_score(images)
        gap, se = v_best.score - v_last.score, 0.0
        if v_best.grouped is not None and v_last.grouped is not None:
            gap, se = bootstrap_difference(v_best.grouped, v_last.grouped, SELECT_BOOTSTRAP, self.seed)
        what = v_best.what if v_best.what == v_last.what else f"best: {v_best.what}; last: {v_last.what}"
        how = (f"on {len(images)} held-out images it scores {100 * gap:+.1f} ± {100 * se:.1f} (paired bootstrap) "
               f"against the last epoch's ({what}) [{time.perf_counter() - t0:.0f} s]")
        if gap > 2 * se:
            log(self.run_dir, f"train.select = best: the model of epoch {self.best['epoch']} is kept, not the last "
                              f"one (epoch {last}): {how}")
            return self.best["epoch"]
        self.method.load_state_dict(last_state)
        log(self.run_dir, f"train.select = best: the last epoch's model (epoch {last}) is kept: the best-scoring one "
                          f"(epoch {self.best['epoch']}) is not better by more than twice the standard error; {how}")
        return last
