"""Performance report: the results files -> benchmarks/REPORT.md, PNG plots, and README's performance section.

    python benchmarks/report.py            # benchmarks/results/*.json -> benchmarks/REPORT.md, benchmarks/plots/,
                                           # README.md between <!-- perf:begin --> and <!-- perf:end -->
    python benchmarks/report.py --results $OUT --out $OUT/REPORT.md --no-plots --no-readme   # scripts/gpu_check.sh

Reads the JSON of run_ops.py (operators), run_train.py (training step), run_infer.py (inference latency per
backend), run_scaling.py (scaling), call_overhead.py (host cost per call) and pytest-benchmark
(``--benchmark-json``), each recognised by its content. Files group into runs by name: ``<run>.json``,
``<run>-train.json``, ``<run>-infer.json``, ``<run>-scaling.json``, ``<run>-call-overhead.json``,
``<run>-pytest-benchmark.json`` (gpu_check's ``gpu_ops.json``, ``gpu_train.json``, ... make the run ``gpu``). A run
whose name extends another's (``nvidia-h200-interim`` beside ``nvidia-h200``) is an earlier run of that machine: it
shows in the history table only.

Every ratio is baseline time / fast time measured in the same process: a speed-up, > 1 when ours is faster. The
machine (CPU model or GPU), torch, CUDA, threads and load come from each file. Nothing here is typed by hand; the
output depends only on the results files (no dates), so an unchanged input regenerates the same report. Needs no
torch; matplotlib only for the plots.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import targets  # noqa: E402
from tables import (  # noqa: E402
    floor_table,
    fmt_ratio,
    fmt_ratio_ci,
    fmt_t,
    infer_table,
    md_table,
    nets_table,
    profile_tables,
    ratio_table,
    train_table,
)

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
# File-name suffix of each kind (results naming, then scripts/gpu_check.sh's); "" = the operators file itself.
KIND_SUFFIXES: dict[str, tuple[str, ...]] = {
    "pytest-benchmark": ("-pytest-benchmark", "_pytest_benchmark"),
    "call-overhead": ("-call-overhead", "_call_overhead"),
    "scaling": ("-scaling", "_scaling"),
    "train": ("-train", "_train"),
    "infer": ("-infer", "_infer"),
    "ops": ("-ops", "_ops", ""),
}
KINDS = tuple(KIND_SUFFIXES)
PLOT_PATTERNS = ("ops-*.png", "scaling-resolution-*.png", "scaling-instances-*.png", "train.png")


# ----------------------------------------------------------------------------------------------------
# Loading


def classify(data: Any) -> str | None:
    """Which benchmark wrote ``data`` (one of KINDS), or None for anything else."""
    if not isinstance(data, dict):
        return None
    if data.get("kind") == "scaling":
        return "scaling"
    if data.get("kind") == "infer":
        return "infer"
    if "benchmarks" in data and "machine_info" in data:
        return "pytest-benchmark"
    if "train" in data and "settings" in data and "machine" in data:
        return "train"
    rows = data.get("rows")
    if "meta" in data and isinstance(rows, list) and all(isinstance(r, dict) and "us_cpp" in r for r in rows):
        return "call-overhead"
    if isinstance(rows, list) and "peak" in data and "settings" in data and "machine" in data:
        return "ops"
    return None


def run_name(stem: str, kind: str) -> str:
    """The run a file belongs to: its name without the kind's suffix."""
    for suffix in KIND_SUFFIXES[kind]:
        if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


@dataclass
class Run:
    """The results files of one machine and run, by kind."""

    name: str
    data: dict[str, dict] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    later: str | None = None  # set when this is an earlier run of the machine named ``later``

    @property
    def machine(self) -> dict:
        for kind in ("ops", "train", "infer", "scaling"):
            if kind in self.data:
                return self.data[kind]["machine"]
        return {}

    @property
    def device(self) -> str:
        for kind in ("ops", "train", "infer", "scaling"):
            if kind in self.data:
                return self.data[kind]["settings"]["device"]
        if "call-overhead" in self.data:
            return "cuda" if "cuda" in str(self.data["call-overhead"]["meta"].get("device", "")).lower() else "cpu"
        if "pytest-benchmark" in self.data:
            return self.data["pytest-benchmark"]["machine_info"].get("pix2pixhd_fast", {}).get("device", "cpu")
        return "cpu"

    def describe(self) -> str:
        """GPU name, else the CPU model: what a reader needs to place the numbers."""
        m = self.machine
        if m.get("gpu"):
            return f"{m['gpu']} (cc {m.get('cc')}, {m.get('gpu_memory_gib')} GiB)"
        if m.get("cpu"):
            flags = " ".join(m.get("cpu_flags") or [])
            return f"{m['cpu']}, {m.get('cpu_count')} CPUs ({m.get('cpu_capability')}{'; ' + flags if flags else ''})"
        if "call-overhead" in self.data:
            return str(self.data["call-overhead"]["meta"].get("device"))
        pm = self.data.get("pytest-benchmark", {}).get("machine_info", {})
        return pm.get("pix2pixhd_fast", {}).get("gpu") or pm.get("cpu", {}).get("brand_raw", "?")


def _sort_key(run: Run) -> tuple:
    return (run.device != "cpu", run.name)


def load_runs(sources: list[str]) -> tuple[list[Run], list[str]]:
    """Every recognised JSON file under ``sources`` (folders or files), grouped into runs; plus notes on the
    files that were skipped. Raises ValueError when two files claim the same run and kind."""
    paths: list[str] = []
    for src in sources:
        if os.path.isdir(src):
            paths += sorted(glob.glob(os.path.join(src, "*.json")))
        elif os.path.isfile(src):
            paths.append(src)
        else:
            raise FileNotFoundError(f"no results file or folder {src!r}")
    runs: dict[str, Run] = {}
    notes: list[str] = []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            notes.append(f"{os.path.basename(path)}: not readable JSON ({type(e).__name__})")
            continue
        kind = classify(data)
        if kind is None:
            notes.append(f"{os.path.basename(path)}: not a benchmark results file")
            continue
        name = run_name(os.path.splitext(os.path.basename(path))[0], kind)
        run = runs.setdefault(name, Run(name))
        if kind in run.data:
            raise ValueError(f"two {kind} files for run {name!r}: {run.files[kind]} and {path}")
        run.data[kind], run.files[kind] = data, path
    for run in runs.values():  # the longest other name that this one extends
        parents = [o for o in runs if o != run.name and run.name.startswith(o + "-")]
        run.later = max(parents, key=len) if parents else None
    return sorted(runs.values(), key=_sort_key), notes


