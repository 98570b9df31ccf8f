"""The pix2pixHD training loop: channels-last, AMP, fused optimizers, DDP, safe checkpoints and exact resumes.

Schedule and behaviour follow the reference ``train.py``: Adam(lr, (beta1, 0.999)) for G(+E) and D, ``niter``
epochs at the starting rate then ``niter_decay`` of linear decay, ``niter_fix_global`` epochs that train only the
outermost enhancer, ``--load_pretrain`` to start a LocalEnhancer from a trained global generator, and the
reference's checkpoint files. What is ours: the speed (see :class:`Trainer`), the separate training-state file,
atomic writes, and resumes that continue with the same batches as an uninterrupted run.

Checkpoint files in ``<checkpoints_dir>/<name>``:
    ``{latest,<epoch>}_net_{G,D,E}.pth``   state_dicts in the reference format (load in NVIDIA's code as is)
    ``{latest,<epoch>}_train_state.pt``    optimizers, grad scaler, epoch, iteration, RNG states, image pool, and a
                                           copy of the networks' weights: one consistent snapshot that
                                           ``--continue_train`` resumes from even if a kill hit between two writes
    ``iter.txt``                           the reference's resume file: epoch, images done in that epoch
    ``opt.txt``, ``loss_log.txt``, ``web/index.html``, ``logs/`` (TensorBoard)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..data import Pix2PixHDDataset, colorize_label, make_dataloader, to_uint8_image
from ..models.checkpoint import (
    CheckpointReadError,
    atomic_save,
    load_pix2pixhd_checkpoint,
    read_checkpoint_file,
    save_pix2pixhd_checkpoint,
)
from ..models.pix2pixhd import Pix2PixHDModel
from ..options import save_options
from ..utils.files import atomic_write
from .distributed import DistInfo, agree_max, cleanup_distributed, host_group, init_distributed
from .graphs import GraphedTrainStep, check_cuda_graph_options, match_capturable, set_learning_rate
from .memory import enable_selective_checkpointing
from .schedule import fixes_global, learning_rate, total_epochs, trainable_generator_params
from .visualizer import Visualizer

__all__ = ["Trainer", "TrainingInterrupted", "train", "resolve_device", "resolve_amp", "make_adam"]

_NETS = ("G", "D", "E")


def resolve_device(opt: argparse.Namespace, dist_info: DistInfo | None = None) -> torch.device:
    """``--device`` if given; else CUDA (``cuda:<LOCAL_RANK>`` under torchrun, ``--gpu_ids``' first id otherwise)
    when available and ``--gpu_ids`` is not -1; else the CPU."""
    if opt.device:
        dev = torch.device(opt.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {opt.device}: CUDA is not available on this machine")
        if dev.type == "cuda" and dist_info is not None and dist_info.enabled:
            dev = torch.device("cuda", dist_info.local_rank)
        return dev
    ids = [int(s) for s in str(opt.gpu_ids).split(",") if s.strip() != ""]
    if torch.cuda.is_available() and ids and ids[0] >= 0:
        if dist_info is not None and dist_info.enabled:
            return torch.device("cuda", dist_info.local_rank)
        return torch.device("cuda", ids[0])
    return torch.device("cpu")


def _cpu_has_amx() -> bool:
    try:
        return bool(torch._C._cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``--amp`` (None: bf16 on GPUs that support it and on CPUs with AMX, else off)."""
    if amp is None:
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "bf16" if _cpu_has_amx() else "off"
    if amp == "off":
        return None
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("--amp fp16 needs a GPU; use --amp bf16 (or off) on the CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def make_adam(
    params, lr: float, beta1: float, device: torch.device, fused: str = "auto", capturable: bool = False
) -> torch.optim.Optimizer:
    """Adam(lr, betas=(beta1, 0.999)) with a fused step: apex FusedAdam when asked (or ``auto`` and importable on
    CUDA), else torch's fused implementation (CUDA and CPU), else the for-each loop (``off``).

    ``capturable`` (CUDA graphs): torch's fused Adam with its step counters and learning rate on the device, so
    that a captured step reads the current rate (see :func:`~pix2pixhd_fast.train.graphs.set_learning_rate`)."""
    params = list(params)
    if capturable:
        if device.type != "cuda":
            raise ValueError(f"a capturable optimizer needs a CUDA device, got {device}")
        lr_t = torch.tensor(float(lr), device=device)
        return torch.optim.Adam(params, lr=lr_t, betas=(beta1, 0.999), fused=True, capturable=True)
    if fused in ("auto", "apex") and device.type == "cuda":
        try:
            from apex.optimizers import FusedAdam  # optional: not on the package index

            return FusedAdam(params, lr=lr, betas=(beta1, 0.999))
        except ImportError:
            if fused == "apex":
                raise ImportError("--fused_adam apex: NVIDIA apex is not installed (pip cannot install it)") from None
    if fused == "apex":
        raise ValueError("--fused_adam apex needs a CUDA device")
    if fused == "off":
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), foreach=True)
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=True)


