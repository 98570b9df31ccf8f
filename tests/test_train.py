"""The training pipeline on tiny synthetic data (CPU): schedule, --niter_fix_global, loss going down (fp32 and
bf16 autocast), fast ops vs. plain PyTorch, the reference options, exact resumes, a kill in the middle of a
checkpoint write, DDP with 2 gloo processes, --load_pretrain, the CLI and the demo's command lines, and errors on
bad input.

Everything runs at 64x32 with ngf/ndf 8, one residual block and one discriminator scale, on one torch thread
(2 busy cores: several threads per process mostly wait on each other).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from pix2pixhd_fast import cli
from pix2pixhd_fast.demo import demo_train_args
from pix2pixhd_fast.options import parse_test, parse_train
from pix2pixhd_fast.train import Trainer, fixes_global, learning_rate, total_epochs

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = ("G", "D", "E")


# Shared fixtures (tests/conftest.py): `data` (tiny synthetic dataset per module), `restore_threads`.
pytestmark = pytest.mark.usefixtures("restore_threads")


def tiny_args(data: str, ckpt, name: str, *extra: str, amp: str | None = "off", html: bool = False) -> list[str]:
    """``train`` options of a tiny global generator + one-scale D; ``extra`` overrides (argparse: last wins)."""
    args = [
        "--name", name, "--dataroot", data, "--checkpoints_dir", str(ckpt), "--label_nc", "35",
        "--resize_or_crop", "none", "--netG", "global", "--ngf", "8", "--n_downsample_global", "2",
        "--n_blocks_global", "1", "--ndf", "8", "--num_D", "1", "--n_layers_D", "2", "--no_vgg_loss",
        "--nThreads", "0", "--no_progress", "--device", "cpu", "--num_threads", "1",
        "--print_freq", "1", "--display_freq", "1000000", "--save_latest_freq", "1000000",
        "--save_epoch_freq", "1000000",
    ]  # fmt: skip
    if amp is not None:
        args += ["--amp", amp]
    if not html:
        args.append("--no_html")
    return args + list(extra)


FEAT = ("--instance_feat", "--nef", "8", "--n_downsample_E", "2")  # the instance feature encoder E


def subprocess_env() -> dict[str, str]:
    """This environment (P2PHD_LIB included), one thread per process, and this checkout first on the path."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + (os.pathsep + path if path else ""))


def snapshot(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: t.detach().clone() for n, t in m.state_dict().items()} for k, m in trainer.raw.items()}


