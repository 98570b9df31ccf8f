"""Benchmark cases shared by run_ops.py and test_bench_ops.py: inputs, implementations, bytes, targets.

A :class:`Case` is one op in one configuration (dtype, memory format, pass). It holds the fast path
(``pix2pixhd_fast.ops``), the raw compiled op (``torch.ops.pix2pixhd_fast``, capturable in a CUDA graph, used
for the bandwidth-floor numbers), the PyTorch baselines, the bytes the op must move, and the targets of
benchmarks/targets.toml. Inputs are made lazily, per input set, from a seed: fresh random data, never zeros.

Every implementation is split into ``prepare(input_set) -> state`` (untimed: e.g. the forward pass whose
backward is timed) and ``run(state)`` (timed).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # targets.py beside this file, however loaded
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402

from pix2pixhd_fast import ops, reference
from pix2pixhd_fast.data.synthetic import render_scene

LABEL_NC = 35  # Cityscapes label ids 0..33 (+1 spare), as pix2pixHD's cityscapes setting
EPS = 1e-5

# The sizes the targets are set for ("cpu", "gpu") and a tiny set for smoke tests.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"norm": (1, 64, 256, 512), "pool": (1, 3, 256, 512), "ids": (1, 256, 512)},
    "gpu": {"norm": (1, 64, 1024, 2048), "pool": (1, 3, 1024, 2048), "ids": (1, 1024, 2048)},
    "tiny": {"norm": (1, 8, 16, 24), "pool": (1, 3, 24, 32), "ids": (1, 24, 32)},
}


def register_size(name: str, height: int, width: int, channels: int = 64) -> str:
    """Add a size set ``name`` (norm 1xCxHxW, pool 1x3xHxW, ids 1xHxW) for the case builders; returns ``name``.

    The scaling benchmark (run_scaling.py) builds the same cases at several resolutions this way.
    """
    if height < 1 or width < 1 or channels < 1:
        raise ValueError(f"register_size: sizes must be positive, got {height}x{width}, C={channels}")
    SIZES[name] = {
        "norm": (1, channels, height, width),
        "pool": (1, 3, height, width),
        "ids": (1, height, width),
    }
    return name


_ELT = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8, torch.int32: 4, torch.uint8: 1}
_DT_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


# ----------------------------------------------------------------------------------------------------
# Street scenes


@functools.lru_cache(maxsize=64)
def _scene(h: int, w: int, seed: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    label, inst, _image = render_scene(np.random.default_rng([seed, b]), h, w)
    return label, inst


def street_scenes(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` street scenes of the package's synthetic data generator (pix2pixhd_fast.data.synthetic), as the
    label/instance maps the ops take: about 20 instances per scene (stuff ids = label ids, things
    ``class * 1000 + k``), deterministic from ``seed``; scenes are cached, since a 1024x2048 one takes ~0.7 s.

    Returns:
        ``(label, inst)``: two ``Tensor[N, 1, H, W]`` of int32 on the CPU (H >= 16, W >= 32).
    """
    scenes = [_scene(h, w, seed, b) for b in range(n)]
    label = np.stack([s[0] for s in scenes]).astype(np.int32)
    inst = np.stack([s[1] for s in scenes])
    return torch.from_numpy(label).unsqueeze(1), torch.from_numpy(inst).unsqueeze(1)


def cityscapes_like(n: int, h: int, w: int, instances: int | None = None, seed: int = 0):
    """:func:`street_scenes` under the name run_train.py imports; the instance count follows the generator, so
    ``instances`` has no effect."""
    return street_scenes(n, h, w, seed)


def count_instances(inst: torch.Tensor) -> int:
    """Mean number of distinct ids per image."""
    return round(sum(int(torch.unique(inst[b]).numel()) for b in range(inst.size(0))) / max(1, inst.size(0)))


# ----------------------------------------------------------------------------------------------------
# Case description


