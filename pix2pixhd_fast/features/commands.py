"""What the command line runs: ``encode-features``, ``precompute-feature-maps``, and the feature input of ``test``.

Thin functions of the reference-style options (:func:`pix2pixhd_fast.options.parse_features`,
:func:`~pix2pixhd_fast.options.parse_test`) over the library API of this package.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

from .clusters import FeatureClusters, cluster_features, clusters_filename, load_clusters
from .edit import feature_map, image_seed, parse_feat_edit
from .encode import encode_features, load_encoder, precompute_feature_maps

__all__ = [
    "run_encode_features",
    "run_precompute_feature_maps",
    "find_clusters_file",
    "inference_features",
    "InferenceFeatures",
]


def _setup(opt: argparse.Namespace) -> tuple[torch.device, torch.dtype | None]:
    from ..train.trainer import resolve_amp, resolve_device

    if getattr(opt, "num_threads", 0) > 0:
        torch.set_num_threads(opt.num_threads)
    device = resolve_device(opt)
    return device, resolve_amp(opt.amp, device)


def _dataset(opt: argparse.Namespace):
    from ..data import Pix2PixHDDataset

    # No flips (isTrain=False), photos required: E encodes the real images of the phase (training set by default).
    return Pix2PixHDDataset.from_options(opt, isTrain=False, load_image=True, load_features=False)


def run_encode_features(opt: argparse.Namespace) -> dict[str, Any]:
    """Encode the ``--phase`` images with ``<which_epoch>_net_E.pth``, cluster per class, write the files.

    Writes ``<checkpoints_dir>/<name>/features.npz`` (every kept instance: :class:`~.encode.FeatureBank`) and the
    clusters (``--cluster_path``, default ``<checkpoints_dir>/<name>/features_clustered_<n_clusters>.npz``).

    Returns:
        A summary: images, instances kept, instances per class, clusters per class, file paths, seconds.
    """
    t0 = time.perf_counter()
    device, amp = _setup(opt)
    encoder = load_encoder(opt, device)
    dataset = _dataset(opt)
    bank = encode_features(
        encoder, dataset, device=device, batch_size=opt.batchSize, min_area_frac=opt.min_area_frac,
        label_feat=opt.label_feat, amp=amp, num_workers=min(opt.nThreads, 2),
    )  # fmt: skip
    t_encode = time.perf_counter() - t0
    if len(bank) == 0:
        raise ValueError(
            f"no instance is larger than --min_area_frac {opt.min_area_frac:g} of its image: nothing to cluster"
        )
    folder = os.path.join(opt.checkpoints_dir, opt.name)
    bank_path = bank.save(os.path.join(folder, "features.npz"))
    clusters = cluster_features(bank, opt.n_clusters, seed=opt.seed)
    out = opt.cluster_path or os.path.join(folder, clusters_filename(opt.n_clusters))
    if not os.path.isabs(out) and opt.cluster_path and os.path.dirname(out) == "":
        out = os.path.join(folder, out)  # a bare file name goes next to the checkpoints, as `test` looks there
    clusters.save(out)
    return {
        "images": len(dataset),
        "instances": len(bank),
        "instances_per_class": {str(k): v for k, v in bank.per_class().items()},
        "clusters_per_class": {str(k): v.shape[0] for k, v in clusters.centers.items()},
        "feat_num": bank.feat_num,
        "device": str(device),
        "features_file": bank_path,
        "clusters_file": out,
        "seconds": {"encode": t_encode, "total": time.perf_counter() - t0},
    }


def run_precompute_feature_maps(opt: argparse.Namespace) -> dict[str, Any]:
    """Write E's feature maps of the ``--phase`` images to ``--feat_dir`` (default ``<dataroot>/<phase>_feat``)."""
    if opt.feat_num != 3:
        raise ValueError(
            f"feature maps are stored as RGB images: precompute-feature-maps needs --feat_num 3, got {opt.feat_num}"
        )
    t0 = time.perf_counter()
    device, amp = _setup(opt)
    encoder = load_encoder(opt, device)
    dataset = _dataset(opt)
    paths = precompute_feature_maps(
        encoder, dataset, opt.feat_dir, device=device, batch_size=opt.batchSize, label_feat=opt.label_feat, amp=amp,
        num_workers=min(opt.nThreads, 2),
    )  # fmt: skip
    folder = os.path.dirname(paths[0]) if paths else opt.feat_dir
    return {"files": len(paths), "folder": folder, "device": str(device), "seconds": time.perf_counter() - t0}


