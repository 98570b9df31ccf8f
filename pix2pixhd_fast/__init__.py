"""pix2pixhd_fast: a fast pix2pixHD with custom C++/CUDA operators.

Operators: :mod:`pix2pixhd_fast.ops` (functional), :mod:`pix2pixhd_fast.nn` (drop-in modules),
:mod:`pix2pixhd_fast.reference` (pure-PyTorch oracle and baselines).
"""

from . import ops, reference
from ._lib import build_info

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "reference", "__version__"]
