"""Per-call cost of the fused norm's autograd: C++ autograd kernel vs a Python autograd.Function over the same kernels.

At the small layers of a pix2pixHD step (a 1024x512 global generator has ~25 norm layers, most of them at 1/8 or
1/16 of the image size) an eager call costs more host time than GPU time, so host overhead per call matters. The
operators' autograd moved from a Python formula (``torch.library.register_autograd``) to C++
(``csrc/autograd/autograd.cpp``); this script measures, in one process, the forward+backward of:

- ``cpp``:    ``ops.instance_norm_act`` (C++ Autograd kernel; what the package does now),
- ``python``: a ``torch.autograd.Function`` calling the same forward/backward ops (the old design's Python layer;
              lighter than ``register_autograd``'s wrapper, so the difference is a lower bound of the saving),
- ``nn``:     ``nn.InstanceNorm2d`` + ``nn.ReLU`` (PyTorch's own).

    python benchmarks/call_overhead.py --device cuda --json out.json

Per-call samples from benchmarks/timing.py (interleaved rounds, at least ``--reps``, until the ratios' 95% intervals
are within +-5%; CUDA events on a GPU, where at these host-bound sizes a call's device span is its launch time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # timing.py beside this file
from timing import measure_interleaved, ratio_ci  # noqa: E402

from pix2pixhd_fast import ops  # noqa: E402


class _PyNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slope):
        y, mean, rstd = torch.ops.pix2pixhd_fast.instance_norm_act(x, None, None, 1e-5, slope)
        ctx.save_for_backward(x, mean, rstd)
        ctx.slope = slope
        return y

    @staticmethod
    def backward(ctx, gy):
        x, mean, rstd = ctx.saved_tensors
        gx, _, _ = torch.ops.pix2pixhd_fast.instance_norm_act_backward(
            gy, x, mean, rstd, None, None, ctx.slope, [True, False, False]
        )
        return gx, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = args.device
    shapes = [(1, 16, 8, 8), (1, 1024, 32, 64), (1, 64, 512, 1024)]
    rows = []
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            gy = torch.randn_like(x)
            ref = nn.Sequential(nn.InstanceNorm2d(shape[1]), nn.ReLU()).to(dev)

            def cpp(x=x, gy=gy):
                ops.instance_norm_act(x, negative_slope=0.0).backward(gy)

            def python(x=x, gy=gy):
                _PyNormAct.apply(x, 0.0).backward(gy)

            def native(x=x, gy=gy, ref=ref):
                ref(x).backward(gy)

            # Interleaved rounds (benchmarks/timing.py), so that machine noise hits the three alike.
            t = measure_interleaved(
                {"cpp": cpp, "python": python, "nn": native},
                device=dev,
                min_rounds=args.reps,
                max_rounds=max(args.reps, 400),
                max_seconds=4.0,
                warmup=5,
            )
            med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
            ratio, lo, hi = ratio_ci(t["nn"], t["cpp"])
            row = {
                "shape": list(shape),
                "dtype": str(dtype).replace("torch.", ""),
                "us_cpp": med["cpp"],
                "us_python": med["python"],
                "us_nn": med["nn"],
                "saved_us": med["python"] - med["cpp"],
                "ratio_vs_nn": ratio,
                "ratio_vs_nn_ci": [lo, hi],
                "ratio_vs_python": ratio_ci(t["python"], t["cpp"])[0],
                "calls": len(t["cpp"]),
            }
            rows.append(row)
            print(
                f"{'x'.join(map(str, shape)):>14} {row['dtype']:>8}  cpp {med['cpp']:8.1f} us"
                f"  python {med['python']:8.1f} us  nn {med['nn']:8.1f} us"
                f"  saved {row['saved_us']:6.1f} us  vs nn {row['ratio_vs_nn']:.2f}x"
            )
    meta = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "layout": "channels_last, fwd+bwd, x requires grad, no affine",
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
