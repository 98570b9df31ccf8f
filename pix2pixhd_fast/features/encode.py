"""Run a trained feature encoder E over a dataset: one feature vector per instance, or per-pixel feature maps.

E ends with the instance-wise average pooling (:func:`pix2pixhd_fast.ops.instance_avg_pool`), so its output is
constant over each instance; one pixel per instance gives the instance's vector. Batches run on the device (GPU
when present), the instances of a batch are enumerated with two ``torch.unique`` calls
(:func:`~.instances.instance_table`): no Python loop over instances or pixels.

Reference semantics kept: every instance id of an image is recorded, stuff classes included (their instance id is
the class id); the reference's area threshold ``count / (H*W // 32) > 0.5`` is the relative area
``count / (H*W) > 1/64`` (``min_area_frac``; strict inequality).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .instances import InstanceTable, instance_table

__all__ = [
    "FeatureBank",
    "encode_features",
    "encoded_instances",
    "precompute_feature_maps",
    "load_encoder",
    "feature_map_to_image",
    "REFERENCE_MIN_AREA_FRAC",
]

#: The reference's threshold on an instance's area relative to its image (instances at or below are dropped).
REFERENCE_MIN_AREA_FRAC = 1.0 / 64.0


@dataclass
class FeatureBank:
    """The encoded instances of a dataset (one row per kept (image, instance id)).

    Attributes:
        features: ``float32[M, feat_num]`` the instance's encoder output.
        labels: ``int64[M]`` its class (the label covering most of its pixels).
        areas: ``float32[M]`` its pixel count over the image's H*W (at the encoded size).
        image_index: ``int64[M]`` the dataset item it comes from.
        instance_ids: ``int64[M]`` its instance id (the label id with ``label_feat``).
        min_area_frac: the threshold applied (rows have ``areas > min_area_frac``).
        label_feat: features were pooled per label region (``--label_feat``) instead of per instance.
    """

    features: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    image_index: np.ndarray
    instance_ids: np.ndarray
    min_area_frac: float = REFERENCE_MIN_AREA_FRAC
    label_feat: bool = False

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, np.float32)
        if self.features.ndim != 2 or self.features.shape[1] < 1:
            raise ValueError(f"features must have shape [M, feat_num >= 1], got {self.features.shape}")
        m = self.features.shape[0]
        for name, dtype in (("labels", np.int64), ("areas", np.float32), ("image_index", np.int64),
                            ("instance_ids", np.int64)):  # fmt: skip
            v = np.asarray(getattr(self, name), dtype)
            if v.shape != (m,):
                raise ValueError(f"{name} must have shape [{m}] (one per feature row), got {v.shape}")
            setattr(self, name, v)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def feat_num(self) -> int:
        return int(self.features.shape[1])

    def per_class(self) -> dict[int, int]:
        """Instances per class."""
        labels, counts = np.unique(self.labels, return_counts=True)
        return {int(a): int(b) for a, b in zip(labels, counts, strict=True)}

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write an ``.npz`` of the attributes (plain arrays; :meth:`load` reads it without pickles)."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            np.savez(
                f, features=self.features, labels=self.labels, areas=self.areas, image_index=self.image_index,
                instance_ids=self.instance_ids, min_area_frac=np.float64(self.min_area_frac),
                label_feat=np.bool_(self.label_feat),
            )  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureBank:
        """Read a file written by :meth:`save`."""
        with np.load(os.fspath(path), allow_pickle=False) as z:
            missing = {"features", "labels", "areas", "image_index", "instance_ids"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a feature bank file (missing {sorted(missing)})")
            return cls(
                z["features"], z["labels"], z["areas"], z["image_index"], z["instance_ids"],
                float(z["min_area_frac"]) if "min_area_frac" in z.files else REFERENCE_MIN_AREA_FRAC,
                bool(z["label_feat"]) if "label_feat" in z.files else False,
            )  # fmt: skip


def _encoder_of(model: nn.Module, label_feat: bool | None) -> tuple[nn.Module, bool]:
    """(E, label_feat) from a Pix2PixHDModel (its netE and --label_feat) or an Encoder module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a Pix2PixHDModel or an Encoder module, got {type(model).__name__}")
    net = getattr(model, "netE", model)
    if net is None:
        raise ValueError("the model has no feature encoder (train with --instance_feat or --label_feat)")
    if label_feat is None:
        opt = getattr(model, "opt", None)
        label_feat = bool(getattr(opt, "label_feat", False))
    return net, bool(label_feat)


