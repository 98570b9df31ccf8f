"""Scaling benchmarks: op time vs resolution, and instance_avg_pool time vs the number of instances.

    python benchmarks/run_scaling.py --device cpu --json results/cpu-2core-scaling.json
    python benchmarks/run_scaling.py --device cuda --json gpu_scaling.json --budget-s 50
    python benchmarks/run_scaling.py --tiny                     # smoke run (seconds)

Two series, each case measured exactly as run_ops.py measures it (warm-up, fresh random inputs from a seed,
benchmarks/timing.py's interleaved rounds; CUDA events per call on the GPU, plus the CUDA-graph replayed kernel),
without the torch.compile baselines (one compilation per resolution would dominate the run):

1. Resolution: the four ops, fast vs their baselines, at 256x512, 512x1024 and 1024x2048 (HxW; the CPU stops
   at 512x1024 by default: the reference loop and nn.InstanceNorm2d take seconds beyond): instance_norm_relu
   fwd bf16 channels-last (1x64xHxW), instance_avg_pool fwd+bwd fp32 (1x3xHxW, street scenes of
   ~20 instances), instance_boundary (int32 ids), encode_input (35 labels + edges, fp32 NCHW). Each op should scale
   with the pixels (bytes); the ratio to its baseline should hold or grow.
2. Instance count: instance_avg_pool at a fixed size (CPU 256x512, GPU 1024x2048) with exactly 1, 10, 100 and
   1000 instances (``cases.tiled_instances``), ours vs the reference per-id loop vs scatter_reduce(mean). The
   loop grows linearly in the number of ids; the series shows how much ours grows.

The instance-count series runs first, then resolution from small to large;
``--budget-s`` starts no new case after that many seconds (a capped GPU step keeps what it measured). The JSON
is rewritten after every case. ``kind: "scaling"`` marks the file for benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):  # run as a script from anywhere, without installing the package
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from cases import (  # noqa: E402
    ENCODE_VARIANTS,
    Case,
    boundary_cases,
    encode_cases,
    norm_cases,
    pool_cases,
    pool_count_cases,
    register_size,
)
from run_ops import _loadavg, add_floor, machine_info, measure_peak_bandwidth, run_case  # noqa: E402
from run_train import CpuLoad  # noqa: E402
from tables import fmt_ratio, fmt_t  # noqa: E402
from timing import steady_cpu_allocator  # noqa: E402

from pix2pixhd_fast.utils.files import atomic_write  # noqa: E402

RESOLUTIONS = {"cpu": "256x512,512x1024", "cuda": "256x512,512x1024,1024x2048", "tiny": "16x32,24x40,32x48"}
COUNT_SIZE = {"cpu": "256x512", "cuda": "1024x2048", "tiny": "24x32"}
COUNTS = {"normal": "1,10,100,1000", "tiny": "1,3,10"}
# One representative variant per op (the training configuration where it matters).
SERIES = ("instance_norm_relu fwd bf16 CL", "instance_avg_pool fwd+bwd fp32", "instance_boundary", "encode_input fp32")


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 256x512, got {text!r}") from None
    if h < 2 or w < 2:
        raise argparse.ArgumentTypeError(f"HEIGHTxWIDTH must be at least 2x2, got {text!r}")
    return h, w


def _hw_list(text: str) -> list[tuple[int, int]]:
    out = [_hw(t.strip()) for t in text.split(",") if t.strip()]
    if not out:
        raise argparse.ArgumentTypeError("empty list of sizes")
    return out


def _int_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"instance counts must be >= 1, got {text!r}")
    return out


def resolution_cases(device: str, h: int, w: int) -> list[Case]:
    """The four ops' representative cases at ``h`` x ``w`` (see SERIES), without targets (those belong to
    the sizes of targets.toml)."""
    key = register_size(f"scaling-{h}x{w}", h, w)
    cases = (
        norm_cases(device, key, (torch.bfloat16,), (True,), ("fwd",), compiled=False)
        + pool_cases(device, key, (torch.float32,), ("fwd+bwd",), compiled=False)
        + boundary_cases(device, key, compiled=False)
        + encode_cases(device, key, variants=ENCODE_VARIANTS[:1], compiled=False)
    )
    for c in cases:
        c.targets, c.floor_max, c.target_text = {}, None, ""
        c.variant += f" {h}x{w}"
        c.info.update({"series": "resolution", "height": h, "width": w})
    return cases


def count_cases(device: str, h: int, w: int, counts: list[int], pass_: str) -> list[Case]:
    """instance_avg_pool at ``h`` x ``w`` with exactly ``k`` instances for each ``k`` in ``counts``."""
    key = register_size(f"scaling-{h}x{w}", h, w)
    cases = pool_count_cases(device, key, counts, torch.float32, pass_)
    for c in cases:
        c.info.update({"series": "instances", "height": h, "width": w})
    return cases


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes and budgets: a smoke run")
    ap.add_argument("--resolutions", type=_hw_list, default=None, help="HxW list (default: CPU up to 512x1024)")
    ap.add_argument("--count-size", type=_hw, default=None, help="HxW of the instance-count series")
    ap.add_argument("--counts", type=_int_list, default=None, help="instance counts (default 1,10,100,1000)")
    ap.add_argument("--count-pass", choices=["fwd", "fwd+bwd"], default="fwd", help="pass of the count series")
    ap.add_argument("--series", choices=["all", "resolution", "instances"], default="all")
    ap.add_argument("--json", default=None, help="write the results here (rewritten after every case)")
    ap.add_argument("--max-seconds", type=float, default=None, help="timed seconds per case at most")
    ap.add_argument("--slow-reps", type=int, default=2, help="reps of the reference loop (after 1 warm-up)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new case after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    size_key = "tiny" if args.tiny else args.device
    args.resolutions = args.resolutions or _hw_list(RESOLUTIONS[size_key])
    args.count_size = args.count_size or _hw(COUNT_SIZE[size_key])
    args.counts = args.counts or _int_list(COUNTS["tiny" if args.tiny else "normal"])
    h, w = args.count_size
    if max(args.counts) > h * w:
        ap.error(f"--counts: {max(args.counts)} instances do not fit in {h}x{w} pixels")
    if args.max_seconds is None:
        args.max_seconds = 0.3 if args.tiny else (1.5 if args.device == "cuda" else 4.0)
    if args.slow_reps < 1:
        ap.error("--slow-reps must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run_scaling.py: --device cuda but torch sees no CUDA GPU")
    if device == "cpu":
        steady_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sizes_mode = "tiny" if args.tiny else ("gpu" if device == "cuda" else "cpu")

    todo: list[tuple[str, Case]] = []
    if args.series in ("all", "instances"):
        todo += [("instances", c) for c in count_cases(device, *args.count_size, args.counts, args.count_pass)]
    if args.series in ("all", "resolution"):
        for h, w in sorted(args.resolutions, key=lambda hw: hw[0] * hw[1]):
            todo += [("resolution", c) for c in resolution_cases(device, h, w)]

    res: dict[str, Any] = {
        "kind": "scaling",
        "settings": {
            "device": device,
            "tiny": args.tiny,
            "resolutions": [f"{h}x{w}" for h, w in args.resolutions],
            "count_size": "{}x{}".format(*args.count_size),
            "counts": args.counts,
            "count_pass": args.count_pass,
            "series": list(SERIES),
            "max_seconds": args.max_seconds,
            "slow_reps": args.slow_reps,
            "case_budget_s": args.budget_s,
            "seed": args.seed,
        },
        "machine": machine_info(device),
        "instances": [],
        "resolution": [],
        "errors": [],
        "skipped": [],
        "complete": False,
    }
    peak_bytes = {"tiny": 32 << 20, "cpu": 256 << 20, "gpu": 1 << 30}[sizes_mode]
    res["peak"] = measure_peak_bandwidth(device, peak_bytes)
    load = CpuLoad()
    t_all = time.perf_counter()
    print(
        f"scaling on {res['machine'].get('gpu') or res['machine']['cpu']} ({device}, {torch.get_num_threads()} "
        f"threads, load {res['machine']['loadavg_start']}): {len(todo)} cases",
        flush=True,
    )
    for series, case in todo:
        if args.budget_s is not None and time.perf_counter() - t_all > args.budget_s:
            res["skipped"].append(case.id)
            print(f"  {case.id:<58} SKIPPED (--budget-s {args.budget_s:g} s spent)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            row = run_case(case, device, sizes_mode, args.slow_reps, args.seed, False, False, args.max_seconds)
        except Exception as e:  # report, go on with the next case
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(f"  {case.id:<58} FAILED: {msg}", flush=True)
            res["errors"].append({"id": case.id, "series": series, "error": msg})
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        else:
            add_floor(row, res["peak"]["gbps"])
            row["series"] = series
            res[series].append(row)
            ratios = ", ".join(f"{b['name']} {fmt_ratio(b['ratio'])}" for b in row["baselines"])
            print(
                f"  {case.id:<58} fast {fmt_t(row['fast_s']):>10}  {ratios}  ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        _write(res, args.json, load, t_all)
    res["complete"] = True
    _write(res, args.json, load, t_all)
    ld = res["load"]
    others = "-" if ld["others_cores"] is None else f"{ld['others_cores']:.2f}"
    print(
        f"done in {res['total_s']:.0f} s; this process used {ld['own_cores']:.2f} cores, other processes {others};"
        f" load average {res['machine']['loadavg_start']} -> {res['machine']['loadavg_end']}",
        flush=True,
    )
    return res


def _write(res: dict, path: str | None, load: CpuLoad, t_all: float) -> None:
    res["total_s"] = time.perf_counter() - t_all
    res["load"] = load.summary()
    res["machine"]["loadavg_end"] = _loadavg()
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
