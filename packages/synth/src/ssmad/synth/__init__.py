"""ssmad synth: anomaly synthesisers for self-supervised training.

Registered as kind ``synth``:

- ``perlin``: a thresholded, rotated Perlin-noise mask through which an augmented texture image (a folder
  such as DTD, or scikit-image's bundled pictures offline) is blended with opacity α (ALMRR eq. 1).
- ``mixed``: each anomaly drawn from one of several families (``perlin`` or a structural defect of
  :mod:`ssmad.synth.defects`: scratch, dent, hole, stain, cutpaste) with given weights.

    from ssmad.core import build
    synth = build("synth", "perlin", texture_dir="/data/dtd")
    clean, anomalous, mask = synth(image, np.random.default_rng(0))   # image: H×W×3 float32 in [0, 1]
    s = synth.sample(image, rng)                                       # SynthSample with .alpha, .texture
"""

from .augment import AUGMENTATIONS, augment_texture
from .defects import DEFECTS
from .mixed import FAMILIES, MixedConfig, MixedSynth, build_mixed
from .noise import perlin_mask, perlin_noise
from .perlin import PerlinConfig, PerlinSynth, SynthSample, build_perlin
from .textures import BUNDLED_TEXTURES, TextureSource, list_texture_files, read_texture

__version__ = "0.2.0"

__all__ = [
    "AUGMENTATIONS", "BUNDLED_TEXTURES", "DEFECTS", "FAMILIES", "MixedConfig", "MixedSynth", "PerlinConfig",
    "PerlinSynth", "SynthSample", "TextureSource", "augment_texture", "build_mixed", "build_perlin",
    "list_texture_files", "perlin_mask", "perlin_noise", "read_texture",
]
