"""End-to-end training benchmarks: one full pix2pixHD iteration in several configurations, in one process.

    python benchmarks/run_train.py --device cpu --profile                      # CPU sizes (256x512)
    python benchmarks/run_train.py --device cuda --sizes gpu --profile --json gpu_train.json --markdown gpu_train.md
    python benchmarks/run_train.py --sizes tiny --iters 2 --warmup 1           # smoke run

Three parts:

1. Training step. One iteration exactly as ``Trainer.train_step`` runs it (G (+E) forward, D on real and fake,
   the losses, G's backward and Adam step, D's backward and Adam step) on a synthetic batch: a Cityscapes-like
   scene (label ids in [0, 35) as uint8, an int32 instance map of 20-60 regions with ids ``class*1000+k`` for
   the things) and a random image in [-1, 1], already on the device (the data loader overlaps that copy).
   Configurations, built from the same seed (same initial weights):
     (a) fp32, NCHW, reference ops (nn.InstanceNorm2d + activations, plain-PyTorch encode/pooling): the
         pix2pixHD-equivalent baseline (on CUDA, TF32 convolutions as PyTorch's default leaves them);
     (b) bf16 autocast + channels-last, reference ops;
     (c) bf16 autocast + channels-last, our fused ops;
     (d) (c) + torch.compile of each network (``--compile``).
   All configurations use what the model always does (D's real and fake passes batched, D frozen for G's
   adversarial pass, fused Adam), so (a) is already faster than NVIDIA's code: the ratios are conservative.
   The configurations' timed steps are interleaved (rounds of a few steps each), so a noisy neighbour on a
   shared machine slows all of them alike. Reported: median step time, images/s, ratio vs (a) and (b), and on
   CUDA the peak memory one configuration would need alone (its parameters, gradients and Adam state, plus the
   largest increase of ``torch.cuda.max_memory_allocated`` during one step); on the CPU peak memory is not
   measured.
2. G and D forward/backward (``--no-nets`` skips): G forward (no grad), G forward+backward, D forward+backward
   (all intermediate features, random upstream gradients, input gradient too), fast vs reference ops, fp32
   NCHW and bf16 autocast channels-last, for the first training problem's networks.
3. Profile (``--profile``): torch.profiler over a few steps of configuration (c); each op's self time (CPU) or
   self device time (CUDA) goes to the group of its nearest classified ancestor (so the copies inside
   ``instance_norm`` count as norm time), printed as a table of shares.

CPU timing: time.perf_counter around each step. CUDA timing: torch.cuda.Event pairs around each round of
consecutive steps of one configuration (per-step time = round time / steps), medians over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):  # run as a script from anywhere, without installing the package
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cases import LABEL_NC, cityscapes_like  # noqa: E402
from run_ops import _loadavg, machine_info  # noqa: E402
from tables import fmt_t, md_table, nets_table, profile_tables, text_table, train_table  # noqa: E402

from pix2pixhd_fast.models import pix2pixhd as p2p_model  # noqa: E402
from pix2pixhd_fast.models.pix2pixhd import Pix2PixHDModel  # noqa: E402
from pix2pixhd_fast.options import parse_train  # noqa: E402
from pix2pixhd_fast.train.schedule import trainable_generator_params  # noqa: E402
from pix2pixhd_fast.train.trainer import Trainer, make_adam, resolve_amp  # noqa: E402
from pix2pixhd_fast.utils.files import atomic_write  # noqa: E402

# ----------------------------------------------------------------------------------------------------
# Problems and configurations


@dataclass(frozen=True)
class Problem:
    """One network/size setting: ``options`` are reference option strings (``--netG local --ngf 32 ...``)."""

    name: str
    height: int
    width: int
    options: tuple[str, ...]
    batch: int = 1

    @property
    def id(self) -> str:
        return f"{self.name}-{self.height}x{self.width}"

    def describe(self) -> str:
        return f"{self.name} {self.height}x{self.width} (HxW), batch {self.batch}: {' '.join(self.options)}"


# Every problem: Cityscapes' 35 labels + instance edges, no VGG loss (its weights are not on this machine), and
# the reference's defaults otherwise (n_downsample_global 4, n_blocks_global 9, n_layers_D 3, ndf 64, LSGAN,
# feature matching on).
COMMON = ("--label_nc", str(LABEL_NC), "--no_vgg_loss")

_TINY = ("--ngf", "8", "--ndf", "8", "--n_blocks_global", "1", "--num_D", "2")
PRESETS: dict[str, list[Problem]] = {
    "tiny": [
        Problem("global", 64, 128, _TINY),
        Problem("global+feat", 64, 128, (*_TINY, "--instance_feat", "--nef", "4")),
        Problem(
            "local",
            64,
            128,
            ("--netG", "local", "--ngf", "4", "--ndf", "8", "--n_blocks_global", "1", "--n_blocks_local", "1")
            + ("--num_D", "3"),
        ),
    ],
    "cpu": [Problem("global", 256, 512, ("--ngf", "32", "--num_D", "2"))],
    "gpu": [  # the LocalEnhancer before the feature variant: its memory target matters more
        Problem("global", 512, 1024, ("--ngf", "64", "--num_D", "2")),
        Problem("local", 1024, 2048, ("--netG", "local", "--ngf", "32", "--num_D", "3")),
        Problem("global+feat", 512, 1024, ("--ngf", "64", "--num_D", "2", "--instance_feat")),
    ],
}

# DESIGN.md's end-to-end targets, per (sizes, problem name): minimum speed-up of (c)/(d) over (a) and (b), and
# maximum peak memory of (c)/(d) as a fraction of (a)'s.
TARGETS: dict[tuple[str, str], dict[str, float]] = {
    ("cpu", "global"): {"vs_a": 2.5, "vs_b": 1.25},
    ("gpu", "global"): {"vs_a": 3.0},
    ("gpu", "global+feat"): {"vs_a": 3.0},
    ("gpu", "local"): {"mem_vs_a": 0.5},
}


@dataclass(frozen=True)
class Config:
    key: str
    name: str
    ops: str
    amp: bool
    channels_last: bool
    compile: bool = False


CONFIGS = (
    Config("a", "fp32 NCHW, reference ops", "reference", False, False),
    Config("b", "bf16 AMP + channels-last, reference ops", "reference", True, True),
    Config("c", "bf16 AMP + channels-last, fast ops", "fast", True, True),
    Config("d", "(c) + torch.compile", "fast", True, True, compile=True),
)


def _paired_ratio(baseline: list[float], fast: list[float]) -> float:
    """Median over rounds of baseline time / fast time measured in the same round.

    The two run back to back in each round, so a burst of load from other processes on a shared machine
    stretches both sides of a pair alike; the median of the pairs is then steadier than the ratio of medians
    (kept in the JSON as ``*_of_medians``)."""
    return statistics.median(b / f for b, f in zip(baseline, fast, strict=True))


def problem_options(problem: Problem, config: Config, device: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Reference option strings for one problem in one configuration."""
    argv = [*COMMON, *problem.options, *extra, "--batchSize", str(problem.batch), "--device", device]
    argv += ["--ops", config.ops, "--amp", "bf16" if config.amp else "off"]
    if not config.channels_last:
        argv.append("--no_channels_last")
    return argv


