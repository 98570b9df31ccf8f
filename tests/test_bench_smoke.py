"""Smoke tests of the benchmarks (run_ops.py, run_train.py, run_infer.py, run_scaling.py, report.py, run_all.py) at
tiny sizes on the CPU: they run and report every op / every configuration.

No timing assertions (benchmarks are not tests): only that each op has a row with positive times and
ratios, whether the compiled library is loaded or the ops fall back to the reference.
"""

import importlib.util
import json
import os
import sys

import pytest
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
                "--max-seconds",
                "0.2",
                "--no-compile",
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
    from pix2pixhd_fast import ops

    expected = OPS | ({"instance_norm_act_pad"} if hasattr(ops, "instance_norm_act_pad") else set())
    assert {r["op"] for r in rows} == expected
    for op in expected:  # fwd and bwd norm rows, pool fwd and fwd+bwd, ...
        assert any(r["op"] == op for r in rows)
    for r in rows:
        assert r["fast_s"] > 0 and r["fast_reps"] >= 5, r["id"]
        assert r["baselines"], r["id"]
        for b in r["baselines"]:
            assert b["median_s"] > 0 and b["ratio"] > 0 and b["reps"] >= 1, (r["id"], b["name"])
            assert b["ratio_lo"] <= b["ratio"] <= b["ratio_hi"], (r["id"], b["name"])
            assert not b["compiled"], (r["id"], b["name"])  # --no-compile
        # The headline baseline is the fastest one; every recorded sample is a measured call.
        assert r["strongest"] == min(r["baselines"], key=lambda b: b["median_s"])["name"], r["id"]
        assert len(r["samples_s"]["fast"]) == r["fast_reps"] and min(r["samples_s"]["fast"]) > 0, r["id"]
        assert r["bytes"] > 0 and r["gbps"] > 0 and r["x_floor"] > 0, r["id"]
    names = {b["name"] for r in rows for b in r["baselines"]}
    assert {"loop", "scatter_reduce", "get_edges", "reference", "F.group_norm(x, C)+ReLU"} <= names
    assert any(r["info"].get("pass") == "bwd" for r in rows if r["op"] == "instance_norm_relu")
    assert res["peak"]["gbps"] > 0
    assert res["machine"]["torch"] == torch.__version__
    assert "ops_loaded" in res["machine"]["build_info"]

    text = md.read_text()
    assert "| op |" in text and "encode_input" in text
    out = capsys.readouterr().out
    assert "Ratios" in out and "instance_avg_pool" in out


# ----------------------------------------------------------------------------------------------------
# benchmarks/run_train.py: tests/test_train_perf.py, beside the training-step features it measures


# ----------------------------------------------------------------------------------------------------
# benchmarks/run_scaling.py, benchmarks/report.py, benchmarks/run_all.py (make bench)


def _load_bench(name: str):
    """A benchmarks/ script as a module (registered, so that dataclasses can look it up while it executes)."""
    key = f"p2phd_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(ROOT, "benchmarks", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def test_tiled_instances_exact_counts(seed):
    cases = _load_bench("cases")
    for n, h, w, k in ((2, 8, 8, 1), (2, 8, 8, 7), (1, 8, 8, 64), (1, 5, 3, 15), (3, 24, 32, 100), (1, 1, 9, 4)):
        inst = cases.tiled_instances(n, h, w, k, seed)
        assert inst.shape == (n, 1, h, w) and inst.dtype == torch.int32
        for b in range(n):
            assert torch.unique(inst[b]).numel() == k, (n, h, w, k, b)
        assert torch.equal(inst, cases.tiled_instances(n, h, w, k, seed))  # deterministic from the seed
    for bad in ((1, 4, 4, 17), (1, 4, 4, 0), (0, 4, 4, 1)):
        try:
            cases.tiled_instances(*bad)
        except ValueError as e:
            assert "tiled_instances" in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def _run_scaling_tiny(path) -> dict:
    run_scaling = _load_bench("run_scaling")
    threads = torch.get_num_threads()
    try:
        run_scaling.main(["--tiny", "--threads", "1", "--max-seconds", "0.1", "--slow-reps", "1", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    return json.loads(path.read_text())


def _copy_results(dst) -> list[str]:
    """The repository's results JSON files, copied (the test never writes into the repository)."""
    import glob
    import shutil

    names = []
    for f in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "*.json"))):
        shutil.copy(f, dst / os.path.basename(f))
        names.append(os.path.basename(f))
    return names


