"""ONNX export of the generator inference graph: onnxruntime vs PyTorch, dynamic sizes, standard ops, bad inputs.

The expected outputs come from an independent path: the pure-PyTorch reference encoding
(:func:`pix2pixhd_fast.reference.encode_input`: scatter one-hot + get_edges + cat) fed to the same generator built
with ``ops='reference'`` (nn.InstanceNorm2d + ReLU), sharing the exported network's weights.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pix2pixhd_fast import reference  # noqa: E402
from pix2pixhd_fast.export import (  # noqa: E402
    InferenceGraph,
    OnnxRuntimeGenerator,
    ONNXVerificationError,
    check_onnx_graph_ops,
    export_onnx,
)
from pix2pixhd_fast.export import onnx as onnx_export  # noqa: E402
from pix2pixhd_fast.models import Pix2PixHDModel, define_G  # noqa: E402
from pix2pixhd_fast.options import parse_test  # noqa: E402

LABEL_NC = 6
SIZE = (32, 64)
ATOL = 1e-4


def tiny_generator(kind: str, input_nc: int, ops: str = "fast") -> nn.Module:
    """ngf 8, 2 downsamplings, 1 residual block (1 local enhancer with 1 block for 'local')."""
    net = define_G(
        input_nc, 3, 8, kind, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1, ops=ops
    )
    with torch.no_grad():  # non-zero biases everywhere, so a dropped bias shows
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
    return net.eval()


def reference_twin(net: nn.Module, kind: str, input_nc: int) -> nn.Module:
    twin = tiny_generator(kind, input_nc, ops="reference")
    twin.load_state_dict(net.state_dict(), strict=True)
    return twin.eval()


def random_inputs(n, h, w, use_instance, feat_num, label_nc=LABEL_NC, id_dtype=torch.int64):
    label = torch.randint(0, label_nc, (n, 1, h, w)).to(id_dtype)
    inst = None
    if use_instance:
        blocks = torch.randint(0, 5, (n, 1, h // 4, w // 4)) + 2**33  # ids beyond int32, few per region
        inst = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3)
        inst[:, :, 5, 7] += 1  # a one-pixel instance
        inst = inst.to(id_dtype) if id_dtype == torch.int64 else (inst - 2**33).to(id_dtype)
    feat = torch.randn(n, feat_num, h, w) if feat_num else None
    return label, inst, feat


def feeds(label, inst, feat):
    return {k: v for k, v in (("label", label), ("inst", inst), ("feat", feat)) if v is not None}


def run_reference(twin, label, inst, feat, label_nc=LABEL_NC):
    with torch.no_grad():
        return twin(reference.encode_input(label, inst, label_nc, feat))


def pad_modes(path) -> list[str]:
    model = onnx.load(path)
    return [a.s.decode() for n in model.graph.node if n.op_type == "Pad" for a in n.attribute if a.name == "mode"]


# ----------------------------------------------------------------------------------------------------
# Every generator configuration: exported, run by onnxruntime at the traced and at another size.

CONFIGS = [
    ("global", False, 0),
    ("global", True, 0),
    ("global", True, 3),
    ("global", False, 3),  # --label_feat --no_instance: features without an instance map
    ("local", False, 0),
    ("local", True, 0),
    ("local", True, 3),
]


@pytest.mark.parametrize(("kind", "use_instance", "feat_num"), CONFIGS, ids=lambda v: str(v))
def test_export_matches_pytorch(tmp_path, seed, kind, use_instance, feat_num):
    input_nc = LABEL_NC + use_instance + feat_num
    net = tiny_generator(kind, input_nc)
    twin = reference_twin(net, kind, input_nc)
    path = tmp_path / "g.onnx"
    with warnings.catch_warnings():
        # A TracerWarning would mean the trace baked in something of the example (e.g. its size).
        warnings.simplefilter("error", torch.jit.TracerWarning)
        out_path = export_onnx(
            net, path, label_nc=LABEL_NC, use_instance=use_instance, feat_num=feat_num, example_size=SIZE, atol=ATOL
        )
    assert out_path == str(path) and path.is_file()
    assert not any(m.training for m in net.modules())  # the generator's mode is left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["g.onnx"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not a 0600 temporary

    op_types = check_onnx_graph_ops(path)
    assert "InstanceNormalization" in op_types and "Equal" in op_types
    assert {"Not", "Max"} <= op_types if use_instance else not ({"Not", "Max"} & op_types)
    assert ("AveragePool" in op_types) == (kind == "local")
    # Every ReflectionPad2d is a reflect Pad (global: front, 2 per block, back; local adds its own front, block
    # and back and drops the global back); the boundary map's 4 shifts are zero pads.
    modes = pad_modes(path)
    assert modes.count("reflect") == (7 if kind == "local" else 4)
    assert modes.count("constant") == 4 * use_instance and len(modes) == modes.count("reflect") + 4 * use_instance
    model = onnx.load(path)
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [onnx_export.DEFAULT_OPSET]

    runner = OnnxRuntimeGenerator(path)
    assert runner.input_names == ["label"] + ["inst"] * use_instance + ["feat"] * bool(feat_num)
    assert (runner.label_nc, runner.use_instance, runner.feat_num, runner.size_multiple) == (
        LABEL_NC,
        use_instance,
        feat_num,
        8 if kind == "local" else 4,
    )
    graph = InferenceGraph(net, LABEL_NC, use_instance, feat_num)
    # The traced size, then a different valid size and batch (dynamic axes).
    for n, (h, w) in ((1, SIZE), (2, (48, 24))):
        label, inst, feat = random_inputs(n, h, w, use_instance, feat_num)
        expected = run_reference(twin, label, inst, feat)
        got = runner(**feeds(label, inst, feat))
        assert isinstance(got, torch.Tensor) and got.shape == (n, 3, h, w) and got.dtype == torch.float32
        assert (got - expected).abs().max().item() <= ATOL
        with torch.no_grad():
            eager = graph(**feeds(label, inst, feat))
        assert (eager - expected).abs().max().item() <= ATOL
        assert expected.abs().max() > 0.05  # a meaningful output, not all zeros


def test_reference_ops_generator_exports(tmp_path, seed):
    """A generator built with ops='reference' (nn.InstanceNorm2d + ReLU) exports to the same standard ops."""
    net = tiny_generator("global", LABEL_NC + 1, ops="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        path = export_onnx(net, tmp_path / "r.onnx", label_nc=LABEL_NC, use_instance=True, atol=ATOL)
    assert "InstanceNormalization" in check_onnx_graph_ops(path)
    label, inst, _ = random_inputs(1, 16, 32, True, 0)
    got = OnnxRuntimeGenerator(path)(label, inst)
    assert (got - run_reference(net, label, inst, None)).abs().max().item() <= ATOL


def test_export_from_pix2pixhd_model(tmp_path, seed):
    """A Pix2PixHDModel exports with its own options; the ONNX output equals model.inference."""
    opt = parse_test(
        "--label_nc 5 --ngf 8 --n_downsample_global 2 --n_blocks_global 1 --instance_feat --feat_num 3".split()
    )
    model = Pix2PixHDModel(opt, is_train=False).eval()
    path = export_onnx(model, tmp_path / "m.onnx", example_size=(16, 32), atol=ATOL)
    runner = OnnxRuntimeGenerator(path)
    assert runner.input_names == ["label", "inst", "feat"] and runner.label_nc == 5 and runner.feat_num == 3
    label, inst, feat = random_inputs(2, 32, 16, True, 3, label_nc=5)
    expected = model.inference(label, inst, feat=feat)
    assert (runner(label, inst, feat) - expected).abs().max().item() <= ATOL
    with torch.no_grad():
        assert torch.equal(InferenceGraph.from_model(model)(label, inst, feat), expected)
    with pytest.raises(ValueError, match="label_nc=7 contradicts"):
        export_onnx(model, tmp_path / "x.onnx", label_nc=7)
    with pytest.raises(ValueError, match="use_instance=False contradicts"):
        export_onnx(model, tmp_path / "x.onnx", use_instance=False)


def test_label_nc_zero_float_label_map(tmp_path, seed):
    """label_nc=0: the label is a float image passed through; the boundary map is appended."""
    net = tiny_generator("global", 3 + 1)
    path = export_onnx(net, tmp_path / "z.onnx", label_nc=0, use_instance=True, atol=ATOL)
    runner = OnnxRuntimeGenerator(path)
    label = torch.randn(2, 3, 16, 24)
    _, inst, _ = random_inputs(2, 16, 24, True, 0)
    with torch.no_grad():
        expected = net(torch.cat([label, reference.get_edges(inst)], 1))
    assert (runner(label, inst) - expected).abs().max().item() <= ATOL
    with pytest.raises(TypeError, match="float"):
        runner(label.long(), inst)


# ----------------------------------------------------------------------------------------------------
# The encoding alone (an identity "generator"): must match the reference bit for bit, large ids included.


@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_encoding_exact_for_large_ids(tmp_path, seed, id_dtype):
    graph = InferenceGraph(nn.Identity(), 4, True, 2)
    path = export_onnx(graph, tmp_path / "enc.onnx", id_dtype=id_dtype, example_size=(8, 8), atol=0.0)
    runner = OnnxRuntimeGenerator(path)
    assert runner.session.get_inputs()[0].type == f"tensor({str(id_dtype).split('.')[1]})"
    # Neighbouring ids that collapse in float32 (2**24, 2**24 + 1) or only exist in int64 (2**40 + k).
    base = 2**40 if id_dtype == torch.int64 else 2**24
    inst = base + torch.randint(0, 2, (2, 1, 7, 9))
    label = torch.randint(0, 4, (2, 1, 7, 9))
    feat = torch.randn(2, 2, 7, 9)
    got = runner(label.to(id_dtype), inst.to(id_dtype), feat)
    assert torch.equal(got, reference.encode_input(label, inst, 4, feat))
    assert torch.equal(got[:, 4:5], reference.get_edges(inst))
    # Hand-derived boundary of a 3x4 map: only the pixels next to the lone id 2**24 + 1 are edges.
    inst = torch.full((1, 1, 3, 4), 2**24)
    inst[0, 0, 1, 2] = 2**24 + 1
    edge = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.float32)
    got = runner(torch.zeros(1, 3, 4, dtype=torch.int64), inst, torch.zeros(1, 2, 3, 4))
    assert torch.equal(got[0, 4], edge)
    # One row / one column: neighbours exist in one direction only.
    ids = torch.tensor([1, 1, 2, 2, 2])
    row = runner(torch.zeros(1, 1, 5, dtype=torch.int64), ids.view(1, 1, 5), torch.zeros(1, 2, 1, 5))
    col = runner(torch.zeros(1, 5, 1, dtype=torch.int64), ids.view(1, 5, 1), torch.zeros(1, 2, 5, 1))
    assert torch.equal(row[0, 4, 0], torch.tensor([0.0, 1, 1, 0, 0]))
    assert torch.equal(col[0, 4, :, 0], torch.tensor([0.0, 1, 1, 0, 0]))


def test_static_export_and_direct_torch_onnx_export(tmp_path):
    graph = InferenceGraph(nn.Identity(), 3, True)
    path = export_onnx(graph, tmp_path / "static.onnx", dynamic=False, example_size=(4, 6), batch_size=2)
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(path).graph.input]
    assert dims == [[2, 1, 4, 6], [2, 1, 4, 6]]
    # torch.onnx.export on an InferenceGraph directly also switches to the standard-operator formulation.
    net = InferenceGraph(tiny_generator("global", 4 + 1), 4, True).eval()
    direct = tmp_path / "direct.onnx"
    label, inst, _ = random_inputs(1, 16, 16, True, 0, label_nc=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (label, inst), str(direct), dynamo=False, input_names=["label", "inst"])
    assert "InstanceNormalization" in check_onnx_graph_ops(direct)
    got = OnnxRuntimeGenerator(direct)(label, inst)
    with torch.no_grad():
        assert (got - net(label, inst)).abs().max().item() <= ATOL


def test_export_bad_arguments(tmp_path, monkeypatch):
    net = tiny_generator("global", LABEL_NC + 1)
    ok = dict(label_nc=LABEL_NC, use_instance=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(net, tmp_path / "missing" / "g.onnx", **ok)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(net, tmp_path / "afile" / "g.onnx", **ok)
    with pytest.raises(IsADirectoryError):
        export_onnx(net, tmp_path, **ok)
    monkeypatch.setattr(onnx_export.os, "access", lambda *a, **k: False)  # root ignores chmod: fake a read-only dir
    with pytest.raises(PermissionError, match="cannot write"):
        export_onnx(net, tmp_path / "g.onnx", **ok)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="7 input channels, but label_nc=5"):
        export_onnx(net, tmp_path / "g.onnx", label_nc=5, use_instance=True)
    with pytest.raises(ValueError, match="label_nc=6 \\+ instance boundary 0"):
        export_onnx(net, tmp_path / "g.onnx", label_nc=LABEL_NC, use_instance=False)
    with pytest.raises(ValueError, match="needs label_nc= and use_instance="):
        export_onnx(net, tmp_path / "g.onnx")
    for opset in (9, 99, "17", True):
        with pytest.raises(ValueError, match="opset"):
            export_onnx(net, tmp_path / "g.onnx", opset=opset, **ok)
    for size in ((30, 64), (32,), (32, -4), "32x64"):
        with pytest.raises(ValueError, match="example_size"):
            export_onnx(net, tmp_path / "g.onnx", example_size=size, **ok)
    with pytest.raises(TypeError, match="id_dtype"):
        export_onnx(net, tmp_path / "g.onnx", id_dtype=torch.float32, **ok)
    with pytest.raises(ValueError, match="float32"):
        export_onnx(tiny_generator("global", LABEL_NC + 1).half(), tmp_path / "g.onnx", **ok)
    with pytest.raises(TypeError, match="nn.Module"):
        export_onnx("netG.pth", tmp_path / "g.onnx", **ok)
    with pytest.raises(ValueError, match="feat_num=3 contradicts"):
        export_onnx(InferenceGraph(net, LABEL_NC, True), tmp_path / "g.onnx", feat_num=3)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]  # nothing written by the failures


def test_failed_verification_leaves_no_file(tmp_path, monkeypatch):
    net = tiny_generator("global", LABEL_NC)
    monkeypatch.setattr(onnx_export, "verify_onnx", lambda *a, **k: 0.5)
    with pytest.raises(ONNXVerificationError, match="differs from PyTorch by 0.5"):
        export_onnx(net, tmp_path / "g.onnx", label_nc=LABEL_NC, use_instance=False)
    assert list(tmp_path.iterdir()) == []


def test_check_onnx_graph_ops_rejects_custom_domains(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])
    node = helper.make_node("instance_norm_act", ["x"], ["y"], domain="pix2pixhd_fast")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("pix2pixhd_fast", 1)],
    )
    with pytest.raises(ValueError, match="pix2pixhd_fast::instance_norm_act"):
        check_onnx_graph_ops(model)
    good = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    assert check_onnx_graph_ops(good) == {"Relu"}
    with pytest.raises(FileNotFoundError):
        check_onnx_graph_ops(tmp_path / "none.onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = tiny_generator("global", LABEL_NC + 1 + 2)
    path = export_onnx(
        net, tmp_path_factory.mktemp("onnx") / "g.onnx", label_nc=LABEL_NC, use_instance=True, feat_num=2
    )
    return path, InferenceGraph(net, LABEL_NC, True, 2)


def test_runner_inputs(exported):
    path, graph = exported
    runner = OnnxRuntimeGenerator(path, num_threads=1)
    label, inst, feat = random_inputs(1, 16, 16, True, 2)
    with torch.no_grad():
        expected = graph(label, inst, feat)
    # numpy in -> numpy out; [N,H,W] ids and other integer dtypes are accepted.
    got = runner(label[:, 0].numpy().astype(np.int16), inst[:, 0].numpy(), feat.numpy().astype(np.float64))
    assert isinstance(got, np.ndarray) and np.abs(got - expected.numpy()).max() <= ATOL
    bad = label.clone()
    bad[0, 0, 0, 0] = LABEL_NC
    with pytest.raises(ValueError, match=r"label values must lie in \[0, label_nc=6\)"):
        runner(bad, inst, feat)
    OnnxRuntimeGenerator(path, check=False)(bad, inst, feat)  # unchecked: runs (all-zero one-hot there)
    with pytest.raises(TypeError, match="integer ids"):
        runner(label.float(), inst, feat)
    with pytest.raises(ValueError, match="pass inst"):
        runner(label, None, feat)
    with pytest.raises(ValueError, match="feat must have shape"):
        runner(label, inst, feat[:, :1])
    with pytest.raises(ValueError, match="takes a feature map"):
        runner(label, inst)
    with pytest.raises(ValueError, match="multiples of 4"):
        runner(label[..., :14], inst[..., :14], feat[..., :14])
    with pytest.raises(ValueError, match="does not match"):
        runner(label, inst[:, :, :8], feat)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        runner(label.tolist(), inst, feat)
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeGenerator(os.path.join(os.path.dirname(path), "nope.onnx"))


def test_inference_graph_bad_inputs(exported):
    _, graph = exported
    label, inst, feat = random_inputs(1, 16, 16, True, 2)
    with pytest.raises(ValueError, match="pass inst"):
        graph(label, None, feat)
    with pytest.raises(TypeError, match="integer ids"):
        graph(label.float(), inst, feat)
    with pytest.raises(ValueError, match="feat must have shape"):
        graph(label, inst, feat[:, :1])
    with pytest.raises(ValueError, match="multiples of 4"):
        graph(label[..., :14], inst[..., :14], feat[..., :14])
    # ops.encode_input: ValueError from its Python check (CUDA), RuntimeError from the CPU kernel's check.
    with pytest.raises((ValueError, RuntimeError), match="label values must lie"):
        graph(label + LABEL_NC, inst, feat)
    with pytest.raises(ValueError, match="input channels"):
        InferenceGraph(graph.netG, LABEL_NC, True, 0)
    with pytest.raises(ValueError, match="takes no instance map"):
        InferenceGraph(tiny_generator("global", LABEL_NC), LABEL_NC, False)(label, inst)
