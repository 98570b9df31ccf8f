"""Operator benchmarks: each fast op beside its PyTorch baselines, in one process, as a table of ratios.

    python benchmarks/run_ops.py --device cpu                    # the CPU sizes of targets.toml
    python benchmarks/run_ops.py --device cuda --json gpu.json --markdown gpu.md
    python benchmarks/run_ops.py --device cpu --sizes tiny       # smoke run

ratio = baseline time / fast time (both eager, as a user calls them), with its 95% interval: the fast op, the
stock baselines (the module users write, the strongest equivalent stock form, torch.compile of the reference)
and, on CUDA, the raw op replayed in a CUDA graph ("kernel": no Python/dispatcher overhead) run in interleaved
rounds through benchmarks/timing.py until every ratio's interval is within +-5% (or --max-seconds per case);
the reference Python loop is timed in a few rounds of its own, paired with the fast op. The headline of a row
is its ratio against the strongest (fastest) baseline. Inputs rotate through several sets so that repeats do
not run out of L2. On CUDA the kernel time is set against the memory floor: floor time = bytes that must move
/ peak bandwidth, the peak measured in the same run by a large device-to-device copy (bytes read + written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):  # run as a script from anywhere, without installing the package
    if _p not in sys.path:
        sys.path.insert(0, _p)

import targets  # noqa: E402
import torch  # noqa: E402
from cases import SIZES, Case, Impl, build_cases, count_instances  # noqa: E402
from tables import floor_table, fmt_ratio, fmt_t, md_table, ratio_table, text_table  # noqa: E402
from timing import allocator_state, measure_interleaved, median_ci, ratio_ci, steady_cpu_allocator  # noqa: E402

import pix2pixhd_fast  # noqa: E402
from pix2pixhd_fast.utils.files import atomic_write  # noqa: E402

ROTATE_BYTES = 256 << 20  # rotate through enough input sets to exceed this (several times a GPU's L2)
MAX_SETS = 8


# ----------------------------------------------------------------------------------------------------
# Machine description


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    want = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(want & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "build_info": pix2pixhd_fast.build_info(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "allocator": allocator_state(),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["gpu_sms"] = p.multi_processor_count
        info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        info["gpu_l2_mib"] = round(getattr(p, "L2_cache_size", 0) / 2**20, 1)
        info["cc"] = f"{p.major}.{p.minor}"
    return info


# ----------------------------------------------------------------------------------------------------
# Timing


def cuda_graphs(impl: Impl, states: list) -> list:
    """Capture ``impl.run`` once per state (warmed up on a side stream first, as capture requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for st in states:
            impl.run(st)
    torch.cuda.current_stream().wait_stream(side)
    graphs = []
    for st in states:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            impl.run(st)
        graphs.append(g)
    torch.cuda.synchronize()
    return graphs


def measure_peak_bandwidth(device: str, nbytes: int) -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second), median of repeated large copies."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ts = measure_interleaved({"copy": lambda: dst.copy_(src)}, device=device, min_rounds=7, max_rounds=20, warmup=3)
    t = statistics.median(ts["copy"])
    return {"bytes": 2 * n * 4, "median_s": t, "gbps": 2 * n * 4 / t / 1e9}


def n_sets_for(case: Case, device: str, sizes: str) -> int:
    if sizes == "tiny":
        return 2
    if device == "cpu":
        return 2
    return max(2, min(MAX_SETS, math.ceil(ROTATE_BYTES / max(1, case.set_bytes))))


def _rotating(run, states: list):
    """A zero-argument call of ``run`` that takes the next input set each time (repeats stay out of L2)."""
    i = [0]

    def call():
        st = states[i[0] % len(states)]
        i[0] += 1
        run(st)

    return call