@dataclass
class Impl:
    """One implementation of a case: ``prepare(input_set) -> state`` untimed, ``run(state)`` timed."""

    name: str
    prepare: Callable[[dict], Any]
    run: Callable[[Any], Any]
    slow: bool = False  # the reference Python loop: timed once or twice only
    compiled: bool = False  # a torch.compile baseline (left out with run_ops.py --no-compile)


@dataclass
class Case:
    op: str
    variant: str  # e.g. "fwd bf16 NCHW"
    device: str
    make_set: Callable[[int], dict]  # seed -> one input set (tensors on `device`)
    fast: Impl
    baselines: list[Impl]
    kernel: Impl | None  # the raw compiled op(s), CUDA-graph capturable; None without the library
    bytes_moved: int  # bytes the fast op must move through memory (the floor's numerator)
    bytes_note: str
    set_bytes: int  # memory of one input set, to choose how many sets to rotate through
    targets: dict[str, float] = field(default_factory=dict)  # baseline name -> minimum ratio
    floor_max: float | None = None  # maximum (kernel time / floor time)
    target_text: str = ""
    info: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.op}[{self.variant}]".replace(" ", "-")

    @property
    def group(self) -> str:
        return f"{self.op} {self.variant} ({self.device})"

    def impls(self) -> list[Impl]:
        return [self.fast, *self.baselines]


def _numel(shape) -> int:
    return math.prod(shape)


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _randn(shape, dtype, device, seed, channels_last=False) -> torch.Tensor:
    x = torch.randn(shape, generator=_gen(seed), dtype=torch.float32).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device)


def _grad_of(fn, arg: str):
    """fwd+bwd: the time of y = fn(input); dL/dinput for a random dL/dy (no .grad accumulation)."""

    def prepare(s):
        return {**s, arg: s[arg].detach().requires_grad_()}

    def run(st):
        y = fn(st)
        return torch.autograd.grad(y, st[arg], st["gy"])

    return prepare, run


def _bwd_only(fn, arg: str):
    """bwd: the forward is done in prepare; only the backward is timed (graph retained)."""

    def prepare(s):
        x = s[arg].detach().requires_grad_()
        y = fn({**s, arg: x})
        return y, x, s["gy"]

    def run(st):
        y, x, gy = st
        return torch.autograd.grad(y, x, gy, retain_graph=True)

    return prepare, run


def _impl(name: str, fn, pass_: str, arg: str, slow: bool = False, compiled: bool = False) -> Impl:
    if pass_ == "fwd":
        return Impl(name, lambda s: s, fn, slow, compiled)
    if pass_ == "bwd":
        return Impl(name, *_bwd_only(fn, arg), slow, compiled)
    return Impl(name, *_grad_of(fn, arg), slow, compiled)


COMPILED = "torch.compile(reference)"


def _compiled(fn: Callable) -> Callable:
    """torch.compile of a reference function (static shapes: every input set of a case has the same shape).
    Compilation happens lazily, in the first (warm-up) calls."""
    return torch.compile(fn, dynamic=False)


def _targets(device: str, sizes: str, op: str, variant: str) -> tuple[dict[str, float], float | None, str]:
    """The targets of benchmarks/targets.toml that apply: only at the sizes they were set for (gpu on CUDA,
    cpu on the CPU)."""
    if (device, sizes) not in (("cuda", "gpu"), ("cpu", "cpu")):
        return {}, None, ""
    ratios, floor = targets.op_targets(device, op, variant)
    return ratios, floor, targets.target_text(ratios, floor)


def _lib() -> bool:
    return ops.has_ops() and hasattr(torch.ops, "pix2pixhd_fast")


# ----------------------------------------------------------------------------------------------------
# Per-op cases


NORM_BASELINE = "nn.InstanceNorm2d+ReLU"


GROUP_NORM = "F.group_norm(x, C)+ReLU"