def encoded_instances(
    encoder: nn.Module,
    loader,
    device: torch.device,
    *,
    label_feat: bool = False,
    amp: torch.dtype | None = None,
) -> Iterator[tuple[dict, InstanceTable, torch.Tensor]]:
    """Run E over a loader's batches; per batch yield ``(batch, table, vectors)``.

    ``table`` is the :class:`InstanceTable` of the batch's regions (instances, or labels with ``label_feat``) with
    classes from the label map, and ``vectors`` ``float32[U, feat_num]`` (on ``device``) the encoder output of
    each instance, read at its first pixel (E's output is constant per instance).
    """
    encoder.eval()
    for batch in loader:
        if "image" not in batch:
            raise ValueError("encoding features needs the real images: the dataset has no photos")
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        if label_feat:
            region = label
        else:
            if "inst" not in batch:
                raise ValueError("instance features need instance maps: the dataset was built with no_instance")
            region = batch["inst"].to(device, non_blocking=True)
        with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pooled = encoder(image, region)
        table = instance_table(region, label)
        n, c, h, w = pooled.shape
        flat = pooled.float().permute(0, 2, 3, 1).reshape(n * h * w, c)
        yield batch, table, flat[table.first_pixel()]


def _make_loader(dataset, batch_size: int, num_workers: int):
    from ..data import make_dataloader

    return make_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, seed=0)