# ----------------------------------------------------------------------------------------------------
# Inputs


def make_batch(problem: Problem, device: str, seed: int) -> dict[str, torch.Tensor]:
    """A synthetic training batch as the data loader yields it (label uint8, inst int32, image float32)."""
    rng = np.random.default_rng(seed)
    instances = int(rng.integers(20, 61))
    label, inst = cityscapes_like(problem.batch, problem.height, problem.width, instances, seed=seed)
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(problem.batch, 3, problem.height, problem.width, generator=g) * 2 - 1
    return {"label": label.to(torch.uint8).to(device), "inst": inst.to(device), "image": image.to(device)}


# ----------------------------------------------------------------------------------------------------
# Timing


class Timer:
    """Seconds per call of ``fn``: perf_counter on the CPU; on CUDA, events around ``n`` consecutive calls.

    On the CPU the process's CPU time per call is kept too (``last_cpu_s``): on a shared machine other processes
    stretch wall times by however long they hold the cores, while CPU time (core-seconds of work, all threads)
    moves much less, so its ratios are the steadier check there.
    """

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.last_cpu_s: float | None = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def per_call(self, fn: Callable[[int], Any], n: int, start: int = 0) -> float:
        """Run ``fn(start), fn(start + 1), ...`` ``n`` times back to back; return the mean time of one call."""
        self.sync()
        if not self.cuda:
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(n):
                fn(start + i)
            t1, c1 = time.perf_counter(), time.process_time()
            self.last_cpu_s = (c1 - c0) / n
            return (t1 - t0) / n
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(n):
            fn(start + i)
        b.record()
        b.synchronize()
        return a.elapsed_time(b) * 1e-3 / n


class CpuLoad:
    """How busy the machine was: the cores used by other processes during a span (from /proc/stat and our own
    CPU time), so a reader can judge CPU timings taken on a shared machine."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                vals = [float(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
        return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def summary(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.t0
        busy = self._busy()
        own = (self._own() - self.own0) / wall
        if busy is None or self.busy0 is None:
            return {"wall_s": wall, "own_cores": own, "others_cores": None}
        return {"wall_s": wall, "own_cores": own, "others_cores": max(0.0, (busy - self.busy0) / wall - own)}


# ----------------------------------------------------------------------------------------------------
# One configuration's training step


def _bare_trainer(model: Pix2PixHDModel, opt: argparse.Namespace, device: torch.device, amp_dtype) -> Trainer:
    """A Trainer holding only what ``Trainer.train_step`` uses (no dataset, folders or logging), so the
    benchmark times the trainer's own step function, built as ``Trainer.__init__`` builds it."""
    t = Trainer.__new__(Trainer)
    t.opt, t.device, t.model = opt, device, model
    t.amp_dtype = amp_dtype
    t.input_dtype = amp_dtype or torch.float32
    t.channels_last = opt.channels_last
    g_params = trainable_generator_params(model.netG, opt, False)
    if model.netE is not None:
        g_params += list(model.netE.parameters())
    t.optimizer_G = make_adam(g_params, opt.lr, opt.beta1, device, opt.fused_adam)
    t.optimizer_D = make_adam(model.netD.parameters(), opt.lr, opt.beta1, device, opt.fused_adam)
    t.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return t


