"""Progress and results of a training run: the loss log, TensorBoard, and the reference's HTML page.

Files (under ``<checkpoints_dir>/<name>``): ``loss_log.txt`` (one line per print, the reference's format),
``logs/`` (TensorBoard event files with ``--tf_log``), ``web/index.html`` + ``web/images/`` (label / synthesized /
real images per epoch and iteration, newest first). Only the main process writes.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping

import numpy as np
from PIL import Image

from ..utils.files import atomic_write, atomic_write_text

__all__ = ["Visualizer", "write_html_page", "save_image"]


def save_image(array: np.ndarray, path: str) -> None:
    """Save an ``HxWx3`` (or ``HxW``) uint8 array as PNG, atomically (a reader never sees half an image)."""
    with atomic_write(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")


def write_html_page(
    path: str, title: str, rows: list[tuple[str, list[tuple[str, str]]]], width: int = 256, refresh: int = 0
) -> None:
    """Write a simple results page: one section per row header, each with captioned images.

    Args:
        path: the ``index.html`` to write (image paths are relative to its folder).
        rows: ``[(header, [(caption, image_relpath), ...]), ...]`` in display order.
        width: displayed image width in pixels. refresh: auto-reload period in seconds (0: none).
    """
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>"]
    if refresh > 0:
        out.append(f"<meta http-equiv='refresh' content='{int(refresh)}'>")
    out.append(
        "<style>body{font-family:sans-serif} figure{display:inline-block;margin:4px;text-align:center}"
        "figcaption{font-size:13px}</style></head><body>"
    )
    out.append(f"<h1>{html.escape(title)}</h1>")
    for header, images in rows:
        out.append(f"<h3>{html.escape(header)}</h3><div>")
        for caption, rel in images:
            src = html.escape(rel.replace(os.sep, "/"), quote=True)
            out.append(
                f"<figure><a href='{src}'><img src='{src}' style='width:{int(width)}px'></a>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        out.append("</div>")
    out.append("</body></html>")
    atomic_write_text(path, "\n".join(out))


class Visualizer:
    """Loss log, TensorBoard scalars/images and the HTML page of one experiment.

    Args:
        folder: ``<checkpoints_dir>/<name>``. enabled: False on non-main processes (nothing is written).
        tf_log: write TensorBoard events to ``folder/logs``. html: keep ``folder/web/index.html``.
        display_winsize: width of images on the page.
    """

    def __init__(
        self,
        folder: str,
        enabled: bool = True,
        tf_log: bool = False,
        html: bool = True,
        display_winsize: int = 256,
        name: str = "",
    ):
        self.folder, self.enabled, self.use_html, self.name = folder, enabled, html, name
        self.winsize = display_winsize
        self.web_dir = os.path.join(folder, "web")
        self.img_dir = os.path.join(self.web_dir, "images")
        self.log_name = os.path.join(folder, "loss_log.txt")
        self.writer = None
        self.entries: list[tuple[str, list[tuple[str, str]]]] = []
        if not enabled:
            return
        os.makedirs(self.img_dir if html else folder, exist_ok=True)
        with open(self.log_name, "a") as f:
            f.write(f"================ Training Loss ({time.strftime('%c')}) ================\n")
        if tf_log:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(folder, "logs"))
        if html:
            self._load_entries()

    def _load_entries(self) -> None:
        # Resumed runs keep the earlier results on the page: rebuild the list from the image files.
        found: dict[tuple[int, int], list[tuple[str, str]]] = {}
        for fn in sorted(os.listdir(self.img_dir)):
            if not fn.endswith(".png") or not fn.startswith("epoch"):
                continue
            parts = fn[:-4].split("_", 2)  # epoch003_iter00000100_input_label
            try:
                epoch, it, kind = int(parts[0][5:]), int(parts[1][4:]), parts[2]
            except (ValueError, IndexError):
                continue
            found.setdefault((epoch, it), []).append((kind, os.path.join("images", fn)))
        order = {"input_label": 0, "synthesized_image": 1, "real_image": 2}
        for (epoch, it), imgs in sorted(found.items(), reverse=True):
            imgs.sort(key=lambda x: order.get(x[0], 9))
            self.entries.append((f"epoch {epoch}, iteration {it}", imgs))

    def plot_scalars(self, losses: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in losses.items():
                self.writer.add_scalar(k, v, step)

    def print_losses(
        self, epoch: int, epoch_iter: int, losses: Mapping[str, float], t_data: float, t_comp: float
    ) -> str:
        """Append one line in the reference format: ``(epoch: E, iters: I, time: T) G_GAN: ... ``."""
        msg = f"(epoch: {epoch}, iters: {epoch_iter}, time: {t_comp:.3f}, data: {t_data:.3f}) "
        msg += " ".join(f"{k}: {v:.3f}" for k, v in losses.items())
        if self.enabled:
            with open(self.log_name, "a") as f:
                f.write(msg + "\n")
        return msg

    def display_results(self, visuals: Mapping[str, np.ndarray], epoch: int, step: int) -> None:
        """Save ``{'input_label': HxWx3, 'synthesized_image': ..., 'real_image': ...}`` and refresh the page."""
        if not self.enabled:
            return
        if self.writer is not None:
            for k, img in visuals.items():
                self.writer.add_image(k, img, step, dataformats="HWC")
        if not self.use_html:
            return
        imgs = []
        for k, img in visuals.items():
            rel = os.path.join("images", f"epoch{epoch:03d}_iter{step:08d}_{k}.png")
            save_image(img, os.path.join(self.web_dir, rel))
            imgs.append((k, rel))
        self.entries.insert(0, (f"epoch {epoch}, iteration {step}", imgs))
        write_html_page(
            os.path.join(self.web_dir, "index.html"),
            f"Experiment name = {self.name}",
            self.entries,
            width=self.winsize,
            refresh=0,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
