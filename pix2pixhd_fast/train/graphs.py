"""The whole training iteration as one CUDA graph (``--cuda_graph``).

At a fixed training size, an iteration launches the same few thousand kernels every time: G (+E) forward, D on
real and fake, the losses, G's backward and Adam step, D's backward and Adam step. Launched one by one from
Python, the host falls behind the GPU (the step's wall time exceeds its kernel time); replayed from a captured
graph, it costs one launch. :class:`GraphedTrainStep` captures ``Trainer`` 's own eager step once, on static input
buffers, and replays it for every later batch of the same shapes, so the graphed and eager steps run the same
code in the same order.

What makes the capture valid:
- the first ``warmup`` iterations run eagerly on a side stream (cuDNN algorithm selection, lazy CUDA
  initialisation and the optimizers' state allocation happen there, outside the graph); each is a real
  training iteration on its own batch, so graphing changes no result, only how the kernels are launched;
- the optimizers are capturable Adam (step counters on the device) with a device tensor as learning rate, so
  the schedule changes the rate in place (:func:`set_learning_rate`) and the replayed step reads it;
- nothing in the step synchronises with the host: the model checks no labels (the dataset did), the image pool
  is off (``--pool_size 0``: it draws on the host), no fp16 GradScaler (its inf check reads the device), autocast
  without its weight-cast cache (the casts are part of the graph and redone on every replay);
- a change of input shapes or dtypes, or new optimizers (``--niter_fix_global`` ending), recaptures.
The returned loss terms and generated image are the graph's static outputs: read them before the next step.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["GraphedTrainStep", "check_cuda_graph_options", "match_capturable", "set_learning_rate"]


def check_cuda_graph_options(opt: argparse.Namespace, device: torch.device, amp_dtype, distributed: bool) -> None:
    """Raise ValueError naming the option that a whole-step CUDA graph cannot work with."""
    if device.type != "cuda":
        raise ValueError(f"--cuda_graph needs a CUDA device, got {device}")
    if amp_dtype == torch.float16:
        raise ValueError(
            "--cuda_graph does not work with --amp fp16 (the GradScaler reads the device every step); "
            "use --amp bf16 or off"
        )
    if getattr(opt, "pool_size", 0) > 0:
        raise ValueError("--cuda_graph needs --pool_size 0 (the image pool draws random numbers on the host)")
    if getattr(opt, "compile", False):
        raise ValueError("--cuda_graph and --compile are exclusive (compiled modules capture their own graphs)")
    if distributed:
        raise ValueError("--cuda_graph is not supported with torchrun/DDP (gradient hooks run on the host)")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate. A capturable group keeps its rate as a tensor on its parameters' device, updated
    in place (a captured step reads that memory); other groups get a float (also after loading a state saved
    by a capturable run, whose rate then arrives as a CPU tensor)."""
    lr = float(lr)
    for g in optimizer.param_groups:
        cur = g["lr"]
        if g.get("capturable", False) and g["params"]:
            dev = g["params"][0].device
            if isinstance(cur, torch.Tensor) and cur.device == dev:
                cur.fill_(lr)
            else:
                g["lr"] = torch.tensor(lr, device=dev)
        else:
            g["lr"] = lr


def match_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Make every group capturable or not, as this run needs, keeping its rate (a device tensor when capturable,
    else a float). ``load_state_dict`` restores the saving run's flag and rate: a state saved with
    ``--cuda_graph`` resumes without it, and the other way round."""
    for g in optimizer.param_groups:
        lr = g["lr"]
        lr = float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
        g["capturable"] = capturable
        if capturable and g["params"]:
            g["lr"] = torch.tensor(lr, device=g["params"][0].device)
        else:
            g["lr"] = lr


def _signature(batch: dict) -> tuple:
    return tuple(
        (k, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (k, None, None)
        for k, v in sorted(batch.items())
    )


class GraphedTrainStep:
    """``step(batch) -> (loss terms, fake)`` for a :class:`~pix2pixhd_fast.train.Trainer`, as ``train_step``.

    Args:
        trainer: a trainer on a CUDA device whose options pass :func:`check_cuda_graph_options` and whose
            optimizers are capturable (``Trainer`` builds them so under ``--cuda_graph``).
        warmup: eager iterations before the capture (at least 1: the optimizers' state must exist).
    """

    def __init__(self, trainer: Trainer, warmup: int = 3):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        for o in (trainer.optimizer_G, trainer.optimizer_D):
            if not all(g.get("capturable", False) for g in o.param_groups):
                raise ValueError("GraphedTrainStep needs capturable optimizers (build them with capturable=True)")
        self.trainer = trainer
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0  # how many times a graph was captured (a test and the benchmark read it)
        self._key = None
        self._warm = 0
        self._static_in: dict | None = None
        self._static_out = None

    def reset(self) -> None:
        """Drop the graph: the next calls warm up and capture again."""
        self.graph, self._static_in, self._static_out, self._key, self._warm = None, None, None, None, 0

    def _eager_on_side_stream(self, batch: dict):
        side = torch.cuda.Stream(device=self.trainer.device)
        side.wait_stream(torch.cuda.current_stream(self.trainer.device))
        with torch.cuda.stream(side):
            out = self.trainer.eager_step(batch)
        torch.cuda.current_stream(self.trainer.device).wait_stream(side)
        return out

    def capture(self, batch: dict) -> None:
        """Capture one iteration on static copies of ``batch`` (nothing runs yet: :meth:`__call__` replays)."""
        dev = self.trainer.device
        static = {
            k: (v.to(dev, non_blocking=True).clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
        }
        torch.cuda.synchronize(dev)
        t = self.trainer
        t.optimizer_G.zero_grad(set_to_none=True)
        t.optimizer_D.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the data loader's pin-memory thread keeps making CUDA calls while the step is captured.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = t.eager_step(static, autocast_cache=False)
        self.graph, self._static_in, self._static_out = graph, static, out
        self.captures += 1

    def __call__(self, batch: dict):
        t = self.trainer
        # The optimizers themselves (not their ids) are part of the key: new ones must never look like old ones.
        key = (_signature(batch), t.optimizer_G, t.optimizer_D)
        if self._key is None or key[0] != self._key[0] or key[1] is not self._key[1] or key[2] is not self._key[2]:
            self.reset()
            self._key = key
        if self.graph is None and self._warm < self.warmup:
            self._warm += 1
            return self._eager_on_side_stream(batch)
        if self.graph is None:
            self.capture(batch)
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                self._static_in[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return self._static_out
