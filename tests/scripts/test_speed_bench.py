"""benchmarks/speed.py runs and ends with the line the speed benchmark promises."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_speed_benchmark_prints_its_speedup_line(capsys):
    spec = importlib.util.spec_from_file_location("speed_bench", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--preset", "smoke", "--steps", "1", "--rounds", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"speedup: almrr train \d+\.\d, vmpfd train \d+\.\d, almrr infer \d+\.\d, "
                        r"vmpfd infer \d+\.\d", last), last