# ----------------------------------------------------------------------------------------------------
# Small helpers


def _conditions(data: dict) -> str:
    """Threads, load and run time of one results file (the state of a shared machine matters for CPU times)."""
    m = data.get("machine", {})
    parts = []
    if m.get("threads") is not None:
        parts.append(f"{m['threads']} torch threads")
    if m.get("allocator") and m["allocator"] != "default":
        parts.append(f"allocator: {m['allocator']}")
    load = data.get("load") or {}
    if m.get("loadavg_start") is not None:
        parts.append(f"load average {m.get('loadavg_start')} -> {m.get('loadavg_end')} on {m.get('cpu_count')} CPUs")
    if load.get("others_cores") is not None:
        parts.append(f"other processes used {load['others_cores']:.2f} cores")
    if data.get("total_s") is not None:
        parts.append(f"{data['total_s']:.0f} s")
    return "; ".join(parts)


def _software(m: dict) -> str:
    bi = m.get("build_info") or {}
    lib = "ops loaded" if bi.get("ops_loaded") else f"no compiled ops ({bi.get('error')})"
    if bi.get("cuda_archs") and m.get("gpu"):
        lib += f", archs {','.join(bi['cuda_archs'])}"
    return f"torch {m.get('torch')}, CUDA {m.get('cuda')}, Python {m.get('python')}; {lib}"


def _targets_apply(run: Run, kind: str) -> str | None:
    """The targets.toml device key of a run's ``kind`` results when its sizes are the ones the targets were set
    for (gpu sizes on CUDA, cpu sizes on the CPU), else None (no ✓/✗)."""
    sizes = run.data[kind].get("settings", {}).get("sizes")
    if (run.device, sizes) in (("cuda", "gpu"), ("cpu", "cpu")):
        return sizes
    return None


def _op_target(run: Run, row: dict, name: str | None) -> float | None:
    """The minimum ratio vs baseline ``name`` (or, for None, the maximum x floor) of benchmarks/targets.toml."""
    if _targets_apply(run, "ops") is None:
        return None
    ratios, floor = targets.op_targets(run.device, row["op"], row["variant"])
    return floor if name is None else ratios.get(name)


def targets_x_nominal(run: Run, row: dict) -> float | None:
    """x the floor at the nominal bandwidth of targets.toml for rows written before runners recorded it."""
    gbps = targets.nominal_bandwidth_gbps(run.machine.get("gpu"))
    t = row.get("kernel_s") or row.get("fast_s")
    if gbps is None or not t or not row.get("bytes"):
        return None
    return t / (row["bytes"] / (gbps * 1e9))


def _with_targets(run: Run, rows: list[dict]) -> list[dict]:
    """Copies of a run's operator rows whose targets, verdicts and nominal floor are those of targets.toml (a
    results file records the targets of its day; the report judges every run by the file in the repository)."""
    out = []
    for r in rows:
        r = {**r, "baselines": [dict(b) for b in r["baselines"]]}
        for b in r["baselines"]:
            b["target"] = _op_target(run, r, b["name"])
            b["met"] = None if b["target"] is None else bool(b["ratio"] >= b["target"])
        if "x_floor" in r:
            r["floor_max"] = _op_target(run, r, None)
            if r.get("x_floor_nominal") is None and run.device == "cuda":
                r["x_floor_nominal"] = targets_x_nominal(run, r)
                r["nominal_gbps"] = targets.nominal_bandwidth_gbps(run.machine.get("gpu"))
            x = r["x_floor_nominal"] if r.get("x_floor_nominal") is not None else r["x_floor"]
            r["floor_met"] = None if r["floor_max"] is None else bool(x <= r["floor_max"])
        out.append(r)
    return out


def _target_mark(b: dict, target: float | None) -> str:
    """A ratio with its 95% interval and ✓/✗ against ``target`` (benchmarks/targets.toml)."""
    cell = fmt_ratio_ci(b)
    if target is None:
        return cell
    return f"{cell} ✓" if b["ratio"] >= target else f"{cell} ✗ (target {target:g}x)"


def _shape(row: dict) -> str:
    shape = row.get("info", {}).get("shape")
    return "x".join(map(str, shape)) if shape else "?"


def _op_rows(data: dict) -> list[dict]:
    """run_ops rows without the per-call-overhead cases (they have their own section)."""
    return [r for r in data["rows"] if not r.get("info", {}).get("overhead")]


def _rel(path: str, start_dir: str) -> str:
    return os.path.relpath(path, start_dir).replace(os.sep, "/")


def _base_variant(row: dict) -> str:
    """A scaling row's variant without its trailing HxW."""
    v = row["variant"]
    return v.rsplit(" ", 1)[0] if row.get("info", {}).get("height") else v


# ----------------------------------------------------------------------------------------------------
# Tables


