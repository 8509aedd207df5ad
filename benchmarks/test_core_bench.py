"""Benchmark: the registry's start-up (reading every entry point and registering the built-in components, which
every command pays once) and one component's parameter validation (every pipeline entry pays it when built).

Run: ``.venv/bin/python -m pytest benchmarks/test_core_bench.py --benchmark-columns=min,median,mean,rounds``.
Bars: the registry filled in under 0.5 s once its modules are imported (a few ms on an idle machine); a component's
parameters validated in under 1 ms.
"""

from __future__ import annotations

from ssmad.core import registry, reset_registry


def test_registry_start_up(benchmark):
    def fresh():
        reset_registry()
        return registry().components()

    comps = benchmark.pedantic(fresh, rounds=5, iterations=1)
    assert len(comps) > 20
    assert benchmark.stats.stats.median < 0.5


def test_parameter_validation(benchmark):
    reg = registry()
    reg.load()
    cfg = benchmark(lambda: reg.config("synth", "perlin", p_clean=0.5))
    assert cfg.p_clean == 0.5
    assert benchmark.stats.stats.median < 1e-3