def encode_features(
    model: nn.Module,
    dataset,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    min_area_frac: float = REFERENCE_MIN_AREA_FRAC,
    label_feat: bool | None = None,
    amp: torch.dtype | None = None,
    num_workers: int = 0,
) -> FeatureBank:
    """Encode every instance of ``dataset`` with the trained encoder.

    Args:
        model: a :class:`~pix2pixhd_fast.models.Pix2PixHDModel` (its ``netE``) or an ``Encoder`` module.
        dataset: a :class:`~pix2pixhd_fast.data.Pix2PixHDDataset` with photos (the training set, loaded without
            flips), or any dataset accepting ``(index, item_seed)`` keys and giving ``label``/``inst``/``image``.
        device: where E runs (default: the encoder's device).
        batch_size: images per encoder call (items must share a size).
        min_area_frac: keep instances whose area over the image's is strictly larger (reference: 1/64).
        label_feat: pool per label region instead of per instance (default: the model's ``--label_feat``).
        amp: autocast dtype (None: fp32).
        num_workers: data loader processes.

    Returns:
        A :class:`FeatureBank` of the kept instances, in dataset order.
    """
    encoder, label_feat = _encoder_of(model, label_feat)
    if not (isinstance(min_area_frac, (int, float)) and 0.0 <= min_area_frac < 1.0):
        raise ValueError(f"min_area_frac must be a number in [0, 1), got {min_area_frac!r}")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    loader = _make_loader(dataset, batch_size, num_workers)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("features", "labels", "areas", "image", "ids")}
    start = 0
    for batch, table, vectors in encoded_instances(encoder, loader, device, label_feat=label_feat, amp=amp):
        h, w = table.size
        area = table.counts.double() / (h * w)
        keep = area > min_area_frac
        parts["features"].append(vectors[keep].cpu().numpy())
        parts["labels"].append(table.classes[keep].cpu().numpy())
        parts["areas"].append(area[keep].float().cpu().numpy())
        parts["image"].append((table.image[keep] + start).cpu().numpy())
        parts["ids"].append(table.ids[keep].cpu().numpy())
        start += batch["label"].shape[0]
    if not parts["features"]:
        raise ValueError("the dataset is empty: nothing to encode")
    return FeatureBank(
        np.concatenate(parts["features"]), np.concatenate(parts["labels"]), np.concatenate(parts["areas"]),
        np.concatenate(parts["image"]), np.concatenate(parts["ids"]), float(min_area_frac), label_feat,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Precomputed feature maps (--load_features)


def feature_map_to_image(feat: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[3, H, W]`` features in [-1, 1] -> ``uint8[H, W, 3]``, rounded to nearest: ``round((v + 1) * 127.5)``.

    The data loader reads such a file back as ``p / 127.5 - 1`` (:func:`~pix2pixhd_fast.data.image_to_tensor`), so
    the round trip is exact to 1/255 (the reference truncated instead of rounding: up to 2/255).
    """
    a = feat.detach().float().cpu().numpy() if isinstance(feat, torch.Tensor) else np.asarray(feat, np.float32)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"a feature image holds 3 channels [3, H, W], got shape {a.shape} (use --feat_num 3)")
    return np.clip(np.rint((a.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def precompute_feature_maps(
    model: nn.Module,
    dataset,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1,
    label_feat: bool | None = None,
    amp: torch.dtype | None = None,
    num_workers: int = 0,
) -> list[str]:
    """Write E's feature map of every item as an RGB PNG for training with ``--load_features``.

    Each file is ``<out_dir>/<label file name>.png`` (default ``out_dir``: ``<dataroot>/<phase>_feat``), at the
    label file's own resolution: the instance vectors computed at the dataset's load size are painted onto the
    full-resolution instance map (the reference upsampled a half-resolution map 2x; painting per instance is the
    same for that case and exact at any ratio). Instances that the encoded view does not contain (cropped away, or
    too thin to survive the resize) get 0 (grey). Values are stored with :func:`feature_map_to_image`.

    Returns:
        The written paths, in dataset order.
    """
    from ..data import read_instance, read_label

    encoder, label_feat = _encoder_of(model, label_feat)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    feat_num = getattr(encoder, "output_nc", None)
    if feat_num is not None and feat_num != 3:
        raise ValueError(f"feature maps are stored as RGB images: need --feat_num 3, the encoder has {feat_num}")
    root = Path(out_dir) if out_dir is not None else Path(dataset.root) / f"{dataset.phase}_feat"
    label_root = Path(dataset.root) / f"{dataset.phase}_label"
    loader = _make_loader(dataset, batch_size, num_workers)
    written: list[str] = []
    index = 0
    for batch, table, vectors in encoded_instances(encoder, loader, device, label_feat=label_feat, amp=amp):
        image, ids, vec = table.image.cpu().numpy(), table.ids.cpu().numpy(), vectors.cpu().numpy()
        for b in range(batch["label"].shape[0]):
            sample = dataset.samples[index]
            index += 1
            if label_feat:
                full = read_label(sample.label, dataset.label_nc).astype(np.int64)
            else:
                full = read_instance(sample.inst).astype(np.int64)
            rows = image == b
            own_ids, own_vec = ids[rows], vec[rows]  # sorted by id within an image
            pos = np.clip(np.searchsorted(own_ids, full), 0, max(len(own_ids) - 1, 0))
            found = (own_ids[pos] == full) if len(own_ids) else np.zeros(full.shape, bool)
            fmap = np.where(found[..., None], own_vec[pos] if len(own_ids) else 0.0, 0.0)  # [H, W, 3]
            rel = sample.label.relative_to(label_root) if sample.label.is_relative_to(label_root) else sample.label.name
            path = (root / rel).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(feature_map_to_image(fmap.transpose(2, 0, 1))).save(path)
            written.append(str(path))
    return written


# ---------------------------------------------------------------------------------------------------------------
# Loading a trained encoder


def load_encoder(opt: argparse.Namespace, device: torch.device | str = "cpu") -> nn.Module:
    """Build E from the options (output_nc, feat_num, nef, n_downsample_E, norm, ops) and load
    ``<checkpoints_dir>/<name>/<which_epoch>_net_E.pth``; eval mode, on ``device``.

    Raises:
        FileNotFoundError: no such checkpoint (the model was trained without --instance_feat/--label_feat?).
    """
    from ..models.checkpoint import load_pix2pixhd_checkpoint
    from ..models.networks import define_G

    path = os.path.join(opt.checkpoints_dir, opt.name, f"{opt.which_epoch}_net_E.pth")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no encoder checkpoint {path}: train with --instance_feat (or --label_feat) first, and check "
            "--checkpoints_dir, --name and --which_epoch"
        )
    ops = getattr(opt, "ops", "fast")
    net = define_G(opt.output_nc, opt.feat_num, opt.nef, "encoder", opt.n_downsample_E, norm=opt.norm, ops=ops)
    load_pix2pixhd_checkpoint(path, net)
    return net.eval().to(device)