def run_case(
    case: Case,
    device: str,
    sizes: str,
    slow_reps: int,
    seed: int,
    graph_fast: bool = False,
    compile_baselines: bool = True,
    max_seconds: float = 20.0,
) -> dict:
    """Measure the fast impl, the baselines and (CUDA) the graph-replayed kernel of one case.

    The fast impl, the stock baselines and the kernel are timed together by :func:`timing.measure_interleaved`
    until every ratio's 95% interval is within +-5% (or ``max_seconds``); the reference Python loop (slow) is
    timed apart, ``slow_reps`` rounds paired with the fast impl, so that its seconds per call do not set the
    length of every round.
    """
    sets = [case.make_set(seed + 1009 * k) for k in range(n_sets_for(case, device, sizes))]
    impls = [im for im in case.impls() if compile_baselines or not im.compiled]
    # A compiled baseline that cannot run here (e.g. torch.compile failing on this machine) is reported, not
    # timed; compilation happens in its prepare (the forward of a backward-only case) or its first call.
    failed: dict[str, str] = {}

    def fail(name: str, e: Exception) -> None:
        text = str(e).strip()
        failed[name] = f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"
        print(f"  [{case.id}] {name} failed, left out: {failed[name]}", flush=True)
        if device == "cuda":
            torch.cuda.synchronize()

    states = {}
    for im in impls:
        try:
            states[im.name] = [im.prepare(s) for s in sets]
        except Exception as e:
            if not im.compiled:
                raise
            fail(im.name, e)
    impls = [im for im in impls if im.name not in failed]
    runs = {im.name: im.run for im in impls}
    kernel_mode = None
    kernel = case.kernel
    if kernel is None and graph_fast:
        kernel = case.fast
    if device == "cuda" and kernel is not None:
        kstates = [kernel.prepare(s) for s in sets]
        try:
            states["kernel"] = cuda_graphs(kernel, kstates)
            runs["kernel"] = lambda g: g.replay()
            kernel_mode = "cuda-graph"
        except Exception as e:  # capture refused: time the raw op eagerly instead
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"  [{case.id}] CUDA-graph capture failed ({type(e).__name__}: {first}); kernel timed eagerly")
            torch.cuda.synchronize()
            states["kernel"] = kstates
            runs["kernel"] = kernel.run
            kernel_mode = "eager"
    slow = {im.name for im in impls if im.slow}
    fns = {name: _rotating(run, states[name]) for name, run in runs.items()}
    for im in impls:
        if not im.compiled:
            continue
        try:
            fns[im.name]()  # compiles
            if device == "cuda":
                torch.cuda.synchronize()
        except Exception as e:
            fail(im.name, e)
            del fns[im.name]
    impls = [im for im in impls if im.name not in failed]
    tiny = sizes == "tiny"
    samples = measure_interleaved(
        {n: f for n, f in fns.items() if n not in slow},
        device=device,
        min_rounds=5,
        max_rounds=20 if tiny else 400,
        max_seconds=max_seconds,
        warmup=max(2, len(sets)) + (2 if compile_baselines else 0),
        calls_per_round=1 if device == "cpu" else 2 * len(sets),
    )
    paired_fast: dict[str, list[float]] = {}
    for name in slow:
        both = measure_interleaved(
            {"fast": fns["fast"], name: fns[name]},
            device=device,
            min_rounds=max(1, slow_reps),
            max_rounds=max(1, slow_reps),
            warmup=1,
        )
        samples[name], paired_fast[name] = both[name], both["fast"]

    fast_s = statistics.median(samples["fast"])
    row: dict[str, Any] = {
        "id": case.id,
        "op": case.op,
        "variant": case.variant,
        "info": case.info,
        "input_sets": len(sets),
        "fast_s": fast_s,
        "fast_reps": len(samples["fast"]),
        "fast_s_ci": list(median_ci(samples["fast"])[1:]),
        "kernel_s": statistics.median(samples["kernel"]) if "kernel" in samples else None,
        "kernel_timing": kernel_mode,
        "bytes": case.bytes_moved,
        "bytes_note": case.bytes_note,
        "target": case.target_text,
        "floor_max": case.floor_max,
        "baselines": [],
        "baseline_errors": failed,
        # Every timed call, to 4 significant digits (the interval's width is far wider; keeps the files small).
        "samples_s": {n: [float(f"{t:.4g}") for t in v] for n, v in samples.items()},
    }
    if "inst" in sets[0]:
        row["instances_per_image"] = count_instances(sets[0]["inst"].cpu())
    for b in impls:
        if b.name == "fast":
            continue
        t = statistics.median(samples[b.name])
        ratio, lo, hi = ratio_ci(samples[b.name], paired_fast.get(b.name, samples["fast"]))
        target = case.targets.get(b.name)
        row["baselines"].append(
            {
                "name": b.name,
                "median_s": t,
                "reps": len(samples[b.name]),
                "ratio": ratio,
                "ratio_lo": lo,
                "ratio_hi": hi,
                "slow": b.slow,
                "compiled": b.compiled,
                "target": target,
                "met": None if target is None else bool(ratio >= target),
            }
        )
    if row["baselines"]:  # the headline: the strongest (fastest) stock baseline
        row["strongest"] = min(row["baselines"], key=lambda b: b["median_s"])["name"]
    del states, sets
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def add_floor(row: dict, peak_gbps: float, nominal_gbps: float | None = None) -> None:
    """GB/s achieved and x the memory floor: against the copy bandwidth measured in the run and, for a listed
    GPU, against its nominal bandwidth (targets.toml's bandwidth_gbps: bytes / 4.3 TB/s on an H200)."""
    t = row["kernel_s"] if row["kernel_s"] is not None else row["fast_s"]
    row["floor_time_source"] = "kernel" if row["kernel_s"] is not None else "fast"
    row["gbps"] = row["bytes"] / t / 1e9
    row["floor_s"] = row["bytes"] / (peak_gbps * 1e9)
    row["x_floor"] = t / row["floor_s"]
    row["nominal_gbps"] = nominal_gbps
    row["x_floor_nominal"] = None if nominal_gbps is None else t / (row["bytes"] / (nominal_gbps * 1e9))
    # The floor targets are set against the nominal bandwidth where the GPU has one listed.
    x = row["x_floor_nominal"] if row["x_floor_nominal"] is not None else row["x_floor"]
    row["floor_met"] = None if row["floor_max"] is None else bool(x <= row["floor_max"])


