"""The reference pix2pixHD transforms (``--resize_or_crop``, loadSize/fineSize, flip) as an explicit plan.

One :class:`TransformPlan` is drawn per item and applied to every map of that item (label, instance map,
image, features), so all of them see the same resize, the same crop window and the same flip. Images are
resampled with PIL's BICUBIC filter; id maps (labels, instances, encoded features) with a nearest-neighbour
gather in numpy, which never creates a value absent from the input and works for any integer dtype
(16-bit instance ids included).

Order of operations (the reference's): resize (``resize*``: to ``loadSize x loadSize``; ``scale_width*``: to
width ``loadSize``, height ``loadSize * h // w``) -> crop (``*crop``: a ``fineSize`` window at a random
position) -> size fix-up -> horizontal flip (training, unless ``no_flip``).

Size fix-up: the generator downsamples by ``multiple = 2**n_downsample`` (``2**n_downsample_global``, times
``2**n_local_enhancers`` for the local enhancer), so every output side is made a multiple of it. Mode
``none`` rounds each side to the nearest multiple with a resize, as the reference does; other modes get the
same rounding (the reference would fail later in the generator instead), except that a crop window is itself
rounded down to a multiple, so cropping never needs resampling. Where the reference pads a crop window larger
than the image with black, the window is clipped to the image instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = [
    "RESIZE_OR_CROP_MODES",
    "TransformPlan",
    "size_multiple",
    "plan_transform",
    "transform_image",
    "transform_map",
    "nearest_indices",
    "image_to_tensor",
]

RESIZE_OR_CROP_MODES: tuple[str, ...] = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")


@dataclass(frozen=True)
class TransformPlan:
    """The geometric transform of one item; sizes are ``(width, height)`` as PIL uses them.

    Attributes:
        in_size: the source size.
        resize_to: first resize target, or None.
        crop_box: ``(x, y, w, h)`` window in the resized image, or None.
        final_size: resize after the crop that makes the sides multiples of the generator's factor, or None.
        flip: mirror left-right last.
    """

    in_size: tuple[int, int]
    resize_to: tuple[int, int] | None
    crop_box: tuple[int, int, int, int] | None
    final_size: tuple[int, int] | None
    flip: bool

    @property
    def out_size(self) -> tuple[int, int]:
        """Output ``(width, height)``."""
        if self.final_size is not None:
            return self.final_size
        if self.crop_box is not None:
            return self.crop_box[2], self.crop_box[3]
        if self.resize_to is not None:
            return self.resize_to
        return self.in_size


def size_multiple(n_downsample_global: int = 4, netG: str = "global", n_local_enhancers: int = 1) -> int:
    """What the reference rounds sizes to: ``2**n_downsample_global``, times ``2**n_local_enhancers`` for 'local'."""
    if n_downsample_global < 0 or n_local_enhancers < 0:
        raise ValueError("n_downsample_global and n_local_enhancers must be >= 0")
    base = 2 ** int(n_downsample_global)
    if netG == "local":
        base *= 2 ** int(n_local_enhancers)
    return base


def _round_to_multiple(v: int, multiple: int) -> int:
    # Python's round (half to even), as the reference's make_power_2; never below one multiple.
    return max(multiple, int(round(v / multiple)) * multiple)


def _check_pos_int(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def plan_transform(
    size: tuple[int, int],
    *,
    resize_or_crop: str = "scale_width",
    load_size: int = 1024,
    fine_size: int = 512,
    multiple: int = 1,
    allow_flip: bool = False,
    rng: np.random.Generator | None = None,
) -> TransformPlan:
    """Draw the transform of one item.

    Args:
        size: source ``(width, height)``.
        resize_or_crop: one of :data:`RESIZE_OR_CROP_MODES`.
        load_size: the reference ``loadSize`` (resize target).
        fine_size: the reference ``fineSize`` (crop window side).
        multiple: output sides are made multiples of this (see the module docstring).
        allow_flip: whether a random horizontal flip may happen (training and not ``no_flip``).
        rng: the item's generator. Three uniforms are always drawn (crop x, crop y, flip), so the
            consumption does not depend on the mode. None: a fresh unseeded generator.

    Returns:
        The :class:`TransformPlan`.
    """
    if resize_or_crop not in RESIZE_OR_CROP_MODES:
        raise ValueError(f"resize_or_crop must be one of {', '.join(RESIZE_OR_CROP_MODES)}; got {resize_or_crop!r}")
    w, h = _check_pos_int(size[0], "width"), _check_pos_int(size[1], "height")
    load_size = _check_pos_int(load_size, "loadSize")
    fine_size = _check_pos_int(fine_size, "fineSize")
    multiple = _check_pos_int(multiple, "multiple")
    if rng is None:
        rng = np.random.default_rng()
    ux, uy, uflip = rng.random(3)

    resize_to: tuple[int, int] | None = None
    if resize_or_crop == "resize_and_crop":
        resize_to = (load_size, load_size)
    elif resize_or_crop.startswith("scale_width") and w != load_size:
        resize_to = (load_size, max(1, load_size * h // w))
    cw, ch = resize_to if resize_to is not None else (w, h)
    if resize_to == (w, h):
        resize_to = None

    crop_box: tuple[int, int, int, int] | None = None
    if resize_or_crop.endswith("crop"):
        tw, th = min(fine_size, cw), min(fine_size, ch)
        # Round the window down to a multiple (when the image allows one) so no resampling follows.
        tw = tw // multiple * multiple if tw >= multiple else tw
        th = th // multiple * multiple if th >= multiple else th
        x = min(int(ux * (cw - tw + 1)), cw - tw)
        y = min(int(uy * (ch - th + 1)), ch - th)
        if (tw, th) != (cw, ch):
            crop_box = (x, y, tw, th)
        cw, ch = tw, th

    final = (_round_to_multiple(cw, multiple), _round_to_multiple(ch, multiple))
    final_size = final if final != (cw, ch) else None
    return TransformPlan((w, h), resize_to, crop_box, final_size, bool(allow_flip and uflip > 0.5))


def _check_size(got: tuple[int, int], plan: TransformPlan, what: str) -> None:
    if got != plan.in_size:
        raise ValueError(
            f"{what} has size {got[0]}x{got[1]}, but the plan was drawn for {plan.in_size[0]}x{plan.in_size[1]}"
        )


def transform_image(img: Image.Image, plan: TransformPlan, resample: int = Image.BICUBIC) -> Image.Image:
    """Apply ``plan`` to a PIL image (photos: BICUBIC, as the reference). Returns a PIL image of ``plan.out_size``."""
    _check_size(img.size, plan, "image")
    if plan.resize_to is not None:
        img = img.resize(plan.resize_to, resample)
    if plan.crop_box is not None:
        x, y, w, h = plan.crop_box
        img = img.crop((x, y, x + w, y + h))
    if plan.final_size is not None:
        img = img.resize(plan.final_size, resample)
    if plan.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for a nearest resize of one axis: ``int64[n_out]``.

    Pixel-centre rule ``floor((i + 0.5) * n_in / n_out)`` evaluated exactly in integers (PIL's NEAREST
    uses the same rule in fixed point and may differ at exact ties).
    """
    i = np.arange(n_out, dtype=np.int64)
    return np.minimum((2 * i + 1) * n_in // (2 * n_out), n_in - 1)


def transform_map(arr: np.ndarray, plan: TransformPlan) -> np.ndarray:
    """Apply ``plan`` to an id map with nearest-neighbour resampling (no new values appear).

    Args:
        arr: ``[H, W]`` or ``[H, W, C]`` array of any dtype.
        plan: the item's plan (drawn for ``(W, H)``).

    Returns:
        A contiguous array ``[H', W'(, C)]`` of the same dtype, ``(W', H') == plan.out_size``.
    """
    if arr.ndim not in (2, 3):
        raise ValueError(f"map must have shape [H, W] or [H, W, C], got {arr.shape}")
    _check_size((arr.shape[1], arr.shape[0]), plan, "map")
    # Compose resize -> crop -> resize -> flip into one row and one column gather (a single copy).
    rows = np.arange(plan.in_size[1], dtype=np.int64)
    cols = np.arange(plan.in_size[0], dtype=np.int64)
    if plan.resize_to is not None:
        rows = rows[nearest_indices(rows.size, plan.resize_to[1])]
        cols = cols[nearest_indices(cols.size, plan.resize_to[0])]
    if plan.crop_box is not None:
        x, y, w, h = plan.crop_box
        rows, cols = rows[y : y + h], cols[x : x + w]
    if plan.final_size is not None:
        rows = rows[nearest_indices(rows.size, plan.final_size[1])]
        cols = cols[nearest_indices(cols.size, plan.final_size[0])]
    if plan.flip:
        cols = cols[::-1]
    return np.ascontiguousarray(arr[rows[:, None], cols[None, :]])


def image_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``uint8[H, W, 3]`` -> ``float32[3, H, W]`` in ``[-1, 1]`` (the reference's ToTensor + Normalize(0.5, 0.5))."""
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ValueError(f"expected a uint8 [H, W, C] image, got {arr.dtype} {arr.shape}")
    # One copy: HWC uint8 (possibly a read-only view of a PIL image) -> CHW float32.
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))
    return t.div_(127.5).sub_(1.0)