def find_clusters_file(opt: argparse.Namespace) -> str:
    """The clusters file ``test`` samples from.

    ``--cluster_path`` relative paths are looked up in ``<checkpoints_dir>/<name>`` (as the reference does), then
    as given; without it, ``features_clustered_<n_clusters>.npz`` (ours), then ``.npy`` (the reference's), in the
    checkpoint folder.

    Raises:
        FileNotFoundError: none exists; the message names the paths tried and the command that creates the file.
    """
    folder = os.path.join(opt.checkpoints_dir, opt.name)
    if getattr(opt, "cluster_path", None):
        tried = [os.path.join(folder, opt.cluster_path), opt.cluster_path]
    else:
        tried = [os.path.join(folder, clusters_filename(opt.n_clusters, ext)) for ext in (".npz", ".npy")]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"no feature clusters file for sampling instance features (looked for {', '.join(dict.fromkeys(tried))}). "
        f"Create it with `pix2pixhd-fast encode-features --name {opt.name} --checkpoints_dir {opt.checkpoints_dir} "
        f"--dataroot <training data> --n_clusters {opt.n_clusters}` plus the training's network options, or pass "
        "--use_encoded_image to encode each test photo instead"
    )


class InferenceFeatures:
    """The generator's feature input during ``test`` for models with instance features (not ``--load_features``).

    Sampled mode (default): a centre of the clusters file per instance, seeded by ``(--seed, image index)``;
    encoded mode (``--use_encoded_image``): E(real image). ``--feat_edit`` choices apply in both. Call with
    ``(index, label, inst, encoded)`` where ``encoded`` is E's output in encoded mode (else None).
    """

    def __init__(self, opt: argparse.Namespace):
        self.opt = opt
        self.edits = parse_feat_edit(getattr(opt, "feat_edit", None))
        self.encoded = bool(opt.use_encoded_image)
        self.matched: set = set()
        self.clusters: FeatureClusters | None = None
        self.clusters_path: str | None = None
        needs_clusters = not self.encoded or any(isinstance(v, int) for v in self.edits.values())
        if needs_clusters:
            self.clusters_path = find_clusters_file(opt)
            self.clusters = load_clusters(self.clusters_path, opt.feat_num)
        elif self.edits and self.encoded:
            self.clusters = FeatureClusters({}, opt.feat_num)  # explicit vectors only: no file needed

    def __call__(
        self, index: int, label: torch.Tensor, inst: torch.Tensor | None, encoded: torch.Tensor | None
    ) -> torch.Tensor:
        region = label if self.opt.label_feat else inst
        if self.encoded and not self.edits:
            return encoded
        assert self.clusters is not None
        for key in self.edits:  # record which edits found their instance somewhere
            if bool((region == key).any()):
                self.matched.add(key)
        return feature_map(
            label, region, self.clusters, choice=self.edits, seed=image_seed(self.opt.seed, index),
            base=encoded if self.encoded else None, strict=False,
        )  # fmt: skip

    @property
    def unmatched(self) -> list:
        """``--feat_edit`` ids that appeared in no test image so far."""
        return [k for k in self.edits if k not in self.matched]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"features": "encoded real image" if self.encoded else "sampled cluster centres"}
        if self.clusters_path:
            d["clusters_file"] = self.clusters_path
        if not self.encoded:
            d["feature_seed"] = self.opt.seed
        if self.edits:
            d["feat_edit"] = {str(k): v for k, v in self.edits.items()}
            d["feat_edit_unmatched"] = self.unmatched
        return d


def inference_features(opt: argparse.Namespace) -> InferenceFeatures | None:
    """The feature source of ``test`` for these options, or None (no features, or ``--load_features``)."""
    if not getattr(opt, "use_features", False) or getattr(opt, "load_features", False):
        if getattr(opt, "feat_edit", None):
            print("warning: --feat_edit ignored (the model has no generated instance features)", file=sys.stderr)
        return None
    return InferenceFeatures(opt)
