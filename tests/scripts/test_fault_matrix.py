"""scripts/fault_matrix.py on a few of its cases: each runs the app as a user would and keeps its promise."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def fm(load_script):
    return load_script("fault_matrix")


def test_a_few_cases_keep_their_promise(fm, tmp_path):
    names = ["bad config value", "checkpoint that runs code", "predict into a dataset folder", "edited config.toml"]
    assert fm.main([*(a for n in names for a in ("--case", n)), "--out", str(tmp_path / "m.md")]) == 0
    table = (tmp_path / "m.md").read_text().splitlines()
    assert len(table) == 2 + len(names) and all(row.endswith("| ok |") for row in table[2:]), table
    evil = next(row for row in table if row.startswith("| checkpoint that runs code |"))
    assert "| 2 | `error: T/evil/model.pt is not a checkpoint written by ssmad` | ok |" in evil


def test_a_broken_promise_is_reported(fm, tmp_path, monkeypatch):
    """A case whose expectation does not hold is BROKEN and the script exits 1 (here: a valid value expected to
    fail)."""
    case = fm.Case("valid value", ["train", "--preset", "smoke", "--set", "train.lr=0.001", "--device", "cpu",
                                   "--no-test", "--out", "{T}/r"], needle="train.lr")
    monkeypatch.setattr(fm, "cases", lambda: [case])
    assert fm.main(["--out", str(tmp_path / "m.md")]) == 1
    row = (tmp_path / "m.md").read_text().splitlines()[2]
    assert "BROKEN: exit 0, expected 2" in row and "error line lacks 'train.lr'" in row
