"""The instances of a batch of instance maps: one row per (image, instance id), with its class and pixel count.

Shared by the encoder side (:mod:`.encode`: one feature vector per instance) and the sampling side (:mod:`.edit`:
one cluster centre per instance), so both agree on what an instance is and which class it belongs to.

Class of an instance: the label that covers most of its pixels in the label map (ties: the smallest label). On
Cityscapes-layout data (stuff pixels hold their class id, things ``class * 1000 + k``) this equals the reference's
rule ``id if id < 1000 else id // 1000`` (:func:`class_of_id`), which is used when no label map is given; reading
the label map also works for datasets whose instance ids do not encode the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["InstanceTable", "instance_table", "class_of_id"]


@dataclass(frozen=True)
class InstanceTable:
    """The instances of ``inst`` ``[N, 1, H, W]``, sorted by (image, id); all tensors on the maps' device.

    Attributes:
        image: ``int64[U]`` image index of each instance.
        ids: ``int64[U]`` instance id.
        classes: ``int64[U]`` class (see the module docstring).
        counts: ``int64[U]`` pixels of the instance.
        inverse: ``int64[N, H, W]`` instance row of every pixel.
    """

    image: torch.Tensor
    ids: torch.Tensor
    classes: torch.Tensor
    counts: torch.Tensor
    inverse: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.numel())

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the maps."""
        return int(self.inverse.shape[1]), int(self.inverse.shape[2])

    def first_pixel(self) -> torch.Tensor:
        """``int64[U]``: the flat index (into ``N*H*W``) of each instance's first pixel in raster order."""
        flat = self.inverse.reshape(-1)
        pos = torch.arange(flat.numel(), device=flat.device)
        first = torch.full((len(self),), flat.numel(), dtype=torch.int64, device=flat.device)
        return first.scatter_reduce(0, flat, pos, reduce="amin", include_self=True)


def class_of_id(ids: torch.Tensor) -> torch.Tensor:
    """The reference's class of Cityscapes instance ids: ``id // 1000`` for ids >= 1000, else the id itself."""
    return torch.where(ids >= 1000, torch.div(ids, 1000, rounding_mode="floor"), ids)


def _as_ids(t: torch.Tensor, name: str) -> torch.Tensor:
    """``[N, 1, H, W]`` / ``[N, H, W]`` integer (or integral float) ids -> ``int64[N, H, W]``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(f"{name} must have one channel ([N, 1, H, W]), got shape {tuple(t.shape)}")
        t = t[:, 0]
    if t.dim() != 3:
        raise ValueError(f"{name} must have shape [N, 1, H, W] or [N, H, W], got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    if t.is_floating_point():
        # The reference passes instance maps as float tensors; only integral values are ids.
        if t.numel() and not torch.equal(t, t.round()):
            raise ValueError(f"{name} holds non-integral values: ids must be integers")
        t = t.double()
    return t.to(torch.int64)


def instance_table(inst: torch.Tensor, label: torch.Tensor | None = None) -> InstanceTable:
    """Enumerate the instances of a batch of instance maps (vectorised; two ``torch.unique`` calls).

    Args:
        inst: ``Tensor[N, 1, H, W]`` or ``[N, H, W]`` integer ids (any values; float holding integers accepted).
        label: ``Tensor`` of the same shape with class ids, or None (then classes follow :func:`class_of_id`).

    Returns:
        An :class:`InstanceTable` on ``inst``'s device.

    Raises:
        TypeError / ValueError: non-tensor input, bad shapes, non-integral ids, label and inst of other shapes or
        devices.
    """
    ids = _as_ids(inst, "inst")
    n, h, w = ids.shape
    # Compact the ids over the whole batch first, then make them unique per image: no int64 overflow whatever
    # the ids' range (n * K stays small).
    uniq, inv = torch.unique(ids.reshape(n, h * w), return_inverse=True)
    k = max(int(uniq.numel()), 1)
    key = inv + torch.arange(n, device=ids.device).unsqueeze(1) * k
    ukey, inverse, counts = torch.unique(key.reshape(-1), return_inverse=True, return_counts=True)
    image = torch.div(ukey, k, rounding_mode="floor")
    inst_ids = uniq[ukey % k] if uniq.numel() else ukey
    if label is None:
        classes = class_of_id(inst_ids)
    else:
        lab = _as_ids(label, "label")
        if lab.shape != ids.shape:
            raise ValueError(f"label {tuple(label.shape)} and inst {tuple(inst.shape)} must have the same shape")
        if lab.device != ids.device:
            raise ValueError(f"label is on {lab.device} but inst on {ids.device}")
        classes = _majority(inverse, lab.reshape(-1), int(ukey.numel()))
    return InstanceTable(image, inst_ids, classes, counts, inverse.reshape(n, h, w))


def _majority(inverse: torch.Tensor, label: torch.Tensor, u: int) -> torch.Tensor:
    """Per instance row ``0..u-1``, the label covering most of its pixels (ties: the smallest label)."""
    if u == 0:
        return torch.zeros(0, dtype=torch.int64, device=label.device)
    lo = int(label.min())
    span = int(label.max()) - lo + 1
    pair, count = torch.unique(inverse * span + (label - lo), return_counts=True)
    row, lab = torch.div(pair, span, rounding_mode="floor"), pair % span + lo
    best = torch.zeros(u, dtype=count.dtype, device=label.device).scatter_reduce(0, row, count, reduce="amax")
    top = count == best[row]
    big = torch.iinfo(torch.int64).max
    out = torch.full((u,), big, dtype=torch.int64, device=label.device)
    return out.scatter_reduce(0, row[top], lab[top], reduce="amin", include_self=True)
