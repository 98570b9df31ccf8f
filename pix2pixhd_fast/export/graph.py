"""The generator as one inference graph: raw label/instance ids (and features) in, image out.

:class:`InferenceGraph` moves the input encoding (one-hot labels, instance boundaries, feature concat) inside the
module, so a deployed graph (ONNX, TensorRT, a compiled module) takes the maps a data pipeline produces and needs
no Python around it.

The graph runs our fused operators everywhere (eager, torch.compile, torch.export); the ONNX exporters translate
them to standard ONNX operators (:mod:`pix2pixhd_fast.onnx_ops`), so no second formulation is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..models.networks import GlobalGenerator, LocalEnhancer

__all__ = [
    "InferenceGraph",
    "generator_input_channels",
    "generator_size_multiple",
    "model_encoding",
]


# ----------------------------------------------------------------------------------------------------
# Generator introspection


def generator_input_channels(netG: nn.Module) -> int | None:
    """Input channels of a generator: those of its first ``nn.Conv2d`` (None when it has none)."""
    for m in netG.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def generator_size_multiple(netG: nn.Module) -> int:
    """What H and W must be multiples of for ``netG`` to return an image of the input's size.

    ``2**n_downsampling`` for a :class:`GlobalGenerator`, ``2**(n_downsample_global + n_local_enhancers)`` for a
    :class:`LocalEnhancer` (counted from the stride-2 convolutions); 1 for any other module.
    """
    if isinstance(netG, (GlobalGenerator, LocalEnhancer)):
        downs = sum(1 for m in netG.model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2))
        extra = netG.n_local_enhancers if isinstance(netG, LocalEnhancer) else 0
        return 2 ** (downs + extra)
    return 1


def _param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# ----------------------------------------------------------------------------------------------------
# The inference graph


class InferenceGraph(nn.Module):
    """A trained generator with the input encoding inside: ``(label, inst, feat) -> image``.

    Args:
        netG: the generator (:class:`GlobalGenerator`, :class:`LocalEnhancer`, or any module taking the encoded
            ``[N, C, H, W]`` input); kept as a submodule, not copied.
        label_nc: number of label classes; 0 means the label map is already a float image (``--label_nc 0``) and
            is passed through.
        use_instance: the model takes an instance map (no ``--no_instance``); its boundary map is one channel.
        feat_num: channels of the instance feature map (``--instance_feat``/``--label_feat``), 0 for none.
        check: in the fast eager path, verify label range / integral ids (one host sync on CUDA).

    Inputs of :meth:`forward`:
        label: ``Tensor[N, 1, H, W]`` (or ``[N, H, W]``) integer class ids in ``[0, label_nc)`` (int64, int32, any
            integer dtype); with ``label_nc == 0`` a float ``Tensor[N, input_nc, H, W]``.
        inst: ``Tensor[N, 1, H, W]`` (or ``[N, H, W]``) integer instance ids, only when ``use_instance``.
        feat: ``Tensor[N, feat_num, H, W]`` float, only when ``feat_num > 0``.

    Output: ``Tensor[N, output_nc, H, W]`` in [-1, 1] (the generator's dtype). H and W must be multiples of
    :attr:`size_multiple`.

    Raises:
        ValueError: when ``label_nc + use_instance + feat_num`` does not match the generator's input channels.
    """

    def __init__(self, netG: nn.Module, label_nc: int, use_instance: bool, feat_num: int = 0, *, check: bool = True):
        super().__init__()
        if not isinstance(netG, nn.Module):
            raise TypeError(f"netG must be an nn.Module, got {type(netG).__name__}")
        for name, value in (("label_nc", label_nc), ("feat_num", feat_num)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(use_instance, bool):
            raise TypeError(f"use_instance must be a bool, got {type(use_instance).__name__}")
        in_ch = generator_input_channels(netG)
        extra = int(use_instance) + feat_num
        if label_nc > 0:
            label_ch = label_nc
            if in_ch is not None and in_ch != label_nc + extra:
                raise ValueError(
                    f"the generator takes {in_ch} input channels, but label_nc={label_nc} + instance boundary "
                    f"{int(use_instance)} + feat_num={feat_num} = {label_nc + extra}: check label_nc, use_instance "
                    f"(--no_instance) and feat_num"
                )
        else:
            if in_ch is None:
                raise ValueError("label_nc=0 (label is an image) needs a generator with a Conv2d input layer")
            label_ch = in_ch - extra
            if label_ch < 1:
                raise ValueError(
                    f"the generator takes {in_ch} input channels, fewer than instance boundary {int(use_instance)} "
                    f"+ feat_num={feat_num} + at least one label channel"
                )
        self.netG = netG
        self.label_nc = label_nc
        self.label_channels = label_ch
        self.use_instance = use_instance
        self.feat_num = feat_num
        self.check = check
        self.size_multiple = generator_size_multiple(netG)

    @classmethod
    def from_model(cls, model: nn.Module, *, check: bool = True) -> InferenceGraph:
        """The graph of a :class:`~pix2pixhd_fast.models.Pix2PixHDModel` (its ``netG`` and options)."""
        label_nc, use_instance, feat_num = model_encoding(model)
        return cls(model.netG, label_nc, use_instance, feat_num, check=check)

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs :meth:`forward` takes, in order: ``label`` [, ``inst``] [, ``feat``]."""
        return ["label"] + (["inst"] if self.use_instance else []) + (["feat"] if self.feat_num else [])

    def _ids(self, t: torch.Tensor | None, name: str) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"InferenceGraph: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.size(1) != 1:
            raise ValueError(f"InferenceGraph: {name} must have shape [N,1,H,W] or [N,H,W], got {tuple(t.shape)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"InferenceGraph: {name} must hold integer ids (int64, int32, ...), got {t.dtype}")
        return t

    def _validate(
        self, label: torch.Tensor, inst: torch.Tensor | None = None, feat: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.label_nc > 0:
            label = self._ids(label, "label")
        else:
            if not isinstance(label, torch.Tensor) or not label.is_floating_point() or label.dim() != 4:
                raise TypeError("InferenceGraph: with label_nc=0 the label must be a float Tensor[N, C, H, W]")
            if label.size(1) != self.label_channels:
                raise ValueError(
                    f"InferenceGraph: label must have {self.label_channels} channels, got {tuple(label.shape)}"
                )
        n, h, w = label.size(0), label.size(2), label.size(3)
        if self.use_instance:
            if inst is None:
                raise ValueError("InferenceGraph: the model uses instance maps (use_instance=True): pass inst")
            inst = self._ids(inst, "inst")
            if (inst.size(0), inst.size(2), inst.size(3)) != (n, h, w):
                raise ValueError(f"InferenceGraph: inst {tuple(inst.shape)} does not match label {tuple(label.shape)}")
        elif inst is not None:
            raise ValueError("InferenceGraph: the model takes no instance map (use_instance=False), but inst was given")
        if self.feat_num:
            if not isinstance(feat, torch.Tensor) or not feat.is_floating_point():
                raise TypeError(f"InferenceGraph: feat must be a float Tensor[N, {self.feat_num}, H, W] (feat_num>0)")
            if tuple(feat.shape) != (n, self.feat_num, h, w):
                raise ValueError(
                    f"InferenceGraph: feat must have shape {(n, self.feat_num, h, w)}, got {tuple(feat.shape)}"
                )
        elif feat is not None:
            raise ValueError("InferenceGraph: the model takes no feature map (feat_num=0), but feat was given")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"InferenceGraph: H and W must be multiples of {m} for this generator, got {h}x{w}")
        return label, inst, feat

    def encode(
        self, label: torch.Tensor, inst: torch.Tensor | None = None, feat: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The generator's input ``Tensor[N, label_channels + use_instance + feat_num, H, W]`` (generator dtype)."""
        if not torch.jit.is_tracing():
            label, inst, feat = self._validate(label, inst, feat)
        return self._encode(label, inst, feat)

    def _encode(self, label: torch.Tensor, inst: torch.Tensor | None, feat: torch.Tensor | None) -> torch.Tensor:
        dtype = _param_dtype(self.netG)
        # Data checks would sync (CUDA) or raise mid-trace: only in plain eager runs.
        check = self.check and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
        # While the TorchScript exporter traces, sizes are traced tensors the Python argument checks cannot compare
        # (the inputs were validated before tracing): the registered ops are called directly.
        direct = torch.jit.is_tracing() and ops.has_ops()
        if self.label_nc > 0:
            if direct:
                return torch.ops.pix2pixhd_fast.encode_input(label, inst, self.label_nc, feat, dtype, False)
            return ops.encode_input(label, inst, self.label_nc, feat, dtype, check=check)
        parts = [label if label.dtype == dtype else label.to(dtype)]
        if inst is not None:
            edge = torch.ops.pix2pixhd_fast.instance_boundary(inst, dtype) if direct else None
            parts.append(edge if direct else ops.instance_boundary(inst, dtype, check=check))
        if feat is not None:
            parts.append(feat if feat.dtype == dtype else feat.to(dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(
        self, label: torch.Tensor, inst: torch.Tensor | None = None, feat: torch.Tensor | None = None
    ) -> torch.Tensor:
        if torch.jit.is_tracing():
            # Sizes are traced values here: comparing them would bake the example's shape into the graph
            # (export_onnx validates its example inputs before tracing).
            if label.dim() == 3:
                label = label.unsqueeze(1)
            if inst is not None and inst.dim() == 3:
                inst = inst.unsqueeze(1)
        else:
            label, inst, feat = self._validate(label, inst, feat)
        return self.netG(self._encode(label, inst, feat))

    def extra_repr(self) -> str:
        return (
            f"label_nc={self.label_nc}, use_instance={self.use_instance}, feat_num={self.feat_num}, "
            f"size_multiple={self.size_multiple}"
        )


def model_encoding(model: nn.Module) -> tuple[int, bool, int]:
    """``(label_nc, use_instance, feat_num)`` of a Pix2PixHDModel-like object (``netG`` + reference ``opt``)."""
    opt = getattr(model, "opt", None)
    if opt is None or not hasattr(model, "netG"):
        raise TypeError(f"expected a Pix2PixHDModel (with .netG and .opt), got {type(model).__name__}")
    use_features = bool(getattr(opt, "use_features", False))
    return int(opt.label_nc), not bool(opt.no_instance), int(opt.feat_num) if use_features else 0