def norm_cases(device: str, sizes: str, dtypes, formats, passes, compiled: bool = True) -> list[Case]:
    """instance_norm_relu against ``nn.InstanceNorm2d`` + ReLU (what pix2pixHD writes), ``F.group_norm`` with one
    group per channel + ReLU (the same maths; on channels-last input it keeps the layout where the module
    converts to NCHW and back) and torch.compile of the reference."""
    shape = SIZES[sizes]["norm"]
    out = []
    for dt in dtypes:
        for cl in formats:
            for p in passes:
                c = shape[1]
                # pix2pixHD's norm_layer (affine=False) followed by ReLU(True).
                module = torch.nn.Sequential(torch.nn.InstanceNorm2d(c, eps=EPS), torch.nn.ReLU(True)).to(device)

                def make(seed, dt=dt, cl=cl):
                    return {
                        "x": _randn(shape, dt, device, seed, cl),
                        "gy": _randn(shape, dt, device, seed + 1, cl),
                    }

                suffix = "" if p == "fwd" else " (autograd)"
                fast = _impl("fast", lambda s: ops.instance_norm_relu(s["x"], eps=EPS), p, "x")
                base = _impl(NORM_BASELINE + suffix, lambda s, m=module: m(s["x"]), p, "x")
                group = _impl(GROUP_NORM + suffix, lambda s, c=c: torch.relu(F.group_norm(s["x"], c, eps=EPS)), p, "x")
                baselines = [base, group]
                if compiled:
                    ref = _compiled(lambda x: reference.instance_norm_act(x, eps=EPS))
                    baselines.append(_impl(COMPILED + suffix, lambda s, f=ref: f(s["x"]), p, "x", compiled=True))
                kernel = _norm_kernel(p) if _lib() else None
                nbytes = 3 * _numel(shape) * _ELT[dt]
                if p == "fwd":
                    note = "3 passes: read x twice, write y"
                elif p == "bwd":
                    note = "3 passes (the targets' count): read x, read gy, write gx"
                else:
                    note = "6 passes: fwd 3 + bwd 3"
                    nbytes *= 2
                fmt = "CL" if cl else "NCHW"
                variant = f"{p} {_DT_NAME[dt]} {fmt}"
                tg, floor_max, text = _targets(device, sizes, "instance_norm_relu", variant)
                out.append(
                    Case(
                        op="instance_norm_relu",
                        variant=variant,
                        device=device,
                        make_set=make,
                        fast=fast,
                        baselines=baselines,
                        kernel=kernel,
                        bytes_moved=nbytes,
                        bytes_note=note,
                        set_bytes=2 * _numel(shape) * _ELT[dt],
                        targets=tg,
                        floor_max=floor_max,
                        target_text=text,
                        info={"shape": list(shape), "dtype": str(dt), "channels_last": cl, "pass": p},
                    )
                )
    return out


PAD = 1  # the ResnetBlock's reflection padding (3x3 convolutions)
PAD_BASELINE = "nn.InstanceNorm2d+ReLU+ReflectionPad2d"


