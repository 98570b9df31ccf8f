"""Inference latency per backend: the generator of the training benchmark's problems, side by side in one process.

    python benchmarks/run_infer.py --device cpu --json results/cpu-2core-infer.json      # global G ngf 32, 256x512
    python benchmarks/run_infer.py --device cuda --json gpu_infer.json --budget-s 60      # LocalEnhancer, global
    python benchmarks/run_infer.py --sizes tiny --backends a,r,b,d,e --rounds 2           # smoke run (seconds)

Problems (run_train.py's, same options and synthetic street scene: uint8 labels in [0, 35), int32 instance
ids, batch 1): on the CPU the global generator (ngf 32) at 256x512; on a GPU the LocalEnhancer (ngf 32) at
2048x1024 first (targets.toml: ours through torch.compile + CUDA graphs >= 3x the fp32 eager latency), then
the global generator (ngf 64) at 1024x512. Weights are random (seeded, the same in every configuration: the fast
models load the baseline's state_dict): latency does not depend on their values, and no checkpoint is needed.

Configurations (``--backends`` picks by key):
  (a) eager, fp32, NCHW, reference ops (nn.InstanceNorm2d + activations, plain-PyTorch input encoding): the
      pix2pixHD-equivalent baseline, measured in the same process as the others (on CUDA: TF32 convolutions, as
      PyTorch's defaults leave them);
  (r) eager, bf16 autocast + channels-last, reference ops: what precision and layout alone give;
  (b) eager, bf16 autocast + channels-last, our fused ops (``vs_stock``: what our ops add over (r));
  (ac), (rc), (c): (a), (r), (b) through torch.compile (inductor, fullgraph; CUDA graphs on the GPU):
      ``pix2pixhd_fast.export.backends``' ``compile`` backend; (c) is also set against (rc). That backend compiles
      ``export.InferenceGraph``, which encodes the input with ``ops.encode_input`` whatever the model's ``--ops``:
      in (rc) and (ac) the generator's layers are stock, the input encoding (one op of the graph) is ours;
  (d) onnxruntime, fp32, the generator's ONNX export (CPU only: on a GPU machine it would time the host);
  (e) TensorRT, bf16, an engine built from that export (needs TensorRT and a GPU; else recorded as skipped, with the
      reason).
Every backend is ``pix2pixhd_fast.export.backends.make_backend``'s, fed raw label/instance ids (the input encoding
is part of each timed call). Label checks are off (``check_inputs = False``, as in training: the data pipeline
checks labels, and the check would sync the GPU every call).

Timing: ``setup`` (ONNX export and its check for (d)/(e)), the first call (compilation, engine build) and the rest of
the warm-up are reported apart; then interleaved rounds (benchmarks/timing.py: the order rotates, ``--iters`` calls
per configuration and round, CUDA events on the GPU, torch.utils.benchmark on the CPU), at least ``--rounds`` and
until every ratio vs (a) has a 95% interval within +-5% (or ``--max-rounds`` / ``--max-seconds``). Latency = median
over all timed calls; ``vs_a`` = paired median of (a)'s call / this one's, with its 95% interval (a burst of load
from other processes stretches both sides of a pair alike); ``max_abs_diff_vs_a`` = largest difference
of the first output from (a)'s. ``--budget-s`` starts no new problem or backend set-up after that many seconds;
the JSON is rewritten after every problem. ``kind: "infer"`` marks the file for benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):  # run as a script from anywhere, without installing the package
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from run_ops import _loadavg, machine_info  # noqa: E402
from run_train import COMMON, PRESETS, CpuLoad, Problem, load_line, make_batch  # noqa: E402
from tables import fmt_t, infer_table, md_table, text_table  # noqa: E402
from targets import infer_targets  # noqa: E402
from timing import measure_interleaved, ratio_ci, steady_cpu_allocator, summary  # noqa: E402

from pix2pixhd_fast.export.backends import InferenceBackend, make_backend  # noqa: E402
from pix2pixhd_fast.models.pix2pixhd import Pix2PixHDModel  # noqa: E402
from pix2pixhd_fast.options import parse_train  # noqa: E402
from pix2pixhd_fast.train.trainer import resolve_amp  # noqa: E402
from pix2pixhd_fast.utils.files import atomic_write  # noqa: E402

# ----------------------------------------------------------------------------------------------------
# Problems and configurations

# Problems by sizes preset, in run order (names of run_train.PRESETS' problems of that preset).
PROBLEMS = {"cpu": ("global",), "gpu": ("local", "global"), "tiny": ("global",)}


def problems_for(sizes: str) -> list[Problem]:
    """run_train.py's problems of the ``sizes`` preset that this benchmark times, in :data:`PROBLEMS` order."""
    by_name = {p.name: p for p in PRESETS[sizes]}
    return [by_name[n] for n in PROBLEMS[sizes]]


