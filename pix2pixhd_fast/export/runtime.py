"""Running an exported generator with onnxruntime (CPU by default): numpy or torch CPU tensors in and out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .onnx import onnx_metadata

__all__ = ["OnnxRuntimeGenerator"]

_ORT_TO_NUMPY = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


class OnnxRuntimeGenerator:
    """An exported generator (:func:`~pix2pixhd_fast.export.export_onnx`) run by onnxruntime.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
        check: verify label values lie in ``[0, label_nc)`` before running (the graph itself cannot raise and
            would give an all-zero one-hot).
        num_threads: intra-op threads (None: onnxruntime's default).

    Call: ``gen(label, inst=None, feat=None)`` with numpy arrays or torch CPU tensors:
        label: ``[N, 1, H, W]`` or ``[N, H, W]`` integer class ids (any integer dtype: cast to the graph's
            int64/int32), or float ``[N, C, H, W]`` for a ``label_nc=0`` graph.
        inst: ``[N, 1, H, W]`` or ``[N, H, W]`` integer instance ids, when the graph takes them.
        feat: ``[N, feat_num, H, W]`` float, when the graph takes them.
    Returns ``[N, output_nc, H, W]`` float32 in [-1, 1]: a torch tensor when ``label`` is one, else numpy.

    Attributes: ``input_names``, ``label_nc`` (None when the file has no pix2pixhd_fast metadata),
    ``use_instance``, ``feat_num``, ``size_multiple``, ``session`` (the onnxruntime InferenceSession).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        check: bool = True,
        num_threads: int | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:  # a declared dependency, but keep the message useful in slim installs
            raise ImportError("OnnxRuntimeGenerator needs onnxruntime: pip install onnxruntime") from e
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"OnnxRuntimeGenerator: path must be a str or os.PathLike, got {type(path).__name__}")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"OnnxRuntimeGenerator: no ONNX file {self.path!r}")
        options = ort.SessionOptions()
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
                raise ValueError(f"OnnxRuntimeGenerator: num_threads must be a positive int, got {num_threads!r}")
            options.intra_op_num_threads = num_threads
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(self.path, options, providers=providers)
        self.check = check

        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        if "label" not in self._inputs:
            raise ValueError(f"OnnxRuntimeGenerator: {self.path!r} has no 'label' input (inputs {self.input_names})")
        self.metadata = onnx_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.label_nc = int(self.metadata["label_nc"]) if "label_nc" in self.metadata else None
        self.use_instance = "inst" in self._inputs
        self.feat_num = self._static_channels("feat") if "feat" in self._inputs else 0
        self.size_multiple = int(self.metadata.get("size_multiple", 1))

    def _static_channels(self, name: str) -> int | None:
        dim = self._inputs[name].shape[1]
        return dim if isinstance(dim, int) else None

    def _dtype(self, name: str) -> Any:
        t = self._inputs[name].type
        if t not in _ORT_TO_NUMPY:
            raise TypeError(f"OnnxRuntimeGenerator: unsupported input type {t} of {name!r}")
        return _ORT_TO_NUMPY[t]

    @staticmethod
    def _to_numpy(x: Any, name: str) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            if x.device.type != "cpu":
                raise ValueError(f"OnnxRuntimeGenerator: {name} is on {x.device}; pass CPU tensors (x.cpu())")
            return x.detach().numpy()
        if isinstance(x, np.ndarray):
            return x
        raise TypeError(f"OnnxRuntimeGenerator: {name} must be a numpy array or a torch tensor, got {type(x).__name__}")

    def _ids(self, x: Any, name: str) -> np.ndarray:
        a = self._to_numpy(x, name)
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4 or a.shape[1] != 1:
            raise ValueError(f"OnnxRuntimeGenerator: {name} must have shape [N,1,H,W] or [N,H,W], got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"OnnxRuntimeGenerator: {name} must hold integer ids, got dtype {a.dtype}")
        want = self._dtype(name)
        if a.dtype != want and a.size:
            info = np.iinfo(want)
            if a.min() < info.min or a.max() > info.max:
                raise ValueError(f"OnnxRuntimeGenerator: {name} holds ids outside the graph's {np.dtype(want)} range")
        return np.ascontiguousarray(a, dtype=want)

    def __call__(self, label: Any, inst: Any = None, feat: Any = None) -> np.ndarray | torch.Tensor:
        as_torch = isinstance(label, torch.Tensor)
        feeds: dict[str, np.ndarray] = {}
        if self._dtype("label") in (np.int64, np.int32):
            lab = self._ids(label, "label")
            if self.check and self.label_nc is not None and lab.size:
                lo, hi = int(lab.min()), int(lab.max())
                if lo < 0 or hi >= self.label_nc:
                    raise ValueError(
                        f"OnnxRuntimeGenerator: label values must lie in [0, label_nc={self.label_nc}), "
                        f"got min {lo} and max {hi}"
                    )
        else:
            lab = self._to_numpy(label, "label")
            if lab.ndim != 4 or not np.issubdtype(lab.dtype, np.floating):
                raise TypeError(
                    f"OnnxRuntimeGenerator: label must be a float [N,C,H,W] array, got {lab.dtype} {lab.shape}"
                )
            lab = np.ascontiguousarray(lab, dtype=self._dtype("label"))
        feeds["label"] = lab
        n, _, h, w = lab.shape
        if self.use_instance:
            if inst is None:
                raise ValueError("OnnxRuntimeGenerator: this graph takes an instance map: pass inst")
            feeds["inst"] = self._ids(inst, "inst")
            if feeds["inst"].shape != (n, 1, h, w):
                raise ValueError(f"OnnxRuntimeGenerator: inst {feeds['inst'].shape} does not match label {lab.shape}")
        elif inst is not None:
            raise ValueError("OnnxRuntimeGenerator: this graph takes no instance map, but inst was given")
        if "feat" in self._inputs:
            if feat is None:
                raise ValueError(f"OnnxRuntimeGenerator: this graph takes a feature map [N, {self.feat_num}, H, W]")
            f = self._to_numpy(feat, "feat")
            if not np.issubdtype(f.dtype, np.floating):
                raise TypeError(f"OnnxRuntimeGenerator: feat must be float, got {f.dtype}")
            if f.ndim != 4 or (f.shape[0], f.shape[2], f.shape[3]) != (n, h, w) or f.shape[1] != self.feat_num:
                raise ValueError(
                    f"OnnxRuntimeGenerator: feat must have shape {(n, self.feat_num, h, w)}, got {f.shape}"
                )
            feeds["feat"] = np.ascontiguousarray(f, dtype=self._dtype("feat"))
        elif feat is not None:
            raise ValueError("OnnxRuntimeGenerator: this graph takes no feature map, but feat was given")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"OnnxRuntimeGenerator: H and W must be multiples of {m} for this generator, got {h}x{w}")
        out = self.run(feeds)
        return torch.from_numpy(out) if as_torch else out

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the session on prepared inputs (``{name: array}`` in the graph's dtypes); returns the image."""
        return self.session.run([self.output_name], dict(feeds))[0]

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeGenerator({self.path!r}, inputs={self.input_names}, label_nc={self.label_nc}, "
            f"providers={self.session.get_providers()})"
        )
