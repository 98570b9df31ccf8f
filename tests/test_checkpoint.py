"""Checkpoint I/O in the reference format: strict loads with explanations, the --load_pretrain graft, saving."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from pix2pixhd_fast.models import (
    CheckpointMismatchError,
    CheckpointReadError,
    GlobalGenerator,
    LoadResult,
    define_D,
    define_G,
    load_pix2pixhd_checkpoint,
    save_pix2pixhd_checkpoint,
)


def _tiny_g(ops="fast", ngf=8, n_blocks=1, netG="global", norm="instance"):  # noqa: N803
    return define_G(5, 3, ngf, netG, 2, n_blocks, 1, 1, norm=norm, ops=ops)


def _same_params(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reference_checkpoint_round_trip(seed, tmp_path):
    ref = _tiny_g("reference")
    path = save_pix2pixhd_checkpoint(ref, tmp_path / "latest_net_G.pth")
    assert path == tmp_path / "latest_net_G.pth"
    assert os.listdir(tmp_path) == ["latest_net_G.pth"]  # no temporary file left behind
    # the reference format: a bare state_dict of CPU tensors, readable without unpickling code
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, OrderedDict) and list(raw) == list(ref.state_dict())
    assert all(v.device.type == "cpu" for v in raw.values())

    fast = _tiny_g("fast")
    result = load_pix2pixhd_checkpoint(path, fast)
    assert isinstance(result, LoadResult)
    assert result.loaded == list(ref.state_dict()) and not (result.missing or result.unexpected or result.mismatched)
    assert _same_params(fast, ref)
    x = torch.randn(2, 5, 16, 16)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)

    # and back: a checkpoint written from the fast net loads into a reference-op net
    save_pix2pixhd_checkpoint(fast, tmp_path / "again.pth")
    ref2 = _tiny_g("reference")
    load_pix2pixhd_checkpoint(str(tmp_path / "again.pth"), ref2)
    assert _same_params(ref2, ref)


def test_discriminator_and_batch_norm_round_trip(seed, tmp_path):
    d = define_D(6, 8, 2, "batch", num_D=2, getIntermFeat=True, ops="reference")
    d(torch.randn(2, 6, 16, 16))  # move the running statistics away from their init
    save_pix2pixhd_checkpoint(d, tmp_path / "latest_net_D.pth")
    d2 = define_D(6, 8, 2, "batch", num_D=2, getIntermFeat=True)
    load_pix2pixhd_checkpoint(tmp_path / "latest_net_D.pth", d2)
    assert _same_params(d2, d)

    # checkpoints from PyTorch < 0.4.1 (the reference's era) have no BatchNorm num_batches_tracked
    old = {k: v for k, v in d.state_dict().items() if not k.endswith("num_batches_tracked")}
    d3 = define_D(6, 8, 2, "batch", num_D=2, getIntermFeat=True)
    load_pix2pixhd_checkpoint(old, d3)
    torch.testing.assert_close(d3.scale0_layer1[1].running_mean, d.scale0_layer1[1].running_mean)


def test_wrapped_state_dicts_and_nets(seed):
    ref = _tiny_g()
    # DataParallel-saved keys ("module.") and a compiled net's keys ("_orig_mod.")
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        net = _tiny_g()
        load_pix2pixhd_checkpoint({prefix + k: v for k, v in ref.state_dict().items()}, net)
        assert _same_params(net, ref)
    # a wrapped destination: DataParallel and torch.compile (not run, so nothing compiles)
    net = _tiny_g()
    load_pix2pixhd_checkpoint(ref.state_dict(), nn.DataParallel(net))
    assert _same_params(net, ref)
    net = _tiny_g()
    load_pix2pixhd_checkpoint(ref.state_dict(), torch.compile(net))
    assert _same_params(net, ref)
    # {"state_dict": ...} wrappers written by other training scripts
    net = _tiny_g()
    load_pix2pixhd_checkpoint({"state_dict": ref.state_dict()}, net)
    assert _same_params(net, ref)


def test_wrong_ngf_is_explained_and_leaves_net_unchanged(seed, tmp_path):
    path = save_pix2pixhd_checkpoint(_tiny_g(ngf=8), tmp_path / "g.pth")
    net = _tiny_g(ngf=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_pix2pixhd_checkpoint(path, net)
    msg = str(info.value)
    assert "GlobalGenerator" in msg and "mis-shaped keys" in msg
    assert "model.1.weight: checkpoint [8, 5, 7, 7] vs network [4, 5, 7, 7]" in msg
    assert "2x the filters of the network: wrong --ngf" in msg and "partial=True" in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg
    assert isinstance(info.value, ValueError)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_missing_and_unexpected_keys_are_listed(seed):
    three_blocks = _tiny_g(n_blocks=3).state_dict()
    # fewer residual blocks in the checkpoint than in the net: keys missing and indices shifted
    with pytest.raises(CheckpointMismatchError) as info:
        load_pix2pixhd_checkpoint(_tiny_g(n_blocks=1).state_dict(), _tiny_g(n_blocks=3))
    msg = str(info.value)
    assert "missing keys" in msg and "model.11.conv_block.1.weight" in msg
    assert "--n_blocks_global" in msg
    # long lists are cut, with a count
    state = dict(three_blocks)
    state.update({f"extra.{i}.weight": torch.zeros(1) for i in range(20)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(20\).*\(8 more\)"):
        load_pix2pixhd_checkpoint(state, _tiny_g(n_blocks=3))
    # batch vs instance norm
    with pytest.raises(CheckpointMismatchError, match="--norm differs"):
        load_pix2pixhd_checkpoint(_tiny_g(norm="batch").state_dict(), _tiny_g())
    # a global checkpoint for a LocalEnhancer
    with pytest.raises(CheckpointMismatchError, match="graft it with partial=True"):
        load_pix2pixhd_checkpoint(_tiny_g(ngf=8).state_dict(), _tiny_g(ngf=4, netG="local"))
    # getIntermFeat mismatch in a discriminator
    with pytest.raises(CheckpointMismatchError, match="getIntermFeat"):
        load_pix2pixhd_checkpoint(define_D(3, 4, 2, getIntermFeat=True).state_dict(), define_D(3, 4, 2))


def test_partial_graft_global_into_local_enhancer(seed, tmp_path):
    # The reference's --load_pretrain: a trained G1 (ngf 8) into a LocalEnhancer with ngf 4 (its G1 has 8).
    global_g = _tiny_g(ngf=8)
    path = save_pix2pixhd_checkpoint(global_g, tmp_path / "latest_net_G.pth")
    local = _tiny_g(ngf=4, netG="local")
    local_before = {k: v.clone() for k, v in local.state_dict().items()}
    result = load_pix2pixhd_checkpoint(path, local, partial=True)

    g_keys = list(global_g.state_dict())
    n_global = len(global_g.model)
    final_conv = [f"model.{n_global - 2}.weight", f"model.{n_global - 2}.bias"]  # G1's output layer: not in G2
    assert result.loaded == [k for k in g_keys if k not in final_conv]
    assert result.unexpected == final_conv and result.skipped == final_conv
    assert result.missing == [k for k in local.state_dict() if k.startswith(("model1_1.", "model1_2."))]
    assert not result.mismatched
    assert "loaded" in result.summary()
    for k, v in local.state_dict().items():
        expected = global_g.state_dict()[k] if k in result.loaded else local_before[k]
        assert torch.equal(v, expected), k
    # the grafted global part computes what G1 computes before its output layer
    x = torch.randn(1, 5, 16, 16)
    # (the fast G1's last norm writes its output already padded for the output conv, its pad slot folded in: crop)
    torch.testing.assert_close(local.model(x), global_g.model[:-3](x)[:, :, 3:-3, 3:-3])


def test_partial_skips_mis_shaped_tensors(seed):
    src = _tiny_g(ngf=8).state_dict()
    src["model.1.weight"] = torch.randn(8, 4, 7, 7)  # a different input_nc
    net = _tiny_g(ngf=8)
    before = net.state_dict()["model.1.weight"].clone()
    result = load_pix2pixhd_checkpoint(src, net, partial=True)
    assert result.mismatched == [("model.1.weight", (8, 4, 7, 7), (8, 5, 7, 7))]
    assert "model.1.weight" in result.skipped and "model.1.weight" not in result.loaded
    assert torch.equal(net.state_dict()["model.1.weight"], before)
    assert torch.equal(net.state_dict()["model.1.bias"], src["model.1.bias"])
    with pytest.raises(CheckpointMismatchError, match="--input_nc"):
        load_pix2pixhd_checkpoint(src, _tiny_g(ngf=8))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_bad_inputs(tmp_path):
    net = _tiny_g()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_pix2pixhd_checkpoint(tmp_path / "nope.pth", net)
    with pytest.raises(TypeError, match="path or a state_dict"):
        load_pix2pixhd_checkpoint(42, net)
    with pytest.raises(TypeError, match="must be an nn.Module"):
        load_pix2pixhd_checkpoint({}, "net")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointReadError, match="does not hold a state_dict"):
        load_pix2pixhd_checkpoint(tmp_path / "list.pth", net)
    with pytest.raises(TypeError, match="not name -> tensor"):
        load_pix2pixhd_checkpoint({"model.1.weight": 3.0}, net)
    # weights_only: a pickle that would run code is refused
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model.1.weight": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointReadError, match="never unpickled"):
        load_pix2pixhd_checkpoint(tmp_path / "evil.pth", net)
    with pytest.raises(IsADirectoryError):
        save_pix2pixhd_checkpoint(net, tmp_path)


def test_save_is_atomic(seed, tmp_path, monkeypatch):
    net = GlobalGenerator(3, 3, 4, 1, 1, "instance")
    path = save_pix2pixhd_checkpoint(net, tmp_path / "sub" / "latest_net_G.pth")  # creates the directory
    good = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_pix2pixhd_checkpoint(GlobalGenerator(3, 3, 4, 1, 1, "instance"), path)
    assert path.read_bytes() == good  # the old checkpoint survives intact
    assert os.listdir(path.parent) == [path.name]  # and the temporary file is gone
    monkeypatch.undo()
    mode = os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
