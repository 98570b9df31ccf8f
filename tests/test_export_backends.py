"""Inference backends: torch.compile, onnxruntime and TensorRT against eager; the export command.

Independent expectations: every backend is compared with the eager generator (itself checked against the
reference implementation elsewhere) on the same inputs; the mixed-precision ONNX graph is run by onnxruntime (fp16)
or ONNX's own numpy evaluator (bf16) and compared with fp32, and its structure is checked node by node.

TensorRT needs a GPU and an optional package, so its builder is also tested without them: on argument handling and,
with a stand-in ``tensorrt`` module that records the calls (named after TensorRT's documented Python API), on what
it asks TensorRT to do; the real build + run tests skip with the reason where TensorRT and CUDA are missing.

Compiled graphs share one architecture and input layout (label_nc 35 + instance map, ngf 8, 2 downsamplings, 1 block,
uint8 labels, int32 ids, NCHW, 32x64) so inductor's cache serves the second and third compilations.
"""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pix2pixhd_fast import cli  # noqa: E402
from pix2pixhd_fast.data import make_synthetic_dataset  # noqa: E402
from pix2pixhd_fast.export import (  # noqa: E402
    EngineBuildError,
    InferenceGraph,
    OnnxRuntimeGenerator,
    ShapeProfile,
    TensorRTGenerator,
    TensorRTUnavailableError,
    build_engine,
    check_onnx_graph_ops,
    compile_generator,
    export_onnx,
    mixed_precision_onnx,
    parse_sizes,
    profiles_for_sizes,
    read_sidecar,
    tensorrt_status,
)
from pix2pixhd_fast.export import compiled as compiled_mod  # noqa: E402
from pix2pixhd_fast.export import precision as precision_mod  # noqa: E402
from pix2pixhd_fast.export import tensorrt as trt_mod  # noqa: E402
from pix2pixhd_fast.export.backends import EagerBackend, make_backend  # noqa: E402
from pix2pixhd_fast.models import Pix2PixHDModel, define_G  # noqa: E402
from pix2pixhd_fast.options import parse_test  # noqa: E402

HAS_TRT, TRT_REASON = tensorrt_status()
needs_trt = pytest.mark.skipif(not HAS_TRT, reason=f"TensorRT build+run needs TensorRT and a GPU: {TRT_REASON}")
no_trt = pytest.mark.skipif(HAS_TRT, reason="checks the errors raised where TensorRT or a GPU is missing")

