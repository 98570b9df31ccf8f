"""The generator through ``torch.compile`` (inductor), with CUDA graphs for fixed shapes on the GPU.

:func:`compile_generator` compiles an :class:`~pix2pixhd_fast.export.InferenceGraph` (or a Pix2PixHDModel's
generator with its input encoding, or any generator module) as one graph (``fullgraph=True``): our custom operators
(``encode_input``, ``instance_norm_act``) have fake kernels, so dynamo traces through them and inductor fuses the
convolutions' neighbours around them; the eager-only data checks of :class:`InferenceGraph` are skipped while
compiling (they would break the graph or sync the GPU).

Modes (``torch.compile``'s names in brackets):

============================  =====================================  =========================================
``mode`` / device             CUDA, ``cuda_graphs=True``             CPU, or CUDA with ``cuda_graphs=False``
============================  =====================================  =========================================
``"default"``                 ``"reduce-overhead"``                  ``"default"``
``"max-autotune"``            ``"max-autotune"`` (Triton/GEMM        ``"max-autotune-no-cudagraphs"``
                              autotuning + CUDA graphs)
============================  =====================================  =========================================

CUDA graphs replay the whole generator as one launch per input shape (``dynamic=False``: each new shape compiles
and records once), which removes the per-kernel launch cost that dominates at small sizes. A replayed graph writes
its output into the same memory every time: :class:`CompiledGenerator` marks a new step before each call and, unless
``clone_output=False``, returns a copy, so an output stays valid after the next call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .graph import InferenceGraph

__all__ = ["COMPILE_MODES", "CompiledGenerator", "compile_generator", "torch_compile_mode"]

COMPILE_MODES = ("default", "max-autotune")


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def torch_compile_mode(mode: str, device: torch.device | str, cuda_graphs: bool) -> str:
    """The ``torch.compile(mode=...)`` string for our ``mode`` on ``device`` (see the module's table)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    graphs = cuda_graphs and torch.device(device).type == "cuda"
    if mode == "default":
        return "reduce-overhead" if graphs else "default"
    return "max-autotune" if graphs else "max-autotune-no-cudagraphs"


class CompiledGenerator:
    """A compiled generator: call it as the module it wraps (``(label, inst, feat) -> image`` for a graph).

    Attributes: ``module`` (the eager module), ``compiled`` (what ``torch.compile`` returned), ``mode`` (the
    ``torch.compile`` mode used), ``cuda_graphs`` (whether CUDA graphs are recorded), ``device``.
    Calls run under ``torch.no_grad()`` (inference: no autograd graph, and CUDA graphs need it).
    """

    def __init__(self, module: nn.Module, compiled: Any, mode: str, cuda_graphs: bool, clone_output: bool):
        self.module = module
        self.compiled = compiled
        self.mode = mode
        self.cuda_graphs = cuda_graphs
        self.clone_output = clone_output
        self.device = _device_of(module)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.cuda_graphs:
            # A new inference step: the previous replay's outputs may be overwritten from here on.
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            out = self.compiled(*args, **kwargs)
        return out.clone() if self.cuda_graphs and self.clone_output else out

    def __repr__(self) -> str:
        return f"CompiledGenerator(mode={self.mode!r}, cuda_graphs={self.cuda_graphs}, device={self.device})"


def compile_generator(
    graph: nn.Module,
    *,
    mode: str = "default",
    cuda_graphs: bool = True,
    dynamic: bool | None = False,
    fullgraph: bool = True,
    clone_output: bool = True,
) -> CompiledGenerator:
    """Compile a generator for inference with inductor.

    Args:
        graph: an :class:`InferenceGraph` (``(label, [inst], [feat]) -> image``), a Pix2PixHDModel (its
            ``InferenceGraph.from_model``), or any generator module (``Tensor[N, C, H, W] -> image``). Put it in eval
            mode on its device first; its parameters are shared, not copied.
        mode: ``"default"`` or ``"max-autotune"`` (longer compile, autotuned kernels).
        cuda_graphs: on CUDA, record CUDA graphs (fixed shapes); ignored on the CPU.
        dynamic: ``torch.compile``'s ``dynamic`` (default False: one specialised graph per input shape, as CUDA
            graphs need; None lets torch decide after a shape change).
        fullgraph: fail instead of falling back to eager on a graph break (our operators never cause one).
        clone_output: with CUDA graphs, return a copy of the output (else the output is only valid until the next
            call).

    Returns:
        A :class:`CompiledGenerator`; compilation happens on the first call (and per new shape).

    Raises:
        TypeError: ``graph`` is not a module. ValueError: unknown mode.
    """
    if hasattr(graph, "netG") and hasattr(graph, "opt") and not isinstance(graph, InferenceGraph):
        graph = InferenceGraph.from_model(graph, check=False)
    if not isinstance(graph, nn.Module):
        raise TypeError(
            f"compile_generator: expected an nn.Module (InferenceGraph or generator), got {type(graph).__name__}"
        )
    device = _device_of(graph)
    compile_mode = torch_compile_mode(mode, device, cuda_graphs)
    graphs = compile_mode in ("reduce-overhead", "max-autotune")
    compiled = torch.compile(graph, mode=compile_mode, fullgraph=fullgraph, dynamic=dynamic)
    return CompiledGenerator(graph, compiled, compile_mode, graphs, clone_output)
