"""Checkpoint I/O in NVIDIA/pix2pixHD's format (a plain ``state_dict`` of CPU tensors per network).

Loading never unpickles code (``torch.load(..., weights_only=True)``). Strict loading explains a mismatch
(missing / unexpected / mis-shaped keys, with a hint at the option that probably differs); ``partial=True``
reproduces the reference's ``--load_pretrain`` graft (e.g. a trained GlobalGenerator into a LocalEnhancer).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..utils.files import atomic_write

__all__ = [
    "CheckpointMismatchError",
    "CheckpointReadError",
    "read_checkpoint_file",
    "LoadResult",
    "atomic_save",
    "load_pix2pixhd_checkpoint",
    "save_pix2pixhd_checkpoint",
]

_MAX_LISTED = 12  # keys listed per category in an error message


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the network (strict loading)."""


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be read (empty, truncated, not a checkpoint, or holding code); the message names
    the file and what to do."""


def _why_unreadable(path: Path, e: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in the user's terms. torch's own message is not passed
    on: for a file with foreign objects it recommends ``weights_only=False``, i.e. running whatever code the file
    carries, which is the wrong advice for a file of unknown origin."""
    import pickle
    import zipfile

    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if isinstance(e, PermissionError):
        return "permission denied"
    if size == 0:
        return "the file is empty (0 bytes: an interrupted copy, or a full disk when it was written?)"
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in text.lower().replace(" ", "_"):
        return (
            "it holds Python objects other than tensors, numbers and plain containers, which are never unpickled "
            "here (not a file written by pix2pixHD or pix2pixhd-fast, or tampered with)"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") or isinstance(e, (EOFError, zipfile.BadZipFile)) or "central directory" in text:
        return "the file is truncated or corrupt (an interrupted copy, or a full disk when it was written?)"
    if head[:1] == b"\x80":  # a legacy (non-zip) pickle
        return "the file is truncated or corrupt, or not a PyTorch checkpoint"
    return "it is not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def read_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint", advice: str | None = None,
                         map_location: str | torch.device | None = "cpu") -> object:  # fmt: skip
    """``torch.load(path, weights_only=True)`` with every failure turned into one :class:`CheckpointReadError`
    that names the file, says what is wrong and what to do (``advice``; default: use another epoch or retrain).
    Loading never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every way a file can be unreadable ends in the same message
        advice = advice or "use the checkpoint of another epoch (--which_epoch) or retrain"
        raise CheckpointReadError(f"cannot read {what} {path}: {_why_unreadable(path, e)}; {advice}") from None


@dataclass
class LoadResult:
    """What :func:`load_pix2pixhd_checkpoint` did.

    Attributes:
        loaded: keys copied into the network.
        missing: network keys the checkpoint lacks (kept as initialised).
        unexpected: checkpoint keys the network does not have (ignored).
        mismatched: ``(key, checkpoint shape, network shape)`` for keys present in both with different shapes
            (kept as initialised).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        """Checkpoint keys not loaded (unexpected or mis-shaped)."""
        return self.unexpected + [k for k, _, _ in self.mismatched]

    def summary(self) -> str:
        """One line per category, for logs."""
        return (
            f"loaded {len(self.loaded)} tensors; not initialised from the checkpoint: {len(self.missing)} missing, "
            f"{len(self.mismatched)} mis-shaped; ignored {len(self.unexpected)} unexpected"
        )