# ----------------------------------------------------------------------------------------------------
# Report


def machine_lines(res: dict) -> list[str]:
    m, s = res["machine"], res["settings"]
    bi = m["build_info"]
    lines = []
    if s["device"] == "cuda":
        lines.append(
            f"GPU: {m['gpu']} (cc {m['cc']}, {m['gpu_sms']} SMs, {m['gpu_memory_gib']} GiB, L2 {m['gpu_l2_mib']} MiB)"
        )
    lines.append(f"CPU: {m['cpu']} ({m['cpu_capability']}; {' '.join(m['cpu_flags'])}); torch threads: {m['threads']}")
    lines.append(f"torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}")
    if s["device"] == "cpu":
        lines.append(f"CPU allocator: {m.get('allocator', 'default')} (see benchmarks/timing.py)")
    load = [m.get("loadavg_start"), m.get("loadavg_end")]
    if load[0] is not None:
        note = ""
        if s["device"] == "cpu" and max(x or 0 for x in load) > 0.5 * (m["cpu_count"] or 1):
            note = " -- a loaded machine: multi-threaded CPU timings are unreliable (try --threads 1)"
        lines.append(f"load average (1 min) at start/end: {load[0]} / {load[1]} on {m['cpu_count']} CPUs{note}")
    lines.append(
        f"library: ops_loaded={bi['ops_loaded']} cuda_kernels={bi['cuda_kernels']} archs={bi['cuda_archs']}"
        + (f" ({bi['error']})" if bi["error"] else "")
    )
    pk = res["peak"]
    lines.append(
        f"measured copy bandwidth (read+write): {pk['gbps']:.0f} GB/s "
        f"({pk['bytes'] / 1e6:.0f} MB in {fmt_t(pk['median_s'])})"
    )
    lines.append(f"sizes: {s['sizes']} {json.dumps({k: v for k, v in SIZES[s['sizes']].items()})}")
    return lines


def render_text(res: dict) -> str:
    parts = [
        "\n".join(machine_lines(res)),
        "",
        "Ratios (baseline time / fast time, eager):",
        text_table(*ratio_table(res["rows"])),
    ]
    parts += [
        "",
        "Memory floor (floor = bytes / measured copy bandwidth; kernel = CUDA-graph replay of the compiled op"
        " on CUDA, the fast call on CPU):",
        text_table(*floor_table(res["rows"])),
    ]
    left = [f"  {r['id']} {n}: {e}" for r in res["rows"] for n, e in r.get("baseline_errors", {}).items()]
    if left:
        parts += ["", "Baselines that failed here (left out):"] + left
    if res["errors"]:
        parts += ["", "FAILED cases:"] + [f"  {e['id']}: {e['error']}" for e in res["errors"]]
    if res.get("skipped"):
        parts += ["", "Skipped (time budget spent): " + ", ".join(res["skipped"])]
    return "\n".join(parts)


