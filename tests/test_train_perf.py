"""Training-step performance features: selective activation checkpointing (same losses and gradients, fewer
bytes kept for the backward pass), the saved-bytes meter, the whole-step CUDA graph (same losses and weights as
eager; CUDA only) and their options.

Sizes are tiny (64x32 .. 64x128, ngf/ndf 8) and everything runs on the CPU except the CUDA-graph comparison.
"""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
import torch.nn as nn

from pix2pixhd_fast.models.networks import define_G
from pix2pixhd_fast.models.pix2pixhd import Pix2PixHDModel
from pix2pixhd_fast.options import parse_train
from pix2pixhd_fast.train import Trainer
from pix2pixhd_fast.train.graphs import (
    GraphedTrainStep,
    check_cuda_graph_options,
    match_capturable,
    set_learning_rate,
)
from pix2pixhd_fast.train.memory import (
    SavedTensorsMeter,
    disable_selective_checkpointing,
    enable_selective_checkpointing,
    has_selective_checkpointing,
)

from .conftest import HAS_CUDA
from .test_train import FEAT, tiny_args

pytestmark = pytest.mark.usefixtures("restore_threads")

LABEL_NC = 35


def _model(ops: str, *extra: str) -> Pix2PixHDModel:
    opt = parse_train(
        ["--label_nc", str(LABEL_NC), "--no_vgg_loss", "--ngf", "8", "--ndf", "8", "--n_blocks_global", "2"]
        + ["--n_downsample_global", "2", "--num_D", "2", "--ops", ops, "--device", "cpu", *extra]
    )
    m = Pix2PixHDModel(opt, is_train=True)
    m.check_inputs = False
    return m


def _batch(seed: int, h: int = 64, w: int = 128) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, LABEL_NC, (1, 1, h, w), generator=g, dtype=torch.uint8)
    inst = torch.randint(0, 6, (1, 1, h, w), generator=g, dtype=torch.int32) + 26000
    image = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    return {"label": label, "inst": inst, "image": image}


def _losses_and_grads(m: Pix2PixHDModel, b: dict, autocast: bool, channels_last: bool):
    for p in m.parameters():
        p.grad = None
    dt = torch.bfloat16 if autocast else torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        terms, fake = m.compute_losses(b["label"], b["inst"], b["image"], dtype=dt, channels_last=channels_last)
    (terms.loss_G + terms.loss_D).backward()
    losses = torch.stack([v.detach().float() for v in terms.as_dict().values()])
    return losses, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, fake.detach()


# ---------------------------------------------------------------------------------------------------------------
# Selective activation checkpointing


@pytest.mark.parametrize(
    "ops,netG,autocast",
    [("fast", "global", False), ("reference", "global", False), ("fast", "local", False), ("fast", "global", True)],
)
def test_sac_gives_the_same_losses_and_gradients(seed, ops, netG, autocast):  # noqa: N803
    torch.set_num_threads(1)
    plain = _model(ops, "--netG", netG, *FEAT)
    sac = copy.deepcopy(plain)
    for net in (sac.netG, sac.netE):
        enable_selective_checkpointing(net)
    assert has_selective_checkpointing(sac.netG) and not has_selective_checkpointing(plain.netG)
    cl = autocast
    if cl:
        plain.to(memory_format=torch.channels_last)
        sac.to(memory_format=torch.channels_last)
    b = _batch(seed)
    la, ga, fa = _losses_and_grads(plain, b, autocast, cl)
    lb, gb, fb = _losses_and_grads(sac, b, autocast, cl)
    # The recomputation runs the same kernels on the same inputs: the results are bitwise equal.
    assert torch.equal(fa, fb)
    assert torch.equal(la, lb), (la, lb)
    assert ga.keys() == gb.keys() and len(ga) == sum(1 for _ in plain.parameters())
    bad = [n for n in ga if not torch.equal(ga[n], gb[n])]
    assert not bad, f"gradients differ: {bad[:5]}"


def test_sac_keeps_state_dict_keys_and_can_be_undone():
    g = define_G(36, 3, 8, "local", 2, 1, 1, 1)
    keys = list(g.state_dict().keys())
    relus = [m for m in g.modules() if isinstance(m, nn.ReLU)]
    enable_selective_checkpointing(g)
    assert list(g.state_dict().keys()) == keys
    assert has_selective_checkpointing(g)
    disable_selective_checkpointing(g)
    assert not has_selective_checkpointing(g)
    assert not any("forward" in m.__dict__ for m in g.modules())
    assert all(m.inplace for m in relus)  # the activations SAC ran out of place are in place again


