"""Benchmark cases shared by run_ops.py and test_bench_ops.py: inputs, implementations, bytes, targets.

A :class:`Case` is one op in one configuration (dtype, memory format, pass). It holds the fast path
(``pix2pixhd_fast.ops``), the raw compiled op (``torch.ops.pix2pixhd_fast``, capturable in a CUDA graph, used
for the bandwidth-floor numbers), the PyTorch baselines, the bytes the op must move, and the targets of
DESIGN.md. Inputs are made lazily, per input set, from a seed: fresh random data, never zeros.

Every implementation is split into ``prepare(input_set) -> state`` (untimed: e.g. the forward pass whose
backward is timed) and ``run(state)`` (timed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pix2pixhd_fast import ops, reference

LABEL_NC = 35  # Cityscapes label ids 0..33 (+1 spare), as pix2pixHD's cityscapes setting
EPS = 1e-5

# Sizes from DESIGN.md ("cpu", "gpu") and a tiny set for smoke tests.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"norm": (1, 64, 256, 512), "pool": (1, 3, 256, 512), "ids": (1, 256, 512), "instances": 60},
    "gpu": {"norm": (1, 64, 1024, 2048), "pool": (1, 3, 1024, 2048), "ids": (1, 1024, 2048), "instances": 60},
    "tiny": {"norm": (1, 8, 16, 24), "pool": (1, 3, 24, 32), "ids": (1, 24, 32), "instances": 6},
}


def register_size(name: str, height: int, width: int, channels: int = 64, instances: int = 60) -> str:
    """Add a size set ``name`` (norm 1xCxHxW, pool 1x3xHxW, ids 1xHxW) for the case builders; returns ``name``.

    The scaling benchmark (run_scaling.py) builds the same cases at several resolutions this way.
    """
    if height < 1 or width < 1 or channels < 1 or instances < 1:
        raise ValueError(f"register_size: sizes must be positive, got {height}x{width}, C={channels}, {instances=}")
    SIZES[name] = {
        "norm": (1, channels, height, width),
        "pool": (1, 3, height, width),
        "ids": (1, height, width),
        "instances": instances,
    }
    return name


_ELT = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8, torch.int32: 4, torch.uint8: 1}
_DT_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


# ----------------------------------------------------------------------------------------------------
# Cityscapes-like scenes


# Cityscapes label ids of the classes drawn (all < LABEL_NC).
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY = 7, 8, 11, 21, 23
PERSON, RIDER, CAR, TRUCK, BICYCLE = 24, 25, 26, 27, 33
_THINGS = ((CAR, 0.5), (PERSON, 0.25), (BICYCLE, 0.1), (RIDER, 0.08), (TRUCK, 0.07))


def cityscapes_like(n: int, h: int, w: int, instances: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky street scenes shaped like Cityscapes label/instance maps, deterministic from ``seed``.

    Big stuff regions (sky, a skyline of buildings and trees, road, sidewalks) whose instance id is the
    label id, and about ``instances - 5`` things (cars as rectangles, people/riders/bicycles as blobs)
    with ids ``class * 1000 + k``, smaller towards the horizon, nearer ones drawn over farther ones.

    Returns:
        ``(label, inst)``: two ``Tensor[N, 1, H, W]`` of int32 on the CPU.
    """
    labels = np.empty((n, h, w), np.int32)
    insts = np.empty((n, h, w), np.int32)
    yy = np.arange(h, dtype=np.float64)[:, None]
    xx = np.arange(w, dtype=np.float64)[None, :]
    classes = np.array([c for c, _ in _THINGS])
    probs = np.array([p for _, p in _THINGS])
    for b in range(n):
        rng = np.random.default_rng([seed, b])
        hz = int(h * rng.uniform(0.38, 0.5))  # horizon row
        label = np.full((h, w), SKY, np.int32)
        # Skyline: columns of buildings / trees reaching up to a random height above the horizon.
        x0 = 0
        while x0 < w:
            cw = max(1, int(w * rng.uniform(0.04, 0.16)))
            top = int(rng.uniform(0.03, 0.9) * hz)
            label[top:hz, x0 : x0 + cw] = VEGETATION if rng.random() < 0.3 else BUILDING
            x0 += cw
        # Ground: road in a trapezoid widening towards the bottom, sidewalks beside it.
        t = np.clip((yy - hz) / max(1, h - hz), 0.0, 1.0)
        half = (0.1 + 0.45 * t) * w
        centre = w * rng.uniform(0.45, 0.55)
        ground = np.broadcast_to(yy >= hz, (h, w))
        road = ground & (np.abs(xx - centre) <= half)
        label[ground] = SIDEWALK
        label[road] = ROAD
        inst = label.copy()  # stuff: instance id = label id (the Cityscapes convention)
        # Things, farthest first so nearer ones occlude them.
        n_things = max(1, instances - 5)
        bottoms = np.sort(rng.uniform(hz + 1, h + 0.3 * (h - hz), n_things))
        counts: dict[int, int] = {}
        for k in range(n_things):
            cls = int(rng.choice(classes, p=probs))
            idx = counts.get(cls, 0)
            counts[cls] = idx + 1
            depth = (bottoms[k] - hz) / max(1.0, h - hz)  # 0 at the horizon .. ~1.3 in front
            if cls in (CAR, TRUCK):
                bw = max(2, int(w * (0.02 + 0.1 * depth) * rng.uniform(0.7, 1.3)))
                bh = max(2, int(bw * rng.uniform(0.45, 0.7)))
            else:
                bh = max(2, int(h * (0.03 + 0.25 * depth) * rng.uniform(0.7, 1.2)))
                bw = max(2, int(bh * rng.uniform(0.3, 0.5)))
            y1 = min(h, int(bottoms[k]))
            y0 = max(0, y1 - bh)
            cx = rng.uniform(0, w)
            xa, xb = max(0, int(cx - bw / 2)), min(w, int(cx + bw / 2) + 1)
            if y1 <= y0 or xb <= xa:
                continue
            if cls in (CAR, TRUCK):
                mask = np.ones((y1 - y0, xb - xa), bool)
            else:  # an ellipse blob
                ey = (np.arange(y0, y1)[:, None] + 0.5 - (y0 + y1) / 2) / max(0.5, (y1 - y0) / 2)
                ex = (np.arange(xa, xb)[None, :] + 0.5 - cx) / max(0.5, bw / 2)
                mask = ey * ey + ex * ex <= 1.0
            label[y0:y1, xa:xb][mask] = cls
            inst[y0:y1, xa:xb][mask] = cls * 1000 + idx
        labels[b], insts[b] = label, inst
    return torch.from_numpy(labels).unsqueeze(1), torch.from_numpy(insts).unsqueeze(1)


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


