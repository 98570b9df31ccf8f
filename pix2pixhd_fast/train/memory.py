"""Activation memory of a training step: selective activation checkpointing and a meter of saved bytes.

pix2pixHD's networks alternate expensive convolutions with cheap memory-bound ops (instance norm, activation,
reflection pad, the residual sum). Autograd keeps the inputs of all of them for the backward pass, so a step
holds several full-size copies of every feature map. Selective activation checkpointing (SAC) keeps only the
convolution outputs (and matmuls) and recomputes the cheap ops in the backward pass from them: the memory of a
step drops to about one tensor per convolution, for the cost of one more pass of the memory-bound ops.

:func:`enable_selective_checkpointing` applies it to a network in place, region by region (each ResnetBlock, each
run of other layers in a Sequential, each discriminator layer group), by giving those modules a checkpointed
``forward``; parameters, buffers and ``state_dict`` keys are untouched, and :func:`disable_selective_checkpointing`
restores the plain forward. :class:`SavedTensorsMeter` measures the bytes a step keeps for its backward pass on
any device (``torch.autograd.graph.saved_tensors_hooks``), including the tensors SAC keeps.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

__all__ = [
    "SAVED_OPS",
    "sac_policy",
    "enable_selective_checkpointing",
    "disable_selective_checkpointing",
    "has_selective_checkpointing",
    "SavedTensorsMeter",
]

_aten = torch.ops.aten

# Ops whose outputs SAC keeps: everything that does O(k^2 * C) work per output element. Everything else in these
# networks (norms, activations, pads, sums, casts of activations) is memory-bound and cheaper to recompute than
# to keep.
SAVED_OPS = frozenset(
    op
    for op in (
        _aten.convolution.default,
        getattr(_aten, "_convolution", None) and _aten._convolution.default,
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten.baddbmm.default,
    )
    if op
)

_ATTR = "_p2phd_sac"  # marks a module whose forward is checkpointed (value: the region kind)
_INPLACE_ATTR = "_p2phd_sac_was_inplace"  # an activation made out-of-place for SAC

# Whether checkpoint() can route the tensors SAC keeps through the caller's saved_tensors_hooks (newer torch):
# the meter then sees them as any saved tensor; older versions report them through the policy instead.
_RESPECTS_HOOKS = "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters

_MISSING = object()

# Active meters (innermost last): the policy hands them SAC's kept outputs where checkpoint() cannot.
_METERS: list[SavedTensorsMeter] = []


def sac_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """The selective checkpointing policy: keep convolution and matmul outputs, recompute every other op.

    That includes autocast's low-precision copies of the weights: kept, they would hold a second copy of every
    weight from the forward to the backward pass (a third of what the step keeps for a CPU-sized global G); recast
    in the backward they cost one read of the weights, a small fraction of the convolutions that use them."""
    if func not in SAVED_OPS:
        return CheckpointPolicy.PREFER_RECOMPUTE
    policy = CheckpointPolicy.MUST_SAVE
    if _METERS and not _RESPECTS_HOOKS:
        out = getattr(ctx, "op_output", _MISSING)
        for meter in _METERS:
            if out is _MISSING:  # a torch that shows the policy no outputs: the meter cannot see these tensors
                meter.complete = False
            else:
                meter.add_output(out)
    return policy


def _context():
    return create_selective_checkpoint_contexts(sac_policy)


_RANDOM_MODULES = (nn.modules.dropout._DropoutNd, nn.RReLU)

_CKPT_KW: dict = {"use_reentrant": False, "context_fn": _context}
if _RESPECTS_HOOKS:
    _CKPT_KW["respect_saved_tensors_hooks"] = True


def _checkpointed(fn, modules: Iterable[nn.Module]):
    """``fn`` run under selective checkpointing when autograd records (plain ``fn`` under no_grad/inference).

    The RNG state is saved for the recomputation only when the region draws random numbers (dropout): reading it
    costs host time every step and is not allowed while a CUDA graph captures the step."""
    kw = dict(_CKPT_KW, preserve_rng_state=any(isinstance(m, _RANDOM_MODULES) for m in modules))

    @functools.wraps(fn)
    def run(*args):
        if not torch.is_grad_enabled():
            return fn(*args)
        return checkpoint(fn, *args, **kw)

    return run


def _is_residual_block(m: nn.Module) -> bool:
    # By structure rather than class, so that converted third-party blocks (x + conv_block(x)) qualify too.
    return isinstance(getattr(m, "conv_block", None), nn.Sequential)


def _segmented_forward(seq: nn.Sequential):
    """Forward of a Sequential whose residual blocks checkpoint themselves: every run of other layers between
    them becomes one checkpointed region."""
    runs: list[tuple[bool, list[nn.Module]]] = []
    for m in seq:
        block = _is_residual_block(m)
        if block or not runs or runs[-1][0]:
            runs.append((block, [m]))
        else:
            runs[-1][1].append(m)

    def run_layers(layers, x):
        for m in layers:
            x = m(x)
        return x

    parts = [
        layers[0]
        if block
        else _checkpointed(functools.partial(run_layers, layers), [s for m in layers for s in m.modules()])
        for block, layers in runs
    ]

    def forward(x):
        for part in parts:
            x = part(x)
        return x

    return forward


def enable_selective_checkpointing(net: nn.Module) -> nn.Module:
    """Checkpoint ``net``'s regions selectively (see :func:`sac_policy`), in place; returns ``net``.

    Regions: each residual block (a module with a ``conv_block`` Sequential, e.g. ResnetBlock: its input is kept,
    its pads, norms and the residual sum are recomputed); in a Sequential holding residual blocks, each run of
    the other layers between them; every other Sequential as a whole (the discriminator's layer groups, the
    encoder, a LocalEnhancer's front end). Each region keeps its input and its convolution outputs. Parameters
    and ``state_dict`` keys do not change; outputs and gradients are those of the plain network up to the
    floating-point reordering of a recomputation (none: the same kernels run on the same inputs).
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"enable_selective_checkpointing needs an nn.Module, got {type(net).__name__}")

    def visit(m: nn.Module) -> None:
        if getattr(m, _ATTR, None):
            return
        if _is_residual_block(m):
            m.forward = _checkpointed(type(m).forward.__get__(m), m.modules())
            setattr(m, _ATTR, "block")
            return
        if isinstance(m, nn.Sequential) and len(m):
            if any(_is_residual_block(c) for c in m):
                for c in m:
                    visit(c)
                m.forward = _segmented_forward(m)
                setattr(m, _ATTR, "segmented")
            else:
                m.forward = _checkpointed(type(m).forward.__get__(m), m.modules())
                setattr(m, _ATTR, "region")
            return
        for c in m.children():
            visit(c)

    visit(net)
    # An in-place activation would overwrite a convolution output that SAC keeps (the recomputation would then
    # read the activated values); out of place, the activation's output is recomputed and never kept.
    for m in net.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
            setattr(m, _INPLACE_ATTR, True)
    return net