def _unwrap(m: nn.Module) -> nn.Module:
    while True:
        if isinstance(m, nn.parallel.DistributedDataParallel):
            m = m.module
        elif hasattr(m, "_orig_mod"):
            m = m._orig_mod
        else:
            return m


def _numpy_rng_state() -> list:
    """numpy's global RNG state with its key array as an int64 tensor (so ``weights_only`` loading accepts it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _same_tensors(path: str, state: dict) -> bool:
    """Whether the state_dict file at ``path`` holds exactly the tensors of ``state``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: certainly not the snapshot
        return False
    return saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)


_STATE_KEYS = ("epoch", "epoch_iter", "total_steps", "iterations", "optimizer_G", "optimizer_D")


def _resume_advice(folder: str) -> str:
    return (
        f"resume from another saved epoch (--continue_train --which_epoch N, with N_train_state.pt in {folder}) "
        "or start over without --continue_train"
    )


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after finishing its step and saving ``latest``.

    Attributes:
        signum: the signal. exit_code: what a shell reports for a process killed by it (130, 143).
        folder: where ``latest`` is. epoch, iterations: the position saved.
    """

    def __init__(self, signum: int, folder: str, epoch: int, iterations: int):
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} after {iterations} iterations (epoch {epoch}); saved the run in {folder} "
            f"(latest_net_*.pth, latest_train_state.pt); resume with the same command plus --continue_train"
        )
        self.signum, self.exit_code = signum, 128 + signum
        self.folder, self.epoch, self.iterations = folder, epoch, iterations


def _stop_on_signals(stop: list[int]):
    """Make SIGINT and SIGTERM append their number to ``stop`` (the loop finishes its step, saves and ends); a
    second signal raises KeyboardInterrupt at once. Returns the function that restores the previous handlers.
    Only the main thread can install handlers: elsewhere the signals keep their behaviour."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


@dataclass
class Progress:
    """Where training stands: ``epoch`` (1-based) and the images already done in it (``epoch_iter``, per process),
    ``total_steps`` images since the start (per process, the reference's counter), ``iterations`` optimizer steps."""

    epoch: int = 1
    epoch_iter: int = 0
    total_steps: int = 0
    iterations: int = 0
    history: list = field(default_factory=list)