LABEL_NC = 35
NET = ["--label_nc", "35", "--netG", "global", "--ngf", "8", "--n_downsample_global", "2", "--n_blocks_global", "1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_global(input_nc: int, kind: str = "global") -> nn.Module:
    net = define_G(
        input_nc, 3, 8, kind, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
    )
    with torch.no_grad():  # non-zero biases: a dropped or mistyped bias shows
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
    return net.eval()


def street_inputs(n=1, h=32, w=64, label_nc=LABEL_NC, feat_num=0, seed=0):
    """uint8 labels and int32 instance ids (the data pipeline's dtypes), 4x4-pixel instance blocks, features."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, label_nc, (n, 1, h, w), generator=g).to(torch.uint8)
    inst = torch.randint(0, 6, (n, 1, h // 4, w // 4), generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    feat = torch.randn(n, feat_num, h, w, generator=g) if feat_num else None
    return label, inst.to(torch.int32).contiguous(), feat


# ----------------------------------------------------------------------------------------------------
# torch.compile


def test_compile_modes_table():
    m = compiled_mod.torch_compile_mode
    assert m("default", "cpu", True) == "default"
    assert m("max-autotune", "cpu", True) == "max-autotune-no-cudagraphs"
    assert m("default", "cuda", True) == "reduce-overhead"
    assert m("max-autotune", "cuda:0", True) == "max-autotune"
    assert m("default", "cuda", False) == "default"
    assert m("max-autotune", "cuda", False) == "max-autotune-no-cudagraphs"
    with pytest.raises(ValueError, match="compile mode"):
        m("fast", "cpu", True)
    with pytest.raises(TypeError, match="nn.Module"):
        compile_generator("netG.pth")


def test_compiled_generator_equals_eager_fullgraph(seed):
    net = tiny_global(LABEL_NC + 1)
    graph = InferenceGraph(net, LABEL_NC, True)
    gen = compile_generator(graph)  # fullgraph=True: a graph break would raise
    assert gen.mode == "default" and not gen.cuda_graphs
    for k in range(2):  # the second call reuses the compiled graph (same shapes)
        label, inst, _ = street_inputs(seed=seed + k)
        with torch.no_grad():
            expected = graph(label, inst)
        got = gen(label, inst)
        assert got.shape == (1, 3, 32, 64)
        assert (got - expected).abs().max().item() <= 1e-5
        assert expected.abs().max() > 0.05


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_compiled_generator_cuda_graphs(seed):
    net = tiny_global(LABEL_NC + 1).cuda()
    graph = InferenceGraph(net, LABEL_NC, True)
    gen = compile_generator(graph, cuda_graphs=True)
    assert gen.cuda_graphs and gen.mode == "reduce-overhead"
    outs, refs = [], []
    for k in range(3):
        label, inst, _ = street_inputs(seed=seed + k)
        label, inst = label.cuda(), inst.cuda()
        with torch.no_grad():
            refs.append(graph(label, inst))
        outs.append(gen(label, inst))
    for o, r in zip(outs, refs, strict=True):  # earlier outputs survive later replays (clone_output)
        assert (o - r).abs().max().item() <= 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_compile_backend_cuda_graphs_matches_eager(tmp_path, amp, seed):
    """The backend benchmarks/run_infer.py times: a channels-last model's graph compiled with CUDA graphs, under
    autocast, equals the eager backend (fp32: to the rounding of convolution algorithms, TF32 included; bf16: to
    bf16 rounding)."""
    args = ["--checkpoints_dir", str(tmp_path), "--results_dir", str(tmp_path), "--name", "g", "--device", "cuda"]
    opt = parse_test([*NET, *args])
    device = torch.device("cuda")
    model = Pix2PixHDModel(opt, is_train=False).eval().to(device).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in model.netG.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eager = EagerBackend(model, device, amp)
    compiled = make_backend("compile", model, opt, device, amp)
    assert compiled.compiled.cuda_graphs
    outs, refs = [], []
    for k in range(3):  # record once, then replay; earlier outputs must survive later replays
        label, inst, _ = street_inputs(n=1, h=64, w=128, seed=seed + k)
        label, inst = label.to(device), inst.to(device)
        refs.append(eager(label, inst).float())
        outs.append(compiled(label, inst).float())
    tol = 1e-2 if amp is None else 6e-2
    for o, r in zip(outs, refs, strict=True):
        assert o.shape == r.shape == (1, 3, 64, 128)
        assert (o - r).abs().max().item() <= tol
    assert (outs[0] - outs[1]).abs().max().item() > 0.01  # different inputs, different images: no stale replay


# ----------------------------------------------------------------------------------------------------
# End to end: train a tiny model, then `test` through each backend


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    data, ckpt = str(root / "data"), str(root / "ckpt")
    make_synthetic_dataset(data, n=2, size=(32, 64), seed=0, n_test=2)
    args = [
        "--name", "tiny", "--dataroot", data, "--checkpoints_dir", ckpt, "--resize_or_crop", "none", *NET,
        "--ndf", "8", "--num_D", "1", "--n_layers_D", "2", "--no_vgg_loss", "--nThreads", "0", "--no_progress",
        "--device", "cpu", "--num_threads", "1", "--amp", "off", "--niter", "1", "--niter_decay", "0", "--no_html",
    ]  # fmt: skip
    assert cli.main(["train", *args]) == 0
    return root, data, ckpt


def run_test_cli(trained, backend, capsys, *extra):
    root, data, ckpt = trained
    results = root / f"results_{backend}"
    args = [
        "--name", "tiny", "--dataroot", data, "--checkpoints_dir", ckpt, "--results_dir", str(results),
        "--resize_or_crop", "none", *NET, "--device", "cpu", "--nThreads", "0", "--amp", "off",
        "--num_threads", "1", "--no_channels_last", "--backend", backend, *extra,
    ]  # fmt: skip
    rc = cli.main(["test", *args])
    captured = capsys.readouterr()
    return rc, captured, results / "tiny" / "test_latest"


def synthesized(folder) -> dict[str, np.ndarray]:
    files = sorted(f for f in os.listdir(folder / "images") if f.endswith("_synthesized_image.png"))
    return {f: np.asarray(Image.open(folder / "images" / f)).astype(np.int16) for f in files}


def test_cli_test_backends_give_the_eager_images(trained, capsys):
    rc, _, eager_dir = run_test_cli(trained, "eager", capsys)
    assert rc == 0
    eager = synthesized(eager_dir)
    assert len(eager) == 2
    onnx_path = os.path.join(trained[2], "tiny", "latest_net_G.onnx")
    assert not os.path.exists(onnx_path)
    for backend in ("onnxruntime", "compile"):
        rc, captured, folder = run_test_cli(trained, backend, capsys)
        assert rc == 0, captured.err
        summary = json.loads(captured.out[captured.out.rfind("\n{") + 1 :])
        assert summary["backend"] == backend and summary["images"] == 2
        got = synthesized(folder)
        assert got.keys() == eager.keys()
        for k in got:  # fp32 everywhere: at most a rounding flip of one level in the 8-bit image
            assert np.abs(got[k] - eager[k]).max() <= 1, (backend, k)
    # onnxruntime exported the checkpoint beside it; a second run reuses the file, a newer .pth re-exports it.
    assert "InstanceNormalization" in check_onnx_graph_ops(onnx_path)
    before = os.stat(onnx_path).st_mtime_ns
    assert run_test_cli(trained, "onnxruntime", capsys)[0] == 0
    assert os.stat(onnx_path).st_mtime_ns == before
    pth = os.path.join(trained[2], "tiny", "latest_net_G.pth")
    later = os.stat(onnx_path).st_mtime + 10
    os.utime(pth, (later, later))
    assert run_test_cli(trained, "onnxruntime", capsys)[0] == 0
    assert os.stat(onnx_path).st_mtime_ns != before


@no_trt
def test_cli_test_tensorrt_backend_says_what_to_install(trained, capsys):
    rc, captured, _ = run_test_cli(trained, "tensorrt", capsys)
    assert rc == 2
    assert "pip install tensorrt" in captured.err or "needs a CUDA GPU" in captured.err
    assert "Traceback" not in captured.err


def test_backends_with_encoded_features(tmp_path, seed):
    """Features from the encoder (--instance_feat --use_encoded_image) reach every backend's generator input."""
    opt = parse_test(
        [
            *NET[:2],
            "--ngf",
            "8",
            "--n_downsample_global",
            "2",
            "--n_blocks_global",
            "1",
            "--instance_feat",
            "--feat_num",
            "3",
            "--nef",
            "8",
            "--n_downsample_E",
            "2",
            "--use_encoded_image",
            "--checkpoints_dir",
            str(tmp_path),
            "--name",
            "feat",
        ]  # fmt: skip
    )
    os.makedirs(tmp_path / "feat")
    model = Pix2PixHDModel(opt, is_train=False).eval()
    device = torch.device("cpu")
    label, inst, _ = street_inputs(n=2, h=16, w=32)
    image = torch.rand(2, 3, 16, 32) * 2 - 1
    eager = EagerBackend(model, device, None)(label, inst, image, None)
    ort = make_backend("onnxruntime", model, opt, device, None)
    assert ort.runner.input_names == ["label", "inst", "feat"]
    assert (ort(label, inst, image, None) - eager).abs().max().item() <= 1e-4
    # Precomputed features (--load_features) are passed through unchanged.
    feat = torch.randn(2, 3, 16, 32)
    assert (
        ort(label, inst, None, feat) - EagerBackend(model, device, None)(label, inst, None, feat)
    ).abs().max() < 1e-4
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("tvm", model, opt, device, None)


# ----------------------------------------------------------------------------------------------------
# export command


def test_cli_export_onnx(trained, tmp_path, capsys, seed):
    _, _, ckpt = trained
    base = ["export", "--name", "tiny", "--checkpoints_dir", ckpt, *NET]
    out = tmp_path / "g.onnx"
    capsys.readouterr()  # the seed fixture's line
    assert cli.main([*base, "--format", "onnx", "--out", str(out), "--sizes", "32x64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and "InstanceNormalization" in summary["operators"]
    assert "InstanceNormalization" in check_onnx_graph_ops(out)
    model = Pix2PixHDModel(parse_test(NET), is_train=False)
    from pix2pixhd_fast.models.checkpoint import load_pix2pixhd_checkpoint

    load_pix2pixhd_checkpoint(os.path.join(ckpt, "tiny", "latest_net_G.pth"), model.netG)
    model.eval()
    label, inst, _ = street_inputs(n=2, h=16, w=32, seed=seed)
    expected = model.inference(label, inst)
    assert (OnnxRuntimeGenerator(out)(label, inst) - expected).abs().max().item() <= 1e-4

    # fp16 ONNX: instance norm in fp32 islands, fp16 convolutions; onnxruntime (CPU) runs it close to fp32.
    out16 = tmp_path / "g16.onnx"
    assert cli.main([*base, "--format", "onnx", "--out", str(out16), "--precision", "fp16"]) == 0
    capsys.readouterr()
    assert_norms_in_fp32(onnx.load(out16), onnx.TensorProto.FLOAT16)
    got16 = OnnxRuntimeGenerator(out16)(label, inst)
    assert got16.dtype == torch.float32 and (got16 - expected).abs().max().item() <= 1e-2
    assert sorted(os.listdir(tmp_path)) == ["g.onnx", "g16.onnx"]  # no temporary left behind

    # Bad input: a clear message and status 2 (argparse usage errors exit 2 too), nothing written.
    assert cli.main([*base, "--format", "onnx", "--out", str(tmp_path / "x.onnx"), "--sizes", "30x64"]) == 2
    assert "multiples of 4" in capsys.readouterr().err
    assert cli.main([*base, "--format", "tensorrt", "--out", str(tmp_path / "x.engine")]) == 2
    assert "needs --sizes" in capsys.readouterr().err
    rc = cli.main(["export", "--name", "nope", "--checkpoints_dir", ckpt, *NET, "--format", "onnx", "--out",
                   str(tmp_path / "x.onnx")])  # fmt: skip
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main([*base, "--format", "onnx", "--out", str(out), "--sizes", "big"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main([*base, "--format", "onnx", "--out", str(out), "--precision", "int8"])
    capsys.readouterr()
    if not HAS_TRT:
        engine = tmp_path / "g.engine"
        assert cli.main([*base, "--format", "tensorrt", "--out", str(engine), "--sizes", "32x64"]) == 2
        err = capsys.readouterr().err
        assert "pip install tensorrt" in err or "needs a CUDA GPU" in err
        assert not engine.exists() and not (tmp_path / "g.engine.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["g.onnx", "g16.onnx"]


# ----------------------------------------------------------------------------------------------------
# Mixed precision ONNX (what the TensorRT builder parses for fp16/bf16)


def assert_norms_in_fp32(model, low: int) -> None:
    """Every InstanceNormalization reads a Cast(to=FLOAT), has float32 scale/bias, and is cast back to ``low``;
    convolution weights are ``low``; graph inputs/outputs keep their types."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    consts = {i.name: i.data_type for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = n.attribute[0].t.data_type

    def cast_to(node):
        return next(a.i for a in node.attribute if a.name == "to")

    norms = [n for n in graph.node if n.op_type == "InstanceNormalization"]
    assert norms
    for n in norms:
        src = producers[n.input[0]]
        assert src.op_type == "Cast" and cast_to(src) == TensorProto.FLOAT
        assert consts[n.input[1]] == consts[n.input[2]] == TensorProto.FLOAT
        users = consumers[n.output[0]]
        assert len(users) == 1 and users[0].op_type == "Cast" and cast_to(users[0]) == low
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(consts[n.input[1]] == low for n in convs)
    inits = {i.name: i for i in graph.initializer}
    for n in convs:
        if n.input[1] in inits:
            assert numpy_helper.to_array(inits[n.input[1]]).dtype.itemsize == 2
    assert [i.type.tensor_type.elem_type for i in graph.output] == [TensorProto.FLOAT]


@pytest.mark.parametrize("kind", ["global", "local"])
def test_mixed_precision_onnx_fp16_and_bf16(tmp_path, kind, seed):
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    net = tiny_global(6 + 1 + 2, kind)
    path = export_onnx(net, tmp_path / "g.onnx", label_nc=6, use_instance=True, feat_num=2)
    graph = InferenceGraph(net, 6, True, 2)
    label, inst, feat = street_inputs(n=2, h=32, w=64, label_nc=6, feat_num=2, seed=seed)
    with torch.no_grad():
        expected = graph(label, inst, feat).numpy()
    feeds = {"label": label.long().numpy(), "inst": inst.long().numpy(), "feat": feat.numpy()}
    before = onnx.load(path)

    m16 = mixed_precision_onnx(path, "fp16")
    assert_norms_in_fp32(m16, TensorProto.FLOAT16)
    assert [i.type.tensor_type.elem_type for i in m16.graph.input] == [
        i.type.tensor_type.elem_type for i in before.graph.input
    ]
    got16 = ort_session(m16).run(None, feeds)[0]
    assert got16.dtype == np.float32 and np.abs(got16 - expected).max() <= 1e-2
    assert np.abs(got16 - expected).max() > 0  # it did run in half precision

    m_bf = mixed_precision_onnx(before, "bf16")
    assert_norms_in_fp32(m_bf, TensorProto.BFLOAT16)
    assert precision_mod._opset(m_bf) >= 22
    got_bf = ReferenceEvaluator(m_bf).run(None, feeds)[0]
    assert np.abs(got_bf.astype(np.float32) - expected).max() <= 6e-2
    assert onnx.load(path) == before  # the input model is not modified
    assert mixed_precision_onnx(path, "fp32") == before


def ort_session(model):
    """An onnxruntime CPU session of an in-memory model."""
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_mixed_precision_encoding_only_graph_is_exact(tmp_path):
    """Identity generator: one-hot and boundary maps are exact in fp16; features pass through fp16 rounding."""
    graph = InferenceGraph(nn.Identity(), 4, True, 2)
    path = export_onnx(graph, tmp_path / "enc.onnx", example_size=(8, 8))
    m16 = mixed_precision_onnx(path, "fp16")
    label, inst, feat = street_inputs(n=1, h=8, w=12, label_nc=4, feat_num=2)
    feeds = {"label": label.long().numpy(), "inst": inst.long().numpy(), "feat": feat.numpy()}
    got = ort_session(m16).run(None, feeds)[0]
    with torch.no_grad():
        ref = graph(label, inst, feat).numpy()
    assert np.array_equal(got[:, :5], ref[:, :5])
    assert np.array_equal(got[:, 5:], ref[:, 5:].astype(np.float16).astype(np.float32))


def test_mixed_precision_bad_input(tmp_path):
    net = tiny_global(6)
    path = export_onnx(net, tmp_path / "g.onnx", label_nc=6, use_instance=False)
    with pytest.raises(ValueError, match="unsupported precision 'int8'"):
        mixed_precision_onnx(path, "int8")
    with pytest.raises(ValueError, match="already holds float16"):
        mixed_precision_onnx(mixed_precision_onnx(path, "fp16"), "fp16")
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        mixed_precision_onnx(tmp_path / "none.onnx", "fp16")
    (tmp_path / "junk.onnx").write_bytes(b"\x01\x02 not a model")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        mixed_precision_onnx(tmp_path / "junk.onnx", "fp16")


# ----------------------------------------------------------------------------------------------------
# TensorRT builder: sizes, profiles, sidecar, argument checks (no TensorRT needed)


def test_parse_sizes_and_profiles():
    assert parse_sizes("512x1024,1024x2048") == [(512, 1024), (1024, 2048)]
    assert parse_sizes(" 32X64 ") == [(32, 64)]
    for bad in ("", "512", "512x", "0x64", "-4x8", "512x1024,", "axb"):
        with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
            parse_sizes(bad)
    fixed = profiles_for_sizes([(32, 64), (64, 128), (32, 64)], max_batch=2)
    assert fixed == [ShapeProfile((1, 32, 64), (2, 32, 64), (2, 32, 64)), ShapeProfile.fixed(64, 128, 2)]
    (span,) = profiles_for_sizes([(64, 32), (32, 128)], dynamic=True)
    assert (span.min, span.opt, span.max) == ((1, 32, 32), (1, 64, 32), (1, 64, 128))
    assert span.contains(1, 48, 64) and not span.contains(2, 48, 64) and not span.contains(1, 16, 64)
    assert span.input_shapes(3) == ((1, 3, 32, 32), (1, 3, 64, 32), (1, 3, 64, 128))
    assert ShapeProfile.from_json(span.to_json()) == span
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile((1, 64, 64), (1, 32, 64), (1, 64, 64))
    with pytest.raises(ValueError, match="three positive ints"):
        ShapeProfile((1, 0, 64), (1, 32, 64), (1, 64, 64))
    with pytest.raises(ValueError, match="max_batch"):
        profiles_for_sizes([(32, 64)], max_batch=0)
    with pytest.raises(ValueError, match="at least one size"):
        profiles_for_sizes([])


def sidecar_example(name="g.engine") -> dict:
    return {
        "format": 1,
        "engine": name,
        "engine_sha256": "0" * 64,
        "tensorrt_version": "10.99.0",
        "precision": "fp16",
        "inputs": [
            {"name": "label", "dtype": "int64", "shape": [-1, 1, -1, -1]},
            {"name": "inst", "dtype": "int64", "shape": [-1, 1, -1, -1]},
        ],
        "outputs": [{"name": "image", "dtype": "float32", "shape": [-1, 3, -1, -1]}],
        "channels": {"label": 1, "inst": 1},
        "profiles": [ShapeProfile.fixed(32, 64).to_json()],
        "metadata": {"label_nc": "35", "size_multiple": "4"},
    }


def test_sidecar_round_trip_and_validation(tmp_path):
    engine = tmp_path / "g.engine"
    info = sidecar_example()
    assert trt_mod.write_sidecar(engine, info) == str(engine) + ".json"
    assert read_sidecar(engine) == info
    assert json.loads((tmp_path / "g.engine.json").read_text()) == info
    for key, value, match in [
        ("format", 2, "unsupported format"),
        ("precision", "int8", "unknown precision"),
        ("tensorrt_version", None, "'tensorrt_version' missing"),
        ("inputs", [], "non-empty list"),
        ("inputs", [{"name": "label", "dtype": "complex64", "shape": [1]}], "unsupported dtype"),
        ("outputs", [{"name": "image", "dtype": "float32", "shape": [-2]}], "bad shape"),
        ("profiles", [{"min": [1, 32, 64], "opt": [1, 16, 64], "max": [1, 32, 64]}], "min <= opt <= max"),
        ("profiles", [{"min": [1, 32, 64]}], "'min', 'opt', 'max'"),
        ("channels", {"label": 1}, "channel count for each input"),
    ]:
        with pytest.raises(ValueError, match=match):
            trt_mod.write_sidecar(tmp_path / "bad.engine", {**info, key: value})
    (tmp_path / "x.engine.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_sidecar(tmp_path / "x.engine")
    with pytest.raises(FileNotFoundError, match="engine description"):
        read_sidecar(tmp_path / "none.engine")
    assert sorted(os.listdir(tmp_path)) == ["g.engine.json", "x.engine.json"]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    net = tiny_global(LABEL_NC + 1 + 2)
    path = export_onnx(
        net, tmp_path_factory.mktemp("trt_onnx") / "g.onnx", label_nc=LABEL_NC, use_instance=True, feat_num=2
    )
    return path, InferenceGraph(net, LABEL_NC, True, 2)


def test_build_engine_checks_arguments_before_needing_tensorrt(tiny_onnx, tmp_path, monkeypatch):
    path, _ = tiny_onnx
    engine = tmp_path / "g.engine"
    ok = dict(sizes=[(32, 64)])
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        build_engine(tmp_path / "missing.onnx", engine, **ok)
    for precision in ("int8", "fp8", "FP16", None):
        with pytest.raises(ValueError, match="unsupported precision"):
            build_engine(path, engine, precision=precision, **ok)
    with pytest.raises(ValueError, match="name the sizes"):
        build_engine(path, engine)
    with pytest.raises(ValueError, match="multiples of 4"):
        build_engine(path, engine, sizes=[(30, 64)])
    with pytest.raises(ValueError, match="HEIGHTxWIDTH|two positive ints"):
        build_engine(path, engine, sizes=[(32, 0)])
    with pytest.raises(ValueError, match="max_batch"):
        build_engine(path, engine, sizes=[(32, 64)], max_batch=0)
    with pytest.raises(ValueError, match="not both"):
        build_engine(path, engine, sizes=[(32, 64)], profiles=[ShapeProfile.fixed(32, 64)])
    with pytest.raises(ValueError, match="non-empty list of ShapeProfile"):
        build_engine(path, engine, profiles=[((1, 32, 64),) * 3])
    for ws in (0, -1.0, float("inf"), "4"):
        with pytest.raises(ValueError, match="workspace_gb"):
            build_engine(path, engine, workspace_gb=ws, **ok)
    with pytest.raises(ValueError, match="optimization_level"):
        build_engine(path, engine, optimization_level=6, **ok)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_engine(path, tmp_path / "no" / "g.engine", **ok)
    with pytest.raises(IsADirectoryError):
        build_engine(path, tmp_path, **ok)
    with pytest.raises(FileNotFoundError, match="timing cache"):
        build_engine(path, engine, timing_cache=tmp_path / "no" / "cache", **ok)
    # Valid arguments: now TensorRT (or the GPU) is what is missing, and the message says what to install.
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt"):
        build_engine(path, engine, precision="bf16", **ok)
    assert os.listdir(tmp_path) == []


def test_tensorrt_too_old_or_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(TensorRTUnavailableError, match="too old"):
        trt_mod.import_tensorrt()
    assert trt_mod.tensorrt_status()[0] is False
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = trt_mod.tensorrt_status()
    assert not ok and "needs a CUDA GPU" in reason
    engine = tmp_path / "g.engine"
    engine.write_bytes(b"plan")
    trt_mod.write_sidecar(engine, sidecar_example())
    with pytest.raises(TensorRTUnavailableError, match="needs a CUDA GPU"):
        TensorRTGenerator(engine)
    with pytest.raises(FileNotFoundError, match="no engine file"):
        TensorRTGenerator(tmp_path / "none.engine")
    (tmp_path / "lone.engine").write_bytes(b"plan")
    with pytest.raises(FileNotFoundError, match="engine description"):
        TensorRTGenerator(tmp_path / "lone.engine")


# ----------------------------------------------------------------------------------------------------
# The builder's calls, against a stand-in `tensorrt` module (attribute names of TensorRT's Python API)


class _Enum:
    def __init__(self, **members):
        for k, v in members.items():
            setattr(self, k, v)


class FakeTensorRT(types.ModuleType):
    """Records what build_engine asks of TensorRT; the "engine" is JSON of the recorded settings."""

    _ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 7: "INT64", 6: "INT32"}

    def __init__(self, fail_parse=False, fail_build=False):
        super().__init__("tensorrt")
        self.__version__ = "10.99.0"
        self.fail_parse, self.fail_build = fail_parse, fail_build
        self.record: dict = {}
        self.Logger = type("Logger", (), {"WARNING": "W", "VERBOSE": "V", "__init__": lambda s, sev: None})
        self.NetworkDefinitionCreationFlag = _Enum(STRONGLY_TYPED=5)
        self.OnnxParserFlag = _Enum(NATIVE_INSTANCENORM=0)
        self.MemoryPoolType = _Enum(WORKSPACE="workspace")
        self.BuilderFlag = _Enum(TF32="tf32")
        self.DataType = _Enum(FLOAT="FLOAT", HALF="HALF", BF16="BF16", INT64="INT64", INT32="INT32")
        self.TensorIOMode = _Enum(INPUT="in", OUTPUT="out")
        fake = self

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, mn, opt, mx):
                self.shapes[name] = [list(mn), list(opt), list(mx)]

        class Cache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data + b"+tuned"

        class Config:
            def __init__(self):
                self.profiles, self.flags_cleared, self.cache = [], [], None

            def set_memory_pool_limit(self, pool, size):
                fake.record["pool"] = (pool, size)

            def clear_flag(self, flag):
                self.flags_cleared.append(flag)

            def add_optimization_profile(self, p):
                self.profiles.append(p.shapes)
                return len(self.profiles) - 1

            def create_timing_cache(self, data):
                fake.record.setdefault("cache_loaded", bytes(data))
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Network:
            def __init__(self, flags):
                fake.record["network_flags"] = flags
                self.model = None

        class Parser:
            def __init__(self, network, logger):
                self.network, self.num_errors, self.flags = network, 0, []

            def set_flag(self, flag):
                fake.record["parser_flags"] = [*fake.record.get("parser_flags", []), flag]

            def parse(self, data, path):
                if fake.fail_parse:
                    self.num_errors = 1
                    return False
                self.network.model = onnx.load_from_string(bytes(data))
                fake.record["parsed"] = self.network.model
                fake.record["parse_path"] = path
                return True

            def get_error(self, i):
                return "In node 3 (Conv): unsupported"

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                if fake.fail_build:
                    return None
                io = []
                for vi, mode in [(v, "in") for v in network.model.graph.input] + [
                    (v, "out") for v in network.model.graph.output
                ]:
                    t = vi.type.tensor_type
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
                    io.append([vi.name, mode, fake._ONNX_TO_TRT[t.elem_type], dims])
                return json.dumps({"io": io, "profiles": config.profiles, "cleared": config.flags_cleared}).encode()

        class Engine:
            def __init__(self, data):
                self.io = json.loads(bytes(data))["io"]
                self.num_io_tensors = len(self.io)

            def _get(self, name):
                return next(t for t in self.io if t[0] == name)

            def get_tensor_name(self, i):
                return self.io[i][0]

            def get_tensor_mode(self, name):
                return self._get(name)[1]

            def get_tensor_dtype(self, name):
                return self._get(name)[2]

            def get_tensor_shape(self, name):
                return self._get(name)[3]

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return Engine(data)

        self.Builder, self.OnnxParser, self.Runtime = Builder, Parser, Runtime


@pytest.fixture
def fake_trt(monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_mod, "_require_cuda", lambda what: None)
    monkeypatch.setattr(trt_mod, "_device_info", lambda device=None: {"name": "Fake GPU", "capability": "9.0"})
    return fake


def test_build_engine_calls(fake_trt, tiny_onnx, tmp_path):
    path, _ = tiny_onnx
    engine = tmp_path / "g.engine"
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    info = build_engine(
        path, engine, precision="fp16", sizes=[(32, 64), (64, 128)], max_batch=2, workspace_gb=0.5,
        timing_cache=cache, tf32=False,
    )  # fmt: skip
    rec = fake_trt.record
    assert rec["network_flags"] == 1 << 5  # STRONGLY_TYPED
    assert rec["parser_flags"] == [0]  # NATIVE_INSTANCENORM
    assert rec["pool"] == ("workspace", 1 << 29)
    assert rec["parse_path"] == os.path.abspath(path)
    assert_norms_in_fp32(rec["parsed"], onnx.TensorProto.FLOAT16)  # TensorRT got the mixed-precision graph
    plan = json.loads(engine.read_bytes())
    assert plan["cleared"] == ["tf32"]

    def shapes(n, ch, h, w):
        return [[1, ch, h, w], [n, ch, h, w], [n, ch, h, w]]

    assert plan["profiles"] == [
        {"label": shapes(2, 1, h, w), "inst": shapes(2, 1, h, w), "feat": shapes(2, 2, h, w)}
        for h, w in [(32, 64), (64, 128)]
    ]
    assert rec["cache_loaded"] == b"old" and cache.read_bytes() == b"old+tuned"
    assert read_sidecar(engine) == info
    assert info["precision"] == "fp16" and info["tensorrt_version"] == "10.99.0"
    assert info["inputs"] == [
        {"name": "label", "dtype": "int64", "shape": [-1, 1, -1, -1]},
        {"name": "inst", "dtype": "int64", "shape": [-1, 1, -1, -1]},
        {"name": "feat", "dtype": "float32", "shape": [-1, 2, -1, -1]},
    ]
    assert info["outputs"] == [{"name": "image", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    assert info["channels"] == {"label": 1, "inst": 1, "feat": 2}
    assert info["metadata"]["label_nc"] == "35" and info["metadata"]["size_multiple"] == "4"
    assert info["device"] == {"name": "Fake GPU", "capability": "9.0"}
    assert sorted(os.listdir(tmp_path)) == ["g.engine", "g.engine.json", "timing.cache"]
    # fp32: the ONNX graph goes to TensorRT unchanged; a dynamic profile spans the sizes.
    build_engine(path, engine, precision="fp32", sizes=[(32, 64), (64, 128)], dynamic=True)
    assert not any(n.op_type == "Cast" and n.output[0].endswith("_f32") for n in fake_trt.record["parsed"].graph.node)
    assert json.loads(engine.read_bytes())["profiles"][0]["feat"] == [[1, 2, 32, 64], [1, 2, 32, 64], [1, 2, 64, 128]]


@pytest.mark.parametrize("failure", ["parse", "build"])
def test_build_engine_failures_leave_no_files(fake_trt, tiny_onnx, tmp_path, failure):
    setattr(fake_trt, f"fail_{failure}", True)
    match = "could not parse .*In node 3" if failure == "parse" else "could not build"
    with pytest.raises(EngineBuildError, match=match):
        build_engine(tiny_onnx[0], tmp_path / "g.engine", sizes=[(32, 64)], timing_cache=tmp_path / "c")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------
# TensorRT for real (skipped without TensorRT and a GPU)


@needs_trt
@pytest.mark.cuda
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-2), ("fp16", 2e-2), ("bf16", 8e-2)])
def test_tensorrt_engine_matches_pytorch(tiny_onnx, tmp_path, precision, atol):
    path, graph = tiny_onnx
    engine = tmp_path / f"g.{precision}.engine"
    info = build_engine(path, engine, precision=precision, sizes=[(32, 64), (64, 64)], max_batch=2,
                        timing_cache=tmp_path / "cache")  # fmt: skip
    assert (tmp_path / "cache").is_file() and info["outputs"][0]["dtype"] == "float32"
    gen = TensorRTGenerator(engine, check=True)
    for n, h, w in [(1, 32, 64), (2, 64, 64), (2, 32, 64)]:  # switches profiles both ways
        label, inst, feat = street_inputs(n=n, h=h, w=w, feat_num=2)
        with torch.no_grad():
            expected = graph(label, inst, feat)
        got = gen(label.long().cuda(), inst.long().cuda(), feat.cuda())
        assert got.dtype == torch.float32 and got.shape == (n, 3, h, w)
        assert (got.cpu() - expected).abs().max().item() <= atol
    # On a side stream: the engine runs on the caller's current stream.
    label, inst, feat = (t.cuda() for t in street_inputs(feat_num=2))
    label, inst = label.long(), inst.long()
    ref = gen(label, inst, feat).clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = torch.empty_like(ref)
        gen(label, inst, feat, out=out)
    side.synchronize()
    assert torch.equal(out, ref)
    with pytest.raises(TypeError, match="must be torch.int64"):
        gen(label.int(), inst, feat)
    with pytest.raises(ValueError, match="outside the engine's profiles"):
        gen(label[..., :32], inst[..., :32], feat[..., :32])
    with pytest.raises(ValueError, match="label values must lie"):
        gen(label + LABEL_NC, inst, feat)
    with pytest.raises(ValueError, match="is on cpu"):
        gen(label.cpu(), inst, feat)


@needs_trt
@pytest.mark.cuda
def test_cli_test_tensorrt_backend_gives_the_eager_images(trained, capsys):
    root, data, ckpt = trained
    images = {}
    for backend in ("eager", "tensorrt"):
        folder = root / f"gpu_{backend}"
        args = ["--name", "tiny", "--dataroot", data, "--checkpoints_dir", ckpt, "--results_dir", str(folder),
                "--resize_or_crop", "none", *NET, "--device", "cuda", "--nThreads", "0", "--amp", "off",
                "--backend", backend]  # fmt: skip
        assert cli.main(["test", *args]) == 0, capsys.readouterr().err
        images[backend] = synthesized(folder / "tiny" / "test_latest")
    assert os.path.isfile(os.path.join(ckpt, "tiny", "latest_net_G.fp32.engine.json"))
    for k, img in images["tensorrt"].items():
        assert np.abs(img - images["eager"][k]).max() <= 2