def assert_same_nets(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        diff = [n for n in a[k] if not torch.equal(a[k][n], b[k][n])]
        assert not diff, f"net {k}: tensors differ: {diff[:5]}"


def load_nets(folder, which="latest", nets=NETS) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for k in nets:
        path = os.path.join(folder, f"{which}_net_{k}.pth")
        if os.path.exists(path):
            out[k] = dict(torch.load(path, weights_only=True))
    return out


def load_state(folder, which="latest") -> dict:
    return torch.load(os.path.join(folder, f"{which}_train_state.pt"), weights_only=True)


def record_lrs(trainer: Trainer) -> list[tuple[int, float, float]]:
    """Wrap ``train_step`` to record (epoch, lr of G, lr of D) at every iteration."""
    seen = []
    step = trainer.train_step

    def wrapped(batch):
        seen.append(
            (
                trainer.progress.epoch,
                trainer.optimizer_G.param_groups[0]["lr"],
                trainer.optimizer_D.param_groups[0]["lr"],
            )
        )
        return step(batch)

    trainer.train_step = wrapped
    return seen


# ---------------------------------------------------------------------------------------------------------------
# Schedule


def reference_lrs(lr: float, niter: int, niter_decay: int) -> list[float]:
    """The reference train.py loop: after every epoch past ``niter``, lr -= lr0 / niter_decay."""
    out, cur = [], lr
    for epoch in range(1, niter + niter_decay + 1):
        out.append(cur)
        if epoch > niter:
            cur -= lr / niter_decay
    return out


@pytest.mark.parametrize("niter,niter_decay", [(3, 4), (1, 1), (5, 0), (0, 3), (2, 10)])
def test_learning_rate_per_epoch_matches_reference(niter, niter_decay):
    opt = parse_train(["--niter", str(niter), "--niter_decay", str(niter_decay), "--lr", "0.0002"])
    assert total_epochs(opt) == niter + niter_decay
    got = [learning_rate(e, opt) for e in range(1, total_epochs(opt) + 1)]
    if niter_decay:
        np.testing.assert_allclose(got, reference_lrs(2e-4, niter, niter_decay), rtol=0, atol=1e-12)
    else:
        assert got == [2e-4] * niter
    # never zero or negative while training: the last epoch runs at lr / niter_decay
    assert all(v > 0 for v in got)


def test_learning_rate_hand_computed_values():
    opt = parse_train(["--niter", "3", "--niter_decay", "4", "--lr", "0.0002"])
    # epochs 1..niter+1 at lr, then lr - k * lr / niter_decay
    expected = [2e-4, 2e-4, 2e-4, 2e-4, 1.5e-4, 1e-4, 0.5e-4]
    np.testing.assert_allclose([learning_rate(e, opt) for e in range(1, 8)], expected, rtol=0, atol=1e-12)
    # reference defaults: 100 + 100 epochs at 2e-4
    d = parse_train([])
    assert (d.niter, d.niter_decay, d.lr, d.beta1) == (100, 100, 0.0002, 0.5)
    assert learning_rate(101, d) == 2e-4 and learning_rate(102, d) == pytest.approx(2e-4 - 2e-6)
    assert learning_rate(200, d) == pytest.approx(2e-6)
    with pytest.raises(ValueError, match="1-based"):
        learning_rate(0, opt)


def test_trainer_applies_the_schedule_every_epoch(data, tmp_path):
    # one image per epoch: epoch e runs exactly one iteration, at learning_rate(e)
    opt = parse_train(
        tiny_args(data, tmp_path, "sched", "--max_dataset_size", "1", "--niter", "1", "--niter_decay", "3")
    )
    trainer = Trainer(opt)
    seen = record_lrs(trainer)
    summary = trainer.train()
    assert summary["epochs_done"] == 4 and summary["iterations"] == 4
    np.testing.assert_allclose([s[1] for s in seen], [2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3], rtol=1e-12)
    assert [s[0] for s in seen] == [1, 2, 3, 4]
    assert all(g == d for _, g, d in seen)  # G and D share the schedule
    for o in (trainer.optimizer_G, trainer.optimizer_D):
        assert isinstance(o, torch.optim.Adam) and o.param_groups[0]["betas"] == (0.5, 0.999)


# ---------------------------------------------------------------------------------------------------------------
# --niter_fix_global


def test_niter_fix_global_trains_only_the_enhancer_then_everything(data, tmp_path):
    args = tiny_args(
        data, tmp_path, "fix", "--netG", "local", "--n_local_enhancers", "1", "--n_blocks_local", "1",
        "--niter_fix_global", "1", "--niter", "2", "--niter_decay", "0", "--max_dataset_size", "2", *FEAT,
    )  # fmt: skip
    a = Trainer(parse_train(args + ["--max_iters", "2"]))
    g, e = a.raw["G"], a.raw["E"]
    local = {n for n, _ in g.named_parameters() if n.startswith("model1")}
    assert local and len(local) < len(list(g.parameters()))  # model1_1, model1_2 of the enhancer only
    assert all(n.startswith("model.") for n, _ in g.named_parameters() if n not in local)

    def opt_params(o):
        return {id(p) for group in o.param_groups for p in group["params"]}

    by_id = {id(p): n for n, p in g.named_parameters()}
    in_opt = opt_params(a.optimizer_G)
    assert {by_id[i] for i in in_opt if i in by_id} == local
    assert {id(p) for p in e.parameters()} <= in_opt  # the encoder trains from the start, as in the reference
    assert len(in_opt) == len(local) + len(list(e.parameters()))
    assert all(p.requires_grad == (n in local) for n, p in g.named_parameters())
    assert fixes_global(1, a.opt) and not fixes_global(2, a.opt)

    before = snapshot(a)
    a.train()  # epoch 1: two iterations with the global generator frozen
    assert (a.progress.epoch, a.progress.epoch_iter, a.progress.iterations) == (2, 0, 2)
    after = snapshot(a)
    frozen_changed = [n for n in before["G"] if n not in local and not torch.equal(before["G"][n], after["G"][n])]
    assert not frozen_changed, f"frozen global weights moved: {frozen_changed[:5]}"
    assert any(not torch.equal(before["G"][n], after["G"][n]) for n in local)
    assert any(not torch.equal(before["E"][n], after["E"][n]) for n in before["E"])

    # a new trainer resuming from the end of epoch 1 (its checkpoint) must make the same switch
    b = Trainer(parse_train(args + ["--continue_train", "--max_iters", "4"]))
    assert b.fix_global and len(opt_params(b.optimizer_G)) == len(in_opt)

    a.opt.max_iters = 4
    a.train()  # epoch 2: everything trains, with a new optimizer over all of G and E
    assert not a.fix_global
    all_params = {id(p) for p in g.parameters()} | {id(p) for p in e.parameters()}
    assert opt_params(a.optimizer_G) == all_params
    assert all(p.requires_grad for p in g.parameters())
    final = snapshot(a)
    assert any(not torch.equal(after["G"][n], final["G"][n]) for n in after["G"] if n not in local)

    b.train()
    assert not b.fix_global and len(opt_params(b.optimizer_G)) == len(all_params)
    assert_same_nets(snapshot(b), final)


# ---------------------------------------------------------------------------------------------------------------
# Real training steps


@torch.no_grad()
def generator_l1(trainer: Trainer) -> float:
    """Mean |G(label) - real| over the training set, in fp32 (an independent measure of what G learnt)."""
    total, n = 0.0, 0
    for i in range(len(trainer.dataset)):
        item = trainer.dataset.get_item(i, seed=0)
        fake = trainer.model.inference(item["label"][None], item["inst"][None], dtype=torch.float32)
        total += (fake.float() - item["image"][None]).abs().mean().item()
        n += 1
    return total / n


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_training_lowers_the_loss(data, tmp_path, amp):
    """24 iterations (6 epochs of 4 images) from a fixed seed.

    Criteria, chosen to be robust to the GAN terms' noise: (1) the feature-matching loss (10x an L1 between D's
    features of real and generated images, G's main objective here) averaged over the last 4 iterations is below
    0.85x its average over the first 4 (0.60-0.69x over seeds 0-9); (2) G's mean L1 distance to the real photos,
    measured outside training in fp32, drops by more than 5% (by 8-27% over seeds 0-9; 25% for seed 0).
    """
    opt = parse_train(tiny_args(data, tmp_path, f"loss_{amp}", "--niter", "6", "--niter_decay", "0", amp=amp))
    trainer = Trainer(opt)
    assert trainer.amp_dtype == (torch.bfloat16 if amp == "bf16" else None)
    l1_before = generator_l1(trainer)

    # one step: every trainable weight of G and D gets a finite gradient, and G's weights move
    batch = next(iter(trainer.loader))
    g_before = snapshot(trainer)["G"]
    losses, fake = trainer.train_step(batch)
    assert fake.dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)  # autocast really ran
    assert all(torch.isfinite(v) for v in losses.values())
    for k in ("G", "D"):
        for n, p in trainer.raw[k].named_parameters():
            assert p.dtype == torch.float32, f"{k}.{n}: weights must stay fp32 under autocast"
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{k}.{n} got no (finite) gradient"
    moved = [n for n, t in trainer.raw["G"].state_dict().items() if not torch.equal(t, g_before[n])]
    assert len(moved) > len(g_before) // 2

    # start again from the same initial weights (same --seed) and train 24 iterations
    trainer = Trainer(opt)
    summary = trainer.train()
    hist = summary["history"]
    assert summary["iterations"] == 24 and len(hist) == 24
    assert all(math.isfinite(h[k]) for h in hist for k in ("G_GAN", "G_GAN_Feat", "D_real", "D_fake"))
    assert all(h["G_VGG"] == 0 for h in hist)  # --no_vgg_loss
    feat = [h["G_GAN_Feat"] for h in hist]
    assert np.mean(feat[-4:]) < 0.85 * np.mean(feat[:4]), feat
    l1_after = generator_l1(trainer)
    assert l1_after < 0.95 * l1_before, (l1_before, l1_after)