def key_ops_table(runs: list[Run]) -> tuple[list[str], list[list[str]], list[str]] | None:
    """Speed-up over each baseline, one column per run (and x floor on GPUs); plus each run's sizes."""
    runs = [r for r in runs if "ops" in r.data]
    if not runs:
        return None
    keys: list[tuple[str, str, str]] = []
    cells: dict[tuple[str, str, str, str], str] = {}
    floors: dict[tuple[str, str, str, str], str] = {}
    sizes = []
    for run in runs:
        seen = {}
        for r in _op_rows(run.data["ops"]):
            seen.setdefault(r["op"], _shape(r))
            for i, b in enumerate(r["baselines"]):
                k = (r["op"], r["variant"], b["name"])
                if k not in keys:
                    keys.append(k)
                mark = _target_mark(b, _op_target(run, r, b["name"]))
                cells[(*k, run.name)] = mark + (" (strongest)" if r.get("strongest") == b["name"] else "")
                if run.device == "cuda" and i == 0 and r.get("x_floor"):
                    # Against the GPU's nominal bandwidth where listed (the targets' basis), else the measured copy.
                    nominal = r.get("x_floor_nominal") or targets_x_nominal(run, r)
                    x = nominal if nominal is not None else r["x_floor"]
                    fmax = _op_target(run, r, None)
                    met = "" if fmax is None else (" ✓" if x <= fmax else " ✗")
                    floors[(*k, run.name)] = f"{x:.2f}x{met}"
        sizes.append(f"{run.name}: " + ", ".join(f"{op} {shape}" for op, shape in seen.items()))
    head = ["op", "variant", "baseline"]
    for run in runs:
        head.append(f"{run.name} speed-up")
        if run.device == "cuda":
            gbps = targets.nominal_bandwidth_gbps(run.machine.get("gpu"))
            head.append(f"{run.name} x floor" + (f" ({gbps / 1000:g} TB/s)" if gbps else " (measured copy)"))
    body = []
    for k in keys:
        line = list(k)
        for run in runs:
            line.append(cells.get((*k, run.name), "-"))
            if run.device == "cuda":
                line.append(floors.get((*k, run.name), ""))
        body.append(line)
    return head, body, sizes


def key_train_table(runs: list[Run]) -> tuple[list[str], list[list[str]]] | None:
    """Images/s of each configuration and the fast step's ratios, one line per run and problem."""
    runs = [r for r in runs if "train" in r.data]
    if not runs:
        return None
    keys = sorted({row["key"] for run in runs for p in run.data["train"]["train"] for row in p["rows"]})
    names = {}
    for run in runs:
        for p in run.data["train"]["train"]:
            for row in p["rows"]:
                names.setdefault(row["key"], row["config"])
    head = ["run", "problem"] + [f"({k}) images/s" for k in keys]
    head += ["fast (c) vs (a)", "(c) vs (b)", "peak memory (c) / (a)"]
    body = []
    for run in runs:
        for p in run.data["train"]["train"]:
            rows = {row["key"]: row for row in p["rows"]}
            line = [run.name, p["problem"]]
            line += [f"{rows[k]['images_per_s']:.3g}" if k in rows else "-" for k in keys]
            c = rows.get("c")
            if c is None:
                line += ["-", "-", "-"]
            else:
                sizes = _targets_apply(run, "train")
                tg = targets.train_targets(sizes, p.get("name") or p["problem"].split("-")[0]) if sizes else {}

                def mark(name: str, value: float | None, tg=tg) -> str:
                    if value is None:
                        return "-"
                    t = tg.get(name)
                    if t is None:
                        return f"{value:.2f}x"
                    met = value <= t if name.startswith(("mem", "saved")) else value >= t
                    return f"{value:.2f}x " + ("✓" if met else f"✗ (target {t:g}x)")

                line += [mark("vs_a", c.get("vs_a")), mark("vs_b", c.get("vs_b")), mark("mem_vs_a", c.get("mem_vs_a"))]
            body.append(line)
    return head, body


INFER_KEYS = ("a", "r", "b", "ac", "rc", "c", "d", "e")


def key_infer_table(runs: list[Run]) -> tuple[list[str], list[list[str]]] | None:
    """Median inference latency of each configuration and its speed-up over (a), one line per run and problem."""
    runs = [r for r in runs if r.data.get("infer", {}).get("problems")]
    if not runs:
        return None
    names: dict[str, str] = {}
    for run in runs:
        for p in run.data["infer"]["problems"]:
            for row in p["rows"]:
                names.setdefault(row["key"], row["config"])
    keys = [k for k in INFER_KEYS if k in names] + sorted(set(names) - set(INFER_KEYS))
    head = ["run", "problem"] + [f"({k}) {names[k]}" for k in keys]
    body = []
    for run in runs:
        sizes = _targets_apply(run, "infer")
        for p in run.data["infer"]["problems"]:
            rows = {row["key"]: row for row in p["rows"]}
            line = [run.name, p["problem"]]
            tg = targets.infer_targets(sizes, p.get("name") or p["problem"].split("-")[0]) if sizes else {}
            for k in keys:
                r = rows.get(k)
                if r is None:
                    line.append("-")
                elif r["status"] != "ok":
                    line.append(r["status"])
                elif k == "a" or r.get("vs_a") is None:
                    line.append(fmt_t(r["median_s"]))
                else:
                    cell = f"{fmt_t(r['median_s'])} ({r['vs_a']:.2f}x"
                    if r.get("vs_a_lo") is not None:
                        cell += f" [{r['vs_a_lo']:.3g}, {r['vs_a_hi']:.3g}]"
                    t = tg.get(k)
                    if t is not None:
                        cell += " ✓" if r["vs_a"] >= t else f" ✗, target {t:g}x"
                    line.append(cell + ")")
            body.append(line)
    return head, body


def key_count_table(runs: list[Run]) -> tuple[list[str], list[list[str]]] | None:
    """instance_avg_pool time per instance count (one line per run and implementation) and the growth."""
    runs = [r for r in runs if r.data.get("scaling", {}).get("instances")]
    if not runs:
        return None
    counts = sorted({r["info"]["instances"] for run in runs for r in run.data["scaling"]["instances"]})
    head = ["run", "size, pass", "implementation"] + [f"{k} inst." for k in counts] + ["growth"]
    body = []
    for run in runs:
        rows = sorted(run.data["scaling"]["instances"], key=lambda r: r["info"]["instances"])
        s = run.data["scaling"]["settings"]
        size = f"{s['count_size']}, {s['count_pass']}"
        impls = ["fast"] + [b["name"] for b in rows[0]["baselines"]]
        for impl in impls:
            times = {}
            for r in rows:
                if impl == "fast":
                    times[r["info"]["instances"]] = r["fast_s"]
                else:
                    times[r["info"]["instances"]] = next(b["median_s"] for b in r["baselines"] if b["name"] == impl)
            line = [run.name, size, "ours" if impl == "fast" else impl]
            line += [fmt_t(times.get(k)) for k in counts]
            lo, hi = min(times), max(times)
            line.append(f"{times[hi] / times[lo]:.1f}x ({lo} -> {hi})" if hi > lo else "-")
            body.append(line)
    return head, body


