"""Loading of the compiled operator library (pix2pixhd_fast/_C*.so).

``P2PHD_LIB=/path/to/lib.so`` loads another build instead (development builds, C++ test builds).
``P2PHD_DISABLE_EXT=1`` skips the library: every op then runs its pure-PyTorch reference.
"""

from __future__ import annotations

import glob
import json
import os
import warnings

import torch

_loaded: bool | None = None
_error: str | None = None


def load() -> bool:
    """Load the library once; return whether its ops are registered under torch.ops.pix2pixhd_fast."""
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    if os.environ.get("P2PHD_DISABLE_EXT", "0") == "1":
        _loaded, _error = False, "disabled by P2PHD_DISABLE_EXT=1"
        return False
    path = os.environ.get("P2PHD_LIB")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        cands = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
        path = cands[0] if cands else None
    if path is None:
        _loaded, _error = False, "compiled library pix2pixhd_fast/_C*.so not found (run `make install`)"
        warnings.warn(f"pix2pixhd_fast: {_error}; using the pure-PyTorch reference ops", stacklevel=2)
        return False
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:  # e.g. built against another torch
        _loaded, _error = False, f"could not load {path}: {e}"
        warnings.warn(f"pix2pixhd_fast: {_error}; using the pure-PyTorch reference ops", stacklevel=2)
        return False
    _loaded, _error = True, None
    return True


def build_info() -> dict:
    """What is available: whether the C++ ops loaded, CUDA kernels and their archs, torch/CUDA versions.

    Returns a dict with keys ``ops_loaded``, ``error``, ``cuda_kernels``, ``cuda_archs``,
    ``built_cuda_version``, ``built_torch_version``, ``torch_version``, ``torch_cuda``, ``cuda_available``.
    """
    info = {
        "ops_loaded": load(),
        "error": _error,
        "cuda_kernels": False,
        "cuda_archs": [],
        "built_cuda_version": None,
        "built_torch_version": None,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if info["ops_loaded"]:
        built = json.loads(torch.ops.pix2pixhd_fast.build_info())
        info["cuda_kernels"] = bool(built["cuda"])
        info["cuda_archs"] = [a for a in built["cuda_archs"].replace(" ", ";").split(";") if a]
        info["built_cuda_version"] = built["cuda_version"] or None
        info["built_torch_version"] = built["torch_version"]
    return info