@dataclass(frozen=True)
class InferConfig:
    """One way to run the generator: a backend of ``pix2pixhd_fast.export.backends`` on a model built with ``ops``
    and ``channels_last``, under ``amp`` (bf16 autocast) or fp32."""

    key: str
    backend: str
    name: str
    ops: str
    amp: bool
    channels_last: bool

    @property
    def precision(self) -> str:
        return "bf16" if self.amp else "fp32"


CONFIGS = (
    InferConfig("a", "eager", "eager fp32 NCHW, reference ops", "reference", False, False),
    InferConfig("r", "eager", "eager bf16 + channels-last, reference ops", "reference", True, True),
    InferConfig("b", "eager", "eager bf16 + channels-last, fast ops", "fast", True, True),
    # Ours compiled before the compiled baselines: under --budget-s the target row is set up first.
    InferConfig("c", "compile", "torch.compile of (b)", "fast", True, True),
    InferConfig("rc", "compile", "torch.compile of (r)", "reference", True, True),
    InferConfig("ac", "compile", "torch.compile of (a)", "reference", False, False),
    InferConfig("d", "onnxruntime", "onnxruntime fp32", "fast", False, False),
    InferConfig("e", "tensorrt", "TensorRT bf16", "fast", True, True),
)
BASELINE = "a"
# What our ops add over stock PyTorch at the same precision, layout and backend: config -> its stock twin.
STOCK_TWIN = {"b": "r", "c": "rc"}


def config_options(problem: Problem, config: InferConfig, device: str) -> list[str]:
    """Reference option strings of one problem's generator in one configuration."""
    argv = [*COMMON, *problem.options, "--batchSize", str(problem.batch), "--device", device]
    argv += ["--ops", config.ops, "--amp", "bf16" if config.amp else "off"]
    if not config.channels_last:
        argv.append("--no_channels_last")
    return argv


# ----------------------------------------------------------------------------------------------------
# One problem


class Runner:
    """One configuration's backend with its timings."""

    def __init__(self, config: InferConfig, backend: InferenceBackend, call: Callable[[], torch.Tensor]):
        self.config, self.backend, self.call = config, backend, call
        self.times: list[float] = []
        self.first_call_s: float | None = None
        self.warmup_s: float | None = None
        self.output: torch.Tensor | None = None


def _warm(fn: Callable[[], Any], n: int, cuda: bool) -> None:
    """``n`` untimed calls (CUDA graphs are recorded in the first ones), then a sync."""
    for _ in range(n):
        fn()
    if cuda:
        torch.cuda.synchronize()