def resolution_table(data: dict) -> tuple[list[str], list[list[str]]]:
    head = ["op", "variant", "HxW", "fast", "baseline", "baseline time", "speed-up", "GB/s"]
    body = []
    for r in data["resolution"]:
        for i, b in enumerate(r["baselines"]):
            info = r["info"]
            body.append(
                [
                    r["op"],
                    _base_variant(r),
                    f"{info['height']}x{info['width']}",
                    fmt_t(r["fast_s"]) if i == 0 else "",
                    b["name"],
                    fmt_t(b["median_s"]),
                    fmt_ratio(b["ratio"]),
                    (f"{r['gbps']:.1f}" if i == 0 and r.get("gbps") else ""),
                ]
            )
    return head, body


def count_table(data: dict) -> tuple[list[str], list[list[str]]]:
    rows = sorted(data["instances"], key=lambda r: r["info"]["instances"])
    names = [b["name"] for b in rows[0]["baselines"]] if rows else []
    head = ["instances", "measured ids", "ours"] + names + [f"{n} / ours" for n in names]
    body = []
    for r in rows:
        bs = {b["name"]: b for b in r["baselines"]}
        line = [str(r["info"]["instances"]), str(r.get("instances_per_image", "?")), fmt_t(r["fast_s"])]
        line += [fmt_t(bs[n]["median_s"]) if n in bs else "-" for n in names]
        line += [fmt_ratio(bs[n]["ratio"]) if n in bs else "-" for n in names]
        body.append(line)
    return head, body


def overhead_table(data: dict) -> tuple[list[str], list[list[str]]]:
    head = ["shape", "dtype", "C++ autograd", "Python autograd.Function", "nn.InstanceNorm2d+ReLU", "saved", "vs nn"]
    body = [
        [
            "x".join(map(str, r["shape"])),
            r["dtype"],
            f"{r['us_cpp']:.1f} us",
            f"{r['us_python']:.1f} us",
            f"{r['us_nn']:.1f} us",
            f"{r['saved_us']:.1f} us",
            fmt_ratio(r["ratio_vs_nn"]),
        ]
        for r in data["rows"]
    ]
    return head, body


def pytest_benchmark_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """Per group (op configuration): the fast impl's median and each baseline's, as a speed-up."""
    groups: dict[str, dict[str, dict]] = {}
    for b in data["benchmarks"]:
        groups.setdefault(b.get("group") or b["name"], {})[b["name"]] = b["stats"]
    head = ["group", "fast median", "baseline", "baseline median", "speed-up", "rounds (fast / baseline)"]
    body = []
    for group, impls in groups.items():
        fast = impls.get("fast")
        for name, st in impls.items():
            if name == "fast":
                continue
            body.append(
                [
                    group,
                    fmt_t(fast["median"]) if fast else "-",
                    name,
                    fmt_t(st["median"]),
                    fmt_ratio(st["median"] / fast["median"]) if fast else "-",
                    f"{fast['rounds'] if fast else '-'} / {st['rounds']}",
                ]
            )
    return head, body


def history_table(current: Run, earlier: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Speed-ups of the earlier runs of a machine beside the current run's (columns in name order)."""
    order = sorted(earlier, key=lambda r: r.name) + [current]
    keys: list[tuple[str, str, str]] = []
    cells: dict[tuple, str] = {}
    for run in order:
        for r in _op_rows(run.data["ops"]):
            for b in r["baselines"]:
                k = (r["op"], r["variant"], b["name"])
                if k not in keys:
                    keys.append(k)
                cells[(*k, run.name)] = fmt_ratio(b["ratio"])
    head = ["op", "variant", "baseline"] + [run.name for run in order]
    body = [[*k] + [cells.get((*k, run.name), "-") for run in order] for k in keys]
    return head, body


# ----------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "report.py: matplotlib is not installed (pip install matplotlib), or pass --no-plots"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


BASELINE_COLORS = ("tab:gray", "tab:brown", "tab:cyan", "tab:olive")
OP_COLORS = {
    "instance_norm_relu": "tab:blue",
    "instance_avg_pool": "tab:orange",
    "instance_boundary": "tab:green",
    "encode_input": "tab:purple",
}


def plot_ops(run: Run, path: str) -> str:
    """Speed-up bars (log scale) of every op row against each baseline, with the targets of targets.toml."""
    plt = _pyplot()
    items = [(r, b) for r in _op_rows(run.data["ops"]) for b in r["baselines"]]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(items) + 1.2))
    y = list(range(len(items)))[::-1]
    ax.barh(
        y,
        [b["ratio"] for _, b in items],
        color=[OP_COLORS.get(r["op"], "tab:gray") for r, _ in items],
        height=0.7,
    )
    for yi, (_r, b) in zip(y, items, strict=True):
        ax.text(b["ratio"] * 1.08, yi, fmt_ratio(b["ratio"]), va="center", fontsize=7)
        t = _op_target(run, _r, b["name"])
        if t:
            ax.plot([t] * 2, [yi - 0.4, yi + 0.4], color="black", lw=1.5)
    ax.set_yticks(y, [f"{r['op']} {r['variant']} vs {b['name']}" for r, b in items], fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("speed-up = baseline time / fast time (log); black tick: target (benchmarks/targets.toml)")
    ax.set_title(f"{run.name}: {run.describe()}", fontsize=8)
    ax.set_xlim(right=max(b["ratio"] for _, b in items) * 3)
    return _save(fig, path)


def _plot_baselines(ax, xs: list[float], rows: list[dict]) -> None:
    """One dashed line per baseline (ms), in colours apart from the ops' own."""
    names = list(dict.fromkeys(b["name"] for r in rows for b in r["baselines"]))
    for i, name in enumerate(names):
        pts = [
            (x, b["median_s"] * 1e3) for x, r in zip(xs, rows, strict=True) for b in r["baselines"] if b["name"] == name
        ]
        label = "reference per-id loop" if name == "loop" else name
        color = BASELINE_COLORS[i % len(BASELINE_COLORS)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "s--", label=label, color=color)


def plot_resolution(run: Run, path: str) -> str:
    """Time vs megapixels (log-log), one panel per op: ours and each baseline."""
    plt = _pyplot()
    rows = run.data["scaling"]["resolution"]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    ncols = 2
    nrows = math.ceil(len(ops) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(9, 3.3 * nrows), squeeze=False)
    for ax, op in zip(axes.flat, ops, strict=False):
        rs = sorted((r for r in rows if r["op"] == op), key=lambda r: r["info"]["height"] * r["info"]["width"])
        mp = [r["info"]["height"] * r["info"]["width"] / 1e6 for r in rs]
        ax.plot(mp, [r["fast_s"] * 1e3 for r in rs], "o-", label="ours", color=OP_COLORS.get(op, "black"))
        _plot_baselines(ax, mp, rs)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(mp, [f"{r['info']['height']}x{r['info']['width']}" for r in rs], fontsize=7)
        ax.minorticks_off()
        ax.set_title(f"{op} {_base_variant(rs[0])}", fontsize=9)
        ax.set_ylabel("time (ms)")
        ax.legend(fontsize=7)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(ops) :]:
        ax.axis("off")
    fig.suptitle(f"{run.name}: time vs resolution ({run.describe()})", fontsize=9)
    return _save(fig, path)


