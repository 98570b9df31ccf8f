"""The pix2pixHD folder-layout dataset, a seeded sampler, collation and the DataLoader factory.

Layout (the reference's)::

    <dataroot>/<phase>_label   8-bit id maps (label_nc > 0)   | <phase>_A  RGB inputs (label_nc == 0)
    <dataroot>/<phase>_inst    16-bit instance maps (unless no_instance)
    <dataroot>/<phase>_img     RGB photos                      | <phase>_B  (label_nc == 0)
    <dataroot>/<phase>_feat    encoded feature maps as RGB images (load_features only)

Files pair by name, not by sorted position: a file's key is its path relative to its folder without the
extension and without one trailing Cityscapes suffix (:data:`STEM_SUFFIXES`), so
``aachen_000000_000019_gtFine_labelIds.png``, ``..._gtFine_instanceIds.png`` and ``..._leftImg8bit.png`` share
the key ``aachen_000000_000019``. Every label needs exactly one file of each other kind with its key; a
missing or extra file is a ValueError that names it.

Items keep integer ids (the one-hot and boundary encoding runs on the device with
:func:`pix2pixhd_fast.ops.encode_input`): ``label`` ``uint8[1, H, W]`` (``int32`` when label_nc > 256, or
``float32[3, H, W]`` in [-1, 1] when label_nc == 0), ``inst`` ``int32[1, H, W]`` (absent with no_instance),
``image`` ``float32[3, H, W]`` in [-1, 1] (absent at test time when there are no photos), ``feat``
``float32[3, H, W]`` in [-1, 1] (load_features only), ``path`` the label file.

Randomness: each item's crop and flip come from a ``numpy`` generator seeded by the item seed. The sampler of
:func:`make_dataloader` yields ``(index, item_seed)`` pairs with ``item_seed`` a function of
``(seed, epoch, index)`` only, so a loader with a fixed seed gives the same batches whatever ``num_workers``,
and a resumed run that calls ``set_epoch`` sees the same data as an uninterrupted one. A plain ``dataset[i]``
draws its item seed from torch's global generator (``torch.manual_seed`` makes it reproducible).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .transforms import image_to_tensor, plan_transform, size_multiple, transform_image, transform_map

__all__ = [
    "IMG_EXTENSIONS",
    "STEM_SUFFIXES",
    "Sample",
    "Pix2PixHDDataset",
    "ItemSeedSampler",
    "item_seed",
    "pairing_key",
    "scan_folder",
    "read_label",
    "read_instance",
    "read_rgb",
    "collate",
    "make_dataloader",
]

IMG_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
#: Suffixes removed from a file stem before pairing (one at most): the Cityscapes file kinds.
STEM_SUFFIXES: tuple[str, ...] = (
    "_gtFine_labelIds",
    "_gtFine_instanceIds",
    "_gtCoarse_labelIds",
    "_gtCoarse_instanceIds",
    "_leftImg8bit",
)

_ERR_LIST = 5  # how many offending file names an error message lists


# ----------------------------------------------------------------------------------------------------
# Pairing


def pairing_key(relpath: str | os.PathLike[str]) -> str:
    """The pairing key of a file path relative to its folder: no extension, no Cityscapes suffix.

    ``"a/x_gtFine_labelIds.png" -> "a/x"``, ``"x_leftImg8bit.png" -> "x"``, ``"0001.jpg" -> "0001"``.
    """
    p = PurePosixPath(Path(relpath).as_posix())
    stem = p.stem
    for suffix in STEM_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    return str(p.with_name(stem)) if p.parent != PurePosixPath(".") else stem


def scan_folder(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Image files under ``folder`` (recursively, hidden files skipped), by :func:`pairing_key`, sorted by key.

    Raises:
        ValueError: the folder is missing, holds no image, or two files share a key.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"folder {root} does not exist")

    def unreadable(e: OSError) -> None:  # os.walk skips what it cannot list unless told otherwise
        raise ValueError(f"cannot read folder {e.filename}: {e.strerror} (check its permissions)") from e

    if not os.access(root, os.R_OK | os.X_OK):
        raise ValueError(f"cannot read folder {root}: permission denied (check its permissions)")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(IMG_EXTENSIONS):
                continue
            path = Path(dirpath) / name
            key = pairing_key(path.relative_to(root))
            if key in found:
                raise ValueError(f"files {found[key]} and {path} in {root} pair under the same name {key!r}")
            found[key] = path
    if not found:
        raise ValueError(f"no image files ({', '.join(IMG_EXTENSIONS)}) found in {root}")
    return dict(sorted(found.items()))


def _match(labels: dict[str, Path], others: dict[str, Path], kind: str, folder: Path) -> None:
    missing = [labels[k] for k in labels if k not in others]
    extra = [others[k] for k in others if k not in labels]
    problems = []
    if missing:
        names = ", ".join(str(p) for p in missing[:_ERR_LIST])
        more = f" (and {len(missing) - _ERR_LIST} more)" if len(missing) > _ERR_LIST else ""
        problems.append(f"no {kind} file in {folder} for label file(s) {names}{more}")
    if extra:
        names = ", ".join(str(p) for p in extra[:_ERR_LIST])
        more = f" (and {len(extra) - _ERR_LIST} more)" if len(extra) > _ERR_LIST else ""
        problems.append(f"{kind} file(s) {names}{more} match no label file")
    if problems:
        raise ValueError(
            "; ".join(problems) + f" (files pair by name: stem without extension and without {'/'.join(STEM_SUFFIXES)})"
        )


# ----------------------------------------------------------------------------------------------------
# Readers (each error names the file)


def _open_image(path: Path) -> Image.Image:
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now, inside the try, so a truncated file fails here with its name
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    return img


_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def read_label(path: str | os.PathLike[str], label_nc: int) -> np.ndarray:
    """Read an id map: ``uint8[H, W]`` (``int32`` when ``label_nc > 256``), every id checked ``< label_nc``.

    Accepts 8-bit grey ('L'), palette ('P': the palette indices are the ids), 1-bit, and 16/32-bit integer
    PNGs. An RGB label (a colourised map?) is an error: RGB inputs need ``label_nc=0``.
    """
    path = Path(path)
    img = _open_image(path)
    mode = img.mode
    if mode in ("L", "P"):
        arr = np.asarray(img)
    elif mode == "1":
        arr = np.asarray(img).astype(np.uint8)
    elif mode in _INT_MODES:
        arr = np.asarray(img).astype(np.int64)
        if arr.size and int(arr.min()) < 0:
            raise ValueError(f"label map {path} holds a negative id {int(arr.min())}")
    else:
        raise ValueError(
            f"label map {path} has PIL mode {mode!r}; expected single-channel ids (an 8-bit 'L' PNG). "
            "For RGB input images use label_nc=0 and the <phase>_A folder"
        )
    if arr.size:
        top = int(arr.max())  # one cheap pass over the uint8 array; the device path never has to check
        if top >= label_nc:
            raise ValueError(f"label map {path} holds id {top} >= label_nc {label_nc}")
    return arr.astype(np.uint8 if label_nc <= 256 else np.int32, copy=False)


def read_instance(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an instance map (16-bit PNG in Cityscapes, also 8-bit or 32-bit): ``int32[H, W]``."""
    path = Path(path)
    img = _open_image(path)
    if img.mode not in ("L", "P", *_INT_MODES):
        raise ValueError(f"instance map {path} has PIL mode {img.mode!r}; expected a single-channel integer PNG")
    return np.asarray(img).astype(np.int32)


