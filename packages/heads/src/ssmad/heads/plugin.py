"""ssmad-heads plugin: registers the reconstructors (ALMRR MFRM + ablations, VMPFD autoencoders) and heads."""

from __future__ import annotations

from ssmad.core import hookimpl

from .autoencoders import AutoencoderConfig, ViMAutoencoderConfig, build_cnn_ae, build_vim_ae
from .mdn import MDNConfig, build_mdn
from .reconstructors import (
    ReconstructorConfig,
    TransformerReconstructorConfig,
    ViMReconstructorConfig,
    build_cnn1x1,
    build_cnn3x3,
    build_transformer,
    build_vim,
)
from .refiner import RefinerConfig, build_refiner


@hookimpl
def ssmad_register(register) -> None:
    register("reconstructor", "vim", build_vim, config=ViMReconstructorConfig,
             summary="ALMRR MFRM: 1×1 reduce → ViM encoder (bidirectional Mamba) → ConvT decoder → 1×1 expand")
    register("reconstructor", "cnn1x1", build_cnn1x1, config=ReconstructorConfig,
             summary="MFRM ablation: Mamba blocks replaced by 1×1 conv blocks")
    register("reconstructor", "cnn3x3", build_cnn3x3, config=ReconstructorConfig,
             summary="MFRM ablation: Mamba blocks replaced by 3×3 conv blocks")
    register("reconstructor", "transformer", build_transformer, config=TransformerReconstructorConfig,
             summary="MFRM ablation: Mamba blocks replaced by pre-norm Transformer blocks")
    register("autoencoder", "vim_ae", build_vim_ae, config=ViMAutoencoderConfig,
             summary="VMPFD VMARN: ViM image autoencoder, recon in [-1, 1] (compare with x*2-1)")
    register("autoencoder", "cnn_ae", build_cnn_ae, config=AutoencoderConfig,
             summary="VMARN ablation: strided-CNN encoder, same decoder; recon in [-1, 1]")
    register("head", "refiner", build_refiner, config=RefinerConfig,
             summary="ALMRR FRM: DRAEM-style discriminative U-Net → 2-class logits")
    register("head", "mdn", build_mdn, config=MDNConfig,
             summary="VMPFD PFDMM: Gaussian mixture density head; nll(t) -> per-position NLL map")