def test_scaling_tiny_and_report(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    res = _run_scaling_tiny(results / "tinybox-scaling.json")

    # Scaling: every requested instance count with exactly that many ids, every op at every resolution.
    assert res["kind"] == "scaling" and res["complete"] and not res["errors"] and not res["skipped"]
    assert res["machine"]["threads"] == 1 and res["load"]["own_cores"] > 0
    counts = [r["info"]["instances"] for r in res["instances"]]
    assert counts == res["settings"]["counts"] == [1, 3, 10]
    for r in res["instances"]:
        assert r["instances_per_image"] == r["info"]["instances"]
        assert r["fast_s"] > 0 and {b["name"] for b in r["baselines"]} == {"loop", "scatter_reduce"}
    sizes = {(r["info"]["height"], r["info"]["width"]) for r in res["resolution"]}
    assert sizes == {(16, 32), (24, 40), (32, 48)}
    for h, w in sizes:
        ops_here = {r["op"] for r in res["resolution"] if (r["info"]["height"], r["info"]["width"]) == (h, w)}
        assert ops_here == OPS, (h, w)
    for r in res["resolution"]:
        assert r["fast_s"] > 0 and all(b["ratio"] > 0 and b["target"] is None for b in r["baselines"])
        assert r["variant"].endswith(f"{r['info']['height']}x{r['info']['width']}")

    # Report over the repository's results plus the tiny scaling run.
    copied = _copy_results(results)
    report = _load_bench("report")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n\nIntro text.\n\n## License\n\nBSD\n")
    out, plots = tmp_path / "REPORT.md", tmp_path / "plots"
    try:
        import matplotlib  # noqa: F401

        plot_args = ["--plots", str(plots)]
    except ImportError:
        plot_args = ["--no-plots"]
    argv = ["--results", str(results), "--out", str(out), "--readme", str(readme), *plot_args]
    summary = report.main(argv)
    text = out.read_text()
    assert "tinybox" in summary["runs"] and summary["runs"]["tinybox"] == ["scaling"]
    for section in ("# pix2pixhd_fast performance report", "## Summary", "## Machines", "## Scaling", "### tinybox"):
        assert section in text, section
    assert "instance_avg_pool vs instance count (24x32)" in text
    if "cpu-2core.json" in copied:
        assert "## Operators" in text and "### cpu-2core" in text
        assert "### Operators: speed-up over the PyTorch baseline" in text
    if "cpu-2core-train.json" in copied:
        assert "## Training step" in text and "global-256x512" in text
    if "nvidia-h200-call-overhead.json" in copied:
        assert "## Call overhead" in text
    if "cpu-2core-infer.json" in copied:
        assert "## Inference latency" in text and "### Inference latency" in text
    if "nvidia-h200-interim.json" in copied and "nvidia-h200.json" in copied:
        assert "## Earlier runs" in text and "nvidia-h200-interim (earlier run of nvidia-h200)" in text
    if plot_args[0] == "--plots":
        pngs = sorted(p.name for p in plots.iterdir())
        assert "scaling-instances-tinybox.png" in pngs and "scaling-resolution-tinybox.png" in pngs
        for p in plots.iterdir():
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
            assert f"(plots/{p.name})" in text  # embedded in the report
    # README: the generated block went at the end of the Performance section, before the next one.
    new = readme.read_text()
    assert new.index("Intro text.") < new.index(report.BEGIN) < new.index(report.END) < new.index("## License")
    block = new[new.index(report.BEGIN) : new.index(report.END)]
    # README's section is a short summary: the pooling growth of the tiny run, the targets file, a link to the report.
    grow = [ln for ln in block.splitlines() if ln.startswith("- **tinybox** instance_avg_pool time grows")]
    rows = sorted(res["instances"], key=lambda r: r["info"]["instances"])
    assert len(grow) == 1 and f"{rows[-1]['fast_s'] / rows[0]['fast_s']:.1f}x from 1 to 10 instances" in grow[0]
    assert "[REPORT.md](REPORT.md)" in block and "benchmarks/targets.toml" in block
    assert len([ln for ln in block.splitlines() if ln.startswith("- ")]) <= 12
    # Same inputs, same outputs: a second run changes nothing.
    again = report.main(argv)
    assert again["readme_changed"] is False and out.read_text() == text and readme.read_text() == new
    assert "report.py:" in capsys.readouterr().out


def test_report_grouping_and_readme_markers(tmp_path):
    report = _load_bench("report")
    assert report.run_name("nvidia-h200-train", "train") == "nvidia-h200"
    assert report.run_name("gpu_ops", "ops") == "gpu"
    assert report.run_name("gpu_pytest_benchmark", "pytest-benchmark") == "gpu"
    assert report.run_name("cpu-2core", "ops") == "cpu-2core"
    assert report.run_name("cpu-2core-scaling", "scaling") == "cpu-2core"
    assert report.classify({"kind": "scaling"}) == "scaling"
    assert report.classify({"benchmarks": [], "machine_info": {}}) == "pytest-benchmark"
    assert report.classify({"meta": {}, "rows": [{"us_cpp": 1.0}]}) == "call-overhead"
    assert report.classify({"rows": [], "peak": {}, "settings": {}, "machine": {}}) == "ops"
    assert report.classify({"something": 1}) is None and report.classify([1, 2]) is None

    # Markers present: only the text between them changes.
    p = tmp_path / "R.md"
    p.write_text(f"a\n{report.BEGIN}\nold\n{report.END}\nb\n")
    assert report.update_readme(str(p), f"{report.BEGIN}\nnew\n{report.END}") is True
    assert p.read_text() == f"a\n{report.BEGIN}\nnew\n{report.END}\nb\n"
    assert report.update_readme(str(p), f"{report.BEGIN}\nnew\n{report.END}") is False
    # No Performance section: one is appended.
    p.write_text("# t\n\nbody\n")
    report.update_readme(str(p), f"{report.BEGIN}\nx\n{report.END}")
    assert p.read_text().endswith(f"## Performance\n\n{report.BEGIN}\nx\n{report.END}\n")
    # A lone or doubled marker is an error, not a guess.
    for bad in (
        f"a {report.BEGIN} b",
        f"{report.BEGIN}{report.END}{report.BEGIN}{report.END}",
        f"{report.END} {report.BEGIN}",
    ):
        p.write_text(bad)
        try:
            report.update_readme(str(p), f"{report.BEGIN}{report.END}")
        except ValueError as e:
            assert "marker" in str(e) or "before" in str(e)
        else:
            raise AssertionError(bad)

    # Earlier runs of a machine are recognised by name; unknown JSON files are skipped with a note.
    d = tmp_path / "res"
    d.mkdir()
    ops = {"rows": [], "peak": {}, "settings": {"device": "cpu"}, "machine": {"cpu": "x"}}
    for name in ("box", "box-old", "other"):
        (d / f"{name}.json").write_text(json.dumps(ops))
    (d / "notes.json").write_text("{}")
    runs, notes = report.load_runs([str(d)])
    later = {r.name: r.later for r in runs}
    assert later == {"box": None, "box-old": "box", "other": None}
    assert notes == ["notes.json: not a benchmark results file"]
    (d / "box_ops.json").write_text(json.dumps(ops))  # a second operators file of run "box"
    try:
        report.load_runs([str(d)])
    except ValueError as e:
        assert "two ops files" in str(e)
    else:
        raise AssertionError("duplicate run accepted")


def test_report_pytest_benchmark_table(tmp_path):
    # pytest-benchmark's JSON layout (--benchmark-json), with made-up medians: speed-up = baseline / fast.
    def bench(group, name, median, rounds):
        return {"group": group, "name": name, "stats": {"median": median, "rounds": rounds}}

    data = {
        "machine_info": {"cpu": {"brand_raw": "Some CPU"}, "pix2pixhd_fast": {"device": "cpu", "threads": 2}},
        "benchmarks": [
            bench("pool fwd (cpu)", "fast", 0.002, 50),
            bench("pool fwd (cpu)", "loop", 0.5, 2),
            bench("pool fwd (cpu)", "scatter_reduce", 0.006, 20),
            bench("norm fwd (cpu)", "nn.InstanceNorm2d+ReLU", 0.003, 30),
            bench("norm fwd (cpu)", "fast", 0.001, 90),
        ],
        "datetime": "2026-11-26T15:37:24",
        "version": "5.3.1",
    }
    report = _load_bench("report")
    assert report.classify(data) == "pytest-benchmark"
    head, body = report.pytest_benchmark_table(data)
    rows = {(r[0], r[2]): r for r in body}
    assert set(rows) == {
        ("pool fwd (cpu)", "loop"),
        ("pool fwd (cpu)", "scatter_reduce"),
        ("norm fwd (cpu)", "nn.InstanceNorm2d+ReLU"),
    }
    assert rows[("pool fwd (cpu)", "loop")][4] == "250x" and rows[("pool fwd (cpu)", "loop")][5] == "50 / 2"
    assert rows[("pool fwd (cpu)", "scatter_reduce")][4] == "3.00x"
    assert rows[("norm fwd (cpu)", "nn.InstanceNorm2d+ReLU")][1] == "1.00 ms"
    (tmp_path / "box-pytest-benchmark.json").write_text(json.dumps(data))
    out = tmp_path / "REPORT.md"
    report.main(["--results", str(tmp_path), "--out", str(out), "--no-plots", "--no-readme"])
    text = out.read_text()
    assert (
        "## pytest-benchmark" in text
        and "### box" in text
        and "| pool fwd (cpu) | 2.00 ms | loop | 500.00 ms | 250x | 50 / 2 |" in text
    )


def test_bench_command_plan(capsys):
    run_all = _load_bench("run_all")
    args = run_all.parse_args(["--skip", "train,pytest"])
    assert args.steps == ["ops", "infer", "scaling", "report"]  # no call-overhead step on the CPU unless asked for
    assert run_all.parse_args(["--only", "overhead"]).steps == ["overhead"]
    assert run_all.parse_args(["--device", "cuda"]).steps == list(run_all.STEPS)
    assert run_all.machine_slug("cpu") == f"cpu-{os.cpu_count()}core"
    cmds = {step: cmd for step, cmd, _env in run_all.commands(run_all.parse_args(["--results", "/r"]), "m1")}
    assert "--benchmark-json=/r/m1-pytest-benchmark.json" in cmds["pytest"]
    assert cmds["ops"][-4:] == ["--json", "/r/m1.json", "--markdown", "/r/m1.md"]
    assert "/r/m1-scaling.json" in cmds["scaling"] and "/r/m1-train.json" in cmds["train"]
    assert cmds["infer"][-4:] == ["--json", "/r/m1-infer.json", "--markdown", "/r/m1-infer.md"]
    assert "--device" in cmds["infer"] and "run_infer.py" in cmds["infer"][1]
    try:
        run_all.parse_args(["--skip", "bogus"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("unknown step accepted")
    # A dry run prints the plan and executes nothing.
    assert run_all.main(["--only", "report", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ">>> bench report:" in out and "report.py" in out


# ----------------------------------------------------------------------------------------------------
# benchmarks/run_infer.py: inference latency per backend, and its report section


def test_run_infer_tiny_cpu(tmp_path, capsys):
    run_infer = _load_bench("run_infer")
    threads = torch.get_num_threads()
    js, md = tmp_path / "tinybox-infer.json", tmp_path / "infer.md"
    # The compiled rows are left out: compilation alone takes tens of seconds (tests/test_export_backends.py
    # checks that backend); (e) TensorRT is skipped here (no GPU), with the reason.
    argv = ["--sizes", "tiny", "--backends", "a,r,b,d,e", "--rounds", "2", "--iters", "1", "--warmup", "0"]
    argv += ["--max-seconds", "2"]
    try:
        res = run_infer.main([*argv, "--threads", "1", "--json", str(js), "--markdown", str(md)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(js.read_text()) == json.loads(json.dumps(res, default=str))

    assert res["kind"] == "infer" and res["complete"] and not res["errors"] and not res["skipped"]
    assert res["settings"]["configs"] == ["a", "r", "b", "d", "e"] and res["machine"]["threads"] == 1
    assert [p["problem"] for p in res["problems"]] == ["global-64x128"]
    p = res["problems"][0]
    assert p["params_G"] > 0 and "--n_blocks_global" in p["options"]
    rows = {r["key"]: r for r in p["rows"]}
    assert list(rows) == ["a", "r", "b", "d", "e"]
    assert (rows["r"]["precision"], rows["r"]["ops"], rows["r"]["channels_last"]) == ("bf16", "reference", True)
    assert (rows["a"]["backend"], rows["a"]["precision"], rows["a"]["ops"], rows["a"]["channels_last"]) == (
        "eager",
        "fp32",
        "reference",
        False,
    )
    assert (rows["b"]["backend"], rows["b"]["precision"], rows["b"]["ops"], rows["b"]["channels_last"]) == (
        "eager",
        "bf16",
        "fast",
        True,
    )
    assert rows["d"]["backend"] == "onnxruntime" and rows["d"]["provider"] == "CPUExecutionProvider"
    for key in "arbd":
        r = rows[key]
        # Same number of calls in every row (paired rounds), at least --rounds x --iters, all of them recorded.
        assert r["status"] == "ok" and r["calls"] == rows["a"]["calls"] >= 2 and len(r["times_s"]) == r["calls"], key
        assert r["min_s"] <= r["median_lo_s"] <= r["median_s"] <= r["median_hi_s"] <= r["max_s"], key
        assert r["first_call_s"] > 0 and r["setup_s"] > 0 and r["warmup_calls"] == 0, key
        assert abs(r["images_per_s"] * r["median_s"] - p["batch"]) < 1e-9, key
        assert abs(r["vs_a_of_medians"] - rows["a"]["median_s"] / r["median_s"]) < 1e-9, key
        assert r["vs_a_lo"] <= r["vs_a"] <= r["vs_a_hi"], key
    # What our ops add over stock PyTorch at the same precision and layout: (b) against (r), with its interval.
    assert rows["b"]["vs_stock"] == "r" and rows["b"]["vs_stock_lo"] <= rows["b"]["vs_stock_ratio"]
    assert rows["a"]["vs_a"] == 1.0 and rows["a"]["max_abs_diff_vs_a"] == 0.0
    # Same weights in every configuration: fp32 onnxruntime matches the fp32 eager baseline closely, bf16 roughly.
    assert rows["d"]["max_abs_diff_vs_a"] < 1e-3
    assert rows["b"]["max_abs_diff_vs_a"] < 0.5
    assert rows["e"]["status"] == "skipped" and "TensorRT" in rows["e"]["reason"] and "median_s" not in rows["e"]

    text = md.read_text()
    assert "## global-64x128" in text and "| config |" in text and "skipped: TensorRTUnavailableError" in text
    assert "(d) onnxruntime fp32" in capsys.readouterr().out

    # The report: a section per run and the key table (README too), from this file and a GPU-like one.
    report = _load_bench("report")
    assert report.classify(res) == "infer"
    assert report.run_name("tinybox-infer", "infer") == "tinybox" and report.run_name("gpu_infer", "infer") == "gpu"
    gpu = {
        "kind": "infer",
        "settings": {"device": "cuda", "sizes": "gpu", "iters": 5, "rounds": 4, "warmup": 3, "seed": 1},
        "machine": {"gpu": "Some GPU", "cc": "9.0", "gpu_memory_gib": 80, "torch": "2.x", "threads": 16},
        "problems": [
            {
                "problem": "local-1024x2048",
                "options": ["--netG", "local"],
                "rows": [
                    {"key": "a", "config": "eager fp32", "status": "ok", "median_s": 0.030, "min_s": 0.029},
                    {"key": "c", "config": "compile", "status": "ok", "median_s": 0.008, "min_s": 0.008}
                    | {"vs_a": 3.75, "target": {"vs_a": 3.0, "met": True}},
                    {"key": "e", "config": "TensorRT bf16", "status": "skipped", "reason": "no | tensorrt"},
                ],
            }
        ],
        "errors": [],
        "complete": True,
    }
    for row in gpu["problems"][0]["rows"][:2]:
        row.update(images_per_s=1 / row["median_s"], setup_s=0.1, first_call_s=1.0)
    (tmp_path / "gpu_infer.json").write_text(json.dumps(gpu))
    head, body = report.key_infer_table(report.load_runs([str(tmp_path)])[0])
    assert head[:2] == ["run", "problem"] and "(c) compile" in head and "(d) onnxruntime fp32" in head
    lines = {(b[0], b[1]): dict(zip(head, b, strict=True)) for b in body}
    assert lines[("gpu", "local-1024x2048")]["(c) compile"] == "8.00 ms (3.75x ✓)"
    assert lines[("gpu", "local-1024x2048")]["(e) TensorRT bf16"] == "skipped"
    assert lines[("gpu", "local-1024x2048")]["(d) onnxruntime fp32"] == "-"
    tiny = lines[("tinybox", "global-64x128")]
    assert tiny["(a) eager fp32 NCHW, reference ops"] == report.fmt_t(rows["a"]["median_s"])
    b = rows["b"]
    ci = f"({b['vs_a']:.2f}x [{b['vs_a_lo']:.3g}, {b['vs_a_hi']:.3g}])"
    assert tiny["(b) eager bf16 + channels-last, fast ops"] == f"{report.fmt_t(b['median_s'])} {ci}"
    out, readme = tmp_path / "REPORT.md", tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n")
    report.main(["--results", str(tmp_path), "--out", str(out), "--no-plots", "--readme", str(readme)])
    text = out.read_text()
    assert "## Inference latency" in text and "### tinybox" in text and "### gpu" in text
    assert "skipped: no / tensorrt" in text and "target >= 3x: met" in text
    block = readme.read_text()
    assert "- **gpu** inference (batch 1) local-1024x2048: ours compiled 3.75x vs fp32 eager." in block
    b = rows["b"]
    ci = f"[{b['vs_a_lo']:.3g}, {b['vs_a_hi']:.3g}]"
    want = f"- **tinybox** inference (batch 1) global-64x128: ours eager {b['vs_a']:.2f}x {ci}"
    assert want in block and "over stock ops (r)" in block


def test_run_infer_bad_arguments():
    run_infer = _load_bench("run_infer")
    for argv in (["--backends", "a,z"], ["--backends", ","], ["--iters", "0"], ["--only", "local"], ["--warmup", "-1"]):
        try:
            run_infer.parse_args(argv)
        except SystemExit as e:
            assert e.code == 2, argv
        else:
            raise AssertionError(f"{argv} was accepted")
    args = run_infer.parse_args(["--device", "cuda", "--only", "local"])
    assert args.sizes == "gpu" and args.problem_names == {"local"} and args.warmup == 3
    # The GPU problems: the LocalEnhancer at 2048x1024 first (the 3x target's problem), then the global G at 1024x512.
    probs = run_infer.problems_for("gpu")
    assert [(p.name, p.height, p.width) for p in probs] == [("local", 1024, 2048), ("global", 512, 1024)]
    assert [(p.name, p.height, p.width) for p in run_infer.problems_for("cpu")] == [("global", 256, 512)]
    assert "--ngf" in probs[0].options and probs[0].options[probs[0].options.index("--ngf") + 1] == "32"
    # The >= 3x target for ours through compile + CUDA graphs, at both GPU problems, read from targets.toml.
    assert run_infer.infer_targets("gpu", "local") == {"c": 3.0, "e": 3.0}
    assert run_infer.infer_targets("gpu", "global") == {"c": 3.0} and run_infer.infer_targets("cpu", "global") == {}
    cfg = {c.key: c for c in run_infer.CONFIGS}
    argv = run_infer.config_options(probs[1], cfg["a"], "cuda")
    assert argv[argv.index("--ops") + 1] == "reference" and "--no_channels_last" in argv
    assert argv[argv.index("--amp") + 1] == "off"
    argv = run_infer.config_options(probs[1], cfg["c"], "cuda")
    assert argv[argv.index("--amp") + 1] == "bf16" and "--no_channels_last" not in argv
    # The stock twins: bf16 + channels-last with reference ops, eager and compiled.
    for key, twin in run_infer.STOCK_TWIN.items():
        argv = run_infer.config_options(probs[1], cfg[twin], "cuda")
        assert argv[argv.index("--ops") + 1] == "reference" and argv[argv.index("--amp") + 1] == "bf16"
        assert "--no_channels_last" not in argv and cfg[twin].backend == cfg[key].backend


# ----------------------------------------------------------------------------------------------------
# benchmarks/timing.py: the one timer and its intervals


def test_median_ci_is_the_binomial_order_statistic_interval():
    import math

    timing = _load_bench("timing")

    def coverage(n, k):  # P(x_(k) <= median <= x_(n-1-k)) for a continuous distribution
        return 1 - 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n

    for n in range(1, 300):
        lo, hi = timing._median_ci_bounds(n)
        assert hi == n - 1 - lo, n
        if coverage(n, 0) < 0.95:  # too few samples for 95%: the full range
            assert lo == 0, n
            continue
        assert coverage(n, lo) >= 0.95 and coverage(n, lo + 1) < 0.95, n  # the tightest interval that covers
    xs = [float(v) for v in range(20, 0, -1)]
    med, lo, hi = timing.median_ci(xs)
    assert (med, lo, hi) == (10.5, 6.0, 15.0)  # n = 20: the 6th and 15th smallest
    for n in (1001, 5000):  # normal approximation beyond 1000 samples: about 1.96 sqrt(n) / 2 either side
        lo, hi = timing._median_ci_bounds(n)
        assert abs((hi - lo) / 2 - 0.98 * n**0.5) <= 2 and hi == n - 1 - lo


def test_ratio_ci_paired_and_unpaired():
    import random

    timing = _load_bench("timing")
    rng = random.Random(0)
    base = [rng.uniform(1, 2) for _ in range(30)]
    assert timing.ratio_ci(base, [b / 3 for b in base]) == (3.0, 3.0, 3.0)  # exact pairs: no spread
    noisy = [b / 3 * rng.uniform(0.9, 1.1) for b in base]
    r, lo, hi = timing.ratio_ci(base, noisy)
    quotients = sorted(b / t for b, t in zip(base, noisy, strict=True))
    assert r == (quotients[14] + quotients[15]) / 2 and lo == quotients[9] and hi == quotients[20]  # n = 30
    # Unequal lengths: the ratio of medians, a seeded bootstrap interval around it.
    r2, lo2, hi2 = timing.ratio_ci(base, noisy[:-3])
    assert abs(r2 - timing.statistics.median(base) / timing.statistics.median(noisy[:-3])) < 1e-12
    assert lo2 <= r2 <= hi2 and timing.ratio_ci(base, noisy[:-3]) == (r2, lo2, hi2)
    assert abs(timing.rel_halfwidth((2.0, 1.9, 2.1)) - 0.05) < 1e-12
    for bad in (([], [1.0]), ([1.0], []), ([1.0, 0.0], [1.0, 1.0])):
        try:
            timing.ratio_ci(*bad)
        except ValueError as e:
            assert "ratio_ci" in str(e)
        else:
            raise AssertionError(f"{bad} accepted")


def test_measure_interleaved_rounds_and_order():
    timing = _load_bench("timing")
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    out = timing.measure_interleaved(fns, device="cpu", min_rounds=4, max_rounds=4, warmup=2, calls_per_round=2)
    assert list(out) == ["a", "b", "c"] and all(len(v) == 8 and min(v) > 0 for v in out.values())
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up
    rounds = [calls[6 + 6 * k : 12 + 6 * k] for k in range(4)]
    assert rounds == [  # each round every function twice, the order rotating by one
        ["a", "a", "b", "b", "c", "c"],
        ["b", "b", "c", "c", "a", "a"],
        ["c", "c", "a", "a", "b", "b"],
        ["a", "a", "b", "b", "c", "c"],
    ]
    # max_seconds ends the run after min_rounds even when the intervals are wide.
    calls.clear()
    out = timing.measure_interleaved(fns, device="cpu", min_rounds=3, max_rounds=10_000, max_seconds=0.0, warmup=0)
    assert all(len(v) == 3 for v in out.values()) and len(calls) == 9
    for kwargs in ({"min_rounds": 0}, {"min_rounds": 5, "max_rounds": 4}, {"calls_per_round": 0}, {"warmup": -1}):
        try:
            timing.measure_interleaved(fns, device="cpu", **kwargs)
        except ValueError as e:
            assert "measure_interleaved" in str(e)
        else:
            raise AssertionError(f"{kwargs} accepted")
    try:
        timing.measure_interleaved({}, device="cpu")
    except ValueError as e:
        assert "no functions" in str(e)
    else:
        raise AssertionError("no functions accepted")


def test_run_ops_compiled_baseline_tiny_cpu(tmp_path):
    # One case with its torch.compile baseline (compilation takes seconds): the compiled reference is timed beside
    # the eager baselines, or, where this machine's compiler rejects it, reported with the reason, never dropped
    # silently.
    run_ops = _load_run_ops()
    threads = torch.get_num_threads()
    js = tmp_path / "ops.json"
    argv = ["--device", "cpu", "--sizes", "tiny", "--max-seconds", "0.2", "--threads", "1", "--json", str(js)]
    try:
        run_ops.main([*argv, "--only", "instance_norm_relu[fwd-fp32-NCHW]"])
    finally:
        torch.set_num_threads(threads)
    (row,) = json.loads(js.read_text())["rows"]
    names = [b["name"] for b in row["baselines"]]
    assert names[:2] == ["nn.InstanceNorm2d+ReLU", "F.group_norm(x, C)+ReLU"]
    compiled = [b for b in row["baselines"] if b["compiled"]]
    if compiled:
        assert [b["name"] for b in compiled] == ["torch.compile(reference)"] and compiled[0]["ratio"] > 0
    else:
        assert list(row["baseline_errors"]) == ["torch.compile(reference)"]


# ----------------------------------------------------------------------------------------------------
# pix2pixhd_fast.demo: the multi-seed summary (the demo itself is run by `make demo`)


def test_demo_seeds_summary(tmp_path, monkeypatch, capsys):
    import statistics

    from pix2pixhd_fast import demo

    psnr = {0: (16.0, 17.0), 1: (16.5, 16.25), 2: (15.0, 16.5)}  # seed -> (no features, encoded features)
    seen = []

    def fake_run_demo(out, quick=False, seed=0, device=None, epochs=None):
        seen.append((out, seed, quick, epochs))
        base, enc = psnr[seed]
        return {"test_psnr_db": {"no_features_model": base, "encoded_real_image_features": enc}}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    res = demo.run_demo_seeds(str(tmp_path), [0, 1, 2], quick=True, epochs=2)
    assert [s for _, s, _, _ in seen] == [0, 1, 2] and all(q and e == 2 for _, _, q, e in seen)
    assert [o for o, *_ in seen] == [str(tmp_path / f"seed{s}") for s in (0, 1, 2)]
    gains = [1.0, -0.25, 1.5]
    assert [r["gain_db"] for r in res["runs"]] == gains
    g = res["gain_db"]
    assert g["mean"] == statistics.mean(gains) and g["stdev"] == statistics.stdev(gains)
    assert (g["min"], g["max"], g["seeds_with_gain"]) == (-0.25, 1.5, 2)
    assert json.loads((tmp_path / "demo_seeds_summary.json").read_text()) == res
    commit = res["commit"]
    assert commit is None or (len(commit.split("-")[0]) == 40 and commit.split("-")[0].isalnum())
    assert "gain over 3 seeds: +0.75 dB" in capsys.readouterr().out
    for bad in ([], [0, 0], [-1], [True]):
        try:
            demo.run_demo_seeds(str(tmp_path), bad)
        except ValueError as e:
            assert "seeds" in str(e)
        else:
            raise AssertionError(f"{bad} accepted")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measure_interleaved_cuda_events():
    # CUDA events on the current stream: per-call device times, the longer op measured longer, no host sync needed
    # inside a round (the samples are read after the round's synchronize).
    timing = _load_bench("timing")
    x = torch.randn(4096, 4096, device="cuda")
    small = torch.randn(16, device="cuda")
    out = timing.measure_interleaved(
        {"mm": lambda: x @ x, "add": lambda: small + 1}, device="cuda", min_rounds=5, max_rounds=5, calls_per_round=3
    )
    assert all(len(v) == 15 and min(v) > 0 for v in out.values())
    r, lo, hi = timing.ratio_ci(out["mm"], out["add"])
    assert lo <= r <= hi and r > 10  # a 4096^3 matmul against a 16-element add


def test_targets_file_names_real_rows():
    # A target whose op, variant or baseline name matches no row would never be checked: every entry of
    # benchmarks/targets.toml must name a case the runners build and a baseline that case has.
    targets, cases, run_infer = _load_bench("targets"), _load_bench("cases"), _load_bench("run_infer")
    data = targets.load()
    built = {(c.op, c.variant): c for c in cases.build_cases("cpu", "cpu", purpose="runner", compiled=False)}
    n = 0
    for dev in ("cpu", "gpu"):
        for op, variants in data["ops"][dev].items():
            for variant, entry in variants.items():
                case = built.get((op, variant))
                assert case is not None, (dev, op, variant)
                names = {b.name for b in case.baselines}
                for name, value in entry.items():
                    assert name == "floor" or name in names, (dev, op, variant, name)
                    assert value > 0
                n += 1
                ratios, floor = targets.op_targets("cuda" if dev == "gpu" else "cpu", op, variant)
                assert ratios == {k: v for k, v in entry.items() if k != "floor"} and floor == entry.get("floor")
    assert n >= 10
    keys = {c.key for c in run_infer.CONFIGS}
    for sizes, problems in data["infer"].items():
        for name, entry in problems.items():
            assert name in run_infer.PROBLEMS[sizes] and set(entry) <= keys, (sizes, name)
    assert targets.nominal_bandwidth_gbps("NVIDIA H200") == 4300.0 and targets.nominal_bandwidth_gbps("x") is None


def test_run_ops_budget_skips_and_writes(tmp_path):
    # --budget-s: no new case once the budget is spent; the file says which were skipped and that the run ended.
    run_ops = _load_run_ops()
    js = tmp_path / "ops.json"
    argv = ["--device", "cpu", "--sizes", "tiny", "--no-compile", "--only", "instance_boundary,encode_input[bf16"]
    res = run_ops.main([*argv, "--budget-s", "0", "--json", str(js)])
    assert res["rows"] == [] and res["complete"]
    assert res["skipped"] == ["instance_boundary[int32-ids-fp32-out]", "encode_input[bf16-CL]"]
    assert json.loads(js.read_text())["skipped"] == res["skipped"]


_FAULTS_SNIPPET = r"""
import os, resource, sys
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
from timing import steady_cpu_allocator, allocator_state
state = steady_cpu_allocator()  # first, as the benchmarks call it: before any large block exists
import torch

def faults_per_alloc():
    # 48 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
    for _ in range(20):
        torch.empty(12 << 20).fill_(1.0)  # the heap settles at its working size (measured: about 10 calls)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(12 << 20).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5

print(faults_per_alloc(), state, allocator_state())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_cpu_allocator_stops_page_faults_per_call():
    # 48 MiB is 12288 pages: with glibc's defaults every allocation maps them fresh and faults each one; once
    # the threshold is raised the block is reused from the heap and (almost) nothing faults.
    import subprocess

    def run(**extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "P2PHD_BENCH_DEFAULT_MALLOC"}
        env.update(extra)
        cmd = [sys.executable, "-c", _FAULTS_SNIPPET, ROOT]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.split()
        return float(out[0]), " ".join(out[1:])

    default_faults, state = run(P2PHD_BENCH_DEFAULT_MALLOC="1")
    assert state == "default default"
    assert default_faults > 6000, f"glibc's defaults did not fault per call ({default_faults}): nothing is tested"
    faults, state = run()
    assert state.startswith("glibc, mmap threshold 1 GiB")
    assert faults < 200, f"{faults} page faults per 48 MiB allocation after steady_cpu_allocator()"
