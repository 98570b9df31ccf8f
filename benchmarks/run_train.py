"""End-to-end training benchmarks: one full pix2pixHD iteration in several configurations, timed side by side.

    python benchmarks/run_train.py --device cpu --profile                      # CPU sizes (256x512)
    python benchmarks/run_train.py --device cuda --sizes gpu --json gpu_train.json --markdown gpu_train.md
    python benchmarks/run_train.py --sizes tiny --max-rounds 3 --no-nets         # smoke run

Parts:

1. Training step. One iteration as ``Trainer.train_step`` runs it (G (+E) forward, D on real and fake, the
   losses, G's backward and Adam step, D's backward and Adam step) on a synthetic batch: a Cityscapes-like scene
   (label ids in [0, 35) as uint8, an int32 instance map of 20-60 regions) and a random image in [-1, 1], already
   on the device (the data loader overlaps that copy). Configurations, built from the same seed (same weights):
     (n) the loop pix2pixHD users run (NVIDIA's train.py): fp32 NCHW, reference ops, D's real and fake passes run
         separately, D's parameters not frozen during G's adversarial pass, torch.optim.Adam with its defaults;
     (a) fp32 NCHW, reference ops, with the model's own savings (D's real+fake passes batched, D frozen for G's
         adversarial pass, fused Adam; on CUDA, TF32 convolutions as PyTorch's defaults leave them);
     (b) (a) + bf16 autocast + channels-last: the two lines of stock PyTorch;
     (c) the best we build: (b) with our fused ops, selective activation checkpointing of G and E, and on CUDA
         cudnn.benchmark and the whole iteration replayed from a CUDA graph;
     (d) our fused ops (bf16, channels-last) + torch.compile of each network;
     (e) the strongest stock path: (b) + torch.compile of each network (on CUDA with cudnn.benchmark);
   and ablation rows, (c) without one component each (``c-sac``, ``c-pad`` = the fused norms writing unpadded
   outputs beside separate pad modules, ``c-graph``, ``c-cudnn``, ``c-ops`` = (c) with the reference ops), so
   that what each component contributes is read from the same run.
   Every configuration's steps are timed in the same interleaved rounds (benchmarks/timing.py): each round runs
   one step (CPU) or two (CUDA) of every configuration, in rotating order, until the 95% interval of every
   paired ratio against (c) is within +-5% (or the round/time limit). Reported per configuration: median step
   time with its interval, images/s, ratios with 95% intervals, the fraction of the compute floor (the step's
   convolution FLOPs counted from the layer shapes, forward + data and weight gradients where they are
   computed, divided by the bf16 matmul throughput measured in the same run), the bytes saved for the backward
   pass (``saved_tensors_hooks``, distinct storages, parameters excluded: device independent), and on CUDA the
   peak memory one configuration needs alone.
2. G and D forward/backward (``--no-nets`` skips): G forward (no grad), G forward+backward, D forward+backward,
   fast vs reference ops, fp32 NCHW and bf16 autocast channels-last, for the first problem's networks.
3. Profile (``--profile``): torch.profiler over a few eager steps of (c) (no CUDA graph: the profiler would see
   one graph launch); each op's self time goes to the group of its nearest classified ancestor.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
import torch.nn as nn  # noqa: E402
from cases import LABEL_NC, cityscapes_like  # noqa: E402
from run_ops import _loadavg, machine_info  # noqa: E402
from tables import fmt_t, md_table, nets_table, profile_tables, text_table  # noqa: E402
from targets import train_targets  # noqa: E402
from timing import measure_interleaved, ratio_ci, steady_cpu_allocator, summary  # noqa: E402

from pix2pixhd_fast.models import pix2pixhd as p2p_model  # noqa: E402
from pix2pixhd_fast.models.pix2pixhd import Pix2PixHDModel  # noqa: E402
from pix2pixhd_fast.options import parse_train  # noqa: E402
from pix2pixhd_fast.train.graphs import GraphedTrainStep  # noqa: E402
from pix2pixhd_fast.train.memory import SavedTensorsMeter, enable_selective_checkpointing  # noqa: E402
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


@dataclass(frozen=True)
class Config:
    """One way to run the training step. ``loop``: 'model' (Pix2PixHDModel.compute_losses: D's real and fake
    passes batched, D frozen for G's adversarial pass) or 'nvidia' (the reference loop, see
    :class:`NvidiaLoopModel`); ``adam``: 'fused' (the trainer's make_adam) or 'default' (torch.optim.Adam's
    defaults); ``sac``: selective activation checkpointing of G and E; ``cuda_graph``/``cudnn_benchmark``: CUDA
    only; ``ablation``: the row removes one component of (c)."""

    key: str
    name: str
    ops: str
    amp: bool
    channels_last: bool
    compile: bool = False
    loop: str = "model"
    adam: str = "fused"
    sac: bool = False
    cuda_graph: bool = False
    cudnn_benchmark: bool = False
    fuse_pads: bool = True
    ablation: bool = False


MAIN_KEYS = ("n", "a", "b", "c", "d", "e")
RATIO_BASES = ("n", "a", "b", "e")  # the rows every other row is compared with (plus (c), the best)


def build_configs(device: str) -> list[Config]:
    """(n), (a)-(e) and the ablation rows of (c) for ``device`` (CUDA graphs and cudnn.benchmark exist on CUDA)."""
    cuda = device == "cuda"
    c = Config(
        "c",
        "(b) + our fused ops + SAC" + (" + cudnn.benchmark + CUDA graph" if cuda else ""),
        "fast",
        True,
        True,
        sac=True,
        cuda_graph=cuda,
        cudnn_benchmark=cuda,
    )
    rows = [
        Config(
            "n",
            "NVIDIA's loop: fp32 NCHW, reference ops, separate D passes, D not frozen, torch.optim.Adam",
            "reference",
            False,
            False,
            loop="nvidia",
            adam="default",
        ),
        Config("a", "fp32 NCHW, reference ops", "reference", False, False),
        Config("b", "bf16 autocast + channels-last, reference ops", "reference", True, True),
        c,
        Config(
            "d", "our fused ops (bf16, channels-last) + torch.compile", "fast", True, True, True, cudnn_benchmark=cuda
        ),
        Config("e", "(b) + torch.compile", "reference", True, True, True, cudnn_benchmark=cuda),
    ]
    ab = [dataclasses.replace(c, key="c-sac", name="(c) without SAC", sac=False, ablation=True)]
    ab.append(
        dataclasses.replace(
            c,
            key="c-pad",
            name="(c) with separate reflection pads (norms write unpadded)",
            fuse_pads=False,
            ablation=True,
        )
    )
    if cuda:
        ab.append(
            dataclasses.replace(c, key="c-graph", name="(c) without the CUDA graph", cuda_graph=False, ablation=True)
        )
        ab.append(
            dataclasses.replace(
                c, key="c-cudnn", name="(c) without cudnn.benchmark", cudnn_benchmark=False, ablation=True
            )
        )
    ab.append(dataclasses.replace(c, key="c-ops", name="(c) with the reference ops", ops="reference", ablation=True))
    return rows + ab


def problem_options(problem: Problem, config: Config, device: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Reference option strings for one problem in one configuration."""
    argv = [*COMMON, *problem.options, *extra, "--batchSize", str(problem.batch), "--device", device]
    argv += ["--ops", config.ops, "--amp", "bf16" if config.amp else "off", "--sac", "on" if config.sac else "off"]
    if not config.channels_last:
        argv.append("--no_channels_last")
    if not config.fuse_pads:
        argv.append("--no_fuse_pads")
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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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


