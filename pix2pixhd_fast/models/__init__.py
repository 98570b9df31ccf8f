"""pix2pixHD networks (state_dict-compatible with NVIDIA/pix2pixHD) and checkpoint I/O.

``ops='fast'`` (default) builds the networks on the fused operators, ``ops='reference'`` on plain PyTorch modules.
"""

from .checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    LoadResult,
    atomic_save,
    load_pix2pixhd_checkpoint,
    save_pix2pixhd_checkpoint,
)
from .losses import VGG19, FeatureMatchingLoss, GANLoss, VGGLoss, feature_matching_loss, find_vgg19_weights
from .networks import (
    OPS_CHOICES,
    Encoder,
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    ResnetBlock,
    define_D,
    define_G,
    get_norm_layer,
    weights_init,
)
from .pix2pixhd import ImagePool, LossTerms, Pix2PixHDModel

__all__ = [
    "VGG19",
    "FeatureMatchingLoss",
    "GANLoss",
    "ImagePool",
    "LossTerms",
    "Pix2PixHDModel",
    "VGGLoss",
    "atomic_save",
    "feature_matching_loss",
    "find_vgg19_weights",
    "OPS_CHOICES",
    "CheckpointMismatchError",
    "CheckpointReadError",
    "Encoder",
    "GlobalGenerator",
    "LoadResult",
    "LocalEnhancer",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "ResnetBlock",
    "define_D",
    "define_G",
    "get_norm_layer",
    "load_pix2pixhd_checkpoint",
    "save_pix2pixhd_checkpoint",
    "weights_init",
]