def plot_instances(run: Run, path: str) -> str:
    """instance_avg_pool time vs number of instances (log-log): ours, the loop, scatter_reduce."""
    plt = _pyplot()
    sc = run.data["scaling"]
    rows = sorted(sc["instances"], key=lambda r: r["info"]["instances"])
    ks = [r["info"]["instances"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [r["fast_s"] * 1e3 for r in rows], "o-", label="ours (instance_avg_pool)", color="tab:orange")
    _plot_baselines(ax, ks, rows)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("instances per image")
    ax.set_ylabel("time (ms)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    s = sc["settings"]
    ax.set_title(f"{run.name}: pool {s['count_pass']} fp32 1x3x{s['count_size']}", fontsize=9)
    return _save(fig, path)


def plot_train(runs: list[Run], path: str) -> str | None:
    """Images/s of each training configuration, one panel per run and problem, ratio vs (a) on the bars."""
    panels = [(run, p) for run in runs if "train" in run.data for p in run.data["train"]["train"] if p["rows"]]
    if not panels:
        return None
    plt = _pyplot()
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    colors = {"a": "tab:gray", "b": "tab:blue", "c": "tab:orange", "d": "tab:red"}
    for ax, (run, p) in zip(axes.flat, panels, strict=False):
        rows = p["rows"]
        xs = range(len(rows))
        ax.bar(xs, [r["images_per_s"] for r in rows], color=[colors.get(r["key"], "tab:green") for r in rows])
        for x, r in zip(xs, rows, strict=True):
            # (a) itself, and rows of files whose runs had no (a), carry no ratio to (a)
            label = "1.00x" if r["key"] == "a" else ("-" if r.get("vs_a") is None else f"{r['vs_a']:.2f}x")
            ax.text(x, r["images_per_s"], label, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), [f"({r['key']})" for r in rows])
        ax.set_title(f"{run.name}\n{p['problem']}", fontsize=8)
        ax.set_ylabel("images/s")
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "training step images/s: (a) fp32 NCHW reference ops, (b) bf16 + channels-last reference ops, "
        "(c) bf16 + channels-last fast ops, (d) (c) + torch.compile; label: vs (a)",
        fontsize=7,
    )
    return _save(fig, path)


def make_plots(runs: list[Run], plots_dir: str) -> dict[str, list[str]]:
    """Every plot for the current runs; returns the written paths by kind. Removes this script's stale plots."""
    os.makedirs(plots_dir, exist_ok=True)
    out: dict[str, list[str]] = {"ops": [], "resolution": [], "instances": [], "train": []}
    current = [r for r in runs if r.later is None]
    for run in current:
        if "ops" in run.data and _op_rows(run.data["ops"]):
            out["ops"].append(plot_ops(run, os.path.join(plots_dir, f"ops-{run.name}.png")))
        sc = run.data.get("scaling")
        if sc and sc.get("resolution"):
            out["resolution"].append(
                plot_resolution(run, os.path.join(plots_dir, f"scaling-resolution-{run.name}.png"))
            )
        if sc and sc.get("instances"):
            out["instances"].append(plot_instances(run, os.path.join(plots_dir, f"scaling-instances-{run.name}.png")))
    train = plot_train(current, os.path.join(plots_dir, "train.png"))
    if train:
        out["train"].append(train)
    written = {os.path.abspath(p) for ps in out.values() for p in ps}
    for pattern in PLOT_PATTERNS:
        for old in glob.glob(os.path.join(plots_dir, pattern)):
            if os.path.abspath(old) not in written:
                os.remove(old)
    return out


# ----------------------------------------------------------------------------------------------------
# Documents


def _images(paths: list[str], start_dir: str, embed: bool = True) -> list[str]:
    """Markdown images (``embed``) or one line of links to them."""
    names = [(os.path.splitext(os.path.basename(p))[0], _rel(p, start_dir)) for p in paths]
    if not embed:
        return ["Plots: " + ", ".join(f"[{n}]({r})" for n, r in names)] if names else []
    return [f"![{n}]({r})" for n, r in names]