def load_line(machine: dict, load: dict, device: str) -> str | None:
    """The results header's line on how busy the machine was (``load``: :meth:`CpuLoad.summary`; None without it)."""
    if not load:
        return None
    others = load.get("others_cores")
    busy = device == "cpu" and others is not None and others > 0.25
    return (
        f"load average (1 min) at start/end: {machine.get('loadavg_start')} / {machine.get('loadavg_end')} on "
        f"{machine['cpu_count']} CPUs; during the run this process used {load['own_cores']:.2f} cores"
        + ("" if others is None else f" and other processes {others:.2f} cores")
        + (" -- a shared, busy machine: absolute times are inflated, ratios (interleaved) hold roughly" if busy else "")
    )


# ----------------------------------------------------------------------------------------------------
# One configuration's training step


class NvidiaLoopModel(Pix2PixHDModel):
    """The forward of NVIDIA's ``Pix2PixHDModel.forward`` on our model's modules: D judges the fake and the real
    images in two separate calls, and G's adversarial pass runs D with its parameters trainable (autograd then
    computes D weight gradients from G's loss, which the reference's ``optimizer_D.zero_grad()`` discards). The
    losses are the same as :meth:`Pix2PixHDModel.compute_losses` (instance norm keeps each sample's statistics)."""

    def compute_losses(self, label, inst, image, feat=None, dtype=torch.float32, channels_last=False):
        feat_map = self._features(label, inst, image, feat)
        g_input, d_label = self.encode(label, inst, feat_map, dtype, channels_last)
        real = image.to(dtype)
        if channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        fake = self.netG(g_input)
        pred_fake_pool = self.discriminate(d_label, fake.detach())
        loss_D_fake = self.criterionGAN(pred_fake_pool, False)
        pred_real = self.discriminate(d_label, real)
        loss_D_real = self.criterionGAN(pred_real, True)
        pred_fake = self.discriminate(d_label, fake)
        return self.loss_terms(pred_fake, pred_real, fake, real, loss_D_real, loss_D_fake), fake


