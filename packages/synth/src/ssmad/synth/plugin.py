"""ssmad-synth plugin: registers this package's components."""

from ssmad.core import hookimpl

from .mixed import MixedConfig, build_mixed
from .perlin import PerlinConfig, build_perlin


@hookimpl
def ssmad_register(register):
    register("synth", "perlin", build_perlin, config=PerlinConfig,
             summary="Perlin-noise mask + augmented texture blending (DRAEM/ALMRR anomaly synthesis)")
    register("synth", "mixed", build_mixed, config=MixedConfig,
             summary="each anomaly from one of several families: Perlin texture blending, scratch, dent, hole, "
                     "stain, cutpaste")