def _impl(name: str, fn, pass_: str, arg: str, slow: bool = False) -> Impl:
    if pass_ == "fwd":
        return Impl(name, lambda s: s, fn, slow)
    if pass_ == "bwd":
        return Impl(name, *_bwd_only(fn, arg), slow)
    return Impl(name, *_grad_of(fn, arg), slow)


def _lib() -> bool:
    return ops.has_ops() and hasattr(torch.ops, "pix2pixhd_fast")


# ----------------------------------------------------------------------------------------------------
# Per-op cases


NORM_BASELINE = "nn.InstanceNorm2d+ReLU"


def norm_cases(device: str, sizes: str, dtypes, formats, passes) -> list[Case]:
    shape = SIZES[sizes]["norm"]
    on_gpu, real = device == "cuda", sizes != "tiny"
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

                fast = _impl("fast", lambda s: ops.instance_norm_relu(s["x"], eps=EPS), p, "x")
                base = _impl(
                    NORM_BASELINE if p == "fwd" else NORM_BASELINE + " (autograd)",
                    lambda s, m=module: m(s["x"]),
                    p,
                    "x",
                )
                kernel = _norm_kernel(p) if _lib() else None
                nbytes = 3 * _numel(shape) * _ELT[dt]
                if p == "fwd":
                    note = "3 passes: read x twice, write y"
                elif p == "bwd":
                    note = "3 passes (DESIGN count): read x, read gy, write gx"
                else:
                    note = "6 passes: fwd 3 + bwd 3"
                    nbytes *= 2
                fmt = "CL" if cl else "NCHW"
                targets, floor_max, text = {}, None, ""
                if on_gpu and dt == torch.bfloat16 and p == "fwd":
                    targets = {base.name: 4.0 if cl else 2.0}
                    floor_max, text = 1.15, f">= {4 if cl else 2}x; <= 1.15x floor"
                elif on_gpu and dt == torch.bfloat16 and p == "bwd":
                    targets, floor_max, text = {base.name: 2.0}, 1.2, ">= 2x; <= 1.2x floor"
                elif not on_gpu and p == "fwd":
                    targets, text = {base.name: 2.0 if cl else 1.5}, f">= {2 if cl else 1.5}x"
                out.append(
                    Case(
                        op="instance_norm_relu",
                        variant=f"{p} {_DT_NAME[dt]} {fmt}",
                        device=device,
                        make_set=make,
                        fast=fast,
                        baselines=[base],
                        kernel=kernel,
                        bytes_moved=nbytes,
                        bytes_note=note,
                        set_bytes=2 * _numel(shape) * _ELT[dt],
                        targets=targets if real else {},
                        floor_max=floor_max if real else None,
                        target_text=text,
                        info={"shape": list(shape), "dtype": str(dt), "channels_last": cl, "pass": p},
                    )
                )
    return out


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
    label, inst = cityscapes_like(n, h, w, SIZES[sizes]["instances"], seed)
    return {"label": label.to(device), "inst": inst.to(device)}