def key_sections(
    runs: list[Run], plots: dict[str, list[str]], start_dir: str, level: str = "###", embed: bool = True
) -> list[str]:
    """The key tables (README and the report's summary): operators, training step, pool vs instance count; with
    the plots embedded (``embed``) or linked."""
    current = [r for r in runs if r.later is None]
    parts: list[str] = []

    def images(kind: str) -> list[str]:
        lines = _images(plots.get(kind, []), start_dir, embed)
        return [*lines, ""] if lines else []

    ops = key_ops_table(current)
    if ops:
        head, body, sizes = ops
        parts += [f"{level} Operators: speed-up over the PyTorch baseline", "", md_table(head, body), ""]
        parts += [
            "Speed-up = baseline time / fast time, both eager, same process, with its 95% interval; (strongest): the "
            "fastest stock baseline of the row, its headline; ✓ / ✗: target of benchmarks/targets.toml met / missed; "
            "x floor (GPU): CUDA-graph replayed kernel time / (bytes that must move / the GPU's nominal bandwidth of "
            "targets.toml, or the measured copy bandwidth for an unlisted GPU). "
            "Sizes: " + "; ".join(sizes) + ".",
            "",
        ]
        parts += images("ops")
    train = key_train_table(current)
    if train:
        parts += [f"{level} Training step", "", md_table(*train), ""]
        parts += [
            "One full iteration (G forward, D on real and fake, losses, both backward passes, both Adam steps): "
            "(a) fp32 NCHW with the reference ops (the pix2pixHD-equivalent baseline), (b) bf16 autocast + "
            "channels-last with the reference ops, (c) the same with our ops, (d) (c) + torch.compile. Ratios are "
            "medians of per-round pairs.",
            "",
        ]
        parts += images("train")
    infer = key_infer_table(current)
    if infer:
        parts += [f"{level} Inference latency", "", md_table(*infer), ""]
        parts += [
            "The generator of the training problem (random weights), batch 1, input encoding included: median "
            "latency (speed-up over (a) in the same process). (a) is the pix2pixHD-equivalent baseline; (c) compiles "
            "(b) with inductor (+ CUDA graphs on a GPU); skipped: not available on that machine (see the report).",
            "",
        ]
    counts = key_count_table(current)
    if counts:
        parts += [f"{level} Instance-wise average pooling vs the number of instances", "", md_table(*counts), ""]
        parts += [
            "Exactly k instances per image (random sparse ids on a shuffled grid); growth = time at the most "
            "instances / time at the fewest. Ours should stay flat where the reference per-id loop grows linearly.",
            "",
        ]
        parts += images("instances")
    if plots.get("resolution"):
        parts += [f"{level} Time vs resolution", "", *images("resolution")]
    return parts