def _first_call(fn: Callable[[], torch.Tensor], cuda: bool) -> tuple[torch.Tensor, float]:
    """One call, synchronised: its output (a CPU copy) and wall time (compilation / engine build happen here)."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out.detach().float().cpu(), time.perf_counter() - t0


def _message(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _skip_reason(config: InferConfig, device: str) -> str | None:
    """Why a configuration is not run on this device before trying it (None: try it)."""
    if config.backend == "onnxruntime" and device == "cuda":
        return "CPU only in this benchmark (onnxruntime's CPU provider on a GPU machine would time the host)"
    return None


def bench_problem(
    problem: Problem,
    configs: list[InferConfig],
    args: argparse.Namespace,
    device: str,
    over_budget: Callable[[], bool],
) -> dict:
    """Build the models and backends of every configuration, warm each up, then time them in interleaved rounds.

    Returns the problem's results: ``problem`` (``name-HxW``), sizes, ``options``, ``params_G`` and ``rows``, one per
    configuration with ``status`` ``ok`` (``median_s``, ``min_s``, ``vs_a``, ``max_abs_diff_vs_a``, ``setup_s``,
    ``first_call_s``, ...), ``skipped`` or ``failed`` (``reason``).
    """
    from pix2pixhd_fast.export.tensorrt import EngineBuildError, TensorRTUnavailableError

    cuda = device == "cuda"
    dev = torch.device(device)
    batch = make_batch(problem, device, args.seed)
    label, inst = batch["label"], batch["inst"]
    rows: dict[str, dict] = {}
    runners: list[Runner] = []
    models: dict[tuple[str, bool], Pix2PixHDModel] = {}
    state = None
    tmp = tempfile.TemporaryDirectory(prefix="p2phd_infer_")  # ONNX/engine files of random weights: scratch only
    try:
        for cfg in configs:
            row: dict[str, Any] = {
                "key": cfg.key,
                "config": cfg.name,
                "backend": cfg.backend,
                "precision": cfg.precision,
                "ops": cfg.ops,
                "channels_last": cfg.channels_last,
            }
            rows[cfg.key] = row
            reason = _skip_reason(cfg, device)
            if reason is None and over_budget():
                reason = f"--budget-s {args.budget_s:g} s spent before its set-up"
            if reason is not None:
                row.update(status="skipped", reason=reason)
                print(f"  [{problem.id}] ({cfg.key}) {cfg.name}: skipped ({reason})", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                opt = parse_train(config_options(problem, cfg, device))
                mk = (cfg.ops, cfg.channels_last)
                if mk not in models:
                    torch.manual_seed(args.seed)
                    with dev:  # parameters created on the device
                        model = Pix2PixHDModel(opt, is_train=False)
                    if state is None:
                        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:  # every configuration runs the same weights
                        model.load_state_dict(state, strict=True)
                    model.check_inputs = False
                    model.eval()
                    if cfg.channels_last:
                        model.to(memory_format=torch.channels_last)
                    models[mk] = model
                model = models[mk]
                run_opt = copy.copy(opt)
                run_opt.checkpoints_dir, run_opt.name, run_opt.which_epoch = tmp.name, cfg.key, "random"
                run_opt.num_threads = torch.get_num_threads()  # onnxruntime: the same thread count as torch
                os.makedirs(os.path.join(tmp.name, cfg.key), exist_ok=True)
                amp = resolve_amp("bf16" if cfg.amp else "off", dev)
                backend = make_backend(cfg.backend, model, run_opt, dev, amp)
                row["setup_s"] = time.perf_counter() - t0
                call = lambda b=backend: b(label, inst, None, None)  # noqa: E731
                r = Runner(cfg, backend, call)
                r.output, r.first_call_s = _first_call(call, cuda)
                warm = max(args.warmup, 3) if (cfg.backend == "compile" and cuda) else args.warmup
                t1 = time.perf_counter()
                _warm(call, warm, cuda)  # CUDA graphs are recorded on the second/third call
                r.warmup_s = time.perf_counter() - t1
                row.update(first_call_s=r.first_call_s, warmup_calls=warm, warmup_s=r.warmup_s)
            except (TensorRTUnavailableError, EngineBuildError) as e:
                row.update(status="skipped", reason=_message(e))
                print(f"  [{problem.id}] ({cfg.key}) {cfg.name}: skipped ({row['reason']})", flush=True)
                continue
            except Exception as e:  # e.g. a compile failure: report it, time the others
                row.update(status="failed", reason=_message(e))
                print(f"  [{problem.id}] ({cfg.key}) {cfg.name}: FAILED {row['reason']}", flush=True)
                if cuda:
                    torch.cuda.synchronize()
                continue
            if cfg.backend == "onnxruntime":
                row["provider"] = backend.runner.session.get_providers()[0]
            runners.append(r)
            print(
                f"  [{problem.id}] ({cfg.key}) {cfg.name}: set-up {fmt_t(row['setup_s'])}, first call "
                f"{fmt_t(r.first_call_s)}, {warm} warm-up calls {fmt_t(r.warmup_s)}",
                flush=True,
            )

        # Interleaved rounds (benchmarks/timing.py): (a) first, so that the stopping rule is on every ratio vs (a).
        if runners:
            ordered = sorted(runners, key=lambda r: r.config.key != BASELINE)
            samples = measure_interleaved(
                {r.config.key: r.call for r in ordered},
                device=device,
                min_rounds=args.rounds,
                max_rounds=max(args.rounds, args.max_rounds),
                max_seconds=args.max_seconds,
                warmup=0,
                calls_per_round=args.iters,
            )
            for r in runners:
                r.times = samples[r.config.key]

        base = next((r for r in runners if r.config.key == BASELINE), None)
        by_key = {r.config.key: r for r in runners}
        targets = infer_targets(args.sizes, problem.name)
        for r in runners:
            row = rows[r.config.key]
            row.update(status="ok", times_s=r.times, images_per_s=problem.batch / statistics.median(r.times))
            row.update(summary(r.times))
            if base is not None:
                row["vs_a"], row["vs_a_lo"], row["vs_a_hi"] = ratio_ci(base.times, r.times)
                row["vs_a_of_medians"] = statistics.median(base.times) / row["median_s"]
                row["max_abs_diff_vs_a"] = float((r.output - base.output).abs().max())
            twin = by_key.get(STOCK_TWIN.get(r.config.key, ""))
            if twin is not None:
                row["vs_stock"] = twin.config.key
                row["vs_stock_ratio"], row["vs_stock_lo"], row["vs_stock_hi"] = ratio_ci(twin.times, r.times)
        for key, value in targets.items():
            row = rows.get(key)
            if row is not None:
                got = row.get("vs_a")
                row["target"] = {"vs_a": value, "met": None if got is None else got >= value}
        params = sum(p.numel() for p in next(iter(models.values())).netG.parameters()) if models else None
    finally:
        compiled = any(r.config.backend == "compile" for r in runners)
        del runners, models
        if compiled:  # dynamo's caches hold the compiled modules (and their parameters) until reset
            torch._dynamo.reset()
        tmp.cleanup()
    return {
        "problem": problem.id,
        "name": problem.name,
        "height": problem.height,
        "width": problem.width,
        "batch": problem.batch,
        "options": list(COMMON + problem.options),
        "params_G": params,
        "rows": [rows[c.key] for c in configs],
        "targets": {k: {"vs_a": v} for k, v in targets.items()},
    }


# ----------------------------------------------------------------------------------------------------
# Output


def header_lines(res: dict) -> list[str]:
    m, s = res["machine"], res["settings"]
    lines = []
    if m.get("gpu"):
        lines.append(f"GPU: {m['gpu']} (cc {m['cc']}, {m['gpu_sms']} SMs, {m['gpu_memory_gib']} GiB)")
        lines.append(f"TF32 convolutions (PyTorch's default, untouched): cudnn.allow_tf32={m.get('cudnn_allow_tf32')}")
    lines.append(f"CPU: {m['cpu']} ({m['cpu_capability']}; {' '.join(m['cpu_flags'])}); torch threads: {m['threads']}")
    lines.append(f"torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}; onnxruntime {m.get('onnxruntime')}")
    load = load_line(m, res.get("load"), s["device"])
    if load:
        lines.append(load)
    lines.append(
        f"timing: first call and {s['warmup']} warm-up calls apart (3 for compile on CUDA), then >= {s['rounds']} "
        f"interleaved rounds of {s['iters']} calls until each ratio's 95% interval is within +-5% (at most "
        f"{s.get('max_rounds')} rounds / {s.get('max_seconds')} s); median latency, vs (a) = paired median [95% CI]; "
        f"{'CUDA events' if s['device'] == 'cuda' else 'perf_counter'}; random weights (seed {s['seed']})"
    )
    return lines


def render_markdown(res: dict) -> str:
    s = res["settings"]
    parts = [f"# pix2pixhd_fast inference latency ({s['device']}, sizes {s['sizes']})", ""]
    if not res.get("complete"):
        parts += ["**Incomplete: the run stopped (or is still running) after the parts below.**", ""]
    parts += [f"- {ln}" for ln in header_lines(res)]
    for p in res["problems"]:
        parts += ["", f"## {p['problem']}", "", f"Options: `{' '.join(p['options'])}`", "", md_table(*infer_table(p))]
    if res["errors"]:
        parts += ["", "## FAILED", ""] + [f"- {e}" for e in res["errors"]]
    if res.get("skipped"):
        parts += ["", "Skipped (time budget spent): " + ", ".join(res["skipped"])]
    return "\n".join(parts) + "\n"


def _write(res: dict, args: argparse.Namespace, load: CpuLoad, t_all: float) -> None:
    res["total_s"] = time.perf_counter() - t_all
    res["load"] = load.summary()
    res["machine"]["loadavg_end"] = _loadavg()
    for path, render in ((args.json, None), (args.markdown, render_markdown)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with atomic_write(path, "w") as f:
                if render is None:
                    json.dump(res, f, indent=1, default=str)
                else:
                    f.write(render(res))


# ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", choices=sorted(PROBLEMS), default=None, help="default: cpu on CPU, gpu on CUDA")
    ap.add_argument("--only", default=None, help="comma-separated problem names to run (global, local)")
    ap.add_argument("--backends", default=",".join(c.key for c in CONFIGS), help="comma-separated configuration keys")
    ap.add_argument("--json", default=None, help="write the full results here")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per configuration and round (CPU 1, CUDA 5)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds at least (5)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls after the first (CPU 1, CUDA 3)")
    ap.add_argument("--max-rounds", type=int, default=200, help="rounds at most (stop earlier at a +-5%% interval)")
    ap.add_argument(
        "--max-seconds", type=float, default=None, help="timed seconds per problem at most (CPU 40, CUDA 20)"
    )
    ap.add_argument("--budget-s", type=float, default=None, help="start no new problem or set-up after this time")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (onnxruntime gets the same)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.sizes = args.sizes or ("gpu" if cuda else "cpu")
    args.iters = args.iters if args.iters is not None else (5 if cuda else 1)
    args.rounds = args.rounds if args.rounds is not None else 5
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.max_seconds is None:
        args.max_seconds = 20.0 if cuda else 40.0
    for k in ("iters", "rounds", "max_rounds"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    keys = [k.strip() for k in args.backends.split(",") if k.strip()]
    unknown = sorted(set(keys) - {c.key for c in CONFIGS})
    if unknown or not keys:
        ap.error(
            f"--backends: unknown configuration(s) {unknown or 'none given'}; use {', '.join(c.key for c in CONFIGS)}"
        )
    args.config_keys = keys
    names = {p.name for p in problems_for(args.sizes)}
    args.problem_names = None
    if args.only:
        want = {k.strip() for k in args.only.split(",") if k.strip()}
        if not want or want - names:
            ap.error(f"--only: no problem {sorted(want - names) or 'given'} in sizes {args.sizes!r}")
        args.problem_names = want
    return args


def main(argv=None) -> dict:
    """Run the benchmark; returns the results (as written to ``--json``)."""
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run_infer.py: --device cuda but torch sees no CUDA GPU")
    if device == "cpu":
        steady_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    problems = [p for p in problems_for(args.sizes) if args.problem_names is None or p.name in args.problem_names]
    configs = [c for c in CONFIGS if c.key in args.config_keys]
    res: dict[str, Any] = {
        "kind": "infer",
        "settings": {
            "device": device,
            "sizes": args.sizes,
            "iters": args.iters,
            "rounds": args.rounds,
            "max_rounds": args.max_rounds,
            "max_seconds": args.max_seconds,
            "warmup": args.warmup,
            "configs": [c.key for c in configs],
            "baseline": BASELINE,
            "budget_s": args.budget_s,
            "seed": args.seed,
            "weights": "random (seeded)",
        },
        "machine": machine_info(device),
        "problems": [],
        "errors": [],
        "skipped": [],
        "complete": False,
    }
    try:
        import onnxruntime

        res["machine"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        res["machine"]["onnxruntime"] = None
    if device == "cuda":
        res["machine"]["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        res["machine"]["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    load = CpuLoad()
    t_all = time.perf_counter()

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - t_all > args.budget_s

    print("\n".join(header_lines(res)[:-1]), flush=True)
    for problem in problems:
        print(f"\n{problem.describe()}", flush=True)
        if over_budget():
            print(f"  SKIPPED: --budget-s {args.budget_s:g} s spent", flush=True)
            res["skipped"].append(problem.id)
            continue
        t0 = time.perf_counter()
        try:
            out = bench_problem(problem, configs, args, device, over_budget)
        except Exception as e:
            msg = f"{problem.id}: {_message(e)}"
            print("  FAILED " + msg, flush=True)
            res["errors"].append(msg)
        else:
            failed = [r for r in out["rows"] if r["status"] == "failed"]
            res["errors"] += [f"{problem.id} ({r['key']}): {r['reason']}" for r in failed]
            res["problems"].append(out)
            print(text_table(*infer_table(out)), flush=True)
        finally:
            gc.collect()
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            _write(res, args, load, t_all)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    res["complete"] = True
    _write(res, args, load, t_all)
    print("\n" + "\n".join(header_lines(res)))
    return res


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