def norm_pad_cases(device: str, sizes: str, dtypes, formats, passes, compiled: bool = True) -> list[Case]:
    """instance_norm_act_pad (norm + ReLU + residual add + reflection pad in one pass, the generator's ResnetBlock
    boundary) against the modules users write, ``F.group_norm`` + ReLU + ``F.pad(reflect)``, and torch.compile of
    the reference. Empty when the package has no such op."""
    if not hasattr(ops, "instance_norm_act_pad"):
        return []
    shape = SIZES[sizes]["norm"]
    c = shape[1]
    out = []
    for dt in dtypes:
        for cl in formats:
            for p in passes:
                module = torch.nn.Sequential(
                    torch.nn.InstanceNorm2d(c, eps=EPS), torch.nn.ReLU(True), torch.nn.ReflectionPad2d(PAD)
                ).to(device)
                padded = (shape[0], c, shape[2] + 2 * PAD, shape[3] + 2 * PAD)

                def make(seed, dt=dt, cl=cl, padded=padded):
                    return {
                        "x": _randn(shape, dt, device, seed, cl),
                        "res": _randn(shape, dt, device, seed + 5, cl),
                        "gy": _randn(padded, dt, device, seed + 1, cl),
                    }

                suffix = "" if p == "fwd" else " (autograd)"
                fast = _impl(
                    "fast", lambda s: ops.instance_norm_act_pad(s["x"], residual=s["res"], eps=EPS, pad=PAD), p, "x"
                )
                base = _impl(PAD_BASELINE + suffix, lambda s, m=module: m[2](m[1](m[0](s["x"])) + s["res"]), p, "x")
                group = _impl(
                    "F.group_norm(x, C)+ReLU+F.pad(reflect)" + suffix,
                    lambda s, c=c: F.pad(
                        torch.relu(F.group_norm(s["x"], c, eps=EPS)) + s["res"], (PAD,) * 4, mode="reflect"
                    ),
                    p,
                    "x",
                )
                baselines = [base, group]
                if compiled:
                    ref = _compiled(lambda x, r: reference.instance_norm_act_pad(x, residual=r, eps=EPS, pad=PAD))
                    baselines.append(
                        _impl(COMPILED + suffix, lambda s, f=ref: f(s["x"], s["res"]), p, "x", compiled=True)
                    )
                # fwd: read x twice + residual, write the padded output; bwd: read x, gy (padded), write gx.
                elt = _ELT[dt]
                if p == "fwd":
                    nbytes, note = (3 * _numel(shape) + _numel(padded)) * elt, "read x twice + residual, write padded y"
                else:
                    nbytes, note = (2 * _numel(shape) + _numel(padded)) * elt, "read x, read padded gy, write gx"
                variant = f"{p} {_DT_NAME[dt]} {'CL' if cl else 'NCHW'} relu+residual pad{PAD}"
                tg, floor_max, text = _targets(device, sizes, "instance_norm_act_pad", variant)
                out.append(
                    Case(
                        op="instance_norm_act_pad",
                        variant=variant,
                        device=device,
                        make_set=make,
                        fast=fast,
                        baselines=baselines,
                        kernel=_pad_kernel(p) if _lib() and _has_op("instance_norm_act_pad") else None,
                        bytes_moved=nbytes,
                        bytes_note=note,
                        set_bytes=(3 * _numel(shape) + _numel(padded)) * elt,
                        targets=tg,
                        floor_max=floor_max,
                        target_text=text,
                        info={"shape": list(shape), "dtype": str(dt), "channels_last": cl, "pass": p, "pad": PAD},
                    )
                )
    return out


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.pix2pixhd_fast, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _pad_kernel(p: str) -> Impl:
    """The raw fused norm+pad op(s) of a pad case, CUDA-graph capturable."""
    op = torch.ops.pix2pixhd_fast

    def fwd(s):
        return op.instance_norm_act_pad(s["x"], None, None, s["res"], EPS, 0.0, PAD)

    if p == "fwd":
        return Impl("kernel", lambda s: s, fwd)

    def prepare(s):
        _y, mean, rstd = fwd(s)
        return {**s, "mean": mean, "rstd": rstd}

    def bwd(st):
        return op.instance_norm_act_pad_backward(
            st["gy"], st["x"], st["mean"], st["rstd"], None, None, 0.0, PAD, [True, False, False, False]
        )

    if p == "bwd":
        return Impl("kernel", prepare, bwd)
    return Impl("kernel", lambda s: s, lambda s: bwd(prepare(s)))


def _norm_kernel(p: str) -> Impl:
    op = torch.ops.pix2pixhd_fast

    def fwd(s):
        return op.instance_norm_act(s["x"], None, None, EPS, 0.0)

    if p == "fwd":
        return Impl("kernel", lambda s: s, fwd)

    def prepare(s):
        _y, mean, rstd = fwd(s)
        return {**s, "mean": mean, "rstd": rstd}

    def bwd(st):
        return op.instance_norm_act_backward(
            st["gy"], st["x"], st["mean"], st["rstd"], None, None, 0.0, [True, False, False]
        )

    if p == "bwd":
        return Impl("kernel", prepare, bwd)

    def both(s):
        _y, mean, rstd = fwd(s)
        return op.instance_norm_act_backward(s["gy"], s["x"], mean, rstd, None, None, 0.0, [True, False, False])

    return Impl("kernel", lambda s: s, both)


