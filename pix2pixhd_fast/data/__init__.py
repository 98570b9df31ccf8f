"""Data: the pix2pixHD folder-layout dataset, its transforms, synthetic street scenes, palettes.

Typical use::

    ds = Pix2PixHDDataset.from_options(opt)          # or Pix2PixHDDataset(dataroot, label_nc=35, ...)
    loader = make_dataloader(ds, batch_size=4, num_workers=4, pin_memory=True, seed=0)
    for epoch in range(n_epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:   # label uint8 [B,1,H,W], inst int32 [B,1,H,W], image float [B,3,H,W]
            x = ops.encode_input(batch["label"].to(dev), batch["inst"].to(dev), label_nc)
"""

from .dataset import (
    IMG_EXTENSIONS,
    STEM_SUFFIXES,
    ItemSeedSampler,
    Pix2PixHDDataset,
    Sample,
    collate,
    item_seed,
    make_dataloader,
    pairing_key,
    read_instance,
    read_label,
    read_rgb,
    scan_folder,
)
from .palette import (
    CITYSCAPES_IDS,
    CITYSCAPES_LABEL_NC,
    CITYSCAPES_LABELS,
    CITYSCAPES_THING_IDS,
    colorize_label,
    label_colormap,
    label_to_image,
    to_uint8_image,
)
from .synthetic import make_synthetic_dataset, parse_size, render_scene
from .transforms import (
    RESIZE_OR_CROP_MODES,
    TransformPlan,
    image_to_tensor,
    plan_transform,
    size_multiple,
    transform_image,
    transform_map,
)

__all__ = [
    "IMG_EXTENSIONS",
    "STEM_SUFFIXES",
    "ItemSeedSampler",
    "Pix2PixHDDataset",
    "Sample",
    "collate",
    "item_seed",
    "make_dataloader",
    "pairing_key",
    "read_instance",
    "read_label",
    "read_rgb",
    "scan_folder",
    "CITYSCAPES_IDS",
    "CITYSCAPES_LABEL_NC",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_THING_IDS",
    "colorize_label",
    "label_colormap",
    "label_to_image",
    "to_uint8_image",
    "make_synthetic_dataset",
    "parse_size",
    "render_scene",
    "RESIZE_OR_CROP_MODES",
    "TransformPlan",
    "image_to_tensor",
    "plan_transform",
    "size_multiple",
    "transform_image",
    "transform_map",
]
