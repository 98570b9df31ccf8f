"""The reference pix2pixHD learning-rate schedule and the ``--niter_fix_global`` parameter sets."""

from __future__ import annotations

import argparse

import torch.nn as nn

__all__ = ["learning_rate", "total_epochs", "trainable_generator_params", "fixes_global"]


def total_epochs(opt: argparse.Namespace) -> int:
    """Number of epochs: ``niter`` at the starting rate, then ``niter_decay`` of linear decay."""
    return opt.niter + opt.niter_decay


def learning_rate(epoch: int, opt: argparse.Namespace) -> float:
    """Learning rate used during ``epoch`` (1-based), as the reference computes it.

    The reference lowers the rate by ``lr / niter_decay`` at the end of every epoch after the first ``niter``:
    epochs ``1 .. niter + 1`` run at ``lr``, epoch ``niter + k`` at ``lr - (k - 1) * lr / niter_decay``, so the
    last epoch (``niter + niter_decay``) runs at ``lr / niter_decay`` and the rate never reaches 0 while training.
    """
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    decayed = max(0, epoch - 1 - opt.niter)
    if opt.niter_decay <= 0 or decayed == 0:
        return opt.lr
    return max(0.0, opt.lr - decayed * opt.lr / opt.niter_decay)


def fixes_global(epoch: int, opt: argparse.Namespace) -> bool:
    """True while only the outermost local enhancer trains (epochs ``1 .. niter_fix_global``)."""
    return opt.netG == "local" and opt.niter_fix_global > 0 and epoch <= opt.niter_fix_global


def trainable_generator_params(netG: nn.Module, opt: argparse.Namespace, fix_global: bool) -> list[nn.Parameter]:
    """G's parameters that the optimizer steps: all of them, or (``fix_global``) those of the outermost enhancer,
    i.e. the names starting with ``model<n_local_enhancers>`` as in the reference. The others are frozen
    (``requires_grad=False``), which skips their gradient computation; the reference computed and discarded it."""
    prefix = f"model{opt.n_local_enhancers}"
    params = []
    for name, p in netG.named_parameters():
        train = not fix_global or name.startswith(prefix)
        p.requires_grad_(train)
        if train:
            params.append(p)
    if not params:
        raise ValueError(f"no generator parameter starts with {prefix!r}: --niter_fix_global needs --netG local")
    return params