def read_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image as a loaded RGB PIL image (alpha dropped, grey expanded)."""
    path = Path(path)
    img = _open_image(path)
    return img if img.mode == "RGB" else img.convert("RGB")


# ----------------------------------------------------------------------------------------------------
# Dataset


@dataclass(frozen=True)
class Sample:
    """The files of one item (None where that kind is not loaded)."""

    key: str
    label: Path
    inst: Path | None
    image: Path | None
    feat: Path | None


def _draw_item_seed() -> int:
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index`` in ``epoch`` of a loader seeded with ``seed`` (a 63-bit int)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


class Pix2PixHDDataset(Dataset):
    """pix2pixHD's aligned dataset over the reference folder layout (see the module docstring).

    Args:
        dataroot: the folder holding ``<phase>_label`` etc.
        phase: ``train``, ``test``, ...
        label_nc: number of label classes; 0 means the inputs are RGB images (``<phase>_A``/``<phase>_B``).
        no_instance: do not load instance maps.
        load_features: also load ``<phase>_feat``.
        resize_or_crop, loadSize, fineSize, no_flip, isTrain: the reference transform options
            (see :mod:`pix2pixhd_fast.data.transforms`); flips only when ``isTrain and not no_flip``.
        n_downsample_global, netG, n_local_enhancers: the generator options that fix the size multiple
            (``2**n_downsample_global``, times ``2**n_local_enhancers`` for ``netG='local'``).
        n_downsample: overrides the above: sizes become multiples of ``2**n_downsample``.
        max_dataset_size: keep the first (by key) this many items.
        use_encoded_image: photos are needed at test time too (reference option).
        load_image: True: photos required; False: never loaded; None (default): required when training or
            ``use_encoded_image``, otherwise loaded when the photo folder exists.

    Raises:
        ValueError: bad option, missing folder, files that do not pair.
    """

    def __init__(
        self,
        dataroot: str | os.PathLike[str],
        phase: str = "train",
        *,
        label_nc: int = 35,
        no_instance: bool = False,
        load_features: bool = False,
        resize_or_crop: str = "scale_width",
        loadSize: int = 1024,  # noqa: N803 - the reference option names
        fineSize: int = 512,  # noqa: N803
        no_flip: bool = False,
        isTrain: bool = True,  # noqa: N803
        n_downsample_global: int = 4,
        netG: str = "global",  # noqa: N803
        n_local_enhancers: int = 1,
        n_downsample: int | None = None,
        max_dataset_size: float = math.inf,
        use_encoded_image: bool = False,
        load_image: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(label_nc, bool) or not isinstance(label_nc, int) or label_nc < 0:
            raise ValueError(f"label_nc must be an int >= 0, got {label_nc!r}")
        if not (max_dataset_size >= 1):
            raise ValueError(f"max_dataset_size must be >= 1, got {max_dataset_size!r}")
        if n_downsample is not None and (not isinstance(n_downsample, int) or n_downsample < 0):
            raise ValueError(f"n_downsample must be an int >= 0 or None, got {n_downsample!r}")
        self.root = Path(dataroot)
        if not self.root.is_dir():
            raise ValueError(f"dataroot {self.root} does not exist or is not a folder")
        self.phase = phase
        self.label_nc = label_nc
        self.no_instance = bool(no_instance)
        self.load_features = bool(load_features)
        self.resize_or_crop = resize_or_crop
        self.load_size = loadSize
        self.fine_size = fineSize
        self.is_train = bool(isTrain)
        self.allow_flip = self.is_train and not no_flip
        self.multiple = (
            2**n_downsample if n_downsample is not None else size_multiple(n_downsample_global, netG, n_local_enhancers)
        )
        # Validate the transform options once, here, rather than on the first item.
        plan_transform(
            (loadSize, loadSize), resize_or_crop=resize_or_crop, load_size=loadSize, fine_size=fineSize,
            multiple=self.multiple, rng=np.random.default_rng(0),
        )  # fmt: skip

        label_dir = self.root / f"{phase}_{'label' if label_nc else 'A'}"
        image_dir = self.root / f"{phase}_{'img' if label_nc else 'B'}"
        inst_dir = self.root / f"{phase}_inst"
        feat_dir = self.root / f"{phase}_feat"
        labels = scan_folder(label_dir)
        need_image = (self.is_train or use_encoded_image) if load_image is None else bool(load_image)
        with_image = need_image or (load_image is None and image_dir.is_dir())
        if need_image and not image_dir.is_dir():
            raise ValueError(f"image folder {image_dir} does not exist (needed for training / use_encoded_image)")
        if not self.no_instance and not inst_dir.is_dir():
            raise ValueError(
                f"instance folder {inst_dir} does not exist; without instance maps use --no_instance "
                "(no_instance=True in Python)"
            )
        others: dict[str, dict[str, Path]] = {}
        for kind, folder, wanted in (
            ("instance", inst_dir, not self.no_instance),
            ("image", image_dir, with_image),
            ("feature", feat_dir, self.load_features),
        ):
            if wanted:
                others[kind] = scan_folder(folder)
                _match(labels, others[kind], kind, folder)
        self.samples: list[Sample] = [
            Sample(
                key=k,
                label=p,
                inst=others["instance"][k] if "instance" in others else None,
                image=others["image"][k] if "image" in others else None,
                feat=others["feature"][k] if "feature" in others else None,
            )
            for k, p in labels.items()
        ]
        if max_dataset_size < len(self.samples):
            self.samples = self.samples[: int(max_dataset_size)]

    @classmethod
    def from_options(cls, opt: argparse.Namespace | Any, **overrides: Any) -> Pix2PixHDDataset:
        """Build from a reference-style options object (``argparse.Namespace``); missing options keep defaults.

        ``overrides`` replace option values (e.g. ``phase='test'``).
        """
        names = (
            "phase", "label_nc", "no_instance", "load_features", "resize_or_crop", "loadSize", "fineSize",
            "no_flip", "isTrain", "n_downsample_global", "netG", "n_local_enhancers", "max_dataset_size",
            "use_encoded_image",
        )  # fmt: skip
        kwargs = {n: getattr(opt, n) for n in names if hasattr(opt, n)}
        kwargs.update(overrides)
        dataroot = kwargs.pop("dataroot", None) or getattr(opt, "dataroot", None)
        if dataroot is None:
            raise ValueError("options have no dataroot")
        ds = cls(dataroot, **kwargs)
        if ds.samples:
            # Too small for the generator's downsampling: an error naming the options now, not a padding error
            # deep inside the first forward pass. The first item stands for the data set.
            from ..options import check_image_size

            width, height = ds.output_size(0)
            check_image_size(height, width, opt)
        return ds

    def output_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` of item ``index`` after the transform (reads only the label file's header)."""
        path = self.samples[index].label
        try:
            with Image.open(path) as img:
                size = img.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image file {path}: {e}") from e
        plan = plan_transform(
            size, resize_or_crop=self.resize_or_crop, load_size=self.load_size, fine_size=self.fine_size,
            multiple=self.multiple, rng=np.random.default_rng(0),
        )  # fmt: skip
        return plan.out_size

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, phase={self.phase!r}, items={len(self)}, "
            f"label_nc={self.label_nc}, resize_or_crop={self.resize_or_crop!r}, multiple={self.multiple})"
        )

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``dataset[i]`` (item seed drawn from torch's generator) or ``dataset[(i, item_seed)]`` (from the sampler)."""
        if isinstance(key, tuple):
            index, seed = key
        else:
            index, seed = key, None
        return self.get_item(index, seed)

    def get_item(self, index: int, seed: int | None = None) -> dict[str, Any]:
        """Load, check and transform item ``index``; ``seed`` fixes its crop/flip (None: drawn from torch).

        Returns:
            dict with ``label``, ``inst``, ``image``, ``feat`` (those loaded) and ``path`` (see the module
            docstring for shapes and dtypes).

        Raises:
            IndexError: index out of range. ValueError: unreadable file, id >= label_nc, size mismatch (the
            message names the file).
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        s = self.samples[index]
        rng = np.random.default_rng(_draw_item_seed() if seed is None else int(seed))

        if self.label_nc:
            label_ids = read_label(s.label, self.label_nc)
            size = (label_ids.shape[1], label_ids.shape[0])
        else:
            label_img = read_rgb(s.label)
            size = label_img.size

        def check_size(other_size: tuple[int, int], kind: str, path: Path) -> None:
            if other_size != size:
                raise ValueError(
                    f"size mismatch: label {s.label} is {size[0]}x{size[1]} but {kind} {path} is "
                    f"{other_size[0]}x{other_size[1]}"
                )

        inst = image = feat = None
        if s.inst is not None:
            inst = read_instance(s.inst)
            check_size((inst.shape[1], inst.shape[0]), "instance map", s.inst)
        if s.image is not None:
            image = read_rgb(s.image)
            check_size(image.size, "image", s.image)
        if s.feat is not None:
            feat = np.asarray(read_rgb(s.feat))
            check_size((feat.shape[1], feat.shape[0]), "feature map", s.feat)

        plan = plan_transform(
            size, resize_or_crop=self.resize_or_crop, load_size=self.load_size, fine_size=self.fine_size,
            multiple=self.multiple, allow_flip=self.allow_flip, rng=rng,
        )  # fmt: skip
        item: dict[str, Any] = {}
        if self.label_nc:
            item["label"] = torch.from_numpy(transform_map(label_ids, plan)[None])
        else:
            item["label"] = image_to_tensor(np.asarray(transform_image(label_img, plan)))
        if inst is not None:
            item["inst"] = torch.from_numpy(transform_map(inst, plan)[None])
        if image is not None:
            item["image"] = image_to_tensor(np.asarray(transform_image(image, plan)))
        if feat is not None:
            # Encoded features are per-instance constants: nearest keeps them exact (the reference's NEAREST).
            item["feat"] = image_to_tensor(transform_map(feat, plan))
        item["path"] = str(s.label)
        return item


# ----------------------------------------------------------------------------------------------------
# Sampling, collation, loader


class ItemSeedSampler(Sampler):
    """Yields ``(index, item_seed)``: the order of a :class:`DistributedSampler` plus a per-item seed.

    The seed is :func:`item_seed` ``(seed, epoch, index)``, independent of workers and batch layout.
    ``set_epoch(e, start=0)`` fixes the epoch of the next pass (as for DistributedSampler) and where in it to
    begin; without it each pass advances the epoch by one, so shuffles and crops differ between epochs as
    in the reference.

    Args:
        length: dataset size.
        shuffle: shuffle per epoch (``torch.randperm`` seeded with ``seed + epoch``).
        seed: base seed (>= 0).
        num_replicas, rank: the process's share (DistributedSampler semantics: the index list is padded
            to a multiple of ``num_replicas`` unless ``drop_last``).
        drop_last: drop the tail that does not divide evenly among replicas.
    """

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.seed = seed
        self.epoch = 0
        self._start = 0
        self._order = DistributedSampler(
            range(length), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use ``epoch`` for the next pass (shuffle order and item seeds).

        ``start`` skips the first ``start`` samples of that pass (this process's share), to resume in the
        middle of an epoch: the remaining samples and their seeds are those of an uninterrupted pass.
        ``len()`` stays the full length of an epoch.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch = int(epoch)
        self._start = int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self._start
        self.epoch, self._start = epoch + 1, 0
        self._order.set_epoch(epoch)
        for i, index in enumerate(self._order):
            if i >= start:
                yield index, item_seed(self.seed, epoch, index)

    def __len__(self) -> int:
        return len(self._order)


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of dataset items into a batch: tensors stacked on a new dim 0, other values as lists.

    Raises:
        ValueError: empty list, items with different keys, or tensors of different shapes (names the files).
    """
    if not items:
        raise ValueError("cannot collate an empty list of items")
    keys = list(items[0].keys())
    batch: dict[str, Any] = {}
    for it in items[1:]:
        if list(it.keys()) != keys:
            raise ValueError(f"items have different keys: {keys} vs {list(it.keys())}")
    for k in keys:
        values = [it[k] for it in items]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                paths = [it.get("path", "?") for it in items]
                raise ValueError(
                    f"cannot batch '{k}' tensors of shapes {sorted(shapes)} from {paths}: use a resize_or_crop mode "
                    "that gives one size (e.g. resize_and_crop or *crop with fineSize) or batch_size 1"
                )
            batch[k] = torch.stack(values)
        else:
            batch[k] = values
    return batch