@pytest.mark.parametrize("ops", ["fast", "reference"])
def test_sac_keeps_only_conv_outputs_and_region_inputs(seed, ops):
    torch.set_num_threads(1)
    # Few input channels, as in a real G whose layers dwarf its input (a region keeps its input: at this tiny
    # width, 36 input channels would weigh as much as all the feature maps).
    g = define_G(4, 3, 8, "global", 2, 2, ops=ops)
    x = torch.randn(1, 4, 64, 128)

    def saved(net) -> int:
        with SavedTensorsMeter(exclude=net.parameters()) as meter:
            y = net(x)
            y.backward(torch.randn_like(y))  # a backward that keeps nothing itself
        return meter.bytes

    plain = saved(g)
    # What SAC may keep: every conv output, the input, each ResnetBlock's input and the last block's output (the
    # input of the region after the blocks).
    kept = {"conv": 0, "regions": x.nbytes}
    blocks = [m for m in g.modules() if _is_block(m)]
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: kept.__setitem__("conv", kept["conv"] + o.nbytes))
        for m in g.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    hooks += [
        b.register_forward_pre_hook(lambda _m, i: kept.__setitem__("regions", kept["regions"] + i[0].nbytes))
        for b in blocks
    ]
    hooks.append(
        blocks[-1].register_forward_hook(lambda _m, _i, o: kept.__setitem__("regions", kept["regions"] + o.nbytes))
    )
    with torch.no_grad():
        g(x)
    for h in hooks:
        h.remove()
    enable_selective_checkpointing(g)
    with_sac = saved(g)
    assert kept["conv"] <= with_sac <= kept["conv"] + kept["regions"], (with_sac, kept)
    # Plain autograd keeps about two feature maps per conv layer (its input and the norm's input): SAC saves at
    # least a third here (about half on real sizes, where the full-resolution layers dominate).
    assert with_sac <= 0.67 * plain, (with_sac, plain)


def _is_block(m: nn.Module) -> bool:
    return isinstance(getattr(m, "conv_block", None), nn.Sequential)


def test_saved_tensors_meter_counts_distinct_storages():
    w = nn.Parameter(torch.randn(64, 64))
    x = torch.randn(32, 64, requires_grad=True)
    with SavedTensorsMeter(exclude=[w]) as meter:
        y = x @ w  # saves x and w (w excluded)
        z = torch.sin(x)  # saves x again: counted once
        e = torch.exp(y)  # saves its output
        (e.sum() + z.sum()).backward()
    assert meter.tensors == 2
    assert meter.bytes == x.nbytes + e.nbytes
    with SavedTensorsMeter() as meter, torch.no_grad():
        torch.exp(x)
    assert meter.bytes == 0


def test_trainer_sac_option_trains_identically(data, tmp_path):
    base = tiny_args(data, tmp_path, "x", "--max_iters", "2", "--serial_batches", "--no_flip", *FEAT)
    on = Trainer(parse_train([*base, "--name", "on", "--sac", "on"]))
    off = Trainer(parse_train([*base, "--name", "off", "--sac", "off"]))
    assert has_selective_checkpointing(on.raw["G"]) and has_selective_checkpointing(on.raw["E"])
    assert not has_selective_checkpointing(on.raw["D"])
    assert not has_selective_checkpointing(off.raw["G"])
    a, b = on.train(), off.train()
    assert a["last_losses"] == b["last_losses"]
    for k in on.raw:
        sa, sb = on.raw[k].state_dict(), off.raw[k].state_dict()
        assert all(torch.equal(sa[n], sb[n]) for n in sa), k


# ---------------------------------------------------------------------------------------------------------------
# Options, CUDA graph checks


def test_performance_options_parse():
    d = parse_train([])
    assert d.sac == "on" and d.cuda_graph is False and d.no_cudnn_benchmark is False
    o = parse_train(["--sac", "off", "--cuda_graph", "--no_cudnn_benchmark"])
    assert o.sac == "off" and o.cuda_graph is True and o.no_cudnn_benchmark is True
    with pytest.raises(SystemExit):
        parse_train(["--sac", "maybe"])


