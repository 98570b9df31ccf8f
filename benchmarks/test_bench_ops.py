"""pytest-benchmark: each fast op beside its baselines, one benchmark group per op configuration.

    .venv/bin/pytest benchmarks -q --benchmark-only [--benchmark-columns=median,iqr,rounds]

The reference Python loop (instance_avg_pool) runs a fixed 2 rounds: it is the slow baseline.
benchmarks/run_ops.py gives the same measurements as a table of ratios (and the GPU floor numbers).
"""

import itertools

import pytest
import torch
from cases import build_cases
from conftest import BENCH_DEVICE, BENCH_SIZES

CASES = build_cases(BENCH_DEVICE, BENCH_SIZES, purpose="pytest", compiled=False)  # compile rows: run_ops.py
PARAMS = [
    pytest.param(case, impl.name, id=f"{case.op}-{case.variant}-{impl.name}".replace(" ", "-"))
    for case in CASES
    for impl in case.impls()
]


@pytest.mark.parametrize(("case", "impl_name"), PARAMS)
def test_op(benchmark, input_sets, case, impl_name):
    impl = next(i for i in case.impls() if i.name == impl_name)
    states = [impl.prepare(s) for s in input_sets(case)]
    cycle = itertools.cycle(states)
    cuda = BENCH_DEVICE == "cuda"

    def run():
        out = impl.run(next(cycle))
        if cuda:
            torch.cuda.synchronize()
        return out

    for _ in range(1 if impl.slow else 3):  # warm-up
        run()
    benchmark.group = case.group
    benchmark.name = impl.name
    benchmark.extra_info.update({"op": case.op, "variant": case.variant, "bytes": case.bytes_moved, **case.info})
    if impl.slow:
        benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    else:
        benchmark(run)