class Trainer:
    """Trains a :class:`Pix2PixHDModel` from reference-style options (see :mod:`pix2pixhd_fast.options`).

    Speed: channels-last tensors end to end (``--no_channels_last`` to opt out), autocast in bf16/fp16
    (``--amp``; GradScaler for fp16), inputs encoded on the device by one fused ``encode_input`` call, D's real and
    fake passes batched into one call (instance norm), no gradient for frozen weights, fused Adam steps, no host
    synchronisation inside an iteration except when printing or displaying, optional ``torch.compile``.
    Scale-out: under ``torchrun`` every process trains on its share of the data (DistributedSampler) with
    DistributedDataParallel; only rank 0 writes checkpoints, logs and pages.
    """

    def __init__(self, opt: argparse.Namespace):
        self.opt = opt
        if opt.num_threads > 0:
            torch.set_num_threads(opt.num_threads)
        device_type = (
            "cuda"
            if (opt.device or "").startswith("cuda")
            or (not opt.device and torch.cuda.is_available() and not str(opt.gpu_ids).startswith("-1"))
            else "cpu"
        )
        self.dist = init_distributed(device_type)
        self._host_group = host_group(self.dist)  # where the ranks agree on stopping (see train)
        self.device = resolve_device(opt, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp_dtype = resolve_amp(opt.amp, self.device)
        self.input_dtype = self.amp_dtype or torch.float32
        self.channels_last = opt.channels_last
        self.folder = os.path.join(opt.checkpoints_dir, opt.name)
        self.is_main = self.dist.is_main
        # opt.txt, the loss log and the page are written once the first step has succeeded (_open_outputs): a run
        # that fails before (bad data, a resume with the wrong options) leaves no new file and changes none.
        self.visualizer: Visualizer | None = None

        # Same initial weights on every process (DDP also broadcasts rank 0's).
        torch.manual_seed(opt.seed)
        self.dataset = Pix2PixHDDataset.from_options(opt)
        if len(self.dataset) == 0:
            raise ValueError(f"no training images found under {opt.dataroot}")
        self.loader = make_dataloader(
            self.dataset,
            batch_size=opt.batchSize,
            shuffle=not opt.serial_batches,
            num_workers=opt.nThreads,
            pin_memory=self.device.type == "cuda",
            distributed=self.dist.enabled,
            seed=opt.seed,
            drop_last=self.dist.enabled,
        )
        self.model = Pix2PixHDModel(opt, is_train=True).to(self.device)
        self.model.check_inputs = False  # the dataset checks labels on load; no host sync per iteration
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if opt.cuda_graph:
            check_cuda_graph_options(opt, self.device, self.amp_dtype, self.dist.enabled)
        if self.device.type == "cuda":
            # Training sizes are fixed, so timing the convolution algorithms once per size pays for itself.
            torch.backends.cudnn.benchmark = not opt.no_cudnn_benchmark
        if opt.sac == "on":
            # G and E only: D's layer outputs are kept anyway (the feature-matching loss reads them), so
            # checkpointing D would recompute without saving memory.
            for net in (self.model.netG, self.model.netE):
                if net is not None:
                    enable_selective_checkpointing(net)
        self.progress = Progress()
        state = self._load_checkpoints()
        self.fix_global = fixes_global(self.progress.epoch, opt)
        self._build_optimizers(learning_rate(self.progress.epoch, opt))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if state is not None:
            self._restore_state(state)
        self._wrap()
        self.graphed = GraphedTrainStep(self) if opt.cuda_graph else None

    # ---------------------------------------------------------------------------------------------------------
    # Set-up
    def _open_outputs(self) -> Visualizer:
        """The run's folder, ``opt.txt``, loss log and page, created on first use (rank 0 writes)."""
        if self.visualizer is None:
            opt = self.opt
            if self.is_main:
                os.makedirs(self.folder, exist_ok=True)
                save_options(opt, self.folder)
            self.visualizer = Visualizer(
                self.folder,
                enabled=self.is_main,
                tf_log=opt.tf_log,
                html=not opt.no_html,
                display_winsize=min(opt.display_winsize, 512),
                name=opt.name,
            )
        return self.visualizer

    def _net(self, which: str) -> nn.Module | None:
        return getattr(self.model, "net" + which)

    def _ckpt(self, which_epoch: str, net: str, folder: str | None = None) -> str:
        return os.path.join(folder or self.folder, f"{which_epoch}_net_{net}.pth")

    def _load_checkpoints(self) -> dict | None:
        opt = self.opt
        if opt.continue_train:
            state_path = os.path.join(self.folder, f"{opt.which_epoch}_train_state.pt")
            state = None
            if os.path.exists(state_path):
                # Plain containers, numbers and tensors only: loading never unpickles code.
                state = read_checkpoint_file(state_path, "training state", advice=_resume_advice(self.folder))
                missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
                if missing:
                    raise CheckpointReadError(
                        f"cannot read training state {state_path}: not a training state of pix2pixhd-fast "
                        f"(no {', '.join(missing)}); {_resume_advice(self.folder)}"
                    )
            nets = (state or {}).get("nets", {})
            for net in _NETS:
                m = self._net(net)
                if m is None:
                    continue
                path = self._ckpt(opt.which_epoch, net)
                if net in nets:
                    # The training state holds the weights it belongs to: the per-network files are written one
                    # after the other, so a kill between two of those writes leaves files of different iterations;
                    # the state file (written last, atomically) is always one consistent snapshot.
                    load_pix2pixhd_checkpoint(nets[net], m)
                    if self.is_main and os.path.exists(path) and not _same_tensors(path, nets[net]):
                        print(
                            f"--continue_train: {path} differs from the training state (interrupted save?): "
                            "resuming from the state's weights"
                        )
                    continue
                if not os.path.exists(path):
                    raise FileNotFoundError(f"--continue_train: {path} does not exist")
                load_pix2pixhd_checkpoint(path, m)
            if state is not None:
                return state
            # A run from the reference implementation: its iter.txt says where it stopped.
            iter_path = os.path.join(self.folder, "iter.txt")
            if os.path.exists(iter_path):
                try:
                    epoch, epoch_iter = np.loadtxt(iter_path, delimiter=",", dtype=int)
                except ValueError as e:
                    raise CheckpointReadError(
                        f"cannot read {iter_path} (expected 'epoch,images' as the reference writes it): {e}; "
                        f"{_resume_advice(self.folder)}"
                    ) from None
                self.progress.epoch, self.progress.epoch_iter = int(epoch), int(epoch_iter)
            return None
        if opt.load_pretrain:
            g_path = self._ckpt(opt.which_epoch, "G", opt.load_pretrain)
            if not os.path.exists(g_path):
                raise FileNotFoundError(f"--load_pretrain: {g_path} does not exist (check the folder, --which_epoch)")
            for net in _NETS:
                m = self._net(net)
                path = self._ckpt(opt.which_epoch, net, opt.load_pretrain)
                if m is None or not os.path.exists(path):
                    continue
                res = load_pix2pixhd_checkpoint(path, m, partial=True)
                if self.is_main:
                    print(f"load_pretrain: net {net}: {res.summary()}")
        return None

    def _build_optimizers(self, lr: float) -> None:
        opt = self.opt
        g_params = trainable_generator_params(self.model.netG, opt, self.fix_global)
        if self.model.netE is not None:
            g_params += list(self.model.netE.parameters())
        cap = opt.cuda_graph
        self.optimizer_G = make_adam(g_params, lr, opt.beta1, self.device, opt.fused_adam, cap)
        self.optimizer_D = make_adam(self.model.netD.parameters(), lr, opt.beta1, self.device, opt.fused_adam, cap)

    def _wrap(self) -> None:
        """DDP and torch.compile wrappers around the networks (the model keeps the raw modules in ``raw``)."""
        self.raw = {k: self._net(k) for k in _NETS if self._net(k) is not None}
        for k, m in self.raw.items():
            if self.dist.enabled:
                ids = [self.device.index] if self.device.type == "cuda" else None
                m = nn.parallel.DistributedDataParallel(m, device_ids=ids, broadcast_buffers=False)
            if self.opt.compile:
                m = torch.compile(m)
            setattr(self.model, "net" + k, m)
        self.model.set_generator_discriminator(self.raw["D"] if self.dist.enabled else None)

    def _unwrapped_model_nets(self) -> None:
        for k, m in self.raw.items():
            setattr(self.model, "net" + k, m)

    def _restore_state(self, state: dict) -> None:
        p = self.progress
        p.epoch, p.epoch_iter = state["epoch"], state["epoch_iter"]
        p.total_steps, p.iterations = state["total_steps"], state["iterations"]
        if state.get("fix_global", False) != self.fix_global:
            self.fix_global = state["fix_global"]
            self._build_optimizers(learning_rate(p.epoch, self.opt))
        self.optimizer_G.load_state_dict(state["optimizer_G"])
        self.optimizer_D.load_state_dict(state["optimizer_D"])
        for o in (self.optimizer_G, self.optimizer_D):
            match_capturable(o, self.opt.cuda_graph)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.model.fake_pool.images = [t.to(self.device) for t in state.get("fake_pool", [])]
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if "numpy" in rng:
            kind, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        if "python" in rng:
            random.setstate(rng["python"])

    # ---------------------------------------------------------------------------------------------------------
    # Checkpoints
    def save(self, which_epoch: str) -> None:
        """Write the networks (reference format) and the training state, each atomically; rank 0 only."""
        if not self.is_main:
            return
        self._open_outputs()
        for k, m in self.raw.items():
            save_pix2pixhd_checkpoint(m, self._ckpt(which_epoch, k))
        p = self.progress
        state = {
            "epoch": p.epoch,
            "epoch_iter": p.epoch_iter,
            "total_steps": p.total_steps,
            "iterations": p.iterations,
            "fix_global": self.fix_global,
            "nets": {k: {n: t.detach().cpu() for n, t in m.state_dict().items()} for k, m in self.raw.items()},
            "optimizer_G": self.optimizer_G.state_dict(),
            "optimizer_D": self.optimizer_D.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "fake_pool": [t.cpu() for t in self.model.fake_pool.images],
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
            "world_size": self.dist.world_size,
            "batch_size": self.opt.batchSize,
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        atomic_save(state, os.path.join(self.folder, f"{which_epoch}_train_state.pt"))
        with atomic_write(os.path.join(self.folder, "iter.txt"), "wb") as f:
            np.savetxt(f, (p.epoch, p.epoch_iter), delimiter=",", fmt="%d")

    # ---------------------------------------------------------------------------------------------------------
    # One iteration
    def _to_device(self, batch: dict) -> tuple:
        nb = self.device.type == "cuda"
        label = batch["label"].to(self.device, non_blocking=nb)
        inst = batch.get("inst")
        inst = inst.to(self.device, non_blocking=nb) if (inst is not None and not self.opt.no_instance) else None
        image = batch["image"].to(self.device, non_blocking=nb)
        feat = batch.get("feat")
        feat = feat.to(self.device, non_blocking=nb) if feat is not None else None
        return label, inst, image, feat

    def train_step(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One iteration: forward, G step, D step. Returns the loss terms (device tensors, no sync) and the
        generated images (under ``--cuda_graph``: the graph's outputs, overwritten by the next step)."""
        graphed = getattr(self, "graphed", None)
        if graphed is not None:
            return graphed(batch)
        return self.eager_step(batch)

    def eager_step(self, batch: dict, autocast_cache: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """:meth:`train_step` launched op by op (``autocast_cache=False`` while a CUDA graph captures it)."""
        label, inst, image, feat = self._to_device(batch)
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
            cache_enabled=autocast_cache,
        ):
            terms, fake = self.model.compute_losses(
                label, inst, image, feat, dtype=self.input_dtype, channels_last=self.channels_last
            )
        self.optimizer_G.zero_grad(set_to_none=True)
        self.scaler.scale(terms.loss_G).backward()
        self.scaler.step(self.optimizer_G)
        self.optimizer_D.zero_grad(set_to_none=True)
        self.scaler.scale(terms.loss_D).backward()
        self.scaler.step(self.optimizer_D)
        self.scaler.update()
        return terms.as_dict(), fake

    def _set_lr(self, lr: float) -> None:
        for o in (self.optimizer_G, self.optimizer_D):
            set_learning_rate(o, lr)

    def _visuals(self, batch: dict, fake: torch.Tensor) -> dict[str, np.ndarray]:
        opt = self.opt
        if opt.label_nc == 0:
            lab = to_uint8_image(batch["label"][0])
        else:
            lab = colorize_label(batch["label"][0, 0].cpu(), opt.label_nc)
        return {
            "input_label": lab,
            "synthesized_image": to_uint8_image(fake[0].detach().float().cpu()),
            "real_image": to_uint8_image(batch["image"][0].float().cpu()),
        }

    # ---------------------------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run the schedule from where the progress stands; returns a summary (last losses, images/s, epochs).

        SIGINT / SIGTERM (in the main thread) finish the current step, save ``latest`` and raise
        :class:`TrainingInterrupted`; a second signal interrupts at once (KeyboardInterrupt).

        In a distributed run every rank stops after the same step: a signal often reaches the ranks at different
        times (or only one of them), and a rank that stopped alone would leave the others in the next step's
        gradient all-reduce (an error under gloo; under nccl, a wait until the process group's timeout). After each
        step the ranks take the largest pending signal number (one CPU all-reduce of a scalar) and all act on it."""
        opt, p = self.opt, self.progress
        n_epochs = total_epochs(opt)
        per_epoch = len(self.loader) * opt.batchSize
        max_iters = opt.max_iters if not opt.debug else min(opt.max_iters, 5)
        last: dict[str, float] = {}
        t_start, images_done = time.perf_counter(), 0
        from tqdm import tqdm

        stop: list[int] = []  # filled by this process's signal handlers with the signal that asked to stop
        restore_signals = _stop_on_signals(stop)
        stop_signal = 0  # the signal all ranks agreed to stop on (0: go on)

        def agreed_stop() -> int:
            return agree_max(stop[0] if stop else 0, self.dist, self._host_group)

        try:
            while p.epoch <= n_epochs and p.iterations < max_iters and not (stop_signal := agreed_stop()):
                epoch = p.epoch
                if self.fix_global and not fixes_global(epoch, opt):
                    self._unfix_global()
                self._set_lr(learning_rate(epoch, opt))
                skip = p.epoch_iter // opt.batchSize
                self.loader.sampler.set_epoch(epoch, start=skip * opt.batchSize)
                bar = tqdm(
                    total=len(self.loader),
                    initial=skip,
                    desc=f"epoch {epoch}/{n_epochs}",
                    unit="it",
                    disable=opt.no_progress or not self.is_main,
                    leave=False,
                    dynamic_ncols=True,
                )
                t_data = time.perf_counter()
                for batch in self.loader:
                    t0 = time.perf_counter()
                    losses, fake = self.train_step(batch)
                    p.iterations += 1
                    p.total_steps += opt.batchSize
                    p.epoch_iter += opt.batchSize
                    images_done += opt.batchSize * self.dist.world_size
                    self._open_outputs()
                    bar.update(1)
                    stop_signal = agreed_stop()
                    if p.total_steps % opt.print_freq < opt.batchSize or p.iterations >= max_iters or stop_signal:
                        last = {k: v.detach().item() for k, v in losses.items()}
                        if self.is_main:
                            msg = self.visualizer.print_losses(
                                epoch, p.epoch_iter, last, t0 - t_data, (time.perf_counter() - t0) / opt.batchSize
                            )
                            self.visualizer.plot_scalars(last, p.total_steps)
                            bar.write(msg) if not opt.no_progress else None
                        p.history.append({"epoch": epoch, "iterations": p.iterations, **last})
                    if self.is_main and p.total_steps % opt.display_freq < opt.batchSize:
                        self.visualizer.display_results(self._visuals(batch, fake), epoch, p.total_steps)
                    if p.total_steps % opt.save_latest_freq < opt.batchSize:
                        self.save("latest")
                    t_data = time.perf_counter()
                    if p.iterations >= max_iters or stop_signal:
                        break
                bar.close()
                if (p.iterations >= max_iters or stop_signal) and p.epoch_iter < per_epoch:
                    break  # stopped inside the epoch: 'latest' (saved by train) records the position
                if self.is_main and not opt.no_html:  # one row per epoch on the page, from its last batch
                    self.visualizer.display_results(self._visuals(batch, fake), epoch, p.total_steps)
                p.epoch, p.epoch_iter = epoch + 1, 0
                if epoch % opt.save_epoch_freq == 0:
                    self.save("latest")
                    if self.is_main:
                        for k, m in self.raw.items():
                            save_pix2pixhd_checkpoint(m, self._ckpt(str(epoch), k))
            self.save("latest")
        finally:
            restore_signals()
            if self.visualizer is not None:
                self.visualizer.close()
        if stop_signal:
            raise TrainingInterrupted(stop_signal, self.folder, p.epoch, p.iterations)
        elapsed = time.perf_counter() - t_start
        return {
            "epochs_done": p.epoch - 1,
            "iterations": p.iterations,
            "images_per_s": images_done / elapsed if elapsed > 0 else math.nan,
            "last_losses": last,
            "history": p.history,
            "checkpoints": self.folder,
        }

    def _unfix_global(self) -> None:
        """End of ``niter_fix_global``: train all of G (and E) from now on, as the reference's update_fixed_params."""
        self._unwrapped_model_nets()
        self.fix_global = False
        lr = self.optimizer_G.param_groups[0]["lr"]
        g_params = trainable_generator_params(self.model.netG, self.opt, False)
        if self.model.netE is not None:
            g_params += list(self.model.netE.parameters())
        self.optimizer_G = make_adam(
            g_params, float(lr), self.opt.beta1, self.device, self.opt.fused_adam, self.opt.cuda_graph
        )
        self._wrap()
        if self.is_main:
            print(f"------------ Now also finetuning global generator (epoch {self.progress.epoch}) -----------")


def train(opt: argparse.Namespace) -> dict:
    """Train with ``opt`` (see :func:`pix2pixhd_fast.options.parse_train`); returns the trainer's summary."""
    trainer = Trainer(opt)
    try:
        return trainer.train()
    finally:
        cleanup_distributed()
