"""Cityscapes label table and colours, a generic label palette, and tensor -> uint8 image helpers.

The HTML pages and TensorBoard images show label maps in colour and generated images as uint8 RGB; these
helpers do both from a tensor or an array on any device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "CityscapesLabel",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_IDS",
    "CITYSCAPES_THING_IDS",
    "CITYSCAPES_LABEL_NC",
    "label_colormap",
    "colorize_label",
    "to_uint8_image",
    "label_to_image",
]


class CityscapesLabel(NamedTuple):
    """One Cityscapes class: its labelId (the value in ``*_gtFine_labelIds.png``), name, colour, thing flag."""

    id: int
    name: str
    color: tuple[int, int, int]
    is_thing: bool


# The Cityscapes labelIds 0..33 with their standard colours (the dataset's own definition). Things are the
# classes with per-object instance ids in ``*_gtFine_instanceIds.png`` (class * 1000 + k there).
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel(0, "unlabeled", (0, 0, 0), False),
    CityscapesLabel(1, "ego vehicle", (0, 0, 0), False),
    CityscapesLabel(2, "rectification border", (0, 0, 0), False),
    CityscapesLabel(3, "out of roi", (0, 0, 0), False),
    CityscapesLabel(4, "static", (0, 0, 0), False),
    CityscapesLabel(5, "dynamic", (111, 74, 0), False),
    CityscapesLabel(6, "ground", (81, 0, 81), False),
    CityscapesLabel(7, "road", (128, 64, 128), False),
    CityscapesLabel(8, "sidewalk", (244, 35, 232), False),
    CityscapesLabel(9, "parking", (250, 170, 160), False),
    CityscapesLabel(10, "rail track", (230, 150, 140), False),
    CityscapesLabel(11, "building", (70, 70, 70), False),
    CityscapesLabel(12, "wall", (102, 102, 156), False),
    CityscapesLabel(13, "fence", (190, 153, 153), False),
    CityscapesLabel(14, "guard rail", (180, 165, 180), False),
    CityscapesLabel(15, "bridge", (150, 100, 100), False),
    CityscapesLabel(16, "tunnel", (150, 120, 90), False),
    CityscapesLabel(17, "pole", (153, 153, 153), False),
    CityscapesLabel(18, "polegroup", (153, 153, 153), False),
    CityscapesLabel(19, "traffic light", (250, 170, 30), False),
    CityscapesLabel(20, "traffic sign", (220, 220, 0), False),
    CityscapesLabel(21, "vegetation", (107, 142, 35), False),
    CityscapesLabel(22, "terrain", (152, 251, 152), False),
    CityscapesLabel(23, "sky", (70, 130, 180), False),
    CityscapesLabel(24, "person", (220, 20, 60), True),
    CityscapesLabel(25, "rider", (255, 0, 0), True),
    CityscapesLabel(26, "car", (0, 0, 142), True),
    CityscapesLabel(27, "truck", (0, 0, 70), True),
    CityscapesLabel(28, "bus", (0, 60, 100), True),
    CityscapesLabel(29, "caravan", (0, 0, 90), True),
    CityscapesLabel(30, "trailer", (0, 0, 110), True),
    CityscapesLabel(31, "train", (0, 80, 100), True),
    CityscapesLabel(32, "motorcycle", (0, 0, 230), True),
    CityscapesLabel(33, "bicycle", (119, 11, 32), True),
)

#: Class name -> labelId, e.g. ``CITYSCAPES_IDS["car"] == 26``.
CITYSCAPES_IDS: dict[str, int] = {lab.name: lab.id for lab in CITYSCAPES_LABELS}
#: labelIds of the classes with instances (24..33).
CITYSCAPES_THING_IDS: frozenset[int] = frozenset(lab.id for lab in CITYSCAPES_LABELS if lab.is_thing)
#: pix2pixHD's label_nc for Cityscapes labelIds (ids 0..34; 34 is unused and shown black).
CITYSCAPES_LABEL_NC = 35


def _cityscapes_colormap() -> np.ndarray:
    cmap = np.zeros((CITYSCAPES_LABEL_NC, 3), dtype=np.uint8)
    for lab in CITYSCAPES_LABELS:
        cmap[lab.id] = lab.color
    return cmap


def _generic_colormap(n: int) -> np.ndarray:
    # Spread the bits of the class index over the high bits of R, G and B (the usual segmentation palette
    # construction): neighbouring ids get clearly different colours and id 0 is black.
    ids = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    rest = ids.copy()
    for shift in range(7, -1, -1):
        for ch in range(3):
            cmap[:, ch] |= ((rest >> ch) & 1) << shift
        rest >>= 3
    return cmap.astype(np.uint8)


def label_colormap(label_nc: int) -> np.ndarray:
    """Colours of ids ``0..label_nc-1``: ``uint8[label_nc, 3]``.

    ``label_nc == 35`` gives the standard Cityscapes colours per labelId (ids without a Cityscapes colour,
    i.e. 34, are black); any other count gives a generic palette with distinct colours (up to 2**24 ids).
    """
    if not isinstance(label_nc, (int, np.integer)) or isinstance(label_nc, bool) or label_nc <= 0:
        raise ValueError(f"label_nc must be a positive int, got {label_nc!r}")
    if label_nc == CITYSCAPES_LABEL_NC:
        return _cityscapes_colormap()
    return _generic_colormap(int(label_nc))


def _as_numpy(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def colorize_label(label: torch.Tensor | np.ndarray, label_nc: int = CITYSCAPES_LABEL_NC) -> np.ndarray:
    """Colour a label id map.

    Args:
        label: ids shaped ``[H, W]`` or ``[1, H, W]`` (tensor on any device, or array); integer dtype, or
            float holding integral values (the reference passes labels as float).
        label_nc: the number of classes; selects the palette (see :func:`label_colormap`).

    Returns:
        ``uint8[H, W, 3]``; ids outside ``[0, label_nc)`` are black.
    """
    arr = _as_numpy(label, "label")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"label must have shape [H, W] or [1, H, W], got {tuple(arr.shape)}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("label holds non-integral values; expected class ids")
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"label must hold integer ids, got dtype {arr.dtype}")
    cmap = label_colormap(label_nc)
    ids = arr.astype(np.int64)
    valid = (ids >= 0) & (ids < label_nc)
    out = cmap[np.where(valid, ids, 0)]
    out[~valid] = 0
    return out


def to_uint8_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Image in ``[-1, 1]`` (the generator's output range) -> ``uint8[H, W, 3]``.

    Args:
        image: ``[3, H, W]``, ``[1, H, W]`` or ``[H, W]`` float tensor/array on any device (any float dtype);
            values outside ``[-1, 1]`` are clipped. One channel is repeated to grey RGB.

    Returns:
        ``uint8[H, W, 3]`` with ``-1 -> 0`` and ``1 -> 255`` (rounded to nearest).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float()
    arr = _as_numpy(image, "image")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape [3, H, W], [1, H, W] or [H, W], got {tuple(arr.shape)}")
    if arr.dtype.kind != "f":
        raise TypeError(f"image must be a float image in [-1, 1], got dtype {arr.dtype}")
    arr = np.clip((arr.astype(np.float32) + 1.0) * 127.5, 0.0, 255.0)
    arr = np.nan_to_num(arr, nan=0.0)
    out = np.rint(arr).astype(np.uint8).transpose(1, 2, 0)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def label_to_image(label: torch.Tensor | np.ndarray, label_nc: int) -> np.ndarray:
    """A batch item's ``label`` for display: ``uint8[H, W, 3]``.

    ``label_nc > 0``: an id map, colourised with :func:`colorize_label`. ``label_nc == 0``: the label is an
    RGB image in ``[-1, 1]`` (the reference's ``_A`` inputs), converted with :func:`to_uint8_image`.
    """
    if label_nc == 0:
        return to_uint8_image(label)
    return colorize_label(label, label_nc)
