"""Smoke test of benchmarks/run_ops.py at tiny sizes on the CPU: it runs and reports every op.

No timing assertions (benchmarks are not tests): only that each op has a row with positive times and
ratios, whether the compiled library is loaded or the ops fall back to the reference.
"""

import importlib.util
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = {"instance_norm_relu", "instance_avg_pool", "instance_boundary", "encode_input"}


def _load_run_ops():
    spec = importlib.util.spec_from_file_location("p2phd_run_ops", os.path.join(ROOT, "benchmarks", "run_ops.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_ops_tiny_cpu(tmp_path, capsys):
    run_ops = _load_run_ops()
    threads = torch.get_num_threads()
    js, md = tmp_path / "ops.json", tmp_path / "ops.md"
    try:
        run_ops.main(
            [
                "--device",
                "cpu",
                "--sizes",
                "tiny",
                "--budget",
                "0.005",
                "--slow-reps",
                "1",
                "--threads",
                "1",
                "--json",
                str(js),
                "--markdown",
                str(md),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    res = json.loads(js.read_text())

    rows = res["rows"]
    assert {r["op"] for r in rows} == OPS
    for op in OPS:  # fwd and bwd norm rows, pool fwd and fwd+bwd, ...
        assert any(r["op"] == op for r in rows)
    for r in rows:
        assert r["fast_s"] > 0 and r["fast_reps"] >= 5, r["id"]
        assert r["baselines"], r["id"]
        for b in r["baselines"]:
            assert b["median_s"] > 0 and b["ratio"] > 0 and b["reps"] >= 1, (r["id"], b["name"])
        assert r["bytes"] > 0 and r["gbps"] > 0 and r["x_floor"] > 0, r["id"]
    names = {b["name"] for r in rows for b in r["baselines"]}
    assert {"loop", "scatter_reduce", "get_edges", "reference"} <= names
    assert any(r["info"].get("pass") == "bwd" for r in rows if r["op"] == "instance_norm_relu")
    assert res["peak"]["gbps"] > 0
    assert res["machine"]["torch"] == torch.__version__
    assert "ops_loaded" in res["machine"]["build_info"]

    text = md.read_text()
    assert "| op |" in text and "encode_input" in text
    out = capsys.readouterr().out
    assert "Ratios" in out and "instance_avg_pool" in out