def render_markdown(res: dict) -> str:
    parts = [
        f"# pix2pixhd_fast operator benchmarks ({res['settings']['device']}, sizes {res['settings']['sizes']})",
        "",
    ]
    parts += [f"- {ln}" for ln in machine_lines(res)]
    parts += ["", "## Ratios (baseline time / fast time, eager)", "", md_table(*ratio_table(res["rows"]))]
    parts += [
        "",
        "## Memory floor",
        "",
        "floor = bytes that must move / measured copy bandwidth; "
        "kernel = CUDA-graph replay of the compiled op on CUDA, the fast call on CPU.",
        "",
        md_table(*floor_table(res["rows"])),
    ]
    missed = [f"{r['id']} vs {b['name']}" for r in res["rows"] for b in r["baselines"] if b["met"] is False]
    missed += [f"{r['id']} floor" for r in res["rows"] if r["floor_met"] is False]
    parts += ["", f"Targets missed: {', '.join(missed) if missed else 'none'}", ""]
    left = [f"- {r['id']} {n}: {e}" for r in res["rows"] for n, e in r.get("baseline_errors", {}).items()]
    if left:
        parts += ["## Baselines that failed here (left out)", "", *left, ""]
    if res.get("skipped"):
        parts += ["Skipped (time budget spent): " + ", ".join(res["skipped"]), ""]
    if res["errors"]:
        parts += ["## FAILED cases", ""] + [f"- {e['id']}: {e['error']}" for e in res["errors"]] + [""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", choices=sorted(SIZES), default=None, help="default: cpu on CPU, gpu on CUDA")
    ap.add_argument("--json", default=None, help="write the full results here")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    ap.add_argument("--only", default=None, help="comma-separated substrings of case ids to run")
    ap.add_argument(
        "--max-seconds", type=float, default=None, help="timed seconds per case at most (cpu 4, gpu 2, tiny 0.5)"
    )
    ap.add_argument(
        "--no-compile", action="store_true", help="leave out the torch.compile baselines (their compilation is slow)"
    )
    ap.add_argument("--slow-reps", type=int, default=2, help="reps of the reference loop (after 1 warm-up)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new case after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--graph-fast",
        action="store_true",
        help="without the compiled library, CUDA-graph the fast call instead (checks the runner itself)",
    )
    return ap.parse_args(argv)


def _write_json(res: dict, path: str | None) -> None:
    if path:
        with atomic_write(path, "w") as f:
            json.dump(res, f, indent=1, default=str)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run_ops.py: --device cuda but torch sees no CUDA GPU")
    sizes = args.sizes or ("gpu" if device == "cuda" else "cpu")
    if device == "cpu":
        steady_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    max_s = args.max_seconds if args.max_seconds is not None else {"tiny": 0.5, "cpu": 4.0, "gpu": 2.0}[sizes]
    torch.manual_seed(args.seed)

    res: dict[str, Any] = {
        "settings": {
            "device": device,
            "sizes": sizes,
            "max_seconds": max_s,
            "target_rel_halfwidth": 0.05,
            "slow_reps": args.slow_reps,
            "compile_baselines": not args.no_compile,
            "budget_s": args.budget_s,
            "seed": args.seed,
        },
        "machine": machine_info(device),
    }
    peak_bytes = {"tiny": 32 << 20, "cpu": 512 << 20, "gpu": 2 << 30}[sizes]
    res["peak"] = measure_peak_bandwidth(device, peak_bytes)
    print("\n".join(machine_lines(res)), flush=True)

    cases = build_cases(device, sizes, purpose="runner", compiled=not args.no_compile)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        cases = [c for c in cases if any(k in c.id for k in keys)]
    rows, errors, skipped = [], [], []
    res.update(rows=rows, errors=errors, skipped=skipped, complete=False)
    t_all = time.perf_counter()
    for case in cases:
        if args.budget_s is not None and time.perf_counter() - t_all > args.budget_s:
            skipped.append(case.id)
            print(f"  {case.id:<42} SKIPPED (--budget-s {args.budget_s:g} s spent)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            row = run_case(case, device, sizes, args.slow_reps, args.seed, args.graph_fast, not args.no_compile, max_s)
        except Exception as e:  # e.g. a development library without this op's kernel: report, go on
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(f"  {case.id:<42} FAILED: {msg}", flush=True)
            errors.append({"id": case.id, "op": case.op, "error": msg})
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            continue
        add_floor(row, res["peak"]["gbps"], targets.nominal_bandwidth_gbps(res["machine"].get("gpu")))
        rows.append(row)
        _write_json(res, args.json)  # after every case: a run cut short keeps what it measured
        ratios = ", ".join(f"{b['name']} {fmt_ratio(b['ratio'])}" for b in row["baselines"])
        print(
            f"  {case.id:<42} fast {fmt_t(row['fast_s']):>10}  {ratios}  ({time.perf_counter() - t0:.1f} s)", flush=True
        )
    res["machine"]["loadavg_end"] = _loadavg()
    res["total_s"] = time.perf_counter() - t_all
    res["complete"] = True

    print()
    print(render_text(res))
    _write_json(res, args.json)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(render_markdown(res))
    return res


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