def pool_cases(device: str, sizes: str, dtypes, passes) -> list[Case]:
    shape = SIZES[sizes]["pool"]
    n, c, h, w = shape
    on_gpu, real = device == "cuda", sizes != "tiny"
    out = []
    for dt in dtypes:
        for p in passes:

            def make(seed, dt=dt):
                _label, inst = cityscapes_like(n, h, w, SIZES[sizes]["instances"], seed)
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
            kernel = _pool_kernel(p) if _lib() else None
            one = _numel(shape) * _ELT[dt] * 2 + n * h * w * 4  # read feat, read ids, write out
            nbytes = one * (2 if p == "fwd+bwd" else 1)
            note = "read feat + ids, write out" + (" (x2: bwd)" if p == "fwd+bwd" else "")
            targets, floor_max, text = {}, None, ""
            if p == "fwd+bwd":
                if on_gpu:
                    targets, floor_max = {"loop": 1000.0, "scatter_reduce": 3.0}, 2.0
                    text = ">= 1000x loop, >= 3x scatter; <= 2x floor"
                else:
                    targets, text = {"loop": 100.0}, ">= 100x loop"
            out.append(
                Case(
                    op="instance_avg_pool",
                    variant=f"{p} {_DT_NAME[dt]}",
                    device=device,
                    make_set=make,
                    fast=fast,
                    baselines=[loop, scat],
                    kernel=kernel,
                    bytes_moved=nbytes,
                    bytes_note=note,
                    set_bytes=2 * _numel(shape) * _ELT[dt] + n * h * w * 4,
                    targets=targets if real else {},
                    floor_max=floor_max if real else None,
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


def boundary_cases(device: str, sizes: str) -> list[Case]:
    n, h, w = SIZES[sizes]["ids"]
    on_gpu, real = device == "cuda", sizes != "tiny"
    kernel = None
    if _lib():
        op = torch.ops.pix2pixhd_fast.instance_boundary
        kernel = Impl("kernel", lambda s: s, lambda s: op(s["inst"], torch.float32))
    return [
        Case(
            op="instance_boundary",
            variant="int32 ids fp32 out",
            device=device,
            make_set=lambda seed: _scene_set(sizes, device, seed),
            fast=Impl("fast", lambda s: s, lambda s: ops.instance_boundary(s["inst"])),
            baselines=[Impl("get_edges", lambda s: s, lambda s: reference.get_edges(s["inst"]))],
            kernel=kernel,
            bytes_moved=n * h * w * (4 + 4),
            bytes_note="read ids, write edges",
            set_bytes=n * h * w * 8,
            targets=({"get_edges": 5.0} if on_gpu else {"get_edges": 3.0}) if real else {},
            floor_max=1.5 if on_gpu and real else None,
            target_text=">= 5x; <= 1.5x floor" if on_gpu else ">= 3x",
            info={"shape": [n, 1, h, w], "ids": "int32", "out": "float32"},
        )
    ]


ENCODE_VARIANTS = (
    # (variant, out dtype, channels_last, feature channels)
    ("fp32 NCHW", torch.float32, False, 0),
    ("bf16 CL", torch.bfloat16, True, 0),
    ("fp32 NCHW +feat3", torch.float32, False, 3),
)


def encode_cases(device: str, sizes: str, variants=ENCODE_VARIANTS) -> list[Case]:
    n, h, w = SIZES[sizes]["ids"]
    on_gpu, real = device == "cuda", sizes != "tiny"
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
                baselines=[Impl("reference", lambda s: s, ref_fn)],
                kernel=kernel,
                bytes_moved=nbytes,
                bytes_note=f"read label + inst{' + feat' if cf else ''}, write {c_out} channels",
                set_bytes=n * h * w * (8 + cf * 4),
                targets={"reference": 5.0} if on_gpu and real else {},
                floor_max=1.5 if on_gpu and real else None,
                target_text=">= 5x; <= 1.5x floor" if on_gpu else "",
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
        _label, inst = cityscapes_like(n, h, w, OVERHEAD_SHAPES["instances"], seed)
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


def build_cases(device: str, sizes: str, purpose: str = "runner") -> list[Case]:
    """Every case for ``device`` at ``sizes``.

    ``purpose="runner"`` (run_ops.py): norm fwd and bwd (the DESIGN targets); ``"pytest"``: norm fwd and
    fwd+bwd. Both: fp32 and bf16, NCHW and channels-last; pool fwd and fwd+bwd; boundary; encode; and the
    per-call overhead of norm and pool fwd+bwd at a tiny size.
    """
    norm_passes = ("fwd", "bwd") if purpose == "runner" else ("fwd", "fwd+bwd")
    dtypes = (torch.float32, torch.bfloat16)
    return (
        norm_cases(device, sizes, dtypes, (False, True), norm_passes)
        + pool_cases(device, sizes, dtypes, ("fwd", "fwd+bwd"))
        + boundary_cases(device, sizes)
        + encode_cases(device, sizes)
        + overhead_cases(device)
    )