LOSS_KEYS = ("G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake")


def test_fast_ops_train_like_plain_pytorch(data, tmp_path):
    """3 iterations with our fused operators + channels-last vs. the pure-PyTorch reference ops in NCHW, from the
    same initial weights: same losses at every iteration and the same weights after it (fp32)."""
    fast = Trainer(parse_train(tiny_args(data, tmp_path, "fast", "--max_iters", "3", *FEAT)))
    ref = Trainer(
        parse_train(
            tiny_args(data, tmp_path, "ref", "--max_iters", "3", "--ops", "reference", "--no_channels_last", *FEAT)
        )
    )
    assert_same_nets(snapshot(fast), snapshot(ref))
    hist_fast, hist_ref = fast.train()["history"], ref.train()["history"]
    assert len(hist_fast) == len(hist_ref) == 3
    for a, b in zip(hist_fast, hist_ref, strict=True):
        for k in LOSS_KEYS:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (a["iterations"], k)
    after_fast, after_ref = snapshot(fast), snapshot(ref)
    for k in NETS:  # weights only: see the DDP test about biases in front of a norm
        for n, v in after_ref[k].items():
            if n.endswith("weight"):
                torch.testing.assert_close(after_fast[k][n], v, atol=2e-5, rtol=0, msg=f"{k}.{n}")


_OPTION_SETS = {
    "no_instance": ("--no_instance",),
    "label_feat": ("--label_feat", "--nef", "8", "--n_downsample_E", "2"),
    "hinge_no_feat_loss": ("--gan_mode", "hinge", "--no_ganFeat_loss"),
    "vanilla_gan": ("--no_lsgan",),
    "batch_norm": ("--norm", "batch"),
    "two_scales_batch_2": ("--num_D", "2", "--batchSize", "2"),
    "local_enhancer": ("--netG", "local", "--n_blocks_local", "1"),
    "one_loader_worker": ("--nThreads", "1"),
    "bf16_features_pool_tensorboard": ("--amp", "bf16", "--pool_size", "3", "--tf_log", *FEAT),
}