def _state_bytes(trainer: Trainer) -> int:
    """Bytes of the parameters, gradients and optimizer state that a training run keeps between steps."""
    seen: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for p in trainer.model.parameters():
        add(p)
        if p.grad is not None:
            add(p.grad)
    for o in (trainer.optimizer_G, trainer.optimizer_D):
        for s in o.state.values():
            for v in s.values():
                add(v)
    return sum(seen.values())


class StepRunner:
    """One configuration of one problem: the model, its optimizers and ``step(batch)`` = ``Trainer.train_step``."""

    def __init__(self, problem: Problem, config: Config, device: str, seed: int, extra: tuple[str, ...] = ()):
        self.problem, self.config = problem, config
        self.opt = parse_train(problem_options(problem, config, device, extra))
        dev = torch.device(device)
        torch.manual_seed(seed)  # every configuration starts from the same weights
        with dev:  # parameters created and initialised on the device (seconds per 180M-parameter G on a CPU)
            model = Pix2PixHDModel(self.opt, is_train=True)
        model.check_inputs = False  # as the trainer: labels are checked by the dataset, no sync per step
        if self.opt.channels_last:
            model.to(memory_format=torch.channels_last)
        amp = resolve_amp("bf16" if config.amp else "off", dev)
        self.trainer = _bare_trainer(model, self.opt, dev, amp)
        if config.compile:  # as Trainer._wrap: the model calls the compiled modules
            for k in ("G", "D", "E"):
                net = getattr(model, "net" + k)
                if net is not None:
                    setattr(model, "net" + k, torch.compile(net))
        model.set_generator_discriminator(None)
        self.times: list[float] = []
        self.round_times: list[float] = []  # one mean step time per interleaved round
        self.cpu_times: list[float] = []
        self.first_step_s: float | None = None
        self.peak_bytes: int | None = None
        self.state_bytes: int | None = None

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.trainer.train_step(batch)  # the losses and the image stay on the device: no sync

    def n_params(self) -> int:
        return sum(p.numel() for p in self.trainer.model.parameters())


def measure_peak(runner: StepRunner, batch: dict) -> None:
    """CUDA: the peak memory this configuration needs alone (state + largest increase during one step)."""
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner.step(batch)
    torch.cuda.synchronize()
    runner.state_bytes = _state_bytes(runner.trainer)
    runner.peak_bytes = runner.state_bytes + torch.cuda.max_memory_allocated() - before