def _ignore_sigint(worker_id: int) -> None:
    """Workers leave Ctrl-C to the main process: a terminal sends SIGINT to the whole process group, and a worker
    that died of it would turn the trainer's graceful stop (finish the step, save, exit) into a loader error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_dataloader(
    dataset: Dataset,
    batch_size: int = 1,
    shuffle: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    *,
    num_replicas: int | None = None,
    rank: int | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`ItemSeedSampler` and :func:`collate`.

    Args:
        dataset: a :class:`Pix2PixHDDataset` (or any dataset accepting ``(index, item_seed)`` keys).
        batch_size: items per batch (per process when distributed).
        shuffle: shuffle each epoch.
        num_workers: worker processes (0: load in this process). Batches do not depend on it.
        pin_memory: page-locked batches for fast asynchronous host->device copies (ignored without CUDA).
        distributed: split the data among the processes of the default ``torch.distributed`` group
            (DistributedSampler semantics); ``num_replicas``/``rank`` override the group's values.
        seed: base seed of the order and of every item's crop/flip.
        drop_last: drop the last incomplete batch.
        persistent_workers: keep workers between epochs (default: when ``num_workers > 0``).
        prefetch_factor: batches prefetched per worker (DataLoader default when None).

    Returns:
        The DataLoader; call ``loader.sampler.set_epoch(epoch)`` before each epoch for exact resumes.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if distributed:
        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError(
                    "distributed=True needs an initialised torch.distributed process group (torchrun) "
                    "or explicit num_replicas and rank"
                )
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
    else:
        num_replicas, rank = 1, 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must lie in [0, num_replicas={num_replicas}), got {rank}")
    sampler = ItemSeedSampler(
        len(dataset), shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last
    )
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    if num_workers > 0:
        kwargs["worker_init_fn"] = _ignore_sigint
    return DataLoader(
        dataset,
        batch_size=batch_size,
        # Every new iterator (each epoch, and a resume's mid-epoch one) draws its workers' base seed from this
        # generator, by default torch's global RNG. A private one keeps the global stream (image pool, dropout)
        # advancing with training steps only, so a restored RNG state continues exactly as an uninterrupted run.
        # Crops and flips do not depend on it: they come from the sampler's per-item seeds.
        generator=torch.Generator().manual_seed(seed),
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        # Pinning needs an accelerator; asking for it without one only produces a warning.
        pin_memory=bool(pin_memory and torch.cuda.is_available()),
        drop_last=drop_last,
        **kwargs,
    )
