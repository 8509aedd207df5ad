"""benchmarks/speed.py and profile_step.py run and print what they promise."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_speed_benchmark_prints_its_speedup_line(capsys):
    spec = importlib.util.spec_from_file_location("speed_bench", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--preset", "smoke", "--steps", "1", "--rounds", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"speedup: almrr train \d+\.\d, vmpfd train \d+\.\d, almrr infer \d+\.\d, "
                        r"vmpfd infer \d+\.\d", last), last


@pytest.mark.parametrize("app", ["almrr", "vmpfd"])
def test_step_profile_prints_every_part_of_both_paths(app, capsys):
    spec = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--app", app, "--preset", "smoke", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| ([a-z ]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", out, re.M)
    assert [r[0] for r in rows] == [*module.PARTS[app], "total"]
    before, defaults = (sum(float(r[i]) for r in rows[:-1]) for i in (1, 2))
    assert float(rows[-1][1]) == pytest.approx(before, abs=0.004)
    assert float(rows[-1][2]) == pytest.approx(defaults, abs=0.004)
