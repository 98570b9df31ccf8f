"""Per-class k-means of instance features, and the files that hold the result.

Our format (``features_clustered_<k>.npz``, written by :meth:`FeatureClusters.save`, read with
``np.load(allow_pickle=False)``): plain arrays only, no pickles.

=====================  ==================  =============================================================
key                    dtype / shape       meaning
=====================  ==================  =============================================================
``format``             str (0-d)           ``"pix2pixhd_fast.feature_clusters"``
``version``            int64 (0-d)         1
``feat_num``           int64 (0-d)         feature channels F
``labels``             int64 [L]           the classes that have clusters, ascending
``centers_<label>``    float32 [k, F]      the class's cluster centres (k >= 1), most populated first
``counts_<label>``     int64 [k]           training instances per cluster (-1: unknown, e.g. converted files)
``n_clusters``         int64 (0-d)         the requested k (-1: unknown)
``seed``               int64 (0-d)         k-means ``random_state`` (-1: unknown)
``min_area_frac``      float64 (0-d)       area threshold of the encoded instances (NaN: unknown)
``label_feat``         bool (0-d)          features were pooled per label region (``--label_feat``)
=====================  ==================  =============================================================

The reference's ``features_clustered_%03d.npy`` (a Python dict ``{label: float array [k, F]}`` stored by
``np.save`` as a pickled 0-d object array, which current NumPy only loads with ``allow_pickle=True``) is read by
:func:`load_reference_clusters` without executing the pickle: a restricted unpickler admits only the NumPy
array/dtype constructors, so a crafted file cannot run code.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..utils.files import atomic_write
from .encode import FeatureBank

__all__ = [
    "FORMAT_NAME",
    "FeatureClusters",
    "cluster_features",
    "load_clusters",
    "load_reference_clusters",
    "clusters_filename",
]

FORMAT_NAME = "pix2pixhd_fast.feature_clusters"
_VERSION = 1


def clusters_filename(n_clusters: int, ext: str = ".npz") -> str:
    """``features_clustered_<n_clusters:03d><ext>`` (the reference's name pattern)."""
    return f"features_clustered_{int(n_clusters):03d}{ext}"


@dataclass
class FeatureClusters:
    """Cluster centres of instance features, per class.

    Attributes:
        centers: ``{label: float32 array [k, feat_num]}`` (k >= 1); classes absent here have no clusters.
        feat_num: feature channels.
        counts: ``{label: int64 array [k]}`` training instances per cluster, or None when unknown (legacy files).
        meta: ``n_clusters``, ``seed``, ``min_area_frac``, ``label_feat`` (None when unknown) and ``source``.
    """

    centers: dict[int, np.ndarray]
    feat_num: int
    counts: dict[int, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.feat_num, bool) or not isinstance(self.feat_num, (int, np.integer)) or self.feat_num < 1:
            raise ValueError(f"feat_num must be a positive int, got {self.feat_num!r}")
        self.feat_num = int(self.feat_num)
        centers = {}
        for label, c in self.centers.items():
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise ValueError(f"cluster labels must be ints >= 0, got {label!r}")
            c = np.asarray(c, dtype=np.float32)
            if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] != self.feat_num:
                raise ValueError(
                    f"centers of class {label} must have shape [k >= 1, feat_num={self.feat_num}], got {c.shape}"
                )
            if not np.isfinite(c).all():
                raise ValueError(f"centers of class {label} hold non-finite values")
            centers[int(label)] = c
        self.centers = dict(sorted(centers.items()))
        if self.counts is not None:
            counts = {int(k): np.asarray(v, dtype=np.int64) for k, v in self.counts.items()}
            if counts.keys() != self.centers.keys() or any(
                counts[k].shape != (self.centers[k].shape[0],) for k in counts
            ):
                raise ValueError("counts must give one count per cluster of every class of centers")
            self.counts = counts

    @property
    def labels(self) -> list[int]:
        """The classes with clusters, ascending."""
        return list(self.centers)

    def num_clusters(self, label: int) -> int:
        """Clusters of class ``label`` (0 when it has none)."""
        c = self.centers.get(int(label))
        return 0 if c is None else int(c.shape[0])

    def table(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded lookup tables for vectorised sampling.

        Returns:
            ``(centers float32[L, K, feat_num], k int64[L])`` with ``L = max label + 1`` (at least 1) and ``K`` the
            largest cluster count: ``centers[c, j]`` is centre j of class c for ``j < k[c]`` (zeros elsewhere).
        """
        n_lab = max(self.centers, default=-1) + 1
        kmax = max((c.shape[0] for c in self.centers.values()), default=0)
        tab = np.zeros((max(n_lab, 1), max(kmax, 1), self.feat_num), np.float32)
        ks = np.zeros(max(n_lab, 1), np.int64)
        for label, c in self.centers.items():
            tab[label, : c.shape[0]] = c
            ks[label] = c.shape[0]
        return torch.from_numpy(tab).to(device), torch.from_numpy(ks).to(device)

    def summary(self) -> dict[str, Any]:
        """JSON-able: feat_num, classes, clusters per class, total clusters, meta."""
        return {
            "feat_num": self.feat_num,
            "classes": len(self.centers),
            "clusters_per_class": {str(k): int(v.shape[0]) for k, v in self.centers.items()},
            "clusters": int(sum(v.shape[0] for v in self.centers.values())),
            **{k: v for k, v in self.meta.items() if k != "source"},
        }

    # ---------------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the documented ``.npz`` format (see the module docstring) atomically; returns the path."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"cluster files are written as .npz, got {path!r}")
        meta = self.meta
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT_NAME),
            "version": np.array(_VERSION, np.int64),
            "feat_num": np.array(self.feat_num, np.int64),
            "labels": np.array(self.labels, np.int64),
            "n_clusters": np.array(-1 if meta.get("n_clusters") is None else meta["n_clusters"], np.int64),
            "seed": np.array(-1 if meta.get("seed") is None else meta["seed"], np.int64),
            "min_area_frac": np.array(
                math.nan if meta.get("min_area_frac") is None else meta["min_area_frac"], np.float64
            ),
            "label_feat": np.array(bool(meta.get("label_feat", False))),
        }
        for label, c in self.centers.items():
            arrays[f"centers_{label}"] = c
            arrays[f"counts_{label}"] = (
                self.counts[label] if self.counts is not None else np.full(c.shape[0], -1, np.int64)
            )
        with atomic_write(path, "wb") as f:  # a file object: np.savez would append '.npz' to a name
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], feat_num: int | None = None) -> FeatureClusters:
        """Read our ``.npz`` or a reference ``.npy`` file (by extension; see :func:`load_clusters`)."""
        return load_clusters(path, feat_num)


def _read_npz(path: str) -> FeatureClusters:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read cluster file {path}: {e}") from e
    with z:
        keys = set(z.files)
        need = {"format", "version", "feat_num", "labels"}
        if not need <= keys or str(z["format"]) != FORMAT_NAME:
            raise ValueError(f"{path} is not a pix2pixhd_fast feature-clusters file (keys {sorted(keys)[:8]})")
        if int(z["version"]) > _VERSION:
            raise ValueError(f"{path}: format version {int(z['version'])} is newer than this library's {_VERSION}")
        centers, counts = {}, {}
        for label in z["labels"].tolist():
            for kind in ("centers", "counts"):
                if f"{kind}_{label}" not in keys:
                    raise ValueError(f"{path}: class {label} is listed but has no '{kind}_{label}' array")
            centers[label] = z[f"centers_{label}"]
            counts[label] = z[f"counts_{label}"]

        def opt(key, cast, unknown):
            if key not in keys:
                return None
            v = cast(z[key])
            return None if (v == unknown or (isinstance(v, float) and math.isnan(v))) else v

        meta = {
            "n_clusters": opt("n_clusters", int, -1),
            "seed": opt("seed", int, -1),
            "min_area_frac": opt("min_area_frac", float, math.nan),
            "label_feat": bool(z["label_feat"]) if "label_feat" in keys else None,
            "source": path,
        }
        try:
            return FeatureClusters(centers, int(z["feat_num"]), counts, meta)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# The reference's pickled .npy


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays inside plain containers; any other global (code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray

        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # numpy < 2 (and Python 2 era files) name the module numpy.core, numpy >= 2 numpy._core
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): multiarray.scalar,
            # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')
            ("_codecs", "encode"): _latin1_encode,
            # ... and empty bytes as bytes() (the 2to3 name under fix_imports)
            ("__builtin__", "bytes"): _empty_bytes,
            ("builtins", "bytes"): _empty_bytes,
        }
        fn = allowed.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed")
        return fn


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a clusters file")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    if args:
        raise pickle.UnpicklingError("refusing bytes(...) with arguments in a clusters file")
    return b""


def load_reference_clusters(path: str | os.PathLike[str], feat_num: int | None = None) -> FeatureClusters:
    """Read the reference's ``features_clustered_%03d.npy`` (``{label: array [k, F]}`` saved with ``np.save``).

    The pickle inside is parsed by a restricted unpickler (NumPy arrays, dtypes, scalars and plain containers
    only), never with ``allow_pickle=True``: a file that names any other Python object is refused. Python 2 era
    files (read as the reference does, latin-1) work too.

    Columns: the reference's cluster files hold ``feat_num`` columns per centre. Its unclustered
    ``features.npy`` holds ``feat_num + 1`` (the last is the instance's area, relative to 1/32 of the image);
    given ``feat_num``, arrays with ``feat_num + 1`` columns are accepted and the last column is dropped (each
    recorded instance then acts as one "centre"). Without ``feat_num`` all arrays must share one width.
    Classes with an empty array have no clusters.

    Raises:
        ValueError: not a .npy file, not a pickled dict of 2-D arrays, refused pickle content, bad widths.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            if dtype != np.dtype(object):
                raise ValueError(f"it holds a plain {dtype} array, not the pickled dict of a clusters file")
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot read reference cluster file {path}: {e}") from e
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict {{label: array}}, found {type(obj).__name__}")
    arrays: dict[int, np.ndarray] = {}
    for label, a in obj.items():
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"{path}: class keys must be ints, found {label!r}")
        a = np.asarray(a)
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{path}: class {label} holds a {a.dtype} array of shape {a.shape}, expected [k, F]")
        if a.shape[0]:
            arrays[int(label)] = a.astype(np.float32)
    widths = {a.shape[1] for a in arrays.values()}
    if feat_num is None:
        if len(widths) > 1:
            raise ValueError(f"{path}: classes have different widths {sorted(widths)}; pass feat_num")
        feat_num = widths.pop() if widths else 1
    for label, a in arrays.items():
        if a.shape[1] == feat_num + 1:
            arrays[label] = np.ascontiguousarray(a[:, :feat_num])
        elif a.shape[1] != feat_num:
            raise ValueError(f"{path}: class {label} has {a.shape[1]} columns; expected feat_num={feat_num} (or +1)")
    meta = {"n_clusters": None, "seed": None, "min_area_frac": None, "label_feat": None, "source": path}
    return FeatureClusters(arrays, feat_num, None, meta)


def load_clusters(path: str | os.PathLike[str], feat_num: int | None = None) -> FeatureClusters:
    """Read a clusters file: ``.npz`` (ours) or ``.npy`` (the reference's, see :func:`load_reference_clusters`).

    ``feat_num``, when given, must match the file (for ``.npy`` it also selects the column handling).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable or mismatching content.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no feature clusters file {path}")
    if path.endswith(".npy"):
        clusters = load_reference_clusters(path, feat_num)
    else:
        clusters = _read_npz(path)
    if feat_num is not None and clusters.feat_num != feat_num:
        raise ValueError(f"{path} holds {clusters.feat_num}-channel features but the model uses --feat_num {feat_num}")
    return clusters


# ---------------------------------------------------------------------------------------------------------------
# Clustering


def cluster_features(
    bank: FeatureBank, n_clusters: int = 10, seed: int = 0, *, n_init: int = 10, min_area_frac: float | None = None
) -> FeatureClusters:
    """K-means (scikit-learn) of the bank's features, per class.

    Args:
        bank: the encoded instances (:func:`~pix2pixhd_fast.features.encode_features`).
        n_clusters: clusters per class; a class with fewer distinct feature vectors gets one cluster per vector.
        seed: ``random_state`` of k-means (same bank and seed -> same centres).
        n_init: k-means restarts (fixed, so results do not depend on the scikit-learn version's default).
        min_area_frac: optionally keep only instances with a larger relative area (on top of the bank's own
            threshold).

    Returns:
        :class:`FeatureClusters`, centres of each class ordered by cluster population, largest first (so cluster 0
        is the class's most common style).
    """
    from sklearn.cluster import KMeans

    for name, v, lo in (("n_clusters", n_clusters, 1), ("n_init", n_init, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if not isinstance(bank, FeatureBank):
        raise TypeError(f"bank must be a FeatureBank, got {type(bank).__name__}")
    keep = np.ones(len(bank), bool) if min_area_frac is None else bank.areas > min_area_frac
    centers, counts = {}, {}
    for label in np.unique(bank.labels[keep]).tolist():
        x = bank.features[keep & (bank.labels == label)].astype(np.float64)
        k = min(int(n_clusters), len(np.unique(x, axis=0)))  # k-means cannot place more centres than points
        km = KMeans(n_clusters=k, n_init=int(n_init), random_state=int(seed)).fit(x)
        count = np.bincount(km.labels_, minlength=k)
        order = np.argsort(-count, kind="stable")
        centers[int(label)] = km.cluster_centers_[order].astype(np.float32)
        counts[int(label)] = count[order].astype(np.int64)
    meta = {
        "n_clusters": int(n_clusters),
        "seed": int(seed),
        "min_area_frac": bank.min_area_frac if min_area_frac is None else max(min_area_frac, bank.min_area_frac),
        "label_feat": bank.label_feat,
    }
    return FeatureClusters(centers, bank.feat_num, counts, meta)