def _bare_trainer(model: Pix2PixHDModel, opt: argparse.Namespace, device: torch.device, amp_dtype, config: Config):
    """A Trainer holding only what ``Trainer.train_step`` uses (no dataset, folders or logging), so the
    benchmark times the trainer's own step function, built as ``Trainer.__init__`` builds it."""
    t = Trainer.__new__(Trainer)
    t.opt, t.device, t.model = opt, device, model
    t.amp_dtype = amp_dtype
    t.input_dtype = amp_dtype or torch.float32
    t.channels_last = opt.channels_last
    t.graphed = None
    g_params = trainable_generator_params(model.netG, opt, False)
    if model.netE is not None:
        g_params += list(model.netE.parameters())
    d_params = list(model.netD.parameters())
    if config.adam == "default":
        t.optimizer_G = torch.optim.Adam(g_params, lr=opt.lr, betas=(opt.beta1, 0.999))
        t.optimizer_D = torch.optim.Adam(d_params, lr=opt.lr, betas=(opt.beta1, 0.999))
    else:
        cap = config.cuda_graph
        t.optimizer_G = make_adam(g_params, opt.lr, opt.beta1, device, opt.fused_adam, cap)
        t.optimizer_D = make_adam(d_params, opt.lr, opt.beta1, device, opt.fused_adam, cap)
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
        self.problem, self.config, self.device = problem, config, device
        self.opt = parse_train(problem_options(problem, config, device, extra))
        dev = torch.device(device)
        torch.manual_seed(seed)  # every configuration starts from the same weights
        cls = NvidiaLoopModel if config.loop == "nvidia" else Pix2PixHDModel
        with dev:  # parameters created and initialised on the device (seconds per 180M-parameter G on a CPU)
            model = cls(self.opt, is_train=True)
        model.check_inputs = False  # as the trainer: labels are checked by the dataset, no sync per step
        if self.opt.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.sac:  # as Trainer.__init__ with --sac on
            for net in (model.netG, model.netE):
                if net is not None:
                    enable_selective_checkpointing(net)
        self.params = list(model.parameters())
        amp = resolve_amp("bf16" if config.amp else "off", dev)
        self.trainer = _bare_trainer(model, self.opt, dev, amp, config)
        if config.compile:  # as Trainer._wrap: the model calls the compiled modules
            for k in ("G", "D", "E"):
                net = getattr(model, "net" + k)
                if net is not None:
                    setattr(model, "net" + k, torch.compile(net))
        model.set_generator_discriminator(None)
        if config.cuda_graph:
            self.trainer.graphed = GraphedTrainStep(self.trainer)
        self.first_step_s: float | None = None
        self.peak_bytes: int | None = None
        self.state_bytes: int | None = None
        self.saved_bytes: int | None = None
        self.build_s: float | None = None

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        # cudnn.benchmark is global state: each configuration sets its own before its step (a graph replay
        # launches no cuDNN call and ignores it).
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = self.config.cudnn_benchmark
        self.trainer.train_step(batch)  # the losses and the image stay on the device: no sync

    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)


def measure_saved_bytes(runner: StepRunner, batch: dict) -> None:
    """Bytes the step keeps for its backward pass (distinct storages, parameters excluded), over one eager step."""
    with SavedTensorsMeter(exclude=runner.params) as meter:
        if runner.device == "cuda":
            torch.backends.cudnn.benchmark = runner.config.cudnn_benchmark
        runner.trainer.eager_step(batch)
    _sync(runner.device)
    runner.saved_bytes = meter.bytes if meter.complete else None  # a lower bound is not a measurement


def measure_peak(runner: StepRunner, call: Callable[[], None]) -> None:
    """CUDA: the peak memory this configuration needs alone: its state (parameters, gradients, Adam) plus the
    largest increase of allocated memory during ``call`` (one step; for a CUDA graph, the capture, which
    allocates the graph's memory as one eager step would)."""
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    runner.state_bytes = _state_bytes(runner.trainer)
    runner.peak_bytes = runner.state_bytes + torch.cuda.max_memory_allocated() - before


def prepare(runner: StepRunner, args: argparse.Namespace, batches: list[dict]) -> None:
    """Warm a configuration up (compilation, cuDNN autotuning, Adam state, the CUDA-graph capture) and take its
    untimed measurements: the bytes saved for backward and, on CUDA, the peak memory."""
    cfg, cuda = runner.config, runner.device == "cuda"
    t0 = time.perf_counter()
    k = 0

    def one() -> None:
        nonlocal k
        b = batches[k % len(batches)]
        k += 1
        ts = time.perf_counter()
        runner.step(b)
        _sync(runner.device)
        if runner.first_step_s is None:
            runner.first_step_s = time.perf_counter() - ts

    if cfg.cuda_graph:
        # The bytes on an eager step before the graph exists (the graph replays that same step); then the
        # graph's eager warm-ups, and the capture measured for peak memory.
        measure_saved_bytes(runner, batches[0])
        for _ in range(runner.trainer.graphed.warmup):
            one()
        measure_peak(runner, one)
        for _ in range(max(1, args.warmup - 1)):
            one()
        assert runner.trainer.graphed.graph is not None, "the CUDA graph was not captured"
    else:
        for _ in range(max(args.warmup, 3) if cfg.compile else args.warmup):
            one()
        if cuda:
            measure_peak(runner, one)
        if not cfg.compile:  # under torch.compile the hooks would change what is traced
            measure_saved_bytes(runner, batches[k % len(batches)])
    runner.build_s = time.perf_counter() - t0


