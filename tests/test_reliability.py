"""Bad input and faults a user produces: each gets one clear error (exit status 2, no traceback) naming the option
or file, and nothing the user made is damaged (checkpoints, opt.txt, earlier runs)."""

import errno
import json
import os
import pickle
import shutil
import signal

import numpy as np
import pytest
import torch

from pix2pixhd_fast import cli
from pix2pixhd_fast.models import GlobalGenerator, load_pix2pixhd_checkpoint, save_pix2pixhd_checkpoint
from pix2pixhd_fast.models.checkpoint import CheckpointReadError, atomic_save
from pix2pixhd_fast.options import OptionError, check_image_size, check_output_folder, parse_test, parse_train
from pix2pixhd_fast.train.trainer import Trainer, TrainingInterrupted
from pix2pixhd_fast.utils.files import AtomicWriteError, atomic_path, atomic_write, atomic_write_text

pytestmark = pytest.mark.usefixtures("restore_threads")


def tiny(data, ckpt, name="run", *extra):
    """``train`` options of a tiny global generator on the 32x64 synthetic data (one epoch of 4 steps)."""
    return [
        "--name", name, "--dataroot", data, "--checkpoints_dir", str(ckpt), "--label_nc", "35",
        "--resize_or_crop", "none", "--ngf", "8", "--n_downsample_global", "2", "--n_blocks_global", "1",
        "--ndf", "8", "--num_D", "1", "--n_layers_D", "2", "--no_vgg_loss", "--nThreads", "0", "--no_progress",
        "--device", "cpu", "--num_threads", "1", "--amp", "off", "--niter", "1", "--niter_decay", "0",
        "--print_freq", "1", "--display_freq", "1000", "--save_latest_freq", "1000", "--save_epoch_freq", "1",
        "--no_html", *extra,
    ]  # fmt: skip


def tiny_test(data, ckpt, results, name="run", *extra):
    """``test`` options matching :func:`tiny`'s network."""
    return [
        "--name", name, "--dataroot", data, "--checkpoints_dir", str(ckpt), "--label_nc", "35",
        "--resize_or_crop", "none", "--ngf", "8", "--n_downsample_global", "2", "--n_blocks_global", "1",
        "--device", "cpu", "--num_threads", "1", "--amp", "off", "--results_dir", str(results), *extra,
    ]  # fmt: skip


def run_cli(capsys, *argv):
    """(exit status, stderr) of ``pix2pixhd-fast argv``; SystemExit (argparse) counts as its code."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, err)


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished tiny run (4 steps): ``(checkpoints_dir, name)``; tests copy it before changing anything."""
    ckpt = tmp_path_factory.mktemp("trained")
    n = torch.get_num_threads()
    try:
        assert cli.main(["train", *tiny(data, ckpt, "run", "--max_iters", "2")]) == 0
    finally:
        torch.set_num_threads(n)
    return ckpt


