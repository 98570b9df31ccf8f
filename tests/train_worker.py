"""Subprocess side of tests/test_train.py: runs the Trainer where a test needs a separate process.

Not collected by pytest (no ``test_`` prefix). Two modes:

``python tests/train_worker.py ddp OUT_DIR TRAIN_ARGS...``
    Run under ``torch.distributed.run``: every rank trains with the given ``train`` options and writes
    ``OUT_DIR/rank<r>.pt`` with its final network weights (G, D, E), the label paths of the batches it trained on
    and the world size it saw. Only rank 0 writes checkpoints, so this is how a test sees the other ranks.

``python tests/train_worker.py ddp-signal OUT_DIR TRAIN_ARGS...``
    Run under ``torch.distributed.run``: rank 1 (only) sends itself SIGINT as its second step finishes, as when
    a signal reaches one rank of a job; every rank writes ``OUT_DIR/rank<r>.pt`` with the iterations it trained,
    and the signal and position of the TrainingInterrupted it ended with (none: it returned normally).

``python tests/train_worker.py kill-during-save KILL_AT TRAIN_ARGS...``
    Train, and the first time a training state of iteration >= KILL_AT is saved, write half of its bytes to
    the checkpoint's temporary file and SIGKILL this process: a crash in the middle of a checkpoint write, after
    the per-network files of that save were already replaced (they are written before the state).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading

import torch


def _ddp(out_dir: str, argv: list[str]) -> None:
    from pix2pixhd_fast.options import parse_train
    from pix2pixhd_fast.train import Trainer
    from pix2pixhd_fast.train.distributed import cleanup_distributed

    trainer = Trainer(parse_train(argv))
    seen: list[list[str]] = []
    step = trainer.train_step

    def recording_step(batch):
        seen.append([os.path.basename(p) for p in batch["path"]])
        return step(batch)

    trainer.train_step = recording_step
    trainer.train()
    nets = {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()} for k, m in trainer.raw.items()}
    rank = trainer.dist.rank
    torch.save(
        {"nets": nets, "seen": seen, "world_size": trainer.dist.world_size, "rank": rank},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    cleanup_distributed()


def _ddp_signal(out_dir: str, argv: list[str]) -> None:
    from pix2pixhd_fast.options import parse_train
    from pix2pixhd_fast.train import Trainer
    from pix2pixhd_fast.train.distributed import cleanup_distributed
    from pix2pixhd_fast.train.trainer import TrainingInterrupted

    trainer = Trainer(parse_train(argv))
    rank, step, steps = trainer.dist.rank, trainer.train_step, []

    def step_then_signal(batch):
        out = step(batch)
        steps.append(1)
        if rank == 1 and len(steps) == 2:
            # To the main thread, where Python runs the handler: what is tested is the ranks' agreement, not
            # which thread the kernel picks for a process-directed signal.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return out

    trainer.train_step = step_then_signal
    result = {"rank": rank, "steps": len(steps), "signal": None}
    try:
        trainer.train()
    except TrainingInterrupted as e:
        result.update(signal=e.signum, iterations=e.iterations)
    result["steps"] = len(steps)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup_distributed()


def _kill_during_save(kill_at: int, argv: list[str]) -> None:
    from pix2pixhd_fast.options import parse_train
    from pix2pixhd_fast.train import train

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer_G" in obj and obj["iterations"] >= kill_at:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            print(f"killing the trainer while it saves the state of iteration {obj['iterations']}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = crashing_save  # checkpoint.atomic_save looks torch.save up at call time
    train(parse_train(argv))


def main() -> None:
    mode, arg, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "ddp":
        _ddp(arg, argv)
    elif mode == "ddp-signal":
        _ddp_signal(arg, argv)
    elif mode == "kill-during-save":
        _kill_during_save(int(arg), argv)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