def bench_problem(
    problem: Problem, configs: list[Config], args: argparse.Namespace, device: str, batches: list[dict]
) -> dict:
    """Build every configuration, warm each up, then time their steps in interleaved rounds."""
    timer = Timer(device)
    runners: list[StepRunner] = []
    errors = []
    for cfg in configs:
        t0 = time.perf_counter()
        try:
            r = StepRunner(problem, cfg, device, args.seed, args.extra)
            warm = max(args.warmup, 3) if cfg.compile else args.warmup
            for i in range(warm):
                ts = timer.per_call(lambda k, r=r: r.step(batches[k % len(batches)]), 1, start=i)
                if i == 0:
                    r.first_step_s = ts
            if device == "cuda":
                measure_peak(r, batches[0])
        except Exception as e:  # e.g. a compile failure: report it, time the others
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            print(f"  [{problem.id}] ({cfg.key}) FAILED: {msg}", flush=True)
            errors.append({"problem": problem.id, "config": cfg.key, "error": msg})
            if device == "cuda":
                torch.cuda.synchronize()
            continue
        runners.append(r)
        print(
            f"  [{problem.id}] ({cfg.key}) {cfg.name}: built + {max(args.warmup, 3) if cfg.compile else args.warmup}"
            f" warm-up steps in {time.perf_counter() - t0:.1f} s (first step {fmt_t(r.first_step_s)})",
            flush=True,
        )

    # Interleaved rounds; the order rotates so that no configuration always follows the same one.
    rounds = max(1, min(args.rounds, args.iters))
    per_round = [args.iters // rounds + (1 if k < args.iters % rounds else 0) for k in range(rounds)]
    done = 0
    for k, n in enumerate(per_round):
        order = runners[k % len(runners) :] + runners[: k % len(runners)] if runners else []
        for r in order:
            t = timer.per_call(lambda i, r=r: r.step(batches[i % len(batches)]), n, start=done + 1)
            r.times += [t] * n  # each step of the round counts at the round's mean
            r.round_times.append(t)
            if timer.last_cpu_s is not None:
                r.cpu_times += [timer.last_cpu_s] * n
        done += n

    rows = []
    for r in runners:
        rows.append(
            {
                "key": r.config.key,
                "config": r.config.name,
                "ops": r.config.ops,
                "amp": "bf16" if r.config.amp else None,
                "channels_last": r.config.channels_last,
                "compile": r.config.compile,
                "median_s": statistics.median(r.times),
                "min_s": min(r.times),
                "max_s": max(r.times),
                "steps": len(r.times),
                "times_s": r.times,
                "round_times_s": r.round_times,
                "cpu_median_s": statistics.median(r.cpu_times) if r.cpu_times else None,
                "first_step_s": r.first_step_s,
                "peak_bytes": r.peak_bytes,
                "state_bytes": r.state_bytes,
                "params": r.n_params(),
            }
        )
    base = {row["key"]: row for row in rows}
    targets = TARGETS.get((args.sizes, problem.name), {})
    for row in rows:
        row["images_per_s"] = problem.batch / row["median_s"]
        for ref in ("a", "b"):
            row[f"vs_{ref}"] = _paired_ratio(base[ref]["round_times_s"], row["round_times_s"]) if ref in base else None
            row[f"vs_{ref}_of_medians"] = base[ref]["median_s"] / row["median_s"] if ref in base else None
            c_ref = base[ref]["cpu_median_s"] if ref in base else None
            row[f"cpu_vs_{ref}"] = c_ref / row["cpu_median_s"] if (c_ref and row["cpu_median_s"]) else None
        pa = base.get("a", {}).get("peak_bytes")
        row["mem_vs_a"] = row["peak_bytes"] / pa if (pa and row["peak_bytes"]) else None
        row["targets"] = {}
        if row["ops"] == "fast":
            for name, value in targets.items():
                got = row.get(name)
                met = None if got is None else (got <= value if name.startswith("mem") else got >= value)
                row["targets"][name] = {"target": value, "met": met}
    out = {
        "problem": problem.id,
        "name": problem.name,
        "height": problem.height,
        "width": problem.width,
        "batch": problem.batch,
        "options": list(COMMON + problem.options + args.extra),
        "rows": rows,
        "errors": errors,
    }
    compiled = any(r.config.compile for r in runners)
    del runners
    if compiled:  # dynamo's caches hold the compiled modules (and their parameters) until reset
        torch._dynamo.reset()
    return out


# ----------------------------------------------------------------------------------------------------
# G and D forward / backward


def _nets_for(problem: Problem, ops: str, device: str, args: argparse.Namespace) -> Pix2PixHDModel:
    cfg = Config("x", "", ops, False, False)
    opt = parse_train(problem_options(problem, cfg, device, args.extra))
    torch.manual_seed(args.seed)  # fast and reference networks get the same weights
    with torch.device(device):
        m = Pix2PixHDModel(opt, is_train=True)
    m.check_inputs = False
    return m


def bench_nets(problem: Problem, args: argparse.Namespace, device: str, batches: list[dict]) -> dict:
    """G forward (no grad), G forward+backward, D forward+backward: reference vs fast ops, fp32 NCHW and bf16
    autocast channels-last, interleaved rep by rep."""
    timer = Timer(device)
    models = {ops: _nets_for(problem, ops, device, args) for ops in ("reference", "fast")}
    rows = []
    check: dict[str, float] = {}
    for prec, cl, dt in (("fp32 NCHW", False, torch.float32), ("bf16 channels-last", True, torch.bfloat16)):
        fmt = torch.channels_last if cl else torch.contiguous_format
        for m in models.values():
            m.to(memory_format=fmt)
        # Inputs per batch (untimed): G's encoded input, D's input, random upstream gradients.
        sets = []
        m0 = models["fast"]
        for j, b in enumerate(batches):
            feat = None
            if m0.opt.use_features:  # G's feature channels: random values instead of E's output
                n, _, h, w = b["image"].shape
                gf = torch.Generator().manual_seed(args.seed + 31 * j)
                feat = torch.randn(n, m0.opt.feat_num, h, w, generator=gf).to(device)
            g_in, d_lab = m0.encode(b["label"], b["inst"], feat, dt, cl)
            img = b["image"].to(dt).contiguous(memory_format=fmt)
            d_in = torch.cat([d_lab, img], 1)
            sets.append({"g_in": g_in, "d_in": d_in})
        gen = torch.Generator().manual_seed(args.seed + 7)

        def rand_like(t: torch.Tensor, gen=gen, cl=cl) -> torch.Tensor:
            r = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=t.dtype)
            return r.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else r

        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=cl):
            g_out = m0.netG(sets[0]["g_in"])
            d_out = [t for s in m0.netD(sets[0]["d_in"]) for t in s]
        for s in sets:
            s["g_grad"] = rand_like(g_out)
            s["d_grads"] = [rand_like(t) for t in d_out]

        def g_fwd(m, s, cl=cl):
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=cl):
                return m.netG(s["g_in"])

        def g_fwd_bwd(m, s, cl=cl):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cl):
                y = m.netG(s["g_in"])
            y.backward(s["g_grad"])

        def d_fwd_bwd(m, s, cl=cl):
            x = s["d_in"].detach().requires_grad_()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cl):
                outs = [t for sc in m.netD(x) for t in sc]
            torch.autograd.backward(outs, s["d_grads"])

        if not cl:  # sanity: the two networks compute the same thing
            with torch.no_grad():
                ya, yb = g_fwd(models["reference"], sets[0]), g_fwd(models["fast"], sets[0])
            check["G_fwd_fp32_max_abs_diff"] = float((ya.float() - yb.float()).abs().max())

        for pass_name, fn in (("G fwd (no grad)", g_fwd), ("G fwd+bwd", g_fwd_bwd), ("D fwd+bwd", d_fwd_bwd)):
            samples: dict[str, list[float]] = {"reference": [], "fast": []}
            cpu: dict[str, list[float]] = {"reference": [], "fast": []}
            for rep in range(args.net_warmup + args.net_reps):
                for ops in ("reference", "fast") if rep % 2 == 0 else ("fast", "reference"):
                    m = models[ops]
                    for p in m.parameters():
                        p.grad = None
                    s = sets[rep % len(sets)]
                    t = timer.per_call(lambda _i, m=m, s=s, fn=fn: fn(m, s), 1)
                    if rep >= args.net_warmup:
                        samples[ops].append(t)
                        if timer.last_cpu_s is not None:
                            cpu[ops].append(timer.last_cpu_s)
            ref, fast = statistics.median(samples["reference"]), statistics.median(samples["fast"])
            ratio = _paired_ratio(samples["reference"], samples["fast"])
            cpu_ratio = statistics.median(cpu["reference"]) / statistics.median(cpu["fast"]) if cpu["fast"] else None
            row = {
                "reference_times_s": samples["reference"],
                "fast_times_s": samples["fast"],
                "pass": pass_name,
                "precision": prec,
                "reference_s": ref,
                "fast_s": fast,
                "ratio": ratio,
                "ratio_of_medians": ref / fast,
                "reps": len(samples["fast"]),
                "cpu_ratio": cpu_ratio,
            }
            rows.append(row)
            print(
                f"  [{problem.id}] {pass_name:<16} {prec:<19} reference {fmt_t(ref):>9}  fast {fmt_t(fast):>9}"
                f"  ratio {row['ratio']:.2f}x" + (f" (CPU time {cpu_ratio:.2f}x)" if cpu_ratio else ""),
                flush=True,
            )
        for m in models.values():
            for p in m.parameters():
                p.grad = None
    n_g = sum(p.numel() for p in models["fast"].netG.parameters())
    n_d = sum(p.numel() for p in models["fast"].netD.parameters())
    return {"problem": problem.id, "rows": rows, "check": check, "params_G": n_g, "params_D": n_d}


