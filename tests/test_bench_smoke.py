"""Smoke tests of benchmarks/run_ops.py and benchmarks/run_train.py at tiny sizes on the CPU: they run and
report every op / every configuration.

No timing assertions (benchmarks are not tests): only that each op has a row with positive times and
ratios, whether the compiled library is loaded or the ops fall back to the reference.
"""

import importlib.util
import json
import os
import sys

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


# ----------------------------------------------------------------------------------------------------
# benchmarks/run_train.py: the end-to-end training benchmark


def _load_run_train():
    name = "p2phd_run_train"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", "run_train.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def test_run_train_tiny_cpu(tmp_path, capsys):
    run_train = _load_run_train()
    threads = torch.get_num_threads()
    js, md = tmp_path / "train.json", tmp_path / "train.md"
    argv = ["--device", "cpu", "--sizes", "tiny", "--iters", "1", "--warmup", "1", "--net-reps", "1"]
    argv += ["--net-warmup", "0", "--profile", "--profile-steps", "1", "--threads", "1"]
    try:
        run_train.main([*argv, "--json", str(js), "--markdown", str(md)])
    finally:
        torch.set_num_threads(threads)
    res = json.loads(js.read_text())

    assert res["complete"] and not res["errors"] and not res["skipped"]
    assert [p["name"] for p in res["train"]] == ["global", "global+feat", "local"]
    for p in res["train"]:
        rows = {r["key"]: r for r in p["rows"]}
        assert set(rows) == {"a", "b", "c"}, p["problem"]
        assert (rows["a"]["ops"], rows["a"]["amp"], rows["a"]["channels_last"]) == ("reference", None, False)
        assert (rows["b"]["ops"], rows["b"]["amp"], rows["b"]["channels_last"]) == ("reference", "bf16", True)
        assert (rows["c"]["ops"], rows["c"]["amp"], rows["c"]["channels_last"]) == ("fast", "bf16", True)
        for r in rows.values():
            assert r["median_s"] > 0 and r["steps"] == 1 and r["params"] > 0, (p["problem"], r["key"])
            assert abs(r["images_per_s"] * r["median_s"] - p["batch"]) < 1e-9
            assert abs(r["vs_a_of_medians"] - rows["a"]["median_s"] / r["median_s"]) < 1e-9
            assert abs(r["vs_a"] - r["vs_a_of_medians"]) < 1e-9  # one round: the paired ratio is the same
            assert r["peak_bytes"] is None  # not measured on the CPU
        assert rows["a"]["vs_a"] == 1.0 and rows["b"]["vs_b"] == 1.0
        # Same seed, same architecture: every configuration holds the same parameter count.
        assert len({r["params"] for r in rows.values()}) == 1

    nets = res["nets"]
    assert {(r["pass"], r["precision"]) for r in nets["rows"]} == {
        (p, q) for p in ("G fwd (no grad)", "G fwd+bwd", "D fwd+bwd") for q in ("fp32 NCHW", "bf16 channels-last")
    }
    for r in nets["rows"]:
        assert r["reference_s"] > 0 and r["fast_s"] > 0 and r["ratio"] > 0
    assert nets["check"]["G_fwd_fp32_max_abs_diff"] < 1e-4  # fast and reference G: same weights, same output

    prof = res["profile"]
    shares = {g["group"]: g["pct"] for g in prof["groups"]}
    assert abs(sum(shares.values()) - 100.0) < 1e-6
    assert shares["convolution"] > 0 and shares["norm"] > 0 and shares["optimizer"] > 0 and shares["loss"] > 0
    assert prof["top_ops"] and prof["wall_s_per_step"] > 0

    text = md.read_text()
    assert "## Training step: global-64x128" in text and "## Profile" in text and "| pass |" in text
    assert "Training step" in capsys.readouterr().out


def test_run_train_profile_groups():
    classify = _load_run_train().classify
    expected = {
        "aten::mkldnn_convolution": "convolution",
        "aten::convolution_backward": "convolution",
        "autograd::engine::evaluate_function: ConvolutionBackward0": "convolution",
        "aten::conv_transpose2d": "convolution",
        "pix2pixhd_fast::instance_norm_act": "norm",
        "pix2pixhd_fast::instance_norm_act_backward": "norm",
        "torch::autograd::CppNode<pix2pixhd_fast::(anonymous namespace)::InstanceNormActFunction>": "norm",
        "aten::instance_norm": "norm",
        "NativeBatchNormBackward0": "norm",
        "aten::avg_pool2d_backward": "pooling",
        "pix2pixhd_fast::instance_avg_pool": "pooling",
        "pix2pixhd_fast::encode_input": "encode/boundary",
        "pix2pixhd_fast::instance_boundary": "encode/boundary",
        "aten::reflection_pad2d": "padding",
        "aten::mse_loss": "loss",
        "loss::feature_matching": "loss",
        "Optimizer.step#Adam.step": "optimizer",
        "aten::_fused_adam_": "optimizer",
        "aten::add_": None,
        "aten::copy_": None,
        "train_step": None,
    }
    assert {name: classify(name) for name in expected} == expected


def test_run_train_bad_arguments():
    run_train = _load_run_train()
    for argv in (["--configs", "a,z"], ["--iters", "0"], ["--sizes", "huge"]):
        try:
            run_train.parse_args(argv)
        except SystemExit as e:
            assert e.code == 2, argv
        else:
            raise AssertionError(f"{argv} was accepted")
    args = run_train.parse_args(["--compile", "--configs", "a,c"])
    assert args.config_keys == ["a", "c", "d"] and args.sizes == "cpu" and args.iters == 7


def test_run_train_paired_ratio():
    # Pairs 2/1, 4/1, 30/30: the median pair is 2, where the ratio of the medians (4 / 1) would be 4.
    assert _load_run_train()._paired_ratio([2.0, 4.0, 30.0], [1.0, 1.0, 30.0]) == 2.0
