"""Training: the loop (channels-last, AMP, fused Adam, DDP, safe checkpoints), schedules and logging."""

from .distributed import DistInfo, init_distributed
from .schedule import fixes_global, learning_rate, total_epochs, trainable_generator_params
from .trainer import Trainer, make_adam, resolve_amp, resolve_device, train
from .visualizer import Visualizer, write_html_page

__all__ = [
    "DistInfo",
    "Trainer",
    "Visualizer",
    "fixes_global",
    "init_distributed",
    "learning_rate",
    "make_adam",
    "resolve_amp",
    "resolve_device",
    "total_epochs",
    "train",
    "trainable_generator_params",
    "write_html_page",
]
