"""ssmad heads: feature reconstructors, image autoencoders, the refinement U-Net and the mixture-density head.

Registered components (build them with ``ssmad.core.build(kind, name, **params)``):

- ``reconstructor``: ``vim`` (ALMRR MFRM), ``cnn1x1``, ``cnn3x3``, ``transformer`` (its ablations) —
  ``F: B×C×S×S -> F̂: B×C×S×S``; ``vim_ae`` (VMPFD VMARN), ``cnn_ae`` — ``x in [0,1] -> (recon in [-1,1], latent)``.
- ``head``: ``refiner`` (ALMRR FRM U-Net, logits B×2×S×S), ``mdn`` (VMPFD PFDMM, ``nll(t) -> B×h×w``).
"""

from .autoencoders import (
                           AutoencoderConfig,
                           ImageAutoencoder,
                           ViMAutoencoderConfig,
                           build_cnn_ae,
                           build_vim_ae,
                           cnn_encoder,
                           image_decoder,
)
from .blocks import ConvBlock, TokenEncoder, TransformerBlock
from .layers import drop_path_schedule
from .losses import dice_loss, focal_loss, ssim
from .mdn import BlindSpotConv2d, MDNConfig, MixtureDensityHead, build_mdn
from .reconstructors import (
                           FeatureReconstructor,
                           ReconstructorConfig,
                           TransformerReconstructorConfig,
                           ViMReconstructorConfig,
                           build_cnn1x1,
                           build_cnn3x3,
                           build_transformer,
                           build_vim,
                           decoder_output_size,
                           feature_decoder,
)
from .refiner import RefinerConfig, RefinerUNet, build_refiner, level_widths

__version__ = "0.4.0"

__all__ = [
    "AutoencoderConfig", "BlindSpotConv2d", "ConvBlock", "FeatureReconstructor", "ImageAutoencoder",
    "MDNConfig", "MixtureDensityHead", "ReconstructorConfig", "RefinerConfig", "RefinerUNet", "TokenEncoder",
    "TransformerBlock", "TransformerReconstructorConfig", "ViMAutoencoderConfig", "ViMReconstructorConfig",
    "build_cnn1x1", "build_cnn3x3", "build_cnn_ae", "build_mdn", "build_refiner", "build_transformer",
    "build_vim", "build_vim_ae", "cnn_encoder", "decoder_output_size", "dice_loss", "drop_path_schedule",
    "feature_decoder", "focal_loss", "ssim",
    "image_decoder", "level_widths",
]