def _scene_set(sizes: str, device: str, seed: int) -> dict:
    n, h, w = SIZES[sizes]["ids"]
    label, inst = street_scenes(n, h, w, seed)
    return {"label": label.to(device), "inst": inst.to(device)}


def pool_cases(device: str, sizes: str, dtypes, passes, compiled: bool = True) -> list[Case]:
    """instance_avg_pool on street scenes against the reference per-id loop, ``scatter_reduce(mean)`` and
    torch.compile of the scatter_reduce reference (the loop's np.unique does not compile)."""
    shape = SIZES[sizes]["pool"]
    n, c, h, w = shape
    out = []
    for dt in dtypes:
        for p in passes:

            def make(seed, dt=dt):
                _label, inst = street_scenes(n, h, w, seed)
                return {
                    "feat": _randn(shape, dt, device, seed + 2),
                    "inst": inst.to(device),
                    "gy": _randn(shape, dt, device, seed + 3),
                }

            fast = _impl("fast", lambda s: ops.instance_avg_pool(s["feat"], s["inst"]), p, "feat")
            loop = _impl("loop", lambda s: reference.instance_avg_pool_loop(s["feat"], s["inst"]), p, "feat", True)
            scat = _impl(
                "scatter_reduce", lambda s: reference.instance_avg_pool_scatter(s["feat"], s["inst"]), p, "feat"
            )
            baselines = [loop, scat]
            if compiled:
                ref = _compiled(reference.instance_avg_pool_scatter)
                baselines.append(_impl(COMPILED, lambda s, f=ref: f(s["feat"], s["inst"]), p, "feat", compiled=True))
            kernel = _pool_kernel(p) if _lib() else None
            one = _numel(shape) * _ELT[dt] * 2 + n * h * w * 4  # read feat, read ids, write out
            nbytes = one * (2 if p == "fwd+bwd" else 1)
            note = "read feat + ids, write out" + (" (x2: bwd)" if p == "fwd+bwd" else "")
            variant = f"{p} {_DT_NAME[dt]}"
            tg, floor_max, text = _targets(device, sizes, "instance_avg_pool", variant)
            out.append(
                Case(
                    op="instance_avg_pool",
                    variant=variant,
                    device=device,
                    make_set=make,
                    fast=fast,
                    baselines=baselines,
                    kernel=kernel,
                    bytes_moved=nbytes,
                    bytes_note=note,
                    set_bytes=2 * _numel(shape) * _ELT[dt] + n * h * w * 4,
                    targets=tg,
                    floor_max=floor_max,
                    target_text=text,
                    info={"shape": list(shape), "dtype": str(dt), "pass": p, "ids": "int32"},
                )
            )
    return out


def _pool_kernel(p: str) -> Impl:
    op = torch.ops.pix2pixhd_fast.instance_avg_pool
    if p == "fwd":
        return Impl("kernel", lambda s: s, lambda s: op(s["feat"], s["inst"]))
    return Impl("kernel", lambda s: s, lambda s: (op(s["feat"], s["inst"]), op(s["gy"], s["inst"])))


