"""Drop-in use in other repositories: convert a model's instance norms to the fused operator, and functions with
the call signatures of the reference pix2pixHD helpers (``get_edges``, the Encoder's instance pooling).

``convert_model`` rewrites modules in place and keeps every state_dict key and shape, so checkpoints saved
before the conversion load after it (and the other way round) with ``strict=True``.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import ops
from .modules import InstanceNormAct, InstanceNormActPad, InstanceNormReLU

__all__ = ["convert_model", "ConversionReport", "get_edges", "instance_avg_pool"]

_log = logging.getLogger(__name__)

# The Encoder's per-instance mean (the reference loops over np.unique ids): same call, one fused op.
instance_avg_pool = ops.instance_avg_pool


@dataclass
class ConversionReport:
    """What :func:`convert_model` did, by module path (``"model.3"``; ``""`` is the root).

    ``fused``: (norm path, activation path, negative_slope) pairs now run as one ``InstanceNormAct`` (the
    activation's slot holds ``nn.Identity``). ``norm_only``: InstanceNorm2d converted alone (slope 1.0).
    ``skipped``: (path, reason) for instance norms left as they were. ``padded``: (norm path, pad path, p) for
    each ``ReflectionPad2d(p)`` folded into the converted norm before it (``InstanceNormActPad``).
    """

    fused: list[tuple[str, str, float]] = field(default_factory=list)
    norm_only: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    padded: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of InstanceNorm2d slots converted (fused or alone)."""
        return len(self.fused) + len(self.norm_only)

    def __str__(self) -> str:
        return (
            f"fused {len(self.fused)} InstanceNorm2d+activation pair(s), converted {len(self.norm_only)} "
            f"InstanceNorm2d without a following activation, folded {len(self.padded)} ReflectionPad2d into the "
            f"norm before it, left {len(self.skipped)} alone"
        )


def _skip_reason(m: nn.Module) -> str | None:
    """None when ``m`` is an InstanceNorm2d the fused op reproduces exactly, else why it is left alone."""
    if type(m) is not nn.InstanceNorm2d:
        return "a subclass of InstanceNorm2d (its forward may differ)"
    if m.track_running_stats:
        # Running statistics: eval mode normalises with the stored running mean/var (not the per-image
        # statistics the fused op computes), training updates the buffers, and the buffers are state_dict keys.
        return "track_running_stats=True (uses running statistics in eval mode; has buffers)"
    if _has_hooks(m):
        return "has hooks (they would no longer run)"
    return None


def _is_instance_norm(m: nn.Module | None) -> bool:
    return isinstance(m, nn.InstanceNorm2d)


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def activation_slope(m: nn.Module | None) -> float | None:
    """The LeakyReLU slope that a fused norm applies in place of activation module ``m`` (ReLU: 0.0), or None
    when ``m`` is not exactly ``nn.ReLU`` / ``nn.LeakyReLU`` without hooks (including ``m`` None: a norm known
    to have no activation is fused with slope 1.0 by its caller, which alone knows that)."""
    if m is None or _has_hooks(m):
        return None
    if type(m) is nn.ReLU:
        return 0.0
    if type(m) is nn.LeakyReLU:
        return float(m.negative_slope)
    return None


# Fused norms whose output a following ReflectionPad2d may be folded into (exact types: a subclass may override
# forward).
_PADDABLE = (InstanceNormAct, InstanceNormReLU, InstanceNormActPad)


def _reflection_pad_width(m: nn.Module) -> int | None:
    """p for an ``nn.ReflectionPad2d`` padding every side by the same p > 0 (and without hooks), else None."""
    if type(m) is not nn.ReflectionPad2d or _has_hooks(m):
        return None
    left, right, top, bottom = m.padding
    return left if left == right == top == bottom and left > 0 else None


def with_pad(norm: InstanceNormAct, pad: int) -> InstanceNormActPad:
    """``norm`` as an ``InstanceNormActPad(pad=pad)`` sharing its Parameter objects (same state_dict keys)."""
    new = InstanceNormActPad(
        norm.num_features, eps=norm.eps, affine=norm.affine, negative_slope=norm.negative_slope, pad=pad
    )
    if norm.affine:
        new.weight = norm.weight
        new.bias = norm.bias
    new.train(norm.training)
    return new


def fusable_norm(m: nn.Module) -> bool:
    """Whether ``m`` is a fused norm without padding (and without hooks) that can absorb a following pad."""
    return type(m) in _PADDABLE and getattr(m, "pad", 0) == 0 and not _has_hooks(m)


def fuse_norm_pads(layers: list[nn.Module] | nn.Sequential) -> list[tuple[int, int, int]]:
    """Fold every ``ReflectionPad2d(p)`` that reads a fused norm's output into that norm, in place.

    ``layers`` is run in order (a Sequential or the list it is built from); only ``nn.Identity`` slots may sit
    between the norm and the pad. The norm's slot becomes ``InstanceNormActPad(pad=p)`` (same parameters), the
    pad's slot ``nn.Identity``, so indices and state_dict keys stay. Returns (norm index, pad index, p) triples.
    """
    done = []
    for i in range(len(layers)):
        p = _reflection_pad_width(layers[i])
        if p is None:
            continue
        j = i - 1
        while j >= 0 and type(layers[j]) is nn.Identity:
            j -= 1
        if j < 0 or not fusable_norm(layers[j]):
            continue
        layers[j] = with_pad(layers[j], p)
        layers[i] = nn.Identity()
        done.append((j, i, p))
    return done


def _runs_in_order(m: nn.Module) -> bool:
    """True for nn.Sequential and subclasses that keep its forward (e.g. torchvision's Conv2dNormActivation)."""
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _fused(norm: nn.InstanceNorm2d, slope: float) -> InstanceNormAct:
    new = InstanceNormAct(norm.num_features, eps=norm.eps, affine=norm.affine, negative_slope=slope)
    if norm.affine:
        # The same Parameter objects: optimizers, weight tying and state_dict keys are unchanged.
        new.weight = norm.weight
        new.bias = norm.bias
    new.train(norm.training)
    return new


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Converter:
    def __init__(self, model: nn.Module):
        # Modules registered at more than one place: descending into them to fuse across a container boundary
        # would change every place that uses them.
        self.uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
        self.visited: set[int] = set()
        self.report = ConversionReport()

    def _edge(self, parent: nn.Module, name: str, prefix: str, last: bool) -> tuple[nn.Module, str, str] | None:
        """The first (last=False) or last (last=True) leaf of ``parent.name``, descending through in-order
        containers used once and without hooks. Returns (container, slot name, path) or None."""
        m = parent._modules[name]
        path = _join(prefix, name)
        while m is not None and _runs_in_order(m):
            if len(m) == 0 or self.uses[id(m)] != 1 or _has_hooks(m):
                return None
            parent = m
            name = list(m._modules)[-1 if last else 0]
            path = _join(path, name)
            m = m._modules[name]
        return (parent, name, path) if m is not None else None

    def _fuse_sequential(self, seq: nn.Module, prefix: str) -> None:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            tail = self._edge(seq, a, prefix, last=True)
            head = self._edge(seq, b, prefix, last=False)
            if tail is None or head is None:
                continue
            norm = tail[0]._modules[tail[1]]
            act = head[0]._modules[head[1]]
            slope = activation_slope(act)
            if not _is_instance_norm(norm) or slope is None or _skip_reason(norm) is not None:
                continue
            tail[0]._modules[tail[1]] = _fused(norm, slope)
            head[0]._modules[head[1]] = nn.Identity()
            self.report.fused.append((tail[2], head[2], slope))

    def visit(self, module: nn.Module, prefix: str) -> None:
        if id(module) in self.visited:
            return
        self.visited.add(id(module))
        if _runs_in_order(module):
            self._fuse_sequential(module, prefix)
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            path = _join(prefix, name)
            if _is_instance_norm(child):
                reason = _skip_reason(child)
                if reason is None:
                    # No activation known to follow (custom forward, or not followed in a Sequential): the norm
                    # alone, slope 1.0. The activation, if any, keeps running where the forward calls it.
                    module._modules[name] = _fused(child, 1.0)
                    self.report.norm_only.append(path)
                else:
                    self.report.skipped.append((path, reason))
            elif not isinstance(child, InstanceNormAct):
                self.visit(child, path)
        if _runs_in_order(module):
            # After the norms of this container are converted: a pad that reads a converted norm's output.
            names = list(module._modules)
            slots = [module._modules[n] for n in names]
            for j, i, p in fuse_norm_pads(slots):
                module._modules[names[j]] = slots[j]
                module._modules[names[i]] = slots[i]
                self.report.padded.append((_join(prefix, names[j]), _join(prefix, names[i]), p))


def convert_model(
    model: nn.Module, *, inplace: bool = True, return_report: bool = False
) -> nn.Module | tuple[nn.Module, ConversionReport]:
    """Replace ``nn.InstanceNorm2d`` (+ ``nn.ReLU`` / ``nn.LeakyReLU``) in any model by the fused ``InstanceNormAct``.

    What is converted:

    - In an ``nn.Sequential`` (or a subclass keeping its forward), an InstanceNorm2d immediately followed by a
      ReLU or LeakyReLU (any slope) becomes ``InstanceNormAct(num_features, eps, affine, negative_slope)`` in
      the norm's slot and ``nn.Identity()`` in the activation's slot. The pair may straddle nested Sequentials
      (``Sequential(Sequential(conv, norm), LeakyReLU)``, as SPADE's discriminator builds it) when the inner
      containers are registered once and have no hooks.
    - Every other eligible InstanceNorm2d (last in its Sequential, followed by something else, or an attribute
      of a custom module such as ``self.norm`` used in ``forward``) becomes ``InstanceNormAct`` with
      ``negative_slope=1.0`` (normalisation only). The activation of a custom module is left where it is:
      the order of calls in a ``forward`` cannot be known from the module tree, so fusing it could be wrong.
    - In the same Sequential, an ``nn.ReflectionPad2d(p)`` (equal sides) that reads a converted norm's output
      (only Identity slots between, e.g. norm, ReLU, pad) is folded into it: ``InstanceNormActPad(pad=p)`` in the
      norm's slot writes the padded output in one pass, ``nn.Identity()`` takes the pad's slot. A residual sum
      lives in a ``forward``, so it is not fused here (the pix2pixHD networks of this package fuse it).

    Eligible means exactly ``nn.InstanceNorm2d`` (affine or not) with ``track_running_stats=False`` and no hooks.
    Left alone: ``track_running_stats=True`` (in eval mode it normalises with running statistics, not the
    per-image ones the fused op computes, and its buffers are state_dict keys), subclasses of InstanceNorm2d
    (their forward may differ), norms with hooks, BatchNorm and every other module, activations with hooks.

    Guarantees: the same state_dict keys and shapes (InstanceNormAct has ``weight``/``bias`` exactly when the
    norm was affine, and they are the same Parameter objects; Identity and the activations have none), so a
    checkpoint loads with ``strict=True`` either way; the same outputs and gradients (float tolerance).
    Caveats: the fused module expects batched ``[N, C, H, W]`` input with C == num_features (InstanceNorm2d
    also takes unbatched ``[C, H, W]``); code that calls the children of a Sequential one by one to collect
    per-layer outputs sees the post-activation value at the norm's position (the Sequential's own output is
    unchanged).

    Args:
        model: any ``nn.Module`` (an InstanceNorm2d itself is returned converted).
        inplace: modify ``model`` (True) or a deep copy of it (False).
        return_report: also return a :class:`ConversionReport`.

    Returns:
        The converted model, or ``(model, report)`` with ``return_report=True``. A one-line summary is logged
        at INFO level on the ``pix2pixhd_fast.nn.convert`` logger.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_model expects an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    conv = _Converter(model)
    if _is_instance_norm(model):
        reason = _skip_reason(model)
        if reason is None:
            model = _fused(model, 1.0)
            conv.report.norm_only.append("")
        else:
            conv.report.skipped.append(("", reason))
    else:
        conv.visit(model, "")
    _log.info("convert_model(%s): %s", type(model).__name__, conv.report)
    for path, reason in conv.report.skipped:
        _log.debug("convert_model: left %r alone: %s", path, reason)
    return (model, conv.report) if return_report else model


def get_edges(t: torch.Tensor, dtype: torch.dtype = torch.float32, check: bool = True) -> torch.Tensor:
    """The reference pix2pixHD/SPADE ``get_edges``, on the fused ``instance_boundary`` kernel.

    Args:
        t: ``Tensor[N, C, H, W]`` instance ids (C is 1 for an instance map; each channel is treated on its own),
            any integer dtype, bool, or float holding integral values (what the reference passes). Ids are
            compared as integers; fractional float ids raise a ValueError.
        dtype: output dtype; the reference returns float32 (``edge.float()``), or float16 when pix2pixHD runs
            with ``--data_type 16``.
        check: on CUDA, verify float ids are integral (one host sync); False inside CUDA graphs.

    Returns:
        ``Tensor[N, C, H, W]`` of ``dtype`` on ``t``'s device: 1 where an id differs from one of its existing
        4-neighbours (both sides of a boundary), else 0.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"get_edges expects a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"get_edges expects a [N,C,H,W] tensor (the reference's layout), got {tuple(t.shape)}")
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    n, c, h, w = t.shape
    if c == 1:
        return ops.instance_boundary(t, dtype, check)
    # Several channels: the reference compares within each channel; run them as a batch of single maps.
    return ops.instance_boundary(t.reshape(n * c, 1, h, w), dtype, check).reshape(n, c, h, w)
