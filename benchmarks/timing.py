"""The one timer of the benchmarks: per-call samples taken in interleaved rounds, and paired ratio intervals.

Every benchmark that compares implementations (operators, scaling, inference, training, call overhead) times
them through :func:`measure_interleaved`, and turns the samples into a ratio with a 95% interval through
:func:`ratio_ci`, so that each reported ratio carries its uncertainty and each recorded sample is a real call.

Why interleaved rounds: on a shared or thermally throttling machine the speed drifts over seconds; if A were
timed for a minute and then B, the drift would land in the ratio. In each round every function runs the same
number of calls (the order rotating round by round), so the i-th samples of two functions were taken moments
apart and their quotient is a paired measurement in which the drift cancels.

Clocks: CUDA events recorded on the current stream around each call (the device time of the call, launch gaps
included, no host sync inside a round); on the CPU ``time.perf_counter`` around each call with garbage collection
paused during a round, as ``timeit`` and ``torch.utils.benchmark`` do. ``torch.utils.benchmark.Timer`` itself does
not fit here: each ``timeit()`` makes extra warm-up calls of its own and it times blocks of calls, where the rounds
need one sample per call.

Allocator: every CPU benchmark first calls :func:`steady_cpu_allocator`. glibc's malloc serves blocks of 32 MiB
and more with a fresh mmap and unmaps them on free, so an op whose output is that large (a 1x64x256x512 fp32
tensor is exactly 32 MiB) page-faults every page of it on every call: measured on a 2-core AMD EPYC, 8193 faults
and 10.5 ms per call of a fused norm whose kernel takes 2.1 ms. That cost lands on ours and the stock baselines
alike, swamps the kernels, and varies with the allocator's history. Raising the mmap threshold keeps such blocks
in the heap for reuse, as a caching allocator (jemalloc, tcmalloc, PyTorch's CUDA allocator) would.
Set P2PHD_BENCH_DEFAULT_MALLOC=1 to measure with glibc's defaults instead.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["measure_interleaved", "ratio_ci", "median_ci", "rel_halfwidth", "summary", "steady_cpu_allocator"]

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------------------------------
# Allocator

_ALLOCATOR = "default"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h); values are C ints


def steady_cpu_allocator() -> str:
    """Keep large CPU blocks in the heap (see the module docstring); returns how the allocator is set.

    Idempotent. A no-op returning ``"default"`` with P2PHD_BENCH_DEFAULT_MALLOC=1, and off glibc.
    """
    global _ALLOCATOR
    if _ALLOCATOR != "default" or os.environ.get("P2PHD_BENCH_DEFAULT_MALLOC", "") not in ("", "0"):
        return _ALLOCATOR
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        ok = False
    if ok:
        _ALLOCATOR = "glibc, mmap threshold 1 GiB (mallopt)"
    return _ALLOCATOR


def allocator_state() -> str:
    """How :func:`steady_cpu_allocator` left the allocator: "default" or what it set."""
    return _ALLOCATOR


# ----------------------------------------------------------------------------------------------------
# Intervals


def _median_ci_bounds(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based order-statistic indices ``(lo, hi)`` with P(x_(lo) <= median <= x_(hi)) >= ``confidence``.

    Distribution-free: the count of samples below the true median is Binomial(n, 1/2). Exact for n <= 1000,
    the normal approximation above (where it is accurate to well under one index). Below n = 6 no pair reaches
    95% and the full range (min, max) is returned.
    """
    if n <= 0:
        raise ValueError("no samples")
    alpha = 1.0 - confidence
    if n > 1000:
        half = 0.5 * Z95 * math.sqrt(n)
        lo = max(0, math.floor(n / 2 - half) - 1)
        return lo, min(n - 1, n - 1 - lo)
    # The median lies below x_(k) (0-based) when at most k samples fall below it: P = P(Bin(n, 1/2) <= k).
    # Take the largest k with that probability <= alpha / 2 (0 when none is); [x_(k), x_(n-1-k)] then covers it.
    total = 2.0**n
    cdf = 0.0
    k = 0
    while True:
        cdf += math.comb(n, k) / total
        if cdf > alpha / 2:
            break
        k += 1
    k = max(k - 1, 0)
    return k, n - 1 - k


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(median, lo, hi)`` of ``samples``: the median with its distribution-free order-statistic interval."""
    xs = sorted(float(v) for v in samples)
    if not xs:
        raise ValueError("median_ci: no samples")
    lo, hi = _median_ci_bounds(len(xs), confidence)
    return statistics.median(xs), xs[lo], xs[hi]


def ratio_ci(base: Sequence[float], new: Sequence[float], *, seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, lo, hi)``: how many times faster ``new`` is than ``base``, with a 95% interval.

    Equal lengths (samples from :func:`measure_interleaved`, the i-th of each taken in the same round): the
    paired median of ``base[i] / new[i]`` and its order-statistic interval, which needs no assumption about the
    distribution of the quotients. Unequal lengths (not paired): the ratio of the medians with a seeded
    percentile-bootstrap interval (2000 resamples).

    Args:
        base, new: seconds per call, > 0.
        seed: the bootstrap's seed (unused in the paired case), so a report is reproducible from its samples.
    """
    if not base or not new:
        raise ValueError(f"ratio_ci: need samples on both sides, got {len(base)} and {len(new)}")
    if min(base) <= 0 or min(new) <= 0:
        raise ValueError("ratio_ci: times must be > 0")
    if len(base) == len(new):
        return median_ci([b / t for b, t in zip(base, new, strict=True)])
    rng = random.Random(seed)
    nb, nn = len(base), len(new)
    ratios = []
    for _ in range(2000):
        mb = statistics.median(base[rng.randrange(nb)] for _ in range(nb))
        mn = statistics.median(new[rng.randrange(nn)] for _ in range(nn))
        ratios.append(mb / mn)
    ratios.sort()
    return (
        statistics.median(base) / statistics.median(new),
        ratios[int(0.025 * len(ratios))],
        ratios[int(0.975 * len(ratios)) - 1],
    )