# ----------------------------------------------------------------------------------------------------
# Profile


GROUPS = (
    "convolution",
    "norm",
    "pooling",
    "encode/boundary",
    "padding",
    "loss",
    "optimizer",
    "other ops",
    "outside ops (Python, autograd engine)",
)


def classify(name: str) -> str | None:
    """The group of an op or annotation by its name, or None (then its ancestors decide)."""
    n = name.lower().replace("_", "")
    if n.startswith("optimizer.") or "adam" in n:
        return "optimizer"
    if n.startswith("loss::") or any(k in n for k in ("mseloss", "l1loss", "binarycrossentropy", "hinge")):
        return "loss"
    if any(k in n for k in ("instancenorm", "batchnorm")):
        return "norm"
    if "conv" in n:  # conv2d, convolution(_backward), mkldnn/cudnn convolution, conv_transpose2d
        return "convolution"
    if "avgpool" in n:  # D's AvgPool2d pyramid and the encoder's instance_avg_pool
        return "pooling"
    if any(k in n for k in ("encodeinput", "instanceboundary", "getedges")):
        return "encode/boundary"
    if any(k in n for k in ("reflectionpad", "replicationpad", "aten::pad")):
        return "padding"
    return None


STEP_LABEL = "train_step"


@contextlib.contextmanager
def _loss_annotations(model: Pix2PixHDModel) -> Iterator[None]:
    """Label the loss computations for the profiler (forward hooks on the GAN loss, a wrapper around the
    feature-matching function), undone afterwards; the model code stays as it is."""
    from torch.autograd.profiler import record_function

    handles, opened = [], []

    def pre(_m, _inp):
        rf = record_function("loss::" + type(_m).__name__)
        rf.__enter__()
        opened.append(rf)

    def post(_m, _inp, _out):
        opened.pop().__exit__(None, None, None)

    for m in (model.criterionGAN, model.criterionVGG):
        if m is not None:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    fm = p2p_model.feature_matching_loss

    def fm_labelled(*a, **k):
        with record_function("loss::feature_matching"):
            return fm(*a, **k)

    p2p_model.feature_matching_loss = fm_labelled
    try:
        yield
    finally:
        p2p_model.feature_matching_loss = fm
        for h in handles:
            h.remove()