@pytest.mark.parametrize("name", list(_OPTION_SETS))
def test_reference_options_train_on_cpu(data, tmp_path, name):
    extra = ("--max_iters", "2", "--max_dataset_size", "2", *_OPTION_SETS[name])  # 2 images: epoch ends -> page
    t = Trainer(parse_train(tiny_args(data, tmp_path, name, *extra, html=True)))
    summary = t.train()
    assert summary["iterations"] == 2
    assert all(math.isfinite(v) for v in summary["last_losses"].values())
    folder = tmp_path / name
    nets = load_nets(folder)
    assert_same_nets(nets, snapshot(t))
    first_conv = next(v for k, v in nets["G"].items() if v.dim() == 4)
    if name == "no_instance":
        assert first_conv.shape[1] == 35  # one-hot labels only, no boundary channel
    elif name in ("label_feat", "bf16_features_pool_tensorboard"):
        assert "E" in nets and first_conv.shape[1] == 35 + 1 + 3
    else:
        assert "E" not in nets and first_conv.shape[1] == 36
    if name == "hinge_no_feat_loss":
        assert summary["last_losses"]["G_GAN_Feat"] == 0 and not any(k.startswith("scale") for k in nets["D"])
    if name == "two_scales_batch_2":
        assert any(k.startswith("scale1_") for k in nets["D"]) and summary["epochs_done"] == 2
    if name == "local_enhancer":
        assert any(k.startswith("model1_1.") for k in nets["G"])
    if name == "bf16_features_pool_tensorboard":
        assert len(t.model.fake_pool.images) == 2 and os.listdir(folder / "logs")
    assert (folder / "web" / "index.html").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Exact resumes and crashes during checkpoint writes


def progress_of(state: dict) -> tuple[int, int, int, int]:
    return state["epoch"], state["epoch_iter"], state["iterations"], state["total_steps"]


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k]), f"optimizer state {i}.{k} differs"