def disable_selective_checkpointing(net: nn.Module) -> nn.Module:
    """Undo :func:`enable_selective_checkpointing` (the modules' class forward again), in place; returns ``net``."""
    for m in net.modules():
        if getattr(m, _ATTR, None):
            m.__dict__.pop("forward", None)
            delattr(m, _ATTR)
        if getattr(m, _INPLACE_ATTR, False):
            m.inplace = True
            delattr(m, _INPLACE_ATTR)
    return net


def has_selective_checkpointing(net: nn.Module) -> bool:
    """Whether any module of ``net`` runs a checkpointed forward."""
    return any(getattr(m, _ATTR, None) for m in net.modules())


class SavedTensorsMeter:
    """Bytes kept for the backward pass while the context is active, on any device.

    Every tensor autograd saves passes a ``saved_tensors_hooks`` pack hook; so do the tensors selective
    checkpointing keeps (through the policy where ``checkpoint`` cannot route them through the hooks). The meter
    counts distinct storages (a tensor saved by several ops, or views of one buffer, count once) and leaves out
    the storages of ``exclude`` (pass the model's parameters: they live whether or not a backward follows).
    It holds the storages it saw until it exits, so that no address is reused and counted twice: use it around
    one step that is not timed.

    Attributes after exit: ``bytes`` (int), ``tensors`` (number of distinct storages), ``complete`` (False when
    this torch version hid some of the tensors SAC keeps from the meter: ``bytes`` is then a lower bound).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {self._key(t) for t in exclude if isinstance(t, torch.Tensor)}
        self._seen: dict[tuple, torch.UntypedStorage] = {}
        self.bytes = 0
        self.tensors = 0
        self.complete = True
        self._hooks = None

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        return (t.device.type, t.device.index, t.untyped_storage().data_ptr())

    def _add(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_meta:
            return
        st = t.untyped_storage()
        if st.nbytes() == 0:
            return
        key = self._key(t)
        if key in self._exclude or key in self._seen:
            return
        self._seen[key] = st

    def add_output(self, out) -> None:
        """Count the tensors of an op output (a tensor or a nested tuple/list of them)."""
        if isinstance(out, (tuple, list)):
            for o in out:
                self.add_output(o)
        else:
            self._add(out)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._add(t)
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> SavedTensorsMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        _METERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _METERS.remove(self)
        self._hooks.__exit__(*exc)
        self.bytes = sum(st.nbytes() for st in self._seen.values())
        self.tensors = len(self._seen)
        self._seen.clear()
