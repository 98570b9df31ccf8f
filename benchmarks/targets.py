"""The performance targets of benchmarks/targets.toml, for the runners and the report (no torch).

The file is the single place the targets live: a runner attaches the matching target to each row it writes, and
report.py prints ✓/✗ against the same file, so a verdict never cites a number the repository does not hold.
"""

from __future__ import annotations

import os
from functools import cache

import tomllib

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets.toml")


@cache
def load(path: str = PATH) -> dict:
    """The parsed targets file (``{"ops": ..., "infer": ..., "train": ...}``)."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def _device_key(device: str) -> str:
    return "gpu" if device in ("cuda", "gpu") else "cpu"


def op_targets(device: str, op: str, variant: str) -> tuple[dict[str, float], float | None]:
    """``({baseline name: minimum ratio}, maximum x floor or None)`` of one operator row (none: ``({}, None)``)."""
    entry = dict(load()["ops"].get(_device_key(device), {}).get(op, {}).get(variant, {}))
    floor = entry.pop("floor", None)
    return {k: float(v) for k, v in entry.items()}, None if floor is None else float(floor)


def target_text(ratios: dict[str, float], floor: float | None) -> str:
    """``">= 4x nn.InstanceNorm2d+ReLU; <= 1.15x floor"`` (``""`` without targets)."""
    parts = [f">= {v:g}x {k}" for k, v in ratios.items()]
    if floor is not None:
        parts.append(f"<= {floor:g}x floor")
    return "; ".join(parts)


def infer_targets(sizes: str, problem: str) -> dict[str, float]:
    """``{configuration key: minimum ratio vs (a)}`` of one inference problem (``sizes``: the runner's preset)."""
    return {k: float(v) for k, v in load()["infer"].get(sizes, {}).get(problem, {}).items()}


def train_targets(sizes: str, problem: str) -> dict[str, float]:
    """``{vs_a/vs_b/vs_e/mem_vs_a/saved_bytes_vs_a: value}`` of one training problem."""
    return {k: float(v) for k, v in load()["train"].get(sizes, {}).get(problem, {}).items()}


def nominal_bandwidth_gbps(device_name: str | None) -> float | None:
    """The nominal memory bandwidth (GB/s) of a GPU by name (``"NVIDIA H200"`` -> 4300), or None if unlisted."""
    if not device_name:
        return None
    for key, gbps in load().get("bandwidth_gbps", {}).items():
        if key.lower() in device_name.lower():
            return float(gbps)
    return None