def _unwrap(net: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        elif isinstance(getattr(net, "_orig_mod", None), nn.Module):
            net = net._orig_mod
        else:
            return net


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Drop a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix carried by every key."""
    out = OrderedDict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in out):
                out = OrderedDict((k[len(prefix) :], v) for k, v in out.items())
                changed = True
    return out


def _read_state(path_or_state_dict, map_location) -> OrderedDict[str, torch.Tensor]:
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict)
        state = read_checkpoint_file(path, map_location=map_location)
        source = str(path)
    elif isinstance(path_or_state_dict, Mapping):
        state = path_or_state_dict
        source = "the given state_dict"
    else:
        raise TypeError(f"expected a checkpoint path or a state_dict mapping, got {type(path_or_state_dict).__name__}")
    # A file of the wrong kind is a user's error like an unreadable one; a wrong object passed in is a bug.
    bad_input = CheckpointReadError if source != "the given state_dict" else TypeError
    # Some training scripts wrap the weights as {"state_dict": ...}; the reference saves them bare.
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise bad_input(f"{source} does not hold a state_dict (a mapping of names to tensors): {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise bad_input(f"{source} is not a state_dict: entries {bad[:_MAX_LISTED]} are not name -> tensor")
    return _strip_prefixes(state)


def _compare(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> LoadResult:
    res = LoadResult()
    for k, v in state.items():
        if k not in target:
            res.unexpected.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            res.mismatched.append((k, tuple(v.shape), tuple(target[k].shape)))
        else:
            res.loaded.append(k)
    # BatchNorm counters are absent from checkpoints of old PyTorch versions; BatchNorm fills them in itself.
    res.missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    return res


def _hints(res: LoadResult) -> list[str]:
    """Likely causes of a mismatch, phrased as the reference's training options."""
    hints = []
    names = res.missing + res.unexpected

    def has(sub: str, keys: list[str]) -> bool:
        return any(sub in k for k in keys)

    if res.mismatched:
        # Conv weights are [out, in, k, k]: one ratio of filter counts over all of them points at --ngf / --ndf;
        # mismatches only in the input width of the same filters point at the input options.
        weights = [(a, b) for _, a, b in res.mismatched if len(a) == 4 and len(b) == 4]
        ratios = {a[0] / b[0] for a, b in weights if a[0] != b[0]}
        if len(ratios) == 1 and len(weights) >= 2 and all(a[0] != b[0] for a, b in weights[:1]):
            hints.append(f"the checkpoint has {next(iter(ratios)):g}x the filters of the network: wrong --ngf / --ndf?")
        elif ratios:
            hints.append("filter counts differ: wrong --ngf / --ndf, --n_downsample_global or --n_layers_D?")
        elif weights:
            hints.append("input channels differ: wrong --label_nc / --input_nc, --no_instance or --feat_num?")
        else:
            hints.append("tensor shapes differ: wrong --ngf / --ndf, --label_nc / --input_nc or --norm?")
    if has("model1_", res.unexpected) and not has("model1_", res.missing):
        hints.append("the checkpoint is a LocalEnhancer (--netG local) but the network is not")
    elif has("model1_", res.missing) and not has("model1_", res.unexpected):
        hints.append(
            "the network is a LocalEnhancer but the checkpoint has no local enhancer (a GlobalGenerator?): "
            "graft it with partial=True (the reference's --load_pretrain), or check --n_local_enhancers"
        )
    if has("scale", names) and has("layer", names) and (has("scale", res.missing) != has("scale", res.unexpected)):
        hints.append("intermediate-feature layout differs: --no_ganFeat_loss (getIntermFeat) does not match")
    if has("running_mean", names) or has("running_var", names):
        hints.append("--norm differs (batch norm has running statistics, instance norm has none)")
    if any(k.startswith("model") for k in names):
        hints.append("layer indices differ: wrong --n_downsample_global, --n_blocks_global or --n_blocks_local?")
    if has("layer", names) and not has("model", names):
        hints.append("discriminator layers differ: wrong --num_D or --n_layers_D?")
    return hints


def _format_error(res: LoadResult, net: nn.Module) -> str:
    def listing(items: list[str]) -> str:
        shown = ", ".join(items[:_MAX_LISTED])
        more = len(items) - _MAX_LISTED
        return shown + (f", ... ({more} more)" if more > 0 else "")

    lines = [f"checkpoint does not match {type(net).__name__} (strict loading):"]
    if res.missing:
        lines.append(f"  missing keys ({len(res.missing)}): {listing(res.missing)}")
    if res.unexpected:
        lines.append(f"  unexpected keys ({len(res.unexpected)}): {listing(res.unexpected)}")
    if res.mismatched:
        shapes = [f"{k}: checkpoint {list(a)} vs network {list(b)}" for k, a, b in res.mismatched]
        lines.append(f"  mis-shaped keys ({len(res.mismatched)}): {listing(shapes)}")
    for hint in _hints(res):
        lines.append(f"  hint: {hint}")
    lines.append("  hint: build the network with the options the checkpoint was trained with; partial=True loads")
    lines.append("        only the tensors whose names and shapes match (the reference's --load_pretrain)")
    return "\n".join(lines)


def load_pix2pixhd_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    net: nn.Module,
    *,
    partial: bool = False,
    map_location: str | torch.device | None = "cpu",
) -> LoadResult:
    """Load a pix2pixHD ``state_dict`` (e.g. ``latest_net_G.pth``) into ``net``.

    Args:
        path_or_state_dict: a file written by ``torch.save(state_dict)`` (the reference's and
            :func:`save_pix2pixhd_checkpoint`'s format; read with ``weights_only=True``) or a state_dict.
            Keys saved from ``DataParallel`` (``module.``) or a compiled module (``_orig_mod.``) are accepted.
        net: the network (may itself be wrapped in DataParallel/DDP/torch.compile). Tensors are copied into its
            parameters and buffers, keeping their device and dtype.
        partial: False (default): every key and shape must match, else :class:`CheckpointMismatchError` listing
            the differences, and ``net`` is left unchanged. True: copy every tensor whose name and shape match
            and report the rest in the result, as the reference's ``--load_pretrain`` does to graft a trained
            global generator into a LocalEnhancer.
        map_location: passed to ``torch.load``.

    Returns:
        :class:`LoadResult` with the loaded, missing, unexpected and mis-shaped keys.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    state = _read_state(path_or_state_dict, map_location)
    target_net = _unwrap(net)
    target = target_net.state_dict()
    res = _compare(state, target)
    if not partial:
        if res.missing or res.unexpected or res.mismatched:
            raise CheckpointMismatchError(_format_error(res, target_net))
        target_net.load_state_dict(state, strict=True)
        return res
    merged = OrderedDict(target)
    for k in res.loaded:
        merged[k] = state[k]
    target_net.load_state_dict(merged, strict=True)
    return res


def save_pix2pixhd_checkpoint(net: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``net``'s state_dict in the reference format (CPU tensors, no wrapper prefixes), atomically.

    The file is written to a temporary file in the same directory, flushed to disk and renamed over ``path``,
    so a crash never leaves a truncated checkpoint. Returns the path written.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    state = _unwrap(net).state_dict()
    out = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # module versions, as torch.save(module.state_dict()) stores them
    return atomic_save(out, path)


def atomic_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`pix2pixhd_fast.utils.files.atomic_write`): a crash, a
    kill or a full disk at any moment leaves either the previous file or the new one, never a truncated file;
    a failed write raises :class:`~pix2pixhd_fast.utils.files.AtomicWriteError` naming the file and saying
    that the previous file is unchanged. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path is a directory: {path}")
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path