def render_report(
    runs: list[Run], notes: list[str], plots: dict[str, list[str]], out_dir: str, sources: list[str]
) -> str:
    """The whole REPORT.md text."""
    current = [r for r in runs if r.later is None]
    src = ", ".join(f"`{_rel(s, out_dir)}`" for s in sources)
    parts = [
        "# pix2pixhd_fast performance report",
        "",
        f"Generated by `benchmarks/report.py` from {src}; do not edit by hand (`make bench` measures this machine "
        "and regenerates it, `python benchmarks/report.py` only regenerates). Every ratio is baseline time / fast "
        "time measured in the same process (> 1: ours is faster).",
        "",
        "## Summary",
        "",
    ]
    parts += key_sections(runs, plots, out_dir)

    parts += ["## Machines", ""]
    head = ["run", "device", "software", "files"]
    body = []
    for run in runs:
        m = run.machine
        files = ", ".join(f"`{os.path.basename(run.files[k])}`" for k in KINDS if k in run.files)
        role = f" (earlier run of {run.later})" if run.later else ""
        body.append([run.name + role, run.describe(), _software(m) if m else "-", files])
    parts += [md_table(head, body), ""]
    if notes:
        parts += ["Skipped files: " + "; ".join(notes), ""]

    with_ops = [r for r in current if "ops" in r.data]
    if with_ops:
        parts += ["## Operators", ""]
        for run in with_ops:
            d = run.data["ops"]
            pk = d.get("peak", {})
            parts += [f"### {run.name}", "", f"{run.describe()}; {_software(run.machine)}.", ""]
            parts += [
                f"Sizes `{d['settings']['sizes']}`; {_conditions(d)}; measured copy bandwidth "
                f"{pk.get('gbps', 0):.0f} GB/s.",
                "",
            ]
            rows = _with_targets(run, d["rows"])
            parts += [md_table(*ratio_table(rows)), ""]
            if run.device == "cuda":
                parts += [
                    "Memory floor (kernel = CUDA-graph replay of the compiled op; floor = bytes / bandwidth, the "
                    "copy bandwidth measured in the run and the GPU's nominal one of targets.toml; the floor "
                    "target is checked at the nominal one):",
                    "",
                    md_table(*floor_table(rows)),
                    "",
                ]
            left = [f"{r['id']} {n}: {e}" for r in d["rows"] for n, e in r.get("baseline_errors", {}).items()]
            if left:
                parts += ["Baselines that failed on this machine (left out): " + "; ".join(left), ""]
            if d.get("errors"):
                parts += ["FAILED cases: " + "; ".join(f"{e['id']}: {e['error']}" for e in d["errors"]), ""]

    with_scaling = [r for r in current if "scaling" in r.data]
    if with_scaling:
        parts += ["## Scaling", ""]
        for run in with_scaling:
            d = run.data["scaling"]
            parts += [f"### {run.name}", "", f"{run.describe()}; {_software(run.machine)}; {_conditions(d)}.", ""]
            if not d.get("complete", True) or d.get("skipped"):
                parts += [f"Incomplete: skipped {', '.join(d.get('skipped') or []) or '(run stopped)'}.", ""]
            if d.get("instances"):
                parts += [f"instance_avg_pool vs instance count ({d['settings']['count_size']}):", ""]
                parts += [md_table(*count_table(d)), ""]
            if d.get("resolution"):
                parts += [
                    "Time vs resolution (one representative variant per op; GB/s = bytes that must move / time, of "
                    "the CUDA-graph replayed kernel on the GPU, of the fast call on the CPU):",
                    "",
                ]
                parts += [md_table(*resolution_table(d)), ""]
            if d.get("errors"):
                parts += ["FAILED cases: " + "; ".join(f"{e['id']}: {e['error']}" for e in d["errors"]), ""]

    with_train = [r for r in current if "train" in r.data]
    if with_train:
        parts += ["## Training step", ""]
        for run in with_train:
            d = run.data["train"]
            parts += [f"### {run.name}", "", f"{run.describe()}; {_software(run.machine)}; {_conditions(d)}.", ""]
            for p in d["train"]:
                parts += [f"{p['problem']} (`{' '.join(p['options'])}`):", "", md_table(*train_table(p)), ""]
            if d.get("nets"):
                parts += [f"G and D forward/backward, {d['nets']['problem']} (ratio = reference ops / fast ops):", ""]
                parts += [md_table(*nets_table(d["nets"])), ""]
            if d.get("profile"):
                pr = d["profile"]
                groups, _top = profile_tables(pr)
                parts += [
                    f"Where the fast step's time goes ({pr['config']}, {pr['problem']}, {pr['time_kind']}, "
                    f"{fmt_t(pr['profiled_s_per_step'])} per step in ops):",
                    "",
                    md_table(*groups),
                    "",
                ]
            if d.get("errors"):
                parts += ["FAILED: " + "; ".join(map(str, d["errors"])), ""]

    with_infer = [r for r in current if "infer" in r.data]
    if with_infer:
        parts += ["## Inference latency", ""]
        for run in with_infer:
            d = run.data["infer"]
            s = d["settings"]
            parts += [f"### {run.name}", "", f"{run.describe()}; {_software(run.machine)}; {_conditions(d)}.", ""]
            parts += [
                f"Random weights (seed {s['seed']}); first call (compilation, engine build) and {s['warmup']} warm-up "
                f"calls apart, then interleaved rounds of {s['iters']} calls per configuration "
                + (
                    f"(at least {s['rounds']}, until every ratio's 95% interval is within +-5% or "
                    f"{s['max_seconds']:g} s); latency = median, vs (a) = paired median of (a)'s call / this one's "
                    "[95% interval]; "
                    if s.get("max_seconds") is not None
                    else f"({s['rounds']} rounds); latency = median, vs (a) = median of per-round ratios; "
                )
                + "set-up includes the ONNX export.",
                "",
            ]
            if not d.get("complete", True) or d.get("skipped"):
                parts += [f"Incomplete: skipped {', '.join(d.get('skipped') or []) or '(run stopped)'}.", ""]
            for p in d["problems"]:
                parts += [f"{p['problem']} (`{' '.join(p['options'])}`):", "", md_table(*infer_table(p)), ""]
            if d.get("errors"):
                parts += ["FAILED: " + "; ".join(map(str, d["errors"])), ""]

    with_overhead = [r for r in current if "call-overhead" in r.data]
    if with_overhead:
        parts += ["## Call overhead", ""]
        for run in with_overhead:
            meta = run.data["call-overhead"]["meta"]
            parts += [
                f"### {run.name}",
                "",
                f"{meta.get('device')}, torch {meta.get('torch')}, CUDA {meta.get('cuda')}; {meta.get('layout')}. "
                "Median wall time per fwd+bwd call (host-bound at small sizes).",
                "",
                md_table(*overhead_table(run.data["call-overhead"])),
                "",
            ]

    with_pytest = [r for r in current if "pytest-benchmark" in r.data]
    if with_pytest:
        parts += ["## pytest-benchmark", ""]
        for run in with_pytest:
            d = run.data["pytest-benchmark"]
            info = d["machine_info"].get("pix2pixhd_fast", {})
            cond = ", ".join(
                f"{k} {info[k]}" for k in ("device", "sizes", "threads", "torch", "cuda", "loadavg_start") if k in info
            )
            parts += [
                f"### {run.name}",
                "",
                f"`{os.path.basename(run.files['pytest-benchmark'])}` (pytest-benchmark {d.get('version')}, "
                f"{d.get('datetime', '?')[:16]}; {cond}).",
                "",
                md_table(*pytest_benchmark_table(d)),
                "",
            ]

    earlier = [r for r in runs if r.later is not None and "ops" in r.data]
    if earlier:
        parts += ["## Earlier runs", ""]
        for run in current:
            mine = [e for e in earlier if e.later == run.name]
            if mine and "ops" in run.data:
                parts += [f"Operator speed-ups of the runs of {run.name}:", "", md_table(*history_table(run, mine)), ""]
    return "\n".join(parts).rstrip("\n") + "\n"


# Why the CPU instance_avg_pool's time grows with the instance count (README's summary states it with the figures).
POOL_GROWTH_WHY = (
    "the CPU kernel walks each row as runs of equal ids (one id lookup per run) and keeps one sum per instance, so the "
    "cost follows the number of instance boundaries and the size of that table, not pixels x instances"
)


def _op_headline(run: Run, rows: list[dict]) -> str | None:
    """One op's headline: its first row with a target (else its first row) against the strongest baseline."""
    rows = [r for r in rows if r["baselines"]]
    if not rows:
        return None
    r = next((r for r in rows if any(_op_target(run, r, b["name"]) for b in r["baselines"])), rows[0])
    strongest = r.get("strongest") or min(r["baselines"], key=lambda b: b["median_s"])["name"]
    b = next(b for b in r["baselines"] if b["name"] == strongest)
    return f"{r['op']} {r['variant']} {fmt_ratio_ci(b)} vs {b['name']}"


