"""apps/common/migrate.py: run folders written by apps 0.13 (kinds ``postprocess`` and ``reconstructor`` for the
image autoencoders) open, test and predict as they did; the upgrade is idempotent and leaves what it does not
know alone."""

from __future__ import annotations

import copy
import shutil
import tomllib

import numpy as np
import pytest
import tomli_w
import torch
from PIL import Image

from apps.almrr import APP as ALMRR_APP
from apps.common import Run
from apps.common.migrate import KIND_UPGRADES, TRAIN_DEFAULTS, upgrade_config
from apps.vmpfd import APP as VMPFD_APP

OLD_KINDS = {name: old for (old, name) in KIND_UPGRADES}   # the kinds apps 0.13 stored, by component name


def _downgrade(config: dict) -> dict:
    """``config`` as apps 0.13 wrote it."""
    old = copy.deepcopy(config)
    for entry in old["pipeline"]:
        entry["kind"] = OLD_KINDS.get(entry["name"], entry["kind"])
    return old


def test_upgrade_of_an_old_config_is_what_this_release_writes_and_idempotent():
    for app in (ALMRR_APP, VMPFD_APP):
        now = app.config("smoke")
        old = _downgrade(now)
        assert old != now and any(e["kind"] == "postprocess" for e in old["pipeline"])
        assert upgrade_config(copy.deepcopy(old), app.name) == now
        assert upgrade_config(upgrade_config(copy.deepcopy(old), app.name), app.name) == now


def test_upgrade_fills_old_train_keys_and_almrr_distance_and_leaves_the_unknown_alone():
    config = ALMRR_APP.config("smoke")
    for key in TRAIN_DEFAULTS:
        del config["train"][key]
    config["pipeline"] = [e for e in config["pipeline"] if e["role"] != "distance"]
    config["pipeline"].append({"role": "mine", "kind": "postprocess", "name": "third_party"})
    up = upgrade_config(copy.deepcopy(config), "almrr")
    assert {k: up["train"][k] for k in TRAIN_DEFAULTS} == TRAIN_DEFAULTS
    assert {"role": "distance", "kind": "distance", "name": "mse"} in up["pipeline"]
    assert {"role": "mine", "kind": "postprocess", "name": "third_party"} in up["pipeline"]
    assert not any(e["role"] == "distance" for e in upgrade_config(copy.deepcopy(config), "vmpfd")["pipeline"])


def test_a_retired_kind_is_one_message_naming_the_new_ones():
    from ssmad.core import UnknownComponentError, build

    with pytest.raises(UnknownComponentError, match="'postprocess' was split .* into 'score', 'smooth', 'normaliser'"):
        build("postprocess", "box_max")


@pytest.mark.parametrize("app", [ALMRR_APP, VMPFD_APP], ids=["almrr", "vmpfd"])
def test_a_run_folder_of_apps_0_13_opens_tests_and_predicts_as_before(app, tmp_path, run_app):
    run = tmp_path / "run"
    code, _, err = run_app(app, "train", "--preset", "smoke", "--no-test", "--out", str(run), "--device", "cpu")
    assert code == 0, err
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 56, 3)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    before = Run.open(run).predict([images], device="cpu")
    metrics = Run.open(run).evaluate(figures=0, device="cpu")

    old = tmp_path / "old"
    shutil.copytree(run, old)
    for name in ("model.pt", "checkpoint.pt"):
        ckpt = torch.load(old / name, map_location="cpu", weights_only=True)
        ckpt["config"] = _downgrade(ckpt["config"])
        torch.save(ckpt, old / name)
    stored = tomllib.loads((old / "config.toml").read_text())
    (old / "config.toml").write_text(tomli_w.dumps(_downgrade(stored)))
    assert "postprocess" in (old / "config.toml").read_text()

    reopened = Run.open(old)
    assert reopened.config == Run.open(run).config
    after = reopened.predict([images], device="cpu")
    assert [p.score for p in after] == [p.score for p in before]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert reopened.evaluate(figures=0, device="cpu") == metrics
    code, _, err = run_app(app, "test", "--run", str(old), "--figures", "0", "--device", "cpu")
    assert code == 0, err