def tiled_instances(n: int, h: int, w: int, k: int, seed: int = 0) -> torch.Tensor:
    """Instance maps with exactly ``k`` distinct ids per image (for the instance-count scaling series).

    The image is cut into a grid of at least ``k`` near-square cells; ``k`` random sparse ids (0 .. 2**24-1)
    each take one cell, the remaining cells take ids drawn from the same ``k``, and the cells are shuffled, so
    every id covers one or more cells wherever they fall. Deterministic from ``seed``.

    Returns:
        ``Tensor[N, 1, H, W]`` of int32 on the CPU.
    """
    if min(n, h, w, k) < 1:
        raise ValueError(f"tiled_instances: need n, h, w, k >= 1, got {n=}, {h=}, {w=}, {k=}")
    if k > h * w:
        raise ValueError(f"tiled_instances: {k} instances do not fit in {h}x{w} pixels")
    # Grid rows x cols >= k with cells about as tall as wide.
    rows = max(1, min(h, round(math.sqrt(k * h / w))))
    cols = min(w, math.ceil(k / rows))
    while rows * cols < k:
        rows = min(h, rows + 1)
        cols = min(w, math.ceil(k / rows))
    ys = np.arange(h) * rows // h  # cell row of each pixel row
    xs = np.arange(w) * cols // w
    out = np.empty((n, h, w), np.int32)
    for b in range(n):
        rng = np.random.default_rng([seed, b, k])
        ids = rng.choice(1 << 24, size=k, replace=False).astype(np.int32)
        cell_ids = np.concatenate([ids, rng.choice(ids, size=rows * cols - k)])
        rng.shuffle(cell_ids)
        out[b] = cell_ids.reshape(rows, cols)[ys[:, None], xs[None, :]]
    return torch.from_numpy(out).unsqueeze(1)


def pool_count_cases(device: str, sizes: str, counts, dtype=torch.float32, pass_: str = "fwd") -> list[Case]:
    """instance_avg_pool at the fixed pool shape of ``sizes`` with exactly ``k`` instances for each ``k`` in
    ``counts`` (:func:`tiled_instances`), against the reference loop and scatter_reduce; no targets."""
    shape = SIZES[sizes]["pool"]
    n, _c, h, w = shape
    out = []
    for k in counts:

        def make(seed, k=k):
            return {
                "feat": _randn(shape, dtype, device, seed + 2),
                "inst": tiled_instances(n, h, w, k, seed).to(device),
                "gy": _randn(shape, dtype, device, seed + 3),
            }

        one = _numel(shape) * _ELT[dtype] * 2 + n * h * w * 4
        out.append(
            Case(
                op="instance_avg_pool",
                variant=f"{pass_} {_DT_NAME[dtype]} {k} instances",
                device=device,
                make_set=make,
                fast=_impl("fast", lambda s: ops.instance_avg_pool(s["feat"], s["inst"]), pass_, "feat"),
                baselines=[
                    _impl(
                        "loop", lambda s: reference.instance_avg_pool_loop(s["feat"], s["inst"]), pass_, "feat", True
                    ),
                    _impl(
                        "scatter_reduce",
                        lambda s: reference.instance_avg_pool_scatter(s["feat"], s["inst"]),
                        pass_,
                        "feat",
                    ),
                ],
                kernel=_pool_kernel(pass_) if _lib() else None,
                bytes_moved=one * (2 if pass_ == "fwd+bwd" else 1),
                bytes_note="read feat + ids, write out" + (" (x2: bwd)" if pass_ == "fwd+bwd" else ""),
                set_bytes=2 * _numel(shape) * _ELT[dtype] + n * h * w * 4,
                info={"shape": list(shape), "dtype": str(dtype), "pass": pass_, "ids": "int32", "instances": k},
            )
        )
    return out


def boundary_cases(device: str, sizes: str, compiled: bool = True) -> list[Case]:
    """instance_boundary against pix2pixHD's get_edges and torch.compile of it."""
    n, h, w = SIZES[sizes]["ids"]
    kernel = None
    if _lib():
        op = torch.ops.pix2pixhd_fast.instance_boundary
        kernel = Impl("kernel", lambda s: s, lambda s: op(s["inst"], torch.float32))
    baselines = [Impl("get_edges", lambda s: s, lambda s: reference.get_edges(s["inst"]))]
    if compiled:
        ref = _compiled(reference.get_edges)
        baselines.append(Impl(COMPILED, lambda s: s, lambda s, f=ref: f(s["inst"]), compiled=True))
    variant = "int32 ids fp32 out"
    tg, floor_max, text = _targets(device, sizes, "instance_boundary", variant)
    return [
        Case(
            op="instance_boundary",
            variant=variant,
            device=device,
            make_set=lambda seed: _scene_set(sizes, device, seed),
            fast=Impl("fast", lambda s: s, lambda s: ops.instance_boundary(s["inst"])),
            baselines=baselines,
            kernel=kernel,
            bytes_moved=n * h * w * (4 + 4),
            bytes_note="read ids, write edges",
            set_bytes=n * h * w * 8,
            targets=tg,
            floor_max=floor_max,
            target_text=text,
            info={"shape": [n, 1, h, w], "ids": "int32", "out": "float32"},
        )
    ]


