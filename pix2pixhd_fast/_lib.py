"""Loading of the compiled operator library (pix2pixhd_fast/_C*.so).

The package exists for its kernels: the pure-PyTorch references are 10-100x slower, so a library that is missing
or fails to load raises ImportError (with how to build it) when the package is imported, rather than leaving a
slow path behind a warning. The references run instead only on request:

- ``P2PHD_DISABLE_EXT=1``: skip the library on purpose (tests of the references, debugging); no warning.
- ``P2PHD_ALLOW_FALLBACK=1``: use the library when it loads, else the references, with a warning.

``P2PHD_LIB=/path/to/lib.so`` loads another build instead (development builds, C++ test builds).
"""

from __future__ import annotations

import glob
import json
import os
import warnings

import torch

_loaded: bool | None = None
_error: str | None = None

_HOW_TO_BUILD = (
    "Build it from the source checkout with `make install`, or into your own environment (torch installed, a C++ "
    "compiler, nvcc for the CUDA kernels) with `pip install --no-build-isolation -e .`. To run the pure-PyTorch "
    "reference ops instead (10-100x slower), set P2PHD_ALLOW_FALLBACK=1."
)


def _env_on(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _try_load() -> tuple[bool, str | None]:
    """Load the library at P2PHD_LIB or beside this file; (loaded, why not)."""
    path = os.environ.get("P2PHD_LIB")
    if path and not os.path.isfile(path):
        return False, f"P2PHD_LIB={path} is not a file"
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        cands = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
        if not cands:
            return False, f"the compiled operator library (_C*.so) is not in {here}"
        path = cands[0]
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:  # e.g. built against another torch version, or a wrong P2PHD_LIB
        return False, f"could not load {path}: {e} (built for another torch? rebuild it)"
    return True, None


def load() -> bool:
    """Load the library once; return whether its ops are registered under torch.ops.pix2pixhd_fast.

    False only where the references were requested (P2PHD_DISABLE_EXT=1 or P2PHD_ALLOW_FALLBACK=1).

    Raises:
        ImportError: the library did not load and the references were not requested; says how to build it.
    """
    global _loaded, _error
    if _loaded is None:
        if _env_on("P2PHD_DISABLE_EXT"):
            _loaded, _error = False, "disabled by P2PHD_DISABLE_EXT=1"
        else:
            _loaded, _error = _try_load()
            if not _loaded and _env_on("P2PHD_ALLOW_FALLBACK"):
                warnings.warn(
                    f"pix2pixhd_fast: {_error}; P2PHD_ALLOW_FALLBACK=1: using the pure-PyTorch reference ops "
                    "(10-100x slower)",
                    stacklevel=2,
                )
    # Checked on every call, not cached: a process may set the variable and import the package again.
    if not _loaded and not (_env_on("P2PHD_DISABLE_EXT") or _env_on("P2PHD_ALLOW_FALLBACK")):
        raise ImportError(f"pix2pixhd_fast: {_error}. {_HOW_TO_BUILD}")
    return _loaded


def build_info() -> dict:
    """What is available: whether the C++ ops loaded, CUDA kernels and their archs, torch/CUDA versions.

    ``cuda_kernels`` and ``cuda_archs`` come from the build record compiled into the library (what setup.py or
    CMake built), not from the environment at run time.

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