def weight_cast_cost(runner: StepRunner, device: str, step_s: float) -> dict[str, float]:
    """What autocast's per-step weight casts cost: the time of one bf16 copy of every weight, against the step.

    A step makes about ``casts_per_step`` such copies: G's weights in the forward pass and again in the SAC
    recomputation, D's in its two calls (the second, with D frozen, misses autocast's cache). Keeping bf16
    copies updated by the optimizer would save that time, if it is a noticeable share of the step."""
    params = [p for p in runner.params if p.is_floating_point()]

    def casts() -> None:
        for p in params:
            p.to(torch.bfloat16)

    ts = measure_interleaved({"casts": casts}, device=device, min_rounds=5, max_rounds=20, max_seconds=5, warmup=1)
    t = statistics.median(ts["casts"])
    per_step = 2.0
    return {"one_cast_s": t, "casts_per_step": per_step, "share_of_step": per_step * t / step_s}


# ----------------------------------------------------------------------------------------------------
# Compute floor


def count_conv_flops(problem: Problem, args: argparse.Namespace, device: str, batch: dict) -> dict[str, float]:
    """Convolution FLOPs of one training step of the model's loop, counted from the layer shapes.

    Per convolution call: forward 2*MACs (MACs = output elements x input channels per group x kernel area; for
    a transposed convolution, input elements x output channels per group x kernel area); backward adds the
    same again for the input gradient when the input requires grad (not for G's first layer, nor D's judgement
    of detached images) and for the weight gradient when the weight requires grad (not for D's frozen pass)."""
    cfg = Config("count", "", "fast", False, False)
    runner = StepRunner(problem, cfg, device, args.seed, args.extra)
    total = {"forward": 0.0, "input_grad": 0.0, "weight_grad": 0.0, "calls": 0}

    def hook(m, inputs, out):
        x = inputs[0]
        k = m.weight.shape[2] * m.weight.shape[3]
        if isinstance(m, nn.ConvTranspose2d):
            macs = x.numel() * (m.out_channels // m.groups) * k
        else:
            macs = out.numel() * (m.in_channels // m.groups) * k
        f = 2.0 * macs
        total["forward"] += f
        total["calls"] += 1
        if torch.is_grad_enabled():
            total["input_grad"] += f if x.requires_grad else 0.0
            total["weight_grad"] += f if m.weight.requires_grad else 0.0

    handles = [
        m.register_forward_hook(hook)
        for m in runner.trainer.model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        runner.step(batch)
    finally:
        for h in handles:
            h.remove()
    total["total"] = total["forward"] + total["input_grad"] + total["weight_grad"]
    del runner
    return total


def matmul_throughput(device: str) -> dict[str, float]:
    """bf16 matmul FLOP/s of this machine: a square product, median over repeated calls."""
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, device=device).to(torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    ts = measure_interleaved(
        {"mm": lambda: torch.mm(a, b, out=out)}, device=device, min_rounds=5, max_rounds=30, max_seconds=10, warmup=2
    )["mm"]
    t = statistics.median(ts)
    return {"n": n, "median_s": t, "flops_per_s": 2.0 * n**3 / t, "calls": len(ts)}


def _ratio_fields(row: dict, name: str, base: list[float], new: list[float]) -> None:
    r, lo, hi = ratio_ci(base, new)
    row[name], row[name + "_lo"], row[name + "_hi"] = r, lo, hi


def bench_problem(
    problem: Problem, configs: list[Config], args: argparse.Namespace, device: str, batches: list[dict], mm: dict
) -> dict:
    """Build every configuration, warm each up and measure it untimed, then time all their steps in the same
    interleaved rounds."""
    runners: list[StepRunner] = []
    errors = []
    for cfg in configs:
        try:
            r = StepRunner(problem, cfg, device, args.seed, args.extra)
            prepare(r, args, batches)
        except Exception as e:  # e.g. a compile failure: report it in the table, time the others
            text = str(e).strip()
            msg = f"{type(e).__name__}: {text.splitlines()[0][:240] if text else ''}"
            print(f"  [{problem.id}] ({cfg.key}) FAILED: {msg}", flush=True)
            errors.append({"problem": problem.id, "config": cfg.key, "name": cfg.name, "error": msg})
            r = None
            _release(device)
            continue
        runners.append(r)
        print(
            f"  [{problem.id}] ({cfg.key}) {cfg.name}: ready in {r.build_s:.1f} s (first step {fmt_t(r.first_step_s)}"
            + (f", saved for backward {r.saved_bytes / 2**20:.1f} MiB" if r.saved_bytes else "")
            + (f", peak {r.peak_bytes / 2**30:.2f} GiB" if r.peak_bytes else "")
            + ")",
            flush=True,
        )

    flops = count_conv_flops(problem, args, device, batches[0])
    floor_s = flops["total"] / mm["flops_per_s"]

    # (c) first: the timer stops once every ratio against the first entry is known to +-5%.
    runners.sort(key=lambda r: (r.config.key != "c", configs.index(r.config)))
    counters = {r.config.key: 0 for r in runners}

    def stepper(r: StepRunner) -> Callable[[], None]:
        def fn() -> None:
            i = counters[r.config.key]
            counters[r.config.key] = i + 1
            r.step(batches[i % len(batches)])

        return fn

    t0 = time.perf_counter()
    samples = (
        measure_interleaved(
            {r.config.key: stepper(r) for r in runners},
            device=device,
            min_rounds=args.min_rounds,
            max_rounds=args.max_rounds,
            target_rel_halfwidth=0.05,
            max_seconds=args.max_seconds,
            warmup=0,
            calls_per_round=2 if device == "cuda" else 1,
        )
        if runners
        else {}
    )
    timed_s = time.perf_counter() - t0

    rows = []
    for r in runners:
        cfg = r.config
        ts = samples[cfg.key]
        row = {
            "key": cfg.key,
            "config": cfg.name,
            "ablation": cfg.ablation,
            "ops": cfg.ops,
            "amp": "bf16" if cfg.amp else None,
            "channels_last": cfg.channels_last,
            "compile": cfg.compile,
            "loop": cfg.loop,
            "adam": cfg.adam,
            "sac": cfg.sac,
            "cuda_graph": cfg.cuda_graph,
            "cudnn_benchmark": cfg.cudnn_benchmark,
            **summary(ts),
            "steps": len(ts),
            "times_s": ts,
            "first_step_s": r.first_step_s,
            "peak_bytes": r.peak_bytes,
            "state_bytes": r.state_bytes,
            "saved_bytes": r.saved_bytes,
            "params": r.n_params(),
        }
        row["images_per_s"] = problem.batch / row["median_s"]
        row["floor_fraction"] = floor_s / row["median_s"]
        rows.append(row)
    by = {row["key"]: row for row in rows}
    targets = train_targets(args.sizes, problem.name)
    for row in rows:
        for ref in (*RATIO_BASES, "c"):
            if ref in by and ref != row["key"]:
                _ratio_fields(row, f"vs_{ref}", samples[ref], samples[row["key"]])
            else:
                row[f"vs_{ref}"] = row[f"vs_{ref}_lo"] = row[f"vs_{ref}_hi"] = None
        # How much faster (c) is than this row: for an ablation row, what the removed component contributes.
        if "c" in by and row["key"] != "c":
            r_, lo, hi = ratio_ci(samples[row["key"]], samples["c"])
            row["c_vs_this"], row["c_vs_this_lo"], row["c_vs_this_hi"] = r_, lo, hi
        else:
            row["c_vs_this"] = row["c_vs_this_lo"] = row["c_vs_this_hi"] = None
        pa = by.get("a", {}).get("peak_bytes")
        row["mem_vs_a"] = row["peak_bytes"] / pa if (pa and row["peak_bytes"]) else None
        sa = by.get("a", {}).get("saved_bytes")
        row["saved_bytes_vs_a"] = row["saved_bytes"] / sa if (sa and row["saved_bytes"]) else None
        row["targets"] = {}
        if row["key"] == "c":
            for name, value in targets.items():
                got = row.get(name)
                met = None if got is None else (got <= value if _lower_is_better(name) else got >= value)
                row["targets"][name] = {"target": value, "met": met}
    # Memory at what time cost: (c) against (c) without SAC (the memory target allows at most 5% more time).
    sac_cost = None
    if "c" in by and "c-sac" in by:
        r_, lo, hi = ratio_ci(samples["c-sac"], samples["c"])
        sac_cost = {"c_sac_off_over_on": r_, "lo": lo, "hi": hi, "time_cost_pct": (1.0 / r_ - 1.0) * 100.0}
    out = {
        "problem": problem.id,
        "name": problem.name,
        "height": problem.height,
        "width": problem.width,
        "batch": problem.batch,
        "options": list(COMMON + problem.options + args.extra),
        "rows": rows,
        "errors": errors,
        "conv_flops": flops,
        "floor_s": floor_s,
        "sac_time_cost": sac_cost,
        "timed_s": timed_s,
        "rounds": len(next(iter(samples.values()))) // (2 if device == "cuda" else 1) if samples else 0,
    }
    c_runner = next((r for r in runners if r.config.key == "c"), None)
    if c_runner is not None and c_runner.config.amp:
        out["weight_casts"] = weight_cast_cost(c_runner, device, by["c"]["median_s"])
    compiled = any(r.config.compile for r in runners)
    del runners, c_runner
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
    autocast channels-last, timed in interleaved rounds."""
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
            counters = {"reference": 0, "fast": 0}

            def call(ops: str, fn=fn, counters=counters, sets=sets) -> Callable[[], None]:
                def run() -> None:
                    m = models[ops]
                    for p in m.parameters():
                        p.grad = None
                    s = sets[counters[ops] % len(sets)]
                    counters[ops] += 1
                    fn(m, s)

                return run

            samples = measure_interleaved(
                {"fast": call("fast"), "reference": call("reference")},
                device=device,
                min_rounds=args.net_min_rounds,
                max_rounds=args.net_max_rounds,
                max_seconds=args.net_max_seconds,
                warmup=args.net_warmup,
            )
            ratio, lo, hi = ratio_ci(samples["reference"], samples["fast"])
            row = {
                "reference_times_s": samples["reference"],
                "fast_times_s": samples["fast"],
                "pass": pass_name,
                "precision": prec,
                "reference_s": statistics.median(samples["reference"]),
                "fast_s": statistics.median(samples["fast"]),
                "ratio": ratio,
                "ratio_lo": lo,
                "ratio_hi": hi,
                "ratio_of_medians": statistics.median(samples["reference"]) / statistics.median(samples["fast"]),
                "reps": len(samples["fast"]),
            }
            rows.append(row)
            print(
                f"  [{problem.id}] {pass_name:<16} {prec:<19} reference {fmt_t(row['reference_s']):>9}  fast "
                f"{fmt_t(row['fast_s']):>9}  ratio {ratio:.2f}x [{lo:.2f}, {hi:.2f}] ({row['reps']} reps)",
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
    """Self time per group over ``args.profile_steps`` eager steps of configuration (c), after warm-up."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device == "cuda"
    cfg = dataclasses.replace(next(c for c in build_configs(device) if c.key == "c"), cuda_graph=False)
    runner = StepRunner(problem, cfg, device, args.seed, args.extra)
    for i in range(max(1, args.warmup)):
        runner.step(batches[i % len(batches)])
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _loss_annotations(runner.trainer.model), profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(args.profile_steps):
            with record_function(STEP_LABEL):
                runner.step(batches[i % len(batches)])
        _sync(device)
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
        "config": cfg.name + (" (eager: no CUDA graph)" if cuda else ""),
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

# torch 2.14.1's CPU nn.InstanceNorm2d returns wrong input gradients when the incoming gradient is channels-last
# (relative L2 error about 1.4 on a 1x256x16x32 input; tests/test_instance_norm_act.py pins our op against the
# fp64 NCHW result in that case). Rows that run it on channels-last tensors time a step with wrong gradients.
WRONG_GRAD_NOTE = (
    "On the CPU, the rows marked † run `nn.InstanceNorm2d` on channels-last tensors, whose input gradient is wrong "
    "in torch 2.14.1 when the incoming gradient is channels-last (relative L2 error about 1.4 on a 1x256x16x32 "
    "input): their times are those of a step that computes wrong gradients. Our fused op is right in every layout."
)


def _wrong_grad(row: dict, device: str) -> bool:
    return device == "cpu" and row["ops"] == "reference" and row["channels_last"]


def _x_ci(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    lo, hi = row.get(key + "_lo"), row.get(key + "_hi")
    return f"{v:.2f}x" if lo is None else f"{v:.2f}x [{lo:.2f}, {hi:.2f}]"


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f} MiB"


def train_rows_table(p: dict, device: str) -> tuple[list[str], list[list[str]]]:
    """One problem -> a line per configuration (main rows, then the ablation), failures included."""
    rows = p["rows"]
    with_mem = any(r["peak_bytes"] for r in rows)
    head = ["config", "step [95% CI]", "images/s", "(c) vs this", "vs (n)", "vs (a)", "vs (b)", "vs (e)"]
    head += ["of floor", "saved for bwd", "saved vs (a)"]
    head += ["peak memory", "mem vs (a)"] if with_mem else []
    head.append("targets")
    body = []
    order = {k: i for i, k in enumerate(MAIN_KEYS)}
    for r in sorted(rows, key=lambda r: (r["ablation"], order.get(r["key"], len(order)), r["key"])):
        tg = []
        for name, t in r["targets"].items():
            sign = "<=" if _lower_is_better(name) else ">="
            state = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
            tg.append(f"{name} {sign} {t['target']:g}: {state}")
        mark = " †" if _wrong_grad(r, device) else ""
        line = [
            f"({r['key']}) {r['config']}{mark}",
            f"{fmt_t(r['median_s'])} [{fmt_t(r['median_lo_s'])}, {fmt_t(r['median_hi_s'])}]",
            f"{r['images_per_s']:.3g}",
            _x_ci(r, "c_vs_this"),
            _x_ci(r, "vs_n"),
            _x_ci(r, "vs_a"),
            _x_ci(r, "vs_b"),
            _x_ci(r, "vs_e"),
            f"{100 * r['floor_fraction']:.1f}%",
            _mib(r["saved_bytes"]),
            "-" if r["saved_bytes_vs_a"] is None else f"{r['saved_bytes_vs_a']:.2f}x",
        ]
        if with_mem:
            line += [
                "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f} GiB",
                "-" if r["mem_vs_a"] is None else f"{r['mem_vs_a']:.2f}x",
            ]
        line.append("; ".join(tg) if tg else "-")
        body.append(line)
    for e in p["errors"]:
        body.append([f"({e['config']}) {e['name']}", "FAILED: " + e["error"]] + ["-"] * (len(head) - 2))
    return head, body


def _lower_is_better(name: str) -> bool:
    return name.startswith("mem") or name.startswith("saved_bytes")


def _gflop(f: float) -> str:
    return f"{f / 1e12:.3f} TFLOP" if f >= 1e11 else f"{f / 1e9:.2f} GFLOP"


def problem_notes(p: dict) -> list[str]:
    f = p["conv_flops"]
    lines = [
        f"Compute floor: {_gflop(f['total'])} of convolutions per step (forward {_gflop(f['forward'])}, "
        f"input gradients {_gflop(f['input_grad'])}, weight gradients {_gflop(f['weight_grad'])}; "
        f"{f['calls']} convolution calls) / measured bf16 matmul throughput = {fmt_t(p['floor_s'])}.",
        f"Timed: {p['rounds']} interleaved rounds in {p['timed_s']:.0f} s.",
    ]
    wc = p.get("weight_casts")
    if wc:
        lines.append(
            f"autocast's weight casts: one bf16 copy of every weight takes {fmt_t(wc['one_cast_s'])}; at about "
            f"{wc['casts_per_step']:g} per step that is {100 * wc['share_of_step']:.1f}% of (c)'s step."
        )
    sc = p.get("sac_time_cost")
    if sc:
        lines.append(
            f"SAC costs {sc['time_cost_pct']:+.1f}% of (c)'s step time ((c) without SAC / (c) = "
            f"{sc['c_sac_off_over_on']:.3f} [{sc['lo']:.3f}, {sc['hi']:.3f}])."
        )
    return lines


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
    mm = res.get("matmul")
    if mm:
        lines.append(f"bf16 matmul throughput ({mm['n']}x{mm['n']} squared): {mm['flops_per_s'] / 1e12:.1f} TFLOP/s")
    load = load_line(m, res.get("load"), s["device"])
    if load:
        lines.append(load)
    lines.append(
        f"timing: benchmarks/timing.py, every configuration in the same interleaved rounds "
        f"({'2 steps' if s['device'] == 'cuda' else '1 step'} each per round, "
        f"{'CUDA events' if s['device'] == 'cuda' else 'torch.utils.benchmark'}), {s['min_rounds']}..{s['max_rounds']} "
        f"rounds, stopping once every ratio against (c) is known to +-5% (95%) or after {s['max_seconds']:g} s; "
        "ratios = paired medians with 95% intervals"
    )
    lines.append(f"sizes: {s['sizes']}; total run time {res.get('total_s', 0):.0f} s")
    return lines


def render_text(res: dict) -> str:
    dev = res["settings"]["device"]
    parts = ["\n".join(header_lines(res))]
    for p in res["train"]:
        parts += ["", f"Training step, {p['problem']} ({' '.join(p['options'])}):"]
        parts += [text_table(*train_rows_table(p, dev))] + problem_notes(p)
    if dev == "cpu" and res["train"]:
        parts += ["", WRONG_GRAD_NOTE]
    if res.get("nets"):
        n = res["nets"]
        parts += ["", f"G and D forward/backward, {n['problem']} (ratio = reference / fast):"]
        parts.append(text_table(*nets_table(n)))
    if res.get("profile"):
        pr = res["profile"]
        g, t = profile_tables(pr)
        parts += [
            "",
            f"Profile of (c) {pr['config']}, {pr['problem']}, {pr['steps']} steps "
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
    dev = s["device"]
    parts = [f"# pix2pixhd_fast training benchmarks ({dev}, sizes {s['sizes']})", ""]
    if not res.get("complete"):
        parts += ["**Incomplete: the run stopped (or is still running) after the parts below.**", ""]
    parts += [f"- {ln}" for ln in header_lines(res)]
    parts += [
        "",
        "(n) is the loop NVIDIA's pix2pixHD runs (separate D passes, D not frozen for G's adversarial pass, "
        "torch.optim.Adam); (a) adds the model's own savings (batched D passes, frozen D, fused Adam); (b) is (a) "
        "with bf16 autocast and channels-last, the two lines of stock PyTorch; (e) is (b) compiled, the strongest "
        "stock path; (c) is our best step; rows `c-*` are (c) without one component. Ratios: paired medians over "
        "the interleaved rounds with 95% intervals; '(c) vs this' is how many times faster (c) is than the row "
        "(for an ablation row: what the missing component contributes). 'of floor' = the compute floor (the "
        "step's convolution FLOPs / measured bf16 matmul throughput) / the step time. 'saved for bwd' = bytes "
        "kept for the backward pass (saved_tensors_hooks, distinct storages, parameters excluded; not measured "
        "for compiled rows).",
    ]
    for p in res["train"]:
        parts += ["", f"## Training step: {p['problem']}", "", f"Options: `{' '.join(p['options'])}`", ""]
        parts.append(md_table(*train_rows_table(p, dev)))
        parts += [""] + [f"- {ln}" for ln in problem_notes(p)]
    if dev == "cpu" and res["train"]:
        parts += ["", WRONG_GRAD_NOTE]
    if res.get("nets"):
        n = res["nets"]
        parts += ["", f"## G and D forward/backward: {n['problem']}", ""]
        parts.append(
            f"G has {n['params_G'] / 1e6:.1f} M parameters, D {n['params_D'] / 1e6:.1f} M. Ratio = reference ops "
            "time / fast ops time (paired median, 95% interval in the JSON); D's backward includes the input "
            "gradient (as in G's adversarial pass). "
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
            f"## Profile: (c) {pr['config']}, {pr['problem']}",
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
    ap.add_argument(
        "--configs",
        default="n,a,b,c,d,e,ablation",
        help="configurations to time: n, a, b, c, d, e, and 'ablation' for every c-* row (or c-sac, c-graph, ...)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="make sure (d) and (e) are in --configs (older command lines)"
    )
    ap.add_argument("--compile-problems", default=None, help="comma-separated problem names for (d), (e) (default all)")
    ap.add_argument("--min-rounds", type=int, default=None, help="interleaved rounds at least (CPU 8, CUDA 10)")
    ap.add_argument("--max-rounds", type=int, default=None, help="interleaved rounds at most (CPU 60, CUDA 100)")
    ap.add_argument(
        "--max-seconds", type=float, default=None, help="stop timing a problem after this (CPU 180, CUDA 30)"
    )
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per configuration (CPU 1, CUDA 2)")
    ap.add_argument("--no-nets", action="store_true", help="skip the G/D forward/backward rows")
    ap.add_argument("--net-min-rounds", type=int, default=None, help="G/D rows: rounds at least (CPU 5, CUDA 10)")
    ap.add_argument("--net-max-rounds", type=int, default=None, help="G/D rows: rounds at most (CPU 30, CUDA 60)")
    ap.add_argument("--net-max-seconds", type=float, default=None, help="G/D rows: seconds per row (CPU 12, CUDA 5)")
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

    def default(name: str, cpu_value, cuda_value) -> None:
        if getattr(args, name) is None:
            setattr(args, name, cuda_value if cuda else cpu_value)

    args.sizes = args.sizes or ("gpu" if cuda else "cpu")
    default("min_rounds", 8, 10)
    default("max_rounds", 60, 100)
    default("max_seconds", 180.0, 30.0)
    default("warmup", 1, 2)
    default("net_min_rounds", 5, 10)
    default("net_max_rounds", 30, 60)
    default("net_max_seconds", 12.0, 5.0)
    args.extra = tuple(shlex.split(args.extra))
    for k in ("min_rounds", "max_rounds", "profile_steps", "net_min_rounds", "net_max_rounds"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    if args.max_rounds < args.min_rounds or args.net_max_rounds < args.net_min_rounds:
        ap.error("--max-rounds must be >= --min-rounds (and --net-max-rounds >= --net-min-rounds)")
    if args.warmup < 0 or args.net_warmup < 0:
        ap.error("--warmup and --net-warmup must be >= 0")
    known = [c.key for c in build_configs(args.device)]
    keys: list[str] = []
    for k in (k.strip() for k in args.configs.split(",") if k.strip()):
        if k == "ablation":
            keys += [c.key for c in build_configs(args.device) if c.ablation]
        elif k in known:
            keys.append(k)
        else:
            ap.error(f"--configs: unknown configuration {k!r} on {args.device}; use {', '.join(known)} or ablation")
    if args.compile:
        keys += ["d", "e"]
    args.config_keys = list(dict.fromkeys(keys))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run_train.py: --device cuda but torch sees no CUDA GPU")
    if device == "cpu":
        steady_cpu_allocator()
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
            "min_rounds": args.min_rounds,
            "max_rounds": args.max_rounds,
            "max_seconds": args.max_seconds,
            "warmup": args.warmup,
            "configs": args.config_keys,
            "compile_problems": sorted(compile_on) if compile_on else None,
            "seed": args.seed,
            "extra_options": list(args.extra),
        },
        "machine": machine_info(device),
        "matmul": None,
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

    res["matmul"] = run_part("matmul throughput", lambda: matmul_throughput(device))
    if res["matmul"]:
        print(f"bf16 matmul: {res['matmul']['flops_per_s'] / 1e12:.2f} TFLOP/s", flush=True)
    all_configs = build_configs(device)
    for k, problem in enumerate(problems):
        print(f"\n{problem.describe()}", flush=True)
        t0 = time.perf_counter()
        batches = [make_batch(problem, device, args.seed + 101 * j) for j in range(3)]
        configs = [
            c
            for c in all_configs
            if c.key in args.config_keys and (not c.compile or compile_on is None or problem.name in compile_on)
        ]
        if res["matmul"]:
            out = run_part(
                f"train {problem.id}",
                lambda p=problem, c=configs, b=batches: bench_problem(p, c, args, device, b, res["matmul"]),
            )
            if out is not None:
                res["errors"] += [f"{e['problem']} ({e['config']}): {e['error']}" for e in out["errors"]]
                res["train"].append(out)
                print(text_table(*train_rows_table(out, device)), flush=True)
                print("\n".join(problem_notes(out)), flush=True)
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