ENCODE_VARIANTS = (
    # (variant, out dtype, channels_last, feature channels)
    ("fp32 NCHW", torch.float32, False, 0),
    ("bf16 CL", torch.bfloat16, True, 0),
    ("fp32 NCHW +feat3", torch.float32, False, 3),
)


def encode_cases(device: str, sizes: str, variants=ENCODE_VARIANTS, compiled: bool = True) -> list[Case]:
    """encode_input against the reference (get_edges + one-hot scatter + cat, as pix2pixHD's encode_input) and
    torch.compile of it."""
    n, h, w = SIZES[sizes]["ids"]
    out = []
    for variant, dt, cl, cf in variants:
        mf = torch.channels_last if cl else torch.contiguous_format

        def make(seed, cf=cf):
            s = _scene_set(sizes, device, seed)
            s["feat"] = _randn((n, cf, h, w), torch.float32, device, seed + 4) if cf else None
            return s

        def fast_fn(s, dt=dt, mf=mf):
            return ops.encode_input(s["label"], s["inst"], LABEL_NC, s["feat"], dt, mf, check=False)

        def ref_fn(s, dt=dt, mf=mf):
            return reference.encode_input(s["label"], s["inst"], LABEL_NC, s["feat"], dt, mf)

        baselines = [Impl("reference", lambda s: s, ref_fn)]
        if compiled:
            cref = _compiled(
                lambda label, inst, feat, dt=dt, mf=mf: reference.encode_input(label, inst, LABEL_NC, feat, dt, mf)
            )
            baselines.append(
                Impl(COMPILED, lambda s: s, lambda s, f=cref: f(s["label"], s["inst"], s["feat"]), compiled=True)
            )
        tg, floor_max, text = _targets(device, sizes, "encode_input", variant)

        kernel = None
        if _lib():
            op = torch.ops.pix2pixhd_fast.encode_input
            kernel = Impl(
                "kernel",
                lambda s: s,
                lambda s, dt=dt, cl=cl, op=op: op(s["label"], s["inst"], LABEL_NC, s["feat"], dt, cl),
            )
        c_out = LABEL_NC + 1 + cf
        nbytes = n * h * w * (4 + 4 + cf * 4 + c_out * _ELT[dt])
        out.append(
            Case(
                op="encode_input",
                variant=variant,
                device=device,
                make_set=make,
                fast=Impl("fast", lambda s: s, fast_fn),
                baselines=baselines,
                kernel=kernel,
                bytes_moved=nbytes,
                bytes_note=f"read label + inst{' + feat' if cf else ''}, write {c_out} channels",
                set_bytes=n * h * w * (8 + cf * 4),
                targets=tg,
                floor_max=floor_max,
                target_text=text,
                info={"shape": [n, c_out, h, w], "label_nc": LABEL_NC, "out": str(dt), "channels_last": cl},
            )
        )
    return out


# Per-call overhead: fwd+bwd at sizes where the kernels take microseconds, so the time is the Python
# wrapper, the dispatcher and autograd (the generator's and discriminator's small feature maps make ~40
# norm calls per training step). On CUDA the "kernel" column (CUDA-graph replay of the raw ops) is the
# kernels' share; fast minus kernel is the overhead. The same shapes at every `sizes`.
OVERHEAD_SHAPES = {"norm": (1, 16, 8, 8), "pool": (1, 3, 8, 8), "instances": 4}