def test_resume_is_exact_mid_epoch_and_at_epoch_end(data, tmp_path, seed):
    """7 iterations in one go vs. 2 (mid-epoch 1) + 1 (to the end of epoch 1) + 4 (to mid-epoch 3, where the rate
    has decayed): same losses at every iteration, same weights, optimizers and counters at the end. The encoder
    and a history pool of generated images (which draws from torch's RNG) are part of the state."""
    base = (
        "--niter", "1", "--niter_decay", "2", "--max_dataset_size", "3", "--pool_size", "2", "--seed",
        str(seed % 1000), *FEAT,
    )  # fmt: skip
    full = Trainer(parse_train(tiny_args(data, tmp_path / "full", "run", *base, "--max_iters", "7")))
    ref = full.train()
    assert ref["iterations"] == 7 and len(ref["history"]) == 7
    ref_state = load_state(tmp_path / "full" / "run")
    assert progress_of(ref_state) == (3, 1, 7, 7)

    folder = tmp_path / "parts" / "run"
    # (stop after k iterations) -> (epoch, images done in it, iterations, total_steps) recorded in the state
    stops = {2: (1, 2, 2, 2), 3: (2, 0, 3, 3), 7: (3, 1, 7, 7)}
    history, prev = [], None
    for k, expected in stops.items():
        extra = ["--max_iters", str(k)] + (["--continue_train"] if prev else [])
        t = Trainer(parse_train(tiny_args(data, tmp_path / "parts", "run", *base, *extra)))
        p = t.progress
        if prev:  # the new process stands exactly where the previous one stopped
            assert (p.epoch, p.epoch_iter, p.iterations, p.total_steps) == stops[prev]
        else:
            assert (p.epoch, p.epoch_iter, p.iterations, p.total_steps) == (1, 0, 0, 0)
        out = t.train()
        history += out["history"]
        state = load_state(folder)
        assert progress_of(state) == expected
        assert np.loadtxt(folder / "iter.txt", delimiter=",", dtype=int).tolist() == list(expected[:2])
        prev = k

    assert [h["iterations"] for h in history] == list(range(1, 8))
    assert history == ref["history"]  # same batches, same weights: bit-identical losses at every iteration
    assert_same_nets(snapshot(t), snapshot(full))
    assert_same_nets(load_nets(folder), load_nets(tmp_path / "full" / "run"))
    assert_same_optimizer(state["optimizer_G"], ref_state["optimizer_G"])
    assert_same_optimizer(state["optimizer_D"], ref_state["optimizer_D"])
    assert state["optimizer_G"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # epoch 3 of 1 + 2: decayed
    assert len(state["fake_pool"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(state["fake_pool"], ref_state["fake_pool"], strict=True))


def test_kill_during_checkpoint_write_keeps_a_consistent_checkpoint(data, tmp_path, capsys):
    """A real SIGKILL while the training state of iteration 4 is half written (the per-network files of that save
    were already replaced): every 'latest' file still loads, no temporary file carries a 'latest' name, and
    --continue_train resumes from iteration 2 and ends exactly as an uninterrupted run."""
    base = ("--max_dataset_size", "3", "--niter", "2", "--niter_decay", "0", "--save_latest_freq", "2", *FEAT)
    args = tiny_args(data, tmp_path, "crash", *base, "--max_iters", "6")
    proc = subprocess.run(
        [sys.executable, WORKER, "kill-during-save", "4", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "killing the trainer while it saves the state of iteration 4" in proc.stdout

    folder = tmp_path / "crash"
    files = os.listdir(folder)
    temps = [f for f in files if f.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith(".latest_train_state.pt."), files  # hidden, never 'latest_*'
    with pytest.raises(RuntimeError):  # the half-written file: the kill really hit the write
        torch.load(folder / temps[0], weights_only=True)
    assert {f for f in files if f.startswith("latest")} == {f"latest_net_{k}.pth" for k in NETS} | {
        "latest_train_state.pt"
    }
    state = load_state(folder)  # the previous state, intact
    assert progress_of(state) == (1, 2, 2, 2)
    assert np.loadtxt(folder / "iter.txt", delimiter=",", dtype=int).tolist() == [1, 2]
    nets = load_nets(folder)  # each network file loads (atomic writes)...
    assert set(nets) == set(NETS)
    # ...but they already hold iteration 4: only the state's own snapshot is consistent with its counters
    assert any(not torch.equal(nets["G"][n], state["nets"]["G"][n]) for n in nets["G"])

    capsys.readouterr()
    resumed = Trainer(parse_train(args + ["--continue_train"]))
    assert "latest_net_G.pth differs from the training state" in capsys.readouterr().out  # the user is told
    p = resumed.progress
    assert (p.epoch, p.epoch_iter, p.iterations, p.total_steps) == (1, 2, 2, 2)
    assert_same_nets(snapshot(resumed), state["nets"])
    resumed.train()
    assert progress_of(load_state(folder)) == (3, 0, 6, 6)

    full = Trainer(parse_train(tiny_args(data, tmp_path, "nocrash", *base, "--max_iters", "6")))
    full.train()
    assert_same_nets(snapshot(resumed), snapshot(full))
    assert_same_nets(load_nets(folder), load_nets(tmp_path / "nocrash"))


@pytest.mark.parametrize("fail_on", ["G", "state"])
def test_failed_checkpoint_write_leaves_no_temp_and_resumes(data, tmp_path, monkeypatch, fail_on):
    """An exception in the middle of a write (disk full) while saving the first network file or the training
    state: the previous files are untouched where the write failed, no temporary file is left, and a resume
    gets the previous consistent snapshot."""
    args = tiny_args(data, tmp_path, "oserr", "--max_iters", "1", *FEAT)
    t = Trainer(parse_train(args))
    t.train()  # 'latest' of iteration 1
    folder = tmp_path / "oserr"
    saved = {f: (folder / f).read_bytes() for f in os.listdir(folder) if f.startswith("latest")}
    at_1 = snapshot(t)

    t.train_step(next(iter(t.loader)))
    t.progress.iterations += 1
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        is_state = isinstance(obj, dict) and "optimizer_G" in obj
        if is_state == (fail_on == "state"):
            f.write(b"partial bytes")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        t.save("latest")
    monkeypatch.undo()
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]
    assert (folder / "latest_train_state.pt").read_bytes() == saved["latest_train_state.pt"]
    if fail_on == "G":  # nothing was replaced
        assert {f: (folder / f).read_bytes() for f in saved} == saved

    resumed = Trainer(parse_train(args + ["--continue_train", "--max_iters", "2"]))
    assert resumed.progress.iterations == 1
    assert_same_nets(snapshot(resumed), at_1)


# ---------------------------------------------------------------------------------------------------------------
# DDP


def test_ddp_signal_on_one_rank_stops_every_rank_after_the_same_step(data, tmp_path):
    """SIGINT reaches rank 1 only, as its 2nd step finishes: both ranks stop after step 2 (rank 0 learns of it
    through the ranks' agreement), rank 0 saves 'latest' at iteration 2, and nobody waits in a collective that the
    other rank never joins (that would hang until the process group's 30-minute timeout: the subprocess timeout
    fails the test instead)."""
    args = tiny_args(data, tmp_path, "ddp_sig", "--niter", "3", "--niter_decay", "0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, "ddp-signal"]
    proc = subprocess.run(
        [*cmd, str(tmp_path), *args], cwd=tmp_path, capture_output=True, text=True, timeout=240, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r in ranks:
        assert r["signal"] == signal.SIGINT and r["iterations"] == 2 and r["steps"] == 2, r
    state = load_state(tmp_path / "ddp_sig")
    assert state["iterations"] == 2 and state["world_size"] == 2


def test_ddp_two_gloo_processes_keep_identical_weights(data, tmp_path):
    """torchrun with 2 CPU processes (gloo), 1 image per process per step, 2 epochs of 4 images: each rank trains on
    its own half of the data, yet all weights are bit-identical across ranks after every step (DDP all-reduces
    the gradients), rank 0's checkpoint holds them, and they match a single process with batch 2 on the same
    image pairs (DDP averages the gradients; the losses are means over the batch)."""
    args = tiny_args(data, tmp_path, "ddp", "--niter", "2", "--niter_decay", "0", *FEAT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, "ddp"]
    proc = subprocess.run(
        [*cmd, str(tmp_path), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    assert len(seen0) == len(seen1) == 4  # 2 iterations per epoch and process
    for epoch in (0, 1):
        both = [f for step in seen0[2 * epoch : 2 * epoch + 2] + seen1[2 * epoch : 2 * epoch + 2] for f in step]
        assert len(set(both)) == 4, both  # the two ranks split each epoch's 4 images
    assert_same_nets(ranks[0]["nets"], ranks[1]["nets"])
    assert_same_nets(load_nets(tmp_path / "ddp"), ranks[0]["nets"])  # rank 0 wrote the checkpoint
    assert progress_of(load_state(tmp_path / "ddp")) == (3, 0, 4, 4)

    single = Trainer(parse_train(tiny_args(data, tmp_path, "single", "--niter", "2", "--niter_decay", "0",
                                           "--batchSize", "2", *FEAT)))  # fmt: skip
    init = snapshot(single)
    single.train()
    ref = snapshot(single)
    # Weights move by ~1e-3 in 4 Adam steps and agree to ~1e-7. Conv biases in front of an instance norm have a
    # zero gradient up to rounding noise, which Adam turns into +-lr steps: compare what they feed instead, the
    # networks' outputs (the norm removes them).
    for k in NETS:
        for n, v in ref[k].items():
            if n.endswith("weight"):
                torch.testing.assert_close(ranks[0]["nets"][k][n], v, atol=2e-6, rtol=0, msg=f"{k}.{n}")
    assert any(not torch.equal(init["G"][n], ref["G"][n]) for n in ref["G"])
    gen = torch.Generator().manual_seed(0)
    for k, channels in (("G", 39), ("D", 39), ("E", 3)):
        net = copy.deepcopy(single.raw[k]).eval()
        x = torch.randn(2, channels, 32, 64, generator=gen)
        inst = torch.randint(0, 3, (2, 1, 32, 64), generator=gen)
        with torch.no_grad():
            out_single = net(x, inst) if k == "E" else net(x)
            net.load_state_dict(ranks[0]["nets"][k])
            out_ddp = net(x, inst) if k == "E" else net(x)
        torch.testing.assert_close(out_ddp, out_single, atol=1e-4, rtol=1e-4, msg=f"outputs of {k}")


# ---------------------------------------------------------------------------------------------------------------
# --load_pretrain


def test_load_pretrain_grafts_a_global_generator_into_a_local_enhancer(data, tmp_path, capsys):
    glob = Trainer(parse_train(tiny_args(data, tmp_path, "glob", "--ngf", "16", "--max_iters", "1")))
    glob.train()
    pre = load_nets(tmp_path / "glob")
    assert set(pre) == {"G", "D"}
    local_args = tiny_args(
        data, tmp_path, "local", "--netG", "local", "--ngf", "8", "--n_local_enhancers", "1", "--n_blocks_local",
        "1", "--niter_fix_global", "1", "--max_iters", "1", "--load_pretrain", str(tmp_path / "glob"),
    )  # fmt: skip
    local = Trainer(parse_train(local_args))
    assert "load_pretrain: net G" in capsys.readouterr().out
    g = local.raw["G"].state_dict()
    # the LocalEnhancer's global part (ngf * 2 filters) is the GlobalGenerator minus its final pad/conv/tanh
    last = max(int(k.split(".")[1]) for k in pre["G"])
    assert set(pre["G"]) - set(g) == {f"model.{last}.weight", f"model.{last}.bias"}
    grafted = [k for k in pre["G"] if k in g]
    assert len(grafted) == len(pre["G"]) - 2
    for k in grafted:
        assert torch.equal(g[k], pre["G"][k]), k
    assert any(k.startswith("model1_1.") for k in g) and any(k.startswith("model1_2.") for k in g)
    assert_same_nets({"D": local.raw["D"].state_dict()}, {"D": pre["D"]})

    local.train()  # one step with the grafted part frozen (--niter_fix_global)
    g = local.raw["G"].state_dict()
    assert all(torch.equal(g[k], pre["G"][k]) for k in grafted)

    with pytest.raises(FileNotFoundError, match="load_pretrain"):
        Trainer(parse_train(local_args[:-1] + [str(tmp_path / "no_such_run")]))


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_make_synthetic_train_test_end_to_end(tmp_path, capsys):
    root = tmp_path / "data"
    assert cli.main(["make-synthetic", "--out", str(root), "--n", "2", "--n_test", "2", "--size", "32x64"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["phases"] == {"train": 2, "test": 2} and meta["label_nc"] == 35
    for d in ("train_label", "train_inst", "train_img", "test_label", "test_inst", "test_img"):
        assert len(os.listdir(root / d)) == 2, d

    ckpt = tmp_path / "ckpt"
    args = tiny_args(str(root), ckpt, "e2e", "--niter", "1", "--niter_decay", "0", "--save_epoch_freq", "1",
                     html=True)  # fmt: skip
    assert cli.main(["train", *args]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rfind("\n{") + 1 :])  # the summary JSON is the last thing printed
    assert summary["iterations"] == 2 and summary["epochs_done"] == 1
    run = ckpt / "e2e"
    for f in ("latest_net_G.pth", "latest_net_D.pth", "1_net_G.pth", "latest_train_state.pt", "iter.txt", "opt.txt",
              "loss_log.txt", "web/index.html"):  # fmt: skip
        assert (run / f).is_file(), f
    assert (
        "--niter_fix_global" not in (run / "opt.txt").read_text()
        and "niter_fix_global: 0" in (run / "opt.txt").read_text()
    )
    page = (run / "web" / "index.html").read_text()
    for kind in ("input_label", "synthesized_image", "real_image"):
        assert f"epoch001_iter00000002_{kind}.png" in page
        assert (run / "web" / "images" / f"epoch001_iter00000002_{kind}.png").is_file()

    results = tmp_path / "results"
    test_args = [
        "--name", "e2e", "--dataroot", str(root), "--checkpoints_dir", str(ckpt), "--results_dir", str(results),
        "--label_nc", "35", "--resize_or_crop", "none", "--ngf", "8", "--n_downsample_global", "2",
        "--n_blocks_global", "1", "--device", "cpu", "--nThreads", "0",
    ]  # fmt: skip
    assert cli.main(["test", *test_args]) == 0
    capsys.readouterr()
    out_dir = results / "e2e" / "test_latest"
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["images"] == 2 and len(metrics["psnr_per_image"]) == 2
    assert math.isfinite(metrics["psnr_mean"]) and 0 < metrics["psnr_mean"] < 60
    page = (out_dir / "index.html").read_text()
    images = sorted(os.listdir(out_dir / "images"))
    assert len(images) == 6  # label, synthesized, real per test image
    for f in images:
        assert f"images/{f}" in page
    # --which_epoch and --how_many as in the reference test.py
    assert cli.main(["test", *test_args, "--which_epoch", "1", "--how_many", "1"]) == 0
    capsys.readouterr()
    m1 = json.loads((results / "e2e" / "test_1" / "metrics.json").read_text())
    assert m1["images"] == 1 and m1["which_epoch"] == "1" and math.isfinite(m1["psnr_mean"])


def test_help_explains_the_reference_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for o in (
        "--niter_fix_global", "--load_pretrain", "--continue_train", "--which_epoch", "--niter", "--niter_decay",
        "--label_nc", "--instance_feat", "--label_feat", "--no_instance", "--no_vgg_loss", "--no_ganFeat_loss",
        "--no_lsgan", "--num_D", "--n_layers_D", "--lambda_feat", "--batchSize", "--netG", "--amp", "--tf_log",
    ):  # fmt: skip
        assert o in text, o
    assert "epochs that train only the outermost enhancer" in text
    with pytest.raises(SystemExit) as e:
        cli.main(["test", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for o in ("--how_many", "--which_epoch", "--results_dir", "--phase", "--use_encoded_image"):
        assert o in text, o
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for c in ("train", "test", "make-synthetic", "demo"):
        assert c in text


def test_reference_command_lines_and_defaults():
    # a reference train.py line is accepted as is
    opt = parse_train(
        "--name label2city_1024p --netG local --ngf 32 --num_D 3 --load_pretrain checkpoints/label2city_512p "
        "--niter 50 --niter_decay 50 --niter_fix_global 10 --resize_or_crop none --instance_feat --fp16".split()
    )
    assert opt.amp == "fp16" and opt.use_features and opt.gen_features and opt.niter_fix_global == 10
    d = parse_train([])
    expected = dict(
        batchSize=1, loadSize=1024, fineSize=512, label_nc=35, input_nc=3, output_nc=3, resize_or_crop="scale_width",
        netG="global", ngf=64, n_downsample_global=4, n_blocks_global=9, n_blocks_local=3, n_local_enhancers=1,
        niter_fix_global=0, feat_num=3, nef=16, n_downsample_E=4, n_clusters=10, num_D=2, n_layers_D=3, ndf=64,
        lambda_feat=10.0, pool_size=0, lr=0.0002, beta1=0.5, niter=100, niter_decay=100, display_freq=100,
        print_freq=100, save_latest_freq=1000, save_epoch_freq=10, which_epoch="latest", phase="train",
        gan_mode="lsgan", checkpoints_dir="./checkpoints", norm="instance",
    )  # fmt: skip
    assert {k: getattr(d, k) for k in expected} == expected
    t = parse_test([])
    assert (t.how_many, t.phase, t.which_epoch, t.results_dir, t.batchSize) == (50, "test", "latest", "./results/", 1)
    assert parse_train(["--no_lsgan"]).gan_mode == "vanilla"


def test_demo_trains_and_tests_the_same_architecture(tmp_path, monkeypatch):
    """The demo's train and test command lines must describe the same networks (else loading fails)."""
    import pix2pixhd_fast.data as data_mod
    import pix2pixhd_fast.demo as demo_mod
    import pix2pixhd_fast.features as features_mod
    import pix2pixhd_fast.infer as infer_mod
    import pix2pixhd_fast.train as train_mod
    from pix2pixhd_fast.demo import run_demo

    seen = {}
    monkeypatch.setattr(data_mod, "make_synthetic_dataset", lambda *a, **k: {})
    # the feature steps (encode-features, styles) are checked in test_features.py
    enc = {"clusters_file": "c", "instances": 0, "instances_per_class": {}, "clusters_per_class": {}}
    monkeypatch.setattr(features_mod, "run_encode_features", lambda opt: enc)
    monkeypatch.setattr(features_mod, "load_clusters", lambda path: features_mod.FeatureClusters({}, 3))
    monkeypatch.setattr(demo_mod, "render_styles", lambda *a, **k: ([], {}))
    monkeypatch.setattr(
        train_mod,
        "train",
        lambda opt: (
            seen.update(train=opt) or {"images_per_s": 1.0, "epochs_done": 1, "iterations": 4, "last_losses": {}}
        ),
    )
    monkeypatch.setattr(
        infer_mod,
        "run_test",
        lambda opt, extra_rows=None: (
            seen.update(test=opt) or {"psnr_mean": 20.0, "psnr_per_image": [20.0], "images": 4, "page": "p"}
        ),
    )
    for quick in (True, False):
        result = run_demo(str(tmp_path / f"demo{quick}"), quick=quick, device="cpu")
        assert result["ok"] and json.loads((tmp_path / f"demo{quick}" / "demo_summary.json").read_text())["ok"]
        tr, te = seen["train"], seen["test"]
        arch = (
            "name", "checkpoints_dir", "dataroot", "label_nc", "netG", "ngf", "n_downsample_global", "n_blocks_global",
            "n_local_enhancers", "n_blocks_local", "norm", "no_instance", "instance_feat", "label_feat", "feat_num",
            "nef", "n_downsample_E", "resize_or_crop", "loadSize", "fineSize", "output_nc", "device",
        )  # fmt: skip
        assert {k: getattr(tr, k) for k in arch} == {k: getattr(te, k) for k in arch}
        assert tr.instance_feat and te.use_encoded_image and tr.no_vgg_loss
    assert parse_train(demo_train_args("d", "c", 0, True, None)).niter == 1


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_gets_clear_errors(data, tmp_path, capsys):
    with pytest.raises(ValueError, match="dataroot .*no_such_folder"):
        Trainer(parse_train(tiny_args(str(tmp_path / "no_such_folder"), tmp_path, "x")))
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Trainer(parse_train(tiny_args(data, tmp_path, "x", amp="fp16")))
    with pytest.raises(ValueError, match="fp16 needs a GPU"):  # the reference's flag means the same
        Trainer(parse_train(tiny_args(data, tmp_path, "x", "--fp16", amp=None)))
    with pytest.raises(ValueError, match="contradict"):
        parse_train(["--fp16", "--amp", "bf16"])
    with pytest.raises(FileNotFoundError, match="continue_train: .*latest_net_G.pth does not exist"):
        Trainer(parse_train(tiny_args(data, tmp_path, "never_trained", "--continue_train")))
    with pytest.raises(ValueError, match="instance_feat"):
        parse_train(["--instance_feat", "--no_instance"])
    with pytest.raises(ValueError, match="label_nc"):
        parse_train(["--label_nc", "-1"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Trainer(parse_train(tiny_args(data, tmp_path, "x", "--device", "cuda")))
    # The CLI prints the error (no traceback) and exits with status 2.
    rc = cli.main(["test", "--name", "never_trained", "--dataroot", data, "--checkpoints_dir", str(tmp_path),
                   "--device", "cpu"])  # fmt: skip
    assert rc == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["make-synthetic", "--out", str(tmp_path / "s"), "--size", "big"])
    assert e.value.code == 2