def _self_time(e, cuda: bool) -> float:
    if cuda:
        v = getattr(e, "self_device_time_total", None)
        return float(v if v is not None else getattr(e, "self_cuda_time_total", 0.0))
    return float(e.self_cpu_time_total)


def profile_step(problem: Problem, args: argparse.Namespace, device: str, batches: list[dict]) -> dict:
    """Self time per group over ``args.profile_steps`` steps of configuration (c), after warm-up."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device == "cuda"
    runner = StepRunner(problem, CONFIGS[2], device, args.seed, args.extra)
    for i in range(max(1, args.warmup)):
        runner.step(batches[i % len(batches)])
    Timer(device).sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _loss_annotations(runner.trainer.model), profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(args.profile_steps):
            with record_function(STEP_LABEL):
                runner.step(batches[i % len(batches)])
        Timer(device).sync()
        wall = time.perf_counter() - t0
    groups = dict.fromkeys(GROUPS, 0.0)
    per_op: dict[tuple[str, str], float] = {}
    for e in prof.events():
        if cuda and getattr(e, "device_type", None) is not None and "CPU" not in str(e.device_type):
            continue  # kernel rows: their time is the launching op's self device time already
        t = _self_time(e, cuda)
        if t <= 0:
            continue
        group, a = None, e
        while a is not None and group is None:
            group = classify(a.name)
            a = a.cpu_parent
        if group is None:
            group = "outside ops (Python, autograd engine)" if e.name == STEP_LABEL else "other ops"
        if e.name.startswith("autograd::engine::evaluate_function") and group == "other ops":
            group = "outside ops (Python, autograd engine)"
        groups[group] += t
        per_op[(e.name, group)] = per_op.get((e.name, group), 0.0) + t
    total = sum(groups.values())
    steps = args.profile_steps
    table = [
        {"group": g, "self_s_per_step": v * 1e-6 / steps, "pct": 100.0 * v / total if total else 0.0}
        for g, v in groups.items()
    ]
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:15]
    del runner
    return {
        "problem": problem.id,
        "config": CONFIGS[2].name,
        "steps": steps,
        "time_kind": "self device (CUDA) time" if cuda else "self CPU time",
        "wall_s_per_step": wall / steps,
        "profiled_s_per_step": total * 1e-6 / steps,
        "groups": table,
        "top_ops": [
            {"op": k[0], "group": k[1], "self_s_per_step": v * 1e-6 / steps, "pct": 100.0 * v / total} for k, v in top
        ],
    }


# ----------------------------------------------------------------------------------------------------
# Report


def header_lines(res: dict) -> list[str]:
    m, s = res["machine"], res["settings"]
    lines = []
    if s["device"] == "cuda":
        lines.append(f"GPU: {m['gpu']} (cc {m['cc']}, {m['gpu_sms']} SMs, {m['gpu_memory_gib']} GiB)")
        lines.append(
            f"TF32 (PyTorch defaults, untouched): cudnn.allow_tf32={m['cudnn_allow_tf32']}, "
            f"matmul.allow_tf32={m['matmul_allow_tf32']}"
        )
    lines.append(f"CPU: {m['cpu']} ({m['cpu_capability']}; {' '.join(m['cpu_flags'])}); torch threads: {m['threads']}")
    lines.append(f"torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}")
    bi = m["build_info"]
    lines.append(
        f"library: ops_loaded={bi['ops_loaded']} cuda_kernels={bi['cuda_kernels']}"
        + (f" ({bi['error']})" if bi["error"] else "")
        + (f"; P2PHD_LIB={m['p2phd_lib']}" if m.get("p2phd_lib") else "")
    )
    ld = res.get("load", {})
    if ld:
        others = ld.get("others_cores")
        lines.append(
            f"load average (1 min) at start/end: {m.get('loadavg_start')} / {m.get('loadavg_end')} on "
            f"{m['cpu_count']} CPUs; during the run this process used {ld['own_cores']:.2f} cores"
            + ("" if others is None else f" and other processes {others:.2f} cores")
            + (
                " -- a shared, busy machine: absolute times are inflated, ratios (interleaved) hold roughly"
                if (s["device"] == "cpu" and others is not None and others > 0.25)
                else ""
            )
        )
    lines.append(
        f"timing: {s['warmup']} warm-up steps (3 with compile), {s['iters']} timed steps per configuration in "
        f"{s['rounds']} interleaved rounds; median step time, ratios = median of per-round pairs; "
        f"{'CUDA events' if s['device'] == 'cuda' else 'perf_counter'}"
    )
    lines.append(f"sizes: {s['sizes']}; total run time {res.get('total_s', 0):.0f} s")
    return lines


def render_text(res: dict) -> str:
    parts = ["\n".join(header_lines(res))]
    for p in res["train"]:
        parts += ["", f"Training step, {p['problem']} ({' '.join(p['options'])}):", text_table(*train_table(p))]
    if res.get("nets"):
        n = res["nets"]
        parts += ["", f"G and D forward/backward, {n['problem']} (ratio = reference / fast):"]
        parts.append(text_table(*nets_table(n)))
    if res.get("profile"):
        pr = res["profile"]
        g, t = profile_tables(pr)
        parts += [
            "",
            f"Profile of ({CONFIGS[2].key}) {pr['config']}, {pr['problem']}, {pr['steps']} steps "
            f"({pr['time_kind']}: {fmt_t(pr['profiled_s_per_step'])}/step in ops; wall {fmt_t(pr['wall_s_per_step'])}"
            "/step under the profiler):",
            text_table(*g),
            "",
            "Top ops:",
            text_table(*t),
        ]
    if res["errors"]:
        parts += ["", "FAILED:"] + [f"  {e}" for e in res["errors"]]
    if res.get("skipped"):
        parts += ["", "Skipped (time budget spent): " + ", ".join(res["skipped"])]
    return "\n".join(parts)


def render_markdown(res: dict) -> str:
    s = res["settings"]
    parts = [f"# pix2pixhd_fast training benchmarks ({s['device']}, sizes {s['sizes']})", ""]
    if not res.get("complete"):
        parts += ["**Incomplete: the run stopped (or is still running) after the parts below.**", ""]
    parts += [f"- {ln}" for ln in header_lines(res)]
    parts += [
        "",
        "(a) is the pix2pixHD-equivalent baseline (fp32, NCHW, nn.InstanceNorm2d, plain-PyTorch encode/pooling); "
        "all configurations share the model's own savings (D's real+fake passes batched, D frozen for G's "
        "adversarial pass, fused Adam), so the ratios understate the gain over NVIDIA's code. "
        "vs (x) = median over the interleaved rounds of (x)'s step time / this step time in the same round (a "
        "burst of load from other processes stretches both sides of a pair alike; the ratio of the medians is in "
        "the JSON as `vs_x_of_medians`). G/D rows: the same with reference and fast reps paired. On the CPU, "
        "'CPU time' is the process's CPU time per step (core-seconds, all threads; ratios of it in the JSON).",
    ]
    for p in res["train"]:
        parts += ["", f"## Training step: {p['problem']}", "", f"Options: `{' '.join(p['options'])}`", ""]
        parts.append(md_table(*train_table(p)))
    if res.get("nets"):
        n = res["nets"]
        parts += ["", f"## G and D forward/backward: {n['problem']}", ""]
        parts.append(
            f"G has {n['params_G'] / 1e6:.1f} M parameters, D {n['params_D'] / 1e6:.1f} M. Ratio = reference ops "
            "time / fast ops time; D's backward includes the input gradient (as in G's adversarial pass). "
            + (
                f"fp32 outputs of the two G agree to {n['check']['G_fwd_fp32_max_abs_diff']:.1e}."
                if "G_fwd_fp32_max_abs_diff" in n["check"]
                else ""
            )
        )
        parts += ["", md_table(*nets_table(n))]
    if res.get("profile"):
        pr = res["profile"]
        g, t = profile_tables(pr)
        parts += [
            "",
            f"## Profile: ({CONFIGS[2].key}) {pr['config']}, {pr['problem']}",
            "",
            f"{pr['steps']} steps under torch.profiler, {pr['time_kind']} per group (an op's time goes to the group "
            f"of its nearest classified ancestor): {fmt_t(pr['profiled_s_per_step'])} per step in all; wall time "
            f"{fmt_t(pr['wall_s_per_step'])} per step under the profiler.",
            "",
            md_table(*g),
            "",
            md_table(*t),
        ]
    if res["errors"]:
        parts += ["", "## FAILED", ""] + [f"- {e}" for e in res["errors"]]
    if res.get("skipped"):
        parts += ["", "Skipped (time budget spent): " + ", ".join(res["skipped"])]
    parts.append("")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", choices=sorted(PRESETS), default=None, help="default: cpu on CPU, gpu on CUDA")
    ap.add_argument("--json", default=None, help="write the full results here")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    ap.add_argument("--only", default=None, help="comma-separated problem names to run (global, global+feat, local)")
    ap.add_argument("--configs", default="a,b,c", help="configurations to time (d is added by --compile)")
    ap.add_argument("--compile", action="store_true", help="add configuration (d): (c) + torch.compile")
    ap.add_argument("--compile-problems", default=None, help="comma-separated problem names for (d) (default all)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per configuration (CPU 7, CUDA 8)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per configuration (CPU 1, CUDA 2)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (CPU: one step each; CUDA 4)")
    ap.add_argument("--no-nets", action="store_true", help="skip the G/D forward/backward rows")
    ap.add_argument("--net-reps", type=int, default=None, help="timed reps of each G/D row (CPU 5, CUDA 6)")
    ap.add_argument("--net-warmup", type=int, default=1, help="warm-up reps of each G/D row")
    ap.add_argument("--profile", action="store_true", help="profile configuration (c) of the first problem")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--extra", default="", help="more reference options for every problem, e.g. '--n_blocks_global 3'")
    ap.add_argument(
        "--budget-s", type=float, default=None, help="start no new part (problem, G/D rows, profile) after this time"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.sizes = args.sizes or ("gpu" if cuda else "cpu")
    args.iters = args.iters if args.iters is not None else (8 if cuda else 7)
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.rounds = args.rounds if args.rounds is not None else (4 if cuda else args.iters)
    args.net_reps = args.net_reps if args.net_reps is not None else (6 if cuda else 5)
    args.extra = tuple(shlex.split(args.extra))
    for k in ("iters", "rounds", "profile_steps", "net_reps"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.net_warmup < 0:
        ap.error("--warmup and --net-warmup must be >= 0")
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = set(keys) - {c.key for c in CONFIGS}
    if unknown:
        ap.error(f"--configs: unknown configuration(s) {sorted(unknown)}; use a, b, c, d")
    if args.compile and "d" not in keys:
        keys.append("d")
    args.config_keys = keys
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run_train.py: --device cuda but torch sees no CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    problems = PRESETS[args.sizes]
    if args.only:
        want = {k.strip() for k in args.only.split(",") if k.strip()}
        unknown = want - {p.name for p in problems}
        if unknown:
            raise SystemExit(f"run_train.py: --only: no problem {sorted(unknown)} in sizes {args.sizes!r}")
        problems = [p for p in problems if p.name in want]
    compile_on = None
    if args.compile_problems:
        compile_on = {k.strip() for k in args.compile_problems.split(",") if k.strip()}

    res: dict[str, Any] = {
        "settings": {
            "device": device,
            "sizes": args.sizes,
            "iters": args.iters,
            "warmup": args.warmup,
            "rounds": min(args.rounds, args.iters),
            "configs": args.config_keys,
            "compile_problems": sorted(compile_on) if compile_on else None,
            "seed": args.seed,
            "extra_options": list(args.extra),
            "net_reps": args.net_reps,
        },
        "machine": machine_info(device),
        "train": [],
        "nets": None,
        "profile": None,
        "errors": [],
        "complete": False,
        "skipped": [],
    }
    res["machine"]["p2phd_lib"] = os.environ.get("P2PHD_LIB")
    if device == "cuda":
        res["machine"]["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        res["machine"]["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    load = CpuLoad()
    t_all = time.perf_counter()
    print("\n".join(header_lines(res)[:-2]), flush=True)

    def run_part(name: str, fn: Callable[[], Any]) -> Any:
        """Run one part unless the time budget is spent; a failure is reported and the run goes on."""
        if args.budget_s is not None and time.perf_counter() - t_all > args.budget_s:
            print(f"  SKIPPED {name}: --budget-s {args.budget_s:g} s spent", flush=True)
            res["skipped"].append(name)
            return None
        try:
            return fn()
        except Exception as e:
            msg = f"{name}: {type(e).__name__}: {str(e).strip()[:300]}"
            print("  FAILED " + msg, flush=True)
            res["errors"].append(msg)
            return None
        finally:
            _release(device)
            _write(res, args, load, t_all)  # after every part: a run cut short keeps what it measured

    for k, problem in enumerate(problems):
        print(f"\n{problem.describe()}", flush=True)
        t0 = time.perf_counter()
        batches = [make_batch(problem, device, args.seed + 101 * j) for j in range(3)]
        configs = [
            c
            for c in CONFIGS
            if c.key in args.config_keys and (not c.compile or compile_on is None or problem.name in compile_on)
        ]
        out = run_part(
            f"train {problem.id}", lambda p=problem, c=configs, b=batches: bench_problem(p, c, args, device, b)
        )
        if out is not None:
            res["errors"] += [f"{e['problem']} ({e['config']}): {e['error']}" for e in out["errors"]]
            res["train"].append(out)
            print(text_table(*train_table(out)), flush=True)
        if k == 0 and not args.no_nets:
            res["nets"] = run_part(f"nets {problem.id}", lambda p=problem, b=batches: bench_nets(p, args, device, b))
        if k == 0 and args.profile:
            res["profile"] = run_part(
                f"profile {problem.id}", lambda p=problem, b=batches: profile_step(p, args, device, b)
            )
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)

    res["complete"] = True
    _write(res, args, load, t_all)
    print()
    print(render_text(res))
    return res


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


def _release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