def overhead_cases(device: str) -> list[Case]:
    out = []
    norm_shape = OVERHEAD_SHAPES["norm"]
    module = torch.nn.Sequential(torch.nn.InstanceNorm2d(norm_shape[1], eps=EPS), torch.nn.ReLU(True)).to(device)
    out.append(
        Case(
            op="instance_norm_relu",
            variant="call overhead fwd+bwd fp32 " + "x".join(map(str, norm_shape)),
            device=device,
            make_set=lambda seed: {
                "x": _randn(norm_shape, torch.float32, device, seed),
                "gy": _randn(norm_shape, torch.float32, device, seed + 1),
            },
            fast=_impl("fast", lambda s: ops.instance_norm_relu(s["x"], eps=EPS), "fwd+bwd", "x"),
            baselines=[_impl(NORM_BASELINE + " (autograd)", lambda s, m=module: m(s["x"]), "fwd+bwd", "x")],
            kernel=_norm_kernel("fwd+bwd") if _lib() else None,
            bytes_moved=6 * _numel(norm_shape) * 4,
            bytes_note="6 passes (a call-overhead case: the floor says little)",
            set_bytes=2 * _numel(norm_shape) * 4,
            target_text="per-call overhead",
            info={"shape": list(norm_shape), "dtype": str(torch.float32), "pass": "fwd+bwd", "overhead": True},
        )
    )
    pool_shape = OVERHEAD_SHAPES["pool"]
    n, c, h, w = pool_shape

    def make(seed):
        inst = tiled_instances(n, h, w, OVERHEAD_SHAPES["instances"], seed)
        return {
            "feat": _randn(pool_shape, torch.float32, device, seed + 2),
            "inst": inst.to(device),
            "gy": _randn(pool_shape, torch.float32, device, seed + 3),
        }

    def pool(s):
        return ops.instance_avg_pool(s["feat"], s["inst"])

    def scatter(s):
        return reference.instance_avg_pool_scatter(s["feat"], s["inst"])

    out.append(
        Case(
            op="instance_avg_pool",
            variant="call overhead fwd+bwd fp32 " + "x".join(map(str, pool_shape)),
            device=device,
            make_set=make,
            fast=_impl("fast", pool, "fwd+bwd", "feat"),
            baselines=[_impl("scatter_reduce", scatter, "fwd+bwd", "feat")],
            kernel=_pool_kernel("fwd+bwd") if _lib() else None,
            bytes_moved=2 * (_numel(pool_shape) * 4 * 2 + n * h * w * 4),
            bytes_note="read feat + ids, write out (x2: bwd; a call-overhead case)",
            set_bytes=2 * _numel(pool_shape) * 4 + n * h * w * 4,
            target_text="per-call overhead",
            info={"shape": list(pool_shape), "dtype": str(torch.float32), "pass": "fwd+bwd", "overhead": True},
        )
    )
    return out


def build_cases(device: str, sizes: str, purpose: str = "runner", compiled: bool = True) -> list[Case]:
    """Every case for ``device`` at ``sizes``.

    ``purpose="runner"`` (run_ops.py): norm fwd and bwd (the targets' passes); ``"pytest"``: norm fwd and
    fwd+bwd. Both: fp32 and bf16, NCHW and channels-last (the fused norm+pad: bf16); pool fwd and fwd+bwd;
    boundary; encode; and the per-call overhead of norm and pool fwd+bwd at a tiny size. ``compiled=False``
    leaves out the torch.compile baselines.
    """
    norm_passes = ("fwd", "bwd") if purpose == "runner" else ("fwd", "fwd+bwd")
    dtypes = (torch.float32, torch.bfloat16)
    return (
        norm_cases(device, sizes, dtypes, (False, True), norm_passes, compiled)
        + norm_pad_cases(device, sizes, (torch.bfloat16,), (False, True), norm_passes, compiled)
        + pool_cases(device, sizes, dtypes, ("fwd", "fwd+bwd"), compiled)
        + boundary_cases(device, sizes, compiled)
        + encode_cases(device, sizes, compiled=compiled)
        + overhead_cases(device)
    )