@pytest.fixture
def run_copy(trained, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(trained, dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# 1. Unreadable checkpoints


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _evil(path):
    with open(path, "wb") as f:
        pickle.dump({"model.1.weight": _Evil()}, f, protocol=2)


def _zero(path):
    path.write_bytes(b"")


def _text(path):
    path.write_text("this is not a checkpoint\n")


BREAKERS = {"truncated": _truncated, "zero_bytes": _zero, "text": _text, "malicious_pickle": _evil}


@pytest.mark.parametrize("kind", list(BREAKERS))
def test_unreadable_network_checkpoint_is_one_clear_error(tmp_path, kind):
    net = GlobalGenerator(3, 3, 4, 1, 1, "instance")
    path = save_pix2pixhd_checkpoint(net, tmp_path / "latest_net_G.pth")
    BREAKERS[kind](path)
    with pytest.raises(CheckpointReadError) as e:
        load_pix2pixhd_checkpoint(path, net)
    msg = str(e.value)
    assert str(path) in msg and "another epoch" in msg and "\n" not in msg
    assert "weights_only=False" not in msg.replace(" ", "")


@pytest.mark.parametrize("kind", list(BREAKERS))
def test_cli_test_with_unreadable_generator(data, run_copy, tmp_path, capsys, kind):
    g = run_copy / "run" / "latest_net_G.pth"
    BREAKERS[kind](g)
    rc, err = run_cli(capsys, "test", *tiny_test(data, run_copy, tmp_path / "res", "run", "--how_many", "1"))
    assert rc == 2
    one_line_error(err, str(g), "retrain")
    assert "weights_only=False" not in err.replace(" ", "")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("kind", ["truncated", "malicious_pickle", "zero_bytes"])
def test_continue_train_with_unreadable_state(data, run_copy, capsys, kind):
    state = run_copy / "run" / "latest_train_state.pt"
    BREAKERS[kind](state)
    before = snapshot(run_copy)
    rc, err = run_cli(capsys, "train", *tiny(data, run_copy, "run", "--continue_train"))
    assert rc == 2
    one_line_error(err, str(state), "--continue_train")
    assert "weights_only=False" not in err.replace(" ", "")
    assert snapshot(run_copy) == before  # opt.txt, the loss log and every checkpoint as they were


# ---------------------------------------------------------------------------------------------------------------
# 2, 3, 8. Option values: one place, before anything is written


@pytest.mark.parametrize(
    "option,value",
    [("--save_epoch_freq", "0"), ("--save_latest_freq", "0"), ("--print_freq", "0"), ("--display_freq", "0"),
     ("--niter", "-1"), ("--niter_decay", "-5"), ("--batchSize", "0"), ("--nThreads", "-1"), ("--lr", "0"),
     ("--max_iters", "0"), ("--gpu_ids", "zero")],
)  # fmt: skip
def test_bad_train_option_names_it_and_writes_nothing(data, tmp_path, capsys, option, value):
    ckpt = tmp_path / "ckpt"
    rc, err = run_cli(capsys, "train", *tiny(data, ckpt, "run", option, value))
    assert rc == 2
    one_line_error(err, option)
    assert not ckpt.exists()


def test_verbose_shows_the_traceback(data, tmp_path, capsys):
    rc, err = run_cli(capsys, "train", *tiny(data, tmp_path, "run", "--save_epoch_freq", "0", "--verbose"))
    assert rc == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("pix2pixhd-fast train: error")


def test_no_epochs_to_train_keeps_an_existing_run(data, run_copy, capsys):
    before = snapshot(run_copy)
    rc, err = run_cli(capsys, "train", *tiny(data, run_copy, "run", "--niter", "0", "--niter_decay", "0"))
    assert rc == 2
    one_line_error(err, "--niter", "--niter_decay")
    assert snapshot(run_copy) == before


def test_how_many_zero(data, run_copy, tmp_path, capsys):
    rc, err = run_cli(capsys, "test", *tiny_test(data, run_copy, tmp_path / "r", "run", "--how_many", "0"))
    assert rc == 2
    one_line_error(err, "--how_many")


def test_failed_resume_with_wrong_options_keeps_every_file(data, run_copy, capsys):
    before = snapshot(run_copy)
    rc, err = run_cli(capsys, "train", *tiny(data, run_copy, "run", "--continue_train", "--ngf", "16"))
    assert rc == 2 and "Traceback" not in err and "--ngf" in err
    assert snapshot(run_copy) == before


def test_gpu_ids_without_cuda_says_so(data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = tiny(data, tmp_path, "x")
    args[args.index("--device") : args.index("--device") + 2] = []
    parse_train([*args, "--gpu_ids", "0"])
    assert "--gpu_ids 0" in capsys.readouterr().err
    parse_train(args)  # the default alone: no message
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------------
# 4. Data errors inside DataLoader workers


def test_truncated_png_with_workers_is_one_line_naming_the_file(data, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    bad = sorted((root / "train_img").iterdir())[0]  # the first batch: the run never gets a step done
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])
    ckpt = tmp_path / "ckpt"
    rc, err = run_cli(capsys, "train", *tiny(str(root), ckpt, "run", "--nThreads", "2", "--serial_batches"))
    assert rc == 2
    one_line_error(err, str(bad))
    assert "Original Traceback" not in err and "DataLoader worker" not in err
    assert not ckpt.exists()  # a run that fails before its first step leaves nothing behind


def test_unreadable_folder_is_not_reported_as_empty(data, tmp_path, monkeypatch):
    from pix2pixhd_fast.data import scan_folder

    folder = os.path.join(data, "train_label")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == folder else real(p, mode))
    with pytest.raises(ValueError, match="cannot read folder"):
        scan_folder(folder)


# ---------------------------------------------------------------------------------------------------------------
# 5. Images too small for the generator


def test_images_too_small_for_the_downsampling(data, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    rc, err = run_cli(capsys, "train", *tiny(data, ckpt, "run", "--n_downsample_global", "5"))
    assert rc == 2
    one_line_error(err, "--n_downsample_global 5", "32x64")
    assert not ckpt.exists()


def test_check_image_size_bounds():
    opt = parse_train(["--n_downsample_global", "3", "--netG", "local", "--n_local_enhancers", "1"])
    check_image_size(32, 64, opt)  # 32 / 2**4 = 2 pixels at the bottleneck
    with pytest.raises(OptionError, match="--n_local_enhancers 1"):
        check_image_size(31, 64, opt)


# ---------------------------------------------------------------------------------------------------------------
# 6. Output folders


def test_checkpoints_dir_or_results_dir_that_is_a_file(data, run_copy, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    rc, err = run_cli(capsys, "train", *tiny(data, f, "run"))
    assert rc == 2
    one_line_error(err, "--checkpoints_dir", "is a file")
    rc, err = run_cli(capsys, "test", *tiny_test(data, run_copy, f))
    assert rc == 2
    one_line_error(err, "--results_dir", "is a file")


def test_read_only_output_folder(tmp_path, monkeypatch):
    # Permission bits do not stop root, so the permission check itself is made to fail.
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(ro) else real(p, mode))
    with pytest.raises(OptionError, match="--checkpoints_dir .*not writable"):
        check_output_folder(str(ro), "--checkpoints_dir")
    with pytest.raises(OptionError, match="cannot be created"):
        check_output_folder(str(ro / "new" / "deeper"), "--results_dir")
    check_output_folder(str(tmp_path / "fine"), "--results_dir")


def test_parse_test_checks_results_dir(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(OptionError, match="--results_dir"):
        parse_test(["--results_dir", str(f)])


# ---------------------------------------------------------------------------------------------------------------
# 7. make-synthetic


@pytest.mark.parametrize(
    "extra,needle",
    [(["--n", "-2"], "--n "), (["--size", "1x1"], "HEIGHTxWIDTH"), (["--size", "64x20"], "did you mean 20x64"),
     (["--n_test", "-1"], "--n_test"), (["--size", "big"], "HEIGHTxWIDTH")],
)  # fmt: skip
def test_make_synthetic_bad_values(tmp_path, capsys, extra, needle):
    rc, err = run_cli(capsys, "make-synthetic", "--out", str(tmp_path / "s"), *extra)
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_make_synthetic_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("keep me")
    rc, err = run_cli(capsys, "make-synthetic", "--out", str(f), "--n", "1")
    assert rc == 2
    one_line_error(err, "--out", "is a file")
    assert f.read_text() == "keep me"


def test_make_synthetic_size_is_height_by_width(tmp_path, capsys):
    from PIL import Image

    assert (
        cli.main(["make-synthetic", "--out", str(tmp_path / "s"), "--n", "1", "--n_test", "0", "--size", "16x48"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["size"] == "16x48"  # reported as given
    img = Image.open(next((tmp_path / "s" / "train_img").iterdir()))
    assert img.size == (48, 16)  # PIL sizes are (width, height)


# ---------------------------------------------------------------------------------------------------------------
# Graceful interruption


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_saves_latest_and_resumes(data, tmp_path, monkeypatch, sig):
    args = tiny(data, tmp_path, "run", "--niter", "2")
    handler_before = signal.getsignal(sig)
    trainer = Trainer(parse_train(args))
    step = trainer.train_step
    calls = []

    def step_then_signal(batch):
        out = step(batch)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), sig)  # arrives while the step is still running
        return out

    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.train()
    assert e.value.exit_code == 128 + sig and e.value.iterations == 2
    assert "--continue_train" in str(e.value) and str(tmp_path / "run") in str(e.value)
    state = torch.load(tmp_path / "run" / "latest_train_state.pt", weights_only=True)
    assert state["iterations"] == 2  # the step finished, then 'latest' was written
    assert signal.getsignal(sig) == handler_before  # the handlers are restored
    resumed = Trainer(parse_train([*args, "--continue_train"]))
    assert resumed.progress.iterations == 2
    assert resumed.train()["iterations"] == 8  # 2 epochs of 4 steps in all


def test_cli_exit_status_on_sigterm(data, tmp_path, monkeypatch, capsys):
    real = Trainer.train_step

    def step_then_term(self, batch):
        out = real(self, batch)
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_term)
    rc, err = run_cli(capsys, "train", *tiny(data, tmp_path, "run"))
    assert rc == 143
    assert "SIGTERM" in err and "--continue_train" in err and "Traceback" not in err
    assert (tmp_path / "run" / "latest_net_G.pth").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    net = GlobalGenerator(3, 3, 4, 1, 1, "instance")
    path = save_pix2pixhd_checkpoint(net, tmp_path / "latest_net_G.pth")
    good = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with torch.no_grad():
        net.model[1].weight.add_(1.0)
    with pytest.raises(AtomicWriteError) as e:
        save_pix2pixhd_checkpoint(net, path)
    assert e.value.errno == errno.ENOSPC
    assert str(path) in str(e.value) and "previous file is unchanged" in str(e.value)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["latest_net_G.pth"]  # no temporary file left behind
    monkeypatch.setattr(torch, "save", real_save)
    load_pix2pixhd_checkpoint(path, GlobalGenerator(3, 3, 4, 1, 1, "instance"))


def test_failed_training_save_keeps_latest(data, run_copy, monkeypatch):
    before = snapshot(run_copy / "run")
    trainer = Trainer(parse_train(tiny(data, run_copy, "run", "--continue_train")))

    def disk_full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(AtomicWriteError, match="previous file is unchanged"):
        trainer.save("latest")
    after = snapshot(run_copy / "run")
    for name in ("latest_net_G.pth", "latest_net_D.pth", "latest_train_state.pt", "iter.txt"):
        assert after[name] == before[name], name
    assert not [f for f in os.listdir(run_copy / "run") if f.endswith(".tmp")]


def test_atomic_write_helpers(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("two, half written")
            raise RuntimeError("the writer failed")
    assert p.read_text() == "one"
    with pytest.raises(AtomicWriteError, match="no file was written"):
        with atomic_path(tmp_path / "b.onnx", suffix=".onnx") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]
    with atomic_path(tmp_path / "c.npy", suffix=".npy") as tmp:
        np.save(tmp, np.arange(3))  # writers that want a file name
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2]
    with pytest.raises(IsADirectoryError):
        atomic_save({}, tmp_path)


def test_messages_name_options_not_python(data, tmp_path, capsys):
    rc, err = run_cli(capsys, "train", *tiny(data, tmp_path, "run", "--max_dataset_size", "lots"))
    assert rc == 2 and "--max_dataset_size" in err and "integer or inf" in err and "_inf_int" not in err
    root = tmp_path / "data"
    shutil.copytree(data, root)
    shutil.rmtree(root / "train_inst")
    rc, err = run_cli(capsys, "train", *tiny(str(root), tmp_path / "ckpt", "run"))
    assert rc == 2
    one_line_error(err, "--no_instance")


def test_ctrl_c_in_any_command_is_one_line(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_info", interrupted)
    monkeypatch.setitem(cli._PASSTHROUGH, "export", interrupted)
    for argv in (["info"], ["export", "--format", "onnx"]):
        rc, err = run_cli(capsys, *argv)
        assert rc == 130 and "interrupted" in err and "Traceback" not in err