def rel_halfwidth(ci: tuple[float, float, float]) -> float:
    """Half the width of an interval ``(value, lo, hi)`` relative to its value."""
    value, lo, hi = ci
    return (hi - lo) / 2 / value if value > 0 else math.inf


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    """The fields every results file records for one implementation's samples (seconds)."""
    med, lo, hi = median_ci(samples)
    return {
        "median_s": med,
        "median_lo_s": lo,
        "median_hi_s": hi,
        "min_s": min(samples),
        "max_s": max(samples),
        "calls": len(samples),
    }


# ----------------------------------------------------------------------------------------------------
# Measurement


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _round_cuda(fn: Callable[[], object], calls: int) -> list:
    pairs = []
    for _ in range(calls):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        pairs.append((a, b))
    return pairs


def measure_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    device: str | torch.device,
    min_rounds: int = 5,
    max_rounds: int = 200,
    target_rel_halfwidth: float = 0.05,
    max_seconds: float = 30.0,
    warmup: int = 2,
    calls_per_round: int = 1,
) -> dict[str, list[float]]:
    """Time zero-argument callables side by side; return each one's per-call samples in seconds.

    After ``warmup`` untimed calls of each (compilation, CUDA-graph recording, allocator growth happen there),
    rounds run: in each, every function makes ``calls_per_round`` timed calls, the order rotating by one each
    round. Measurement stops after at least ``min_rounds`` rounds once the 95% interval of every function's paired
    ratio against the first entry (:func:`ratio_ci`) is within +-``target_rel_halfwidth`` of the ratio (with a
    single function: the interval of its median), or at ``max_rounds``, or once ``max_seconds`` have passed since
    the first timed round (at least ``min_rounds`` rounds are always taken). All lists have the same length, the
    i-th entries taken in the same round, as :func:`ratio_ci` needs for pairing.

    Args:
        fns: name -> callable; the first entry is the base of the stopping rule. A callable that should rotate
            through several inputs (to keep repeats out of a GPU's L2) does so itself.
        device: ``"cuda"``/``"cpu"`` (or a torch.device): CUDA events on the current stream, or the CPU clock.
        calls_per_round: timed calls of each function per round (more amortises a round's host sync on a GPU).

    Returns:
        ``{name: [seconds per call, ...]}`` in the order of ``fns``.
    """
    if not fns:
        raise ValueError("measure_interleaved: no functions to time")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"measure_interleaved: need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    if calls_per_round < 1 or warmup < 0:
        raise ValueError(f"measure_interleaved: calls_per_round >= 1, warmup >= 0; got {calls_per_round}, {warmup}")
    cuda = torch.device(device).type == "cuda"
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    _sync(cuda)

    samples: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(max_rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if cuda:
            pending = {n: _round_cuda(fns[n], calls_per_round) for n in order}
            torch.cuda.synchronize()
            for n in names:
                samples[n] += [a.elapsed_time(b) * 1e-3 for a, b in pending[n]]
        else:
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                for n in order:
                    fn = fns[n]
                    for _ in range(calls_per_round):
                        t0 = time.perf_counter()
                        fn()
                        samples[n].append(time.perf_counter() - t0)
            finally:
                if gc_was_enabled:
                    gc.enable()
        if r + 1 < min_rounds:
            continue
        if time.perf_counter() - t_start >= max_seconds:
            break
        if _precise_enough(samples, names, target_rel_halfwidth):
            break
    return samples


def _precise_enough(samples: dict[str, list[float]], names: list[str], target: float) -> bool:
    base = samples[names[0]]
    if min(min(v) for v in samples.values()) <= 0:  # a zero-length event pair: no ratio yet
        return False
    if len(names) == 1:
        return rel_halfwidth(median_ci(base)) <= target
    return all(rel_halfwidth(ratio_ci(base, samples[n])) <= target for n in names[1:])