def test_cuda_graph_option_errors_name_the_problem():
    ok = argparse.Namespace(pool_size=0, compile=False)
    cuda = torch.device("cuda")
    check_cuda_graph_options(ok, cuda, torch.bfloat16, False)
    cases = [
        ((ok, torch.device("cpu"), None, False), "needs a CUDA device"),
        ((ok, cuda, torch.float16, False), "--amp fp16"),
        ((argparse.Namespace(pool_size=50, compile=False), cuda, None, False), "--pool_size 0"),
        ((argparse.Namespace(pool_size=0, compile=True), cuda, None, False), "--compile"),
        ((ok, cuda, None, True), "torchrun"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            check_cuda_graph_options(*args)


def test_cuda_graph_on_cpu_is_rejected_before_training(data, tmp_path):
    with pytest.raises(ValueError, match="--cuda_graph needs a CUDA device"):
        Trainer(parse_train(tiny_args(data, tmp_path, "g", "--cuda_graph")))


def test_set_learning_rate_float_and_loaded_tensor_rates():
    p = nn.Parameter(torch.zeros(3))
    o = torch.optim.Adam([p], lr=1e-3)
    set_learning_rate(o, 5e-4)
    assert o.param_groups[0]["lr"] == 5e-4
    # A state saved by a capturable run brings a tensor rate; a non-capturable optimizer gets a float back.
    o.param_groups[0]["lr"] = torch.tensor(1e-3)
    set_learning_rate(o, 2e-4)
    assert isinstance(o.param_groups[0]["lr"], float) and o.param_groups[0]["lr"] == 2e-4
    with pytest.raises(ValueError, match="capturable"):
        GraphedTrainStep(argparse.Namespace(optimizer_G=o, optimizer_D=o))


def test_resumed_optimizer_follows_this_runs_cuda_graph_option():
    p = nn.Parameter(torch.zeros(3))
    o = torch.optim.Adam([p], lr=1e-3, fused=True)
    saved = copy.deepcopy(o.state_dict())
    # As saved by a --cuda_graph run: capturable groups with a tensor rate.
    saved["param_groups"][0].update(capturable=True, lr=torch.tensor(3e-4))
    o.load_state_dict(saved)
    assert o.param_groups[0]["capturable"] is True
    match_capturable(o, False)
    assert o.param_groups[0]["capturable"] is False and o.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert isinstance(o.param_groups[0]["lr"], float)
    p.grad = torch.ones(3)
    o.step()  # a plain fused step works on the CPU again
    assert torch.all(p < 0)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_cuda_graph_step_matches_eager(data, tmp_path, amp):
    """Six iterations eager vs. graphed (3 eager warm-ups, capture, 3 replays): same losses and weights."""
    torch.backends.cudnn.deterministic = True
    try:
        args = tiny_args(data, tmp_path, "g", "--serial_batches", "--no_flip", "--device", "cuda", amp=amp)
        args += ["--no_cudnn_benchmark", "--max_iters", "6", "--niter", "3", "--niter_decay", "3"]
        eager = Trainer(parse_train([*args, "--name", "eager"]))
        graphed = Trainer(parse_train([*args, "--name", "graphed", "--cuda_graph"]))
        assert graphed.graphed is not None and eager.graphed is None
        seen: dict[str, list] = {"eager": [], "graphed": []}
        for name, t in (("eager", eager), ("graphed", graphed)):
            step = t.train_step

            def rec(batch, step=step, name=name):
                losses, fake = step(batch)
                seen[name].append(torch.stack([v.detach().float() for v in losses.values()]).cpu())
                return losses, fake

            t.train_step = rec
            t.train()
        assert graphed.graphed.captures == 1 and graphed.graphed.graph is not None
        assert len(seen["eager"]) == len(seen["graphed"]) == 6
        tol = dict(rtol=1e-4, atol=1e-5) if amp == "off" else dict(rtol=2e-2, atol=2e-3)
        for i, (a, b) in enumerate(zip(seen["eager"], seen["graphed"], strict=True)):
            torch.testing.assert_close(b, a, **tol, msg=lambda m, i=i: f"step {i + 1}: {m}")
        for k in eager.raw:
            sa, sb = eager.raw[k].state_dict(), graphed.raw[k].state_dict()
            for n in sa:
                torch.testing.assert_close(sb[n], sa[n], **tol, msg=lambda m, k=k, n=n: f"{k}.{n}: {m}")
    finally:
        torch.backends.cudnn.deterministic = False


# ---------------------------------------------------------------------------------------------------------------
# benchmarks/run_train.py at tiny sizes (no timing assertions: benchmarks are not tests)


def _load_run_train():
    import importlib.util
    import os
    import sys

    name = "p2phd_run_train"
    if name in sys.modules:
        return sys.modules[name]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", "run_train.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def test_run_train_tiny_cpu_records_real_samples_bytes_and_failures(tmp_path, capsys, monkeypatch):
    import json
    import statistics

    run_train = _load_run_train()
    sys_timing = __import__("sys").modules["timing"]
    js, md = tmp_path / "train.json", tmp_path / "train.md"
    real_compile = torch.compile

    def failing_compile(*a, **k):  # (e) must show its compile error as a row instead of vanishing
        raise RuntimeError("no compiler on this test machine")

    monkeypatch.setattr(torch, "compile", failing_compile)
    argv = ["--device", "cpu", "--sizes", "tiny", "--only", "global", "--configs", "n,a,b,c,e,c-sac,c-ops"]
    argv += ["--min-rounds", "3", "--max-rounds", "3", "--warmup", "1", "--threads", "1", "--profile"]
    argv += ["--profile-steps", "1", "--net-min-rounds", "2", "--net-max-rounds", "2", "--net-warmup", "0"]
    run_train.main([*argv, "--json", str(js), "--markdown", str(md)])
    monkeypatch.setattr(torch, "compile", real_compile)
    res = json.loads(js.read_text())
    assert res["complete"] and not res["skipped"]
    (p,) = res["train"]
    rows = {r["key"]: r for r in p["rows"]}
    assert set(rows) == {"n", "a", "b", "c", "c-sac", "c-ops"}
    assert [e["config"] for e in p["errors"]] == ["e"] and "no compiler" in p["errors"][0]["error"]
    assert (rows["n"]["loop"], rows["n"]["adam"], rows["a"]["loop"]) == ("nvidia", "default", "model")
    assert (rows["c"]["ops"], rows["c"]["sac"], rows["c-sac"]["sac"], rows["c-ops"]["ops"]) == (
        "fast",
        True,
        False,
        "reference",
    )
    for r in rows.values():
        ts = r["times_s"]
        # Real samples: one per round per configuration, each its own measurement, summarised as recorded.
        assert len(ts) == r["steps"] == 3 and len(set(ts)) == 3 and min(ts) > 0
        assert r["median_s"] == statistics.median(ts) and r["min_s"] == min(ts) and r["max_s"] == max(ts)
        assert r["peak_bytes"] is None  # not measured on the CPU
        assert 0 < r["floor_fraction"] and r["saved_bytes"] > 0
    # Ratios are the timer's paired ratios of these very samples.
    for key, base in (("c", "a"), ("c", "b"), ("c", "n"), ("a", "n")):
        want = sys_timing.ratio_ci(rows[base]["times_s"], rows[key]["times_s"])
        assert (rows[key][f"vs_{base}"], rows[key][f"vs_{base}_lo"], rows[key][f"vs_{base}_hi"]) == want
    want = sys_timing.ratio_ci(rows["c-sac"]["times_s"], rows["c"]["times_s"])
    assert rows["c-sac"]["c_vs_this"] == want[0]
    # Bytes kept for backward: bf16 halves (b) against (a), SAC cuts (c) below (c) without it.
    assert rows["b"]["saved_bytes"] < rows["a"]["saved_bytes"]
    assert rows["c"]["saved_bytes"] < rows["c-sac"]["saved_bytes"]
    assert rows["c"]["saved_bytes_vs_a"] == rows["c"]["saved_bytes"] / rows["a"]["saved_bytes"]
    f = p["conv_flops"]
    # G's first conv reads the label map (no input gradient) and D's frozen pass computes no weight gradient.
    assert 0 < f["input_grad"] < f["forward"] and 0 < f["weight_grad"] < f["forward"]
    assert f["total"] == f["forward"] + f["input_grad"] + f["weight_grad"]
    assert p["floor_s"] == f["total"] / res["matmul"]["flops_per_s"]
    wc = p["weight_casts"]
    assert (
        wc["one_cast_s"] > 0 and wc["share_of_step"] == wc["casts_per_step"] * wc["one_cast_s"] / rows["c"]["median_s"]
    )
    text = md.read_text()
    assert "## Training step: global-64x128" in text and "FAILED: RuntimeError: no compiler" in text
    assert "(b) bf16 autocast + channels-last, reference ops †" in text and "wrong gradients" in text
    assert "## Profile" in text and res["nets"]["rows"] and res["profile"]["top_ops"]
    assert "Training step" in capsys.readouterr().out


def test_run_train_conv_flops_match_hand_count():
    run_train = _load_run_train()
    problem = run_train.Problem("global", 16, 32, ("--ngf", "4", "--ndf", "4", "--n_blocks_global", "1"))
    args = run_train.parse_args(["--extra", "--n_downsample_global 1 --num_D 1 --n_layers_D 1 --no_instance"])
    b = run_train.make_batch(problem, "cpu", 0)
    f = run_train.count_conv_flops(problem, args, "cpu", b)
    # G: conv7 35->4 at 16x32, conv3 s2 4->8 at 8x16, the ResnetBlock's two conv3 8->8 at 8x16, convT3 8->4
    # (input 8x16), conv7 4->3 at 16x32.
    g = [35 * 4 * 49 * 16 * 32, 4 * 8 * 9 * 8 * 16, 8 * 8 * 9 * 8 * 16, 8 * 8 * 9 * 8 * 16, 8 * 4 * 9 * 8 * 16]
    g.append(4 * 3 * 49 * 16 * 32)
    # D (input 35 + 3 channels, n_layers 1): conv4 s2 38->4 (9x17), conv4 s1 4->8 (10x18), conv4 s1 8->1 (11x19);
    # batched real+fake pass (batch 2, weight grads, no input grad at the first layer), then G's pass (batch 1,
    # frozen: input grads only).
    d = [38 * 4 * 16 * 9 * 17, 4 * 8 * 16 * 10 * 18, 8 * 1 * 16 * 11 * 19]
    fwd = 2 * (sum(g) + 3 * sum(d))
    assert f["forward"] == fwd
    assert f["weight_grad"] == 2 * (sum(g) + 2 * sum(d))
    assert f["input_grad"] == 2 * (sum(g[1:]) + 2 * sum(d[1:]) + sum(d))
    assert f["calls"] == 6 + 2 * 3


def test_run_train_profile_groups():
    classify = _load_run_train().classify
    expected = {
        "aten::mkldnn_convolution": "convolution",
        "aten::convolution_backward": "convolution",
        "autograd::engine::evaluate_function: ConvolutionBackward0": "convolution",
        "aten::conv_transpose2d": "convolution",
        "pix2pixhd_fast::instance_norm_act": "norm",
        "pix2pixhd_fast::instance_norm_act_backward": "norm",
        "aten::instance_norm": "norm",
        "aten::avg_pool2d_backward": "pooling",
        "pix2pixhd_fast::instance_avg_pool": "pooling",
        "pix2pixhd_fast::encode_input": "encode/boundary",
        "aten::reflection_pad2d": "padding",
        "aten::mse_loss": "loss",
        "loss::feature_matching": "loss",
        "aten::_fused_adam_": "optimizer",
        "aten::add_": None,
        "train_step": None,
    }
    assert {name: classify(name) for name in expected} == expected


def test_run_train_bad_arguments():
    run_train = _load_run_train()
    for argv in (["--configs", "a,z"], ["--configs", "c-graph"], ["--min-rounds", "0"], ["--sizes", "huge"]):
        with pytest.raises(SystemExit) as e:
            run_train.parse_args(argv)
        assert e.value.code == 2, argv
    args = run_train.parse_args(["--configs", "a,c,ablation"])
    assert args.config_keys == ["a", "c", "c-sac", "c-pad", "c-ops"] and args.sizes == "cpu"
    gpu = run_train.parse_args(["--device", "cuda", "--configs", "ablation"])
    assert gpu.config_keys == ["c-sac", "c-pad", "c-graph", "c-cudnn", "c-ops"] and gpu.sizes == "gpu"
