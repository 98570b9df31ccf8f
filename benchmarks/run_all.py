"""`make bench`: every benchmark suite on this machine, then the report.

    python benchmarks/run_all.py                          # CPU: all steps, results in benchmarks/results/
    python benchmarks/run_all.py --device cuda            # GPU sizes; machine name from the GPU (nvidia-h100)
    python benchmarks/run_all.py --skip train,pytest      # some steps only
    python benchmarks/run_all.py --only report            # regenerate REPORT.md, plots and README section

Steps, each in its own process (one that fails or crashes does not stop the next), with ``<m>`` the machine name
(``cpu-<cores>core`` on the CPU, the GPU's name on CUDA, or ``--machine``):

  pytest    pytest-benchmark suite benchmarks/test_bench_ops.py   -> results/<m>-pytest-benchmark.json
  ops       run_ops.py: operator ratios                           -> results/<m>.json, <m>.md
  train     run_train.py --profile: training step, G/D, profile   -> results/<m>-train.json, <m>-train.md
  infer     run_infer.py: generator latency per inference backend -> results/<m>-infer.json, <m>-infer.md
  scaling   run_scaling.py: time vs resolution and instance count -> results/<m>-scaling.json
  overhead  call_overhead.py (CUDA only: its 1x64x512x1024 rows take minutes on a small CPU)
            -> results/<m>-call-overhead.json
  report    report.py over every file in results/ -> benchmarks/REPORT.md, benchmarks/plots/, README.md section

On the 2-core development machine the whole run takes about 6 minutes idle and 12 when other jobs hold the cores
(measured at a load average of 4-5: pytest 2.4, ops 1.9, scaling 3.0, report 0.1 minutes, train ~3; infer 0.8 at
--threads 1 and 1.5 at 2 threads, at a load average of 3.5, about 20 s of it torch.compile's first call); see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS = ("pytest", "ops", "train", "infer", "scaling", "overhead", "report")


def machine_slug(device: str) -> str:
    """``cpu-<n>core`` on the CPU; on CUDA the GPU's name without memory/form-factor words (``nvidia-h100``)."""
    if device != "cuda":
        return f"cpu-{os.cpu_count()}core"
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("run_all.py: --device cuda but torch sees no CUDA GPU")
    words = re.split(r"[^a-z0-9]+", torch.cuda.get_device_name(0).lower())
    drop = re.compile(r"^(\d+gb|hbm\d*e?|sxm\d*|pcie|nvl\d*)$")
    return "-".join(w for w in words if w and not drop.match(w)) or "cuda"


def _steps(text: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(out) - set(STEPS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/run_all.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--machine", default=None, help="results name (default: cpu-<cores>core or the GPU's name)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"), help="folder of the results files")
    ap.add_argument("--skip", type=_steps, default=[], help=f"comma-separated steps to leave out ({','.join(STEPS)})")
    ap.add_argument("--only", type=_steps, default=None, help="comma-separated steps to run (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for ops/train/infer/scaling")
    ap.add_argument("--pytest-max-time", type=float, default=0.5, help="pytest-benchmark seconds per benchmark")
    ap.add_argument("--report", default=os.path.join(HERE, "REPORT.md"), help="the report to write")
    ap.add_argument("--plots", default=os.path.join(HERE, "plots"), help="folder for the report's plots")
    ap.add_argument("--no-plots", action="store_true", help="report without plots")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="README whose perf section to update")
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.pytest_max_time <= 0:
        ap.error("--pytest-max-time must be > 0")
    wanted = args.only if args.only is not None else list(STEPS)
    args.steps = [s for s in STEPS if s in wanted and s not in args.skip]
    if "overhead" in args.steps and args.device != "cuda" and args.only is None:
        args.steps.remove("overhead")  # CPU: minutes for its largest shape, and it measures host cost on a GPU
    return args


def commands(args: argparse.Namespace, machine: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(step, argv, extra environment) for every selected step."""
    py, res = sys.executable, args.results
    out = os.path.join(res, machine)
    threads = ["--threads", str(args.threads)] if args.threads else []
    table = {
        "pytest": (
            [py, "-m", "pytest", os.path.join(HERE, "test_bench_ops.py"), "-q", "-p", "no:cacheprovider"]
            + ["--rootdir", ROOT, "-o", "addopts=", "--benchmark-only", f"--benchmark-json={out}-pytest-benchmark.json"]
            + [f"--benchmark-max-time={args.pytest_max_time:g}", "--benchmark-columns=median,iqr,rounds"],
            {"P2PHD_BENCH_DEVICE": args.device},
        ),
        "ops": (
            [py, os.path.join(HERE, "run_ops.py"), "--device", args.device, "--json", f"{out}.json"]
            + ["--markdown", f"{out}.md", *threads],
            {},
        ),
        "train": (
            [
                py,
                os.path.join(HERE, "run_train.py"),
                "--device",
                args.device,
                "--profile",
                "--json",
                f"{out}-train.json",
            ]
            + ["--markdown", f"{out}-train.md", *threads],
            {},
        ),
        "infer": (
            [py, os.path.join(HERE, "run_infer.py"), "--device", args.device, "--json", f"{out}-infer.json"]
            + ["--markdown", f"{out}-infer.md", *threads],
            {},
        ),
        "scaling": (
            [py, os.path.join(HERE, "run_scaling.py"), "--device", args.device, "--json", f"{out}-scaling.json"]
            + threads,
            {},
        ),
        "overhead": (
            [
                py,
                os.path.join(HERE, "call_overhead.py"),
                "--device",
                args.device,
                "--json",
                f"{out}-call-overhead.json",
            ],
            {},
        ),
        "report": (
            [py, os.path.join(HERE, "report.py"), "--results", res, "--out", args.report, "--plots", args.plots]
            + (["--no-plots"] if args.no_plots else [])
            + (["--no-readme"] if args.no_readme else ["--readme", args.readme]),
            {},
        ),
    }
    return [(step, *table[step]) for step in args.steps]


def main(argv=None) -> int:
    """Run the selected steps; returns 0 when every one succeeded, 1 otherwise."""
    args = parse_args(argv)
    measuring = any(s != "report" for s in args.steps)
    machine = args.machine or (machine_slug(args.device) if measuring else "-")
    os.makedirs(args.results, exist_ok=True)
    done: list[tuple[str, str, float]] = []
    t_all = time.perf_counter()
    for step, cmd, env in commands(args, machine):
        print(f"\n>>> bench {step}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        done.append((step, "ok" if rc == 0 else f"FAILED (exit {rc})", time.perf_counter() - t0))
    if not args.dry_run:
        print(f"\nbench on {machine} ({args.device}), results in {args.results}:")
        for step, status, secs in done:
            print(f"  {step:<9} {status:<18} {secs:6.0f} s")
        print(f"  total {time.perf_counter() - t_all:.0f} s")
    return 0 if all(status == "ok" for _, status, _ in done) else 1


if __name__ == "__main__":
    sys.exit(main())