def readme_summary(runs: list[Run]) -> list[str]:
    """A few lines: per run the operators' headline ratios (vs the strongest stock baseline, 95% interval), the
    inference figure, and how pooling time grows with the instance count."""
    lines = []
    for run in [r for r in runs if r.later is None]:
        if "ops" in run.data:
            by_op: dict[str, list[dict]] = {}
            for r in _op_rows(run.data["ops"]):
                by_op.setdefault(r["op"], []).append(r)
            heads = [h for rows in by_op.values() if (h := _op_headline(run, rows))]
            if heads:
                rows = _op_rows(run.data["ops"])
                what = (
                    "vs the strongest stock baseline"
                    if all("strongest" in r for r in rows)
                    else "vs the fastest baseline in its file (no F.group_norm or torch.compile rows)"
                )
                lines.append(f"- **{run.name}** operators, {what}: " + "; ".join(heads) + ".")
        problems = []
        for p in run.data.get("infer", {}).get("problems", []):
            rows = {r["key"]: r for r in p["rows"] if r.get("status") == "ok"}
            parts = []
            for k, what in (("c", "ours compiled"), ("b", "ours eager")):
                r = rows.get(k)
                if r and r.get("vs_a") is not None:
                    ci = f" [{r['vs_a_lo']:.3g}, {r['vs_a_hi']:.3g}]" if r.get("vs_a_lo") is not None else ""
                    extra = ""
                    if r.get("vs_stock_ratio") is not None:
                        extra = (
                            f", {r['vs_stock_ratio']:.2f}x [{r['vs_stock_lo']:.3g}, {r['vs_stock_hi']:.3g}] over "
                            f"stock ops ({r['vs_stock']})"
                        )
                    parts.append(f"{what} {r['vs_a']:.2f}x{ci} vs fp32 eager{extra}")
            if parts:
                problems.append(f"{p['problem']}: " + "; ".join(parts))
        if problems:  # one line for all of a run's problems
            lines.append(f"- **{run.name}** inference (batch 1) " + " — ".join(problems) + ".")
        scaling = run.data.get("scaling", {})
        rows = sorted(scaling.get("instances", []), key=lambda r: r["info"]["instances"])
        if len(rows) > 1:
            k0, k1 = rows[0]["info"]["instances"], rows[-1]["info"]["instances"]
            growth = rows[-1]["fast_s"] / rows[0]["fast_s"]
            loop = [
                next((b["median_s"] for b in r["baselines"] if b["name"] == "loop"), None) for r in (rows[0], rows[-1])
            ]
            tail = f" (the reference loop: {loop[1] / loop[0]:.0f}x)" if None not in loop else ""
            why = f": {POOL_GROWTH_WHY}" if run.device == "cpu" else ""
            lines.append(
                f"- **{run.name}** instance_avg_pool time grows {growth:.1f}x from {k0} to {k1} instances{tail}{why}."
            )
    return lines


def render_readme_block(runs: list[Run], plots: dict[str, list[str]], readme_dir: str, report_path: str) -> str:
    """README's performance section: a short summary and a link to the full report."""
    rel = _rel(report_path, readme_dir)
    parts = [
        BEGIN,
        "<!-- generated by benchmarks/report.py from benchmarks/results/*.json: edit there, not here -->",
        "",
        f"Ratios are baseline time / our time in the same process, with 95% intervals; every table, plot, machine "
        f"and ✓/✗ against [benchmarks/targets.toml](benchmarks/targets.toml) is in [{rel}]({rel}).",
        "",
        *readme_summary(runs),
        END,
    ]
    return "\n".join(parts)


def update_readme(path: str, block: str) -> bool:
    """Put ``block`` between the markers of README's performance section; returns whether the file changed.

    Without markers the block goes at the end of the "## Performance" section (created at the end if absent)."""
    with open(path) as f:
        text = f.read()
    if (BEGIN in text) != (END in text) or text.count(BEGIN) > 1 or text.count(END) > 1:
        raise ValueError(f"{path}: expected one {BEGIN} and one {END} marker")
    if BEGIN in text:
        i, j = text.index(BEGIN), text.index(END) + len(END)
        if j < i:
            raise ValueError(f"{path}: {END} comes before {BEGIN}")
        new = text[:i] + block + text[j:]
    else:
        head = "## Performance"
        lines = text.split("\n")
        at = next((k for k, ln in enumerate(lines) if ln.strip() == head), None)
        if at is None:
            new = text.rstrip("\n") + f"\n\n{head}\n\n{block}\n"
        else:
            end = next((k for k in range(at + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
            while end > at + 1 and not lines[end - 1].strip():
                end -= 1
            new = "\n".join(lines[:end] + ["", block, ""] + lines[end:]).rstrip("\n") + "\n"
    if new == text:
        return False
    with open(path, "w") as f:
        f.write(new)
    return True


# ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--results",
        action="append",
        default=None,
        help="results folder or file (repeatable; default benchmarks/results)",
    )
    ap.add_argument("--out", default=os.path.join(HERE, "REPORT.md"), help="the report to write")
    ap.add_argument("--plots", default=os.path.join(HERE, "plots"), help="folder for the PNG plots")
    ap.add_argument("--no-plots", action="store_true", help="write no plots (no matplotlib needed)")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="README to update between the markers")
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = ap.parse_args(argv)
    args.results = args.results or [os.path.join(HERE, "results")]
    return args


def main(argv=None) -> dict:
    """Write the report (and plots, README section); returns what was written."""
    args = parse_args(argv)
    runs, notes = load_runs(args.results)
    if not runs:
        raise SystemExit(f"report.py: no benchmark results in {', '.join(args.results)}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    plots = {} if args.no_plots else make_plots(runs, args.plots)
    text = render_report(runs, notes, plots, out_dir, [os.path.abspath(s) for s in args.results])
    with open(args.out, "w") as f:
        f.write(text)
    readme_changed = None
    if not args.no_readme:
        block = render_readme_block(runs, plots, os.path.dirname(os.path.abspath(args.readme)), args.out)
        readme_changed = update_readme(args.readme, block)
    summary = {
        "report": args.out,
        "runs": {r.name: sorted(r.data) for r in runs},
        "plots": [p for ps in plots.values() for p in ps],
        "readme_changed": readme_changed,
        "skipped": notes,
    }
    readme = {True: "updated", False: "unchanged", None: "not touched"}[readme_changed]
    names = ", ".join(r.name for r in runs)
    print(f"report.py: {args.out} from {len(runs)} runs ({names}); {len(summary['plots'])} plots; README {readme}")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
