"""Embedded demo data: procedural street scenes in the pix2pixHD / Cityscapes layout.

Each scene is a one-point-perspective street seen from a car: sky with clouds, building facades receding to
the vanishing point (windows on a metric grid, so they shrink with distance), hedges, walls and fences in the
gaps, a road with lane markings, sidewalks with paving, terrain, poles with traffic signs and lights, trees,
and several cars, people, sometimes a cyclist and a bus or truck. Everything is placed in metres on the
ground plane and projected, so sizes, occlusion (painter's order, far to near) and haze follow the depth.

Outputs follow Cityscapes: ``label`` holds labelIds (road 7, sidewalk 8, building 11, ..., car 26; see
:data:`pix2pixhd_fast.data.palette.CITYSCAPES_LABELS`), ``inst`` holds the class id on stuff pixels and
``class * 1000 + k`` on things, with ``k = 0, 1, ...`` numbering the visible objects of that class in the
image. The photo depends on the labels (texture and shading per class) and on the instance: every car has
its own paint (distinct palette entries within a scene), every person their own clothing, so an instance
feature encoder has a per-instance signal to learn.

Deterministic: a scene is a function of the ``numpy.random.Generator`` passed in; the dataset writer seeds
scene ``i`` of ``phase`` with ``(seed, crc32(phase), i)``, so scenes do not depend on ``n`` or on each other.
Vectorised numpy throughout: 200 scenes of 256x128 render and write in a few seconds on two cores.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from .palette import CITYSCAPES_IDS, CITYSCAPES_LABEL_NC, CITYSCAPES_LABELS, CITYSCAPES_THING_IDS

__all__ = ["render_scene", "make_synthetic_dataset", "parse_size", "SYNTHETIC_FILE_SUFFIXES"]

ROAD = CITYSCAPES_IDS["road"]
SIDEWALK = CITYSCAPES_IDS["sidewalk"]
BUILDING = CITYSCAPES_IDS["building"]
WALL = CITYSCAPES_IDS["wall"]
FENCE = CITYSCAPES_IDS["fence"]
POLE = CITYSCAPES_IDS["pole"]
LIGHT = CITYSCAPES_IDS["traffic light"]
SIGN = CITYSCAPES_IDS["traffic sign"]
VEGETATION = CITYSCAPES_IDS["vegetation"]
TERRAIN = CITYSCAPES_IDS["terrain"]
SKY = CITYSCAPES_IDS["sky"]
PERSON = CITYSCAPES_IDS["person"]
RIDER = CITYSCAPES_IDS["rider"]
CAR = CITYSCAPES_IDS["car"]
TRUCK = CITYSCAPES_IDS["truck"]
BUS = CITYSCAPES_IDS["bus"]
BICYCLE = CITYSCAPES_IDS["bicycle"]

#: File name suffixes written per kind (Cityscapes style, so the dataset's pairing rule is exercised).
SYNTHETIC_FILE_SUFFIXES = {"label": "_gtFine_labelIds", "inst": "_gtFine_instanceIds", "img": "_leftImg8bit"}

# Colours are linear-ish RGB in [0, 1].
_CAR_PAINTS = np.array(
    [
        (0.90, 0.90, 0.88),  # white
        (0.07, 0.07, 0.08),  # black
        (0.66, 0.68, 0.71),  # silver
        (0.36, 0.38, 0.41),  # grey
        (0.72, 0.07, 0.06),  # red
        (0.42, 0.04, 0.08),  # dark red
        (0.08, 0.20, 0.62),  # blue
        (0.42, 0.62, 0.88),  # light blue
        (0.06, 0.32, 0.16),  # green
        (0.92, 0.76, 0.08),  # yellow
        (0.92, 0.44, 0.08),  # orange
        (0.40, 0.24, 0.11),  # brown
        (0.82, 0.74, 0.56),  # beige
        (0.36, 0.14, 0.48),  # purple
        (0.06, 0.50, 0.52),  # teal
    ],
    dtype=np.float32,
)
_SHIRTS = np.array(
    [
        (0.85, 0.12, 0.12), (0.12, 0.35, 0.80), (0.95, 0.85, 0.15), (0.15, 0.60, 0.25), (0.92, 0.92, 0.90),
        (0.10, 0.10, 0.12), (0.95, 0.50, 0.10), (0.55, 0.20, 0.60), (0.45, 0.75, 0.90), (0.90, 0.45, 0.60),
        (0.50, 0.35, 0.20), (0.55, 0.58, 0.60),
    ],
    dtype=np.float32,
)  # fmt: skip
_TROUSERS = np.array(
    [(0.12, 0.18, 0.38), (0.08, 0.08, 0.09), (0.62, 0.55, 0.40), (0.35, 0.36, 0.38), (0.25, 0.20, 0.15)],
    dtype=np.float32,
)
_SKIN = np.array(
    [(0.96, 0.80, 0.69), (0.88, 0.68, 0.52), (0.70, 0.50, 0.36), (0.48, 0.32, 0.22), (0.32, 0.21, 0.15)],
    dtype=np.float32,
)
_HAIR = np.array([(0.08, 0.06, 0.05), (0.30, 0.20, 0.10), (0.70, 0.55, 0.30), (0.55, 0.55, 0.55)], dtype=np.float32)
_FACADES = np.array(
    [
        (0.78, 0.72, 0.60), (0.62, 0.34, 0.26), (0.55, 0.55, 0.56), (0.86, 0.84, 0.80), (0.48, 0.40, 0.34),
        (0.80, 0.66, 0.46), (0.40, 0.42, 0.46), (0.70, 0.58, 0.52), (0.88, 0.80, 0.66),
    ],
    dtype=np.float32,
)  # fmt: skip
# (sky top, sky at the horizon, cloud cover offset)
_SKIES = (
    ((0.22, 0.42, 0.80), (0.70, 0.80, 0.93), -0.7),
    ((0.45, 0.58, 0.78), (0.82, 0.85, 0.89), -0.25),
    ((0.60, 0.62, 0.67), (0.82, 0.82, 0.84), 0.35),
    ((0.24, 0.30, 0.56), (0.95, 0.72, 0.52), -0.45),
)


# ----------------------------------------------------------------------------------------------------
# Noise


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise ``float32[h, w]`` of about unit variance: a random grid every ``cell`` pixels, interpolated."""
    cell = max(float(cell), 1.0)
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    y = (np.arange(h, dtype=np.float32) + 0.5) / cell
    x = (np.arange(w, dtype=np.float32) + 0.5) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = y - np.floor(y), x - np.floor(x)
    fy = (fy * fy * (3 - 2 * fy))[:, None]
    fx = (fx * fx * (3 - 2 * fx))[None, :]
    a, b = g[y0][:, x0], g[y0][:, x0 + 1]
    c, d = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _frac(x: np.ndarray) -> np.ndarray:
    """Fractional part (``x - floor(x)``; np.mod is several times slower on floats)."""
    return x - np.floor(x)


def _soft(dist_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a line given the signed distance (pixels, negative inside) to its edge."""
    return np.clip(0.5 - dist_px, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# Scene


class _Scene:
    """One scene being rendered: camera, street layout, the three output buffers, and the object painters."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.rng = rng
        self.W, self.H = width, height
        self.label = np.zeros((height, width), np.uint8)
        self.inst = np.zeros((height, width), np.int32)
        self.chw = np.zeros((3, height, width), np.float32)  # the photo as planes; ``img`` is an HWC view of it
        self.img = self.chw.transpose(1, 2, 0)
        self.next_k: dict[int, int] = {}
        self.boxes: list[tuple[float, float, float, float]] = []  # screen boxes of placed things

        # Camera: horizon row, vanishing column, pixels per metre at the bottom row, depth of the bottom row.
        self.hz = height * rng.uniform(0.36, 0.46)
        self.vx = width * rng.uniform(0.38, 0.62)
        cam_h = rng.uniform(1.9, 2.7)
        self.s = (height - self.hz) / cam_h
        focal = 0.5 * width / np.tan(np.radians(rng.uniform(36.0, 44.0)))
        self.zmin = float(focal / self.s)
        # Street layout in metres (lateral position X, 0 = camera); the camera is off the road's centre.
        self.c0 = rng.uniform(-1.0, 1.0)
        self.road = rng.uniform(3.2, 5.0)  # half width
        self.walk = rng.uniform(2.2, 4.0, size=2)  # left, right sidewalk widths
        self.strip = np.where(rng.random(2) < 0.4, rng.uniform(0.5, 2.5, size=2), 0.0)  # terrain beyond the walk
        self.haze_m = rng.uniform(120.0, 400.0)
        top, horizon, cover = _SKIES[rng.integers(len(_SKIES))]
        jitter = rng.uniform(-0.04, 0.04, size=3)
        self.sky_top = np.clip(np.array(top) + jitter, 0, 1).astype(np.float32)
        self.sky_horizon = np.clip(np.array(horizon) + jitter, 0, 1).astype(np.float32)
        self.cloud_cover = cover
        self.sun = rng.uniform(0.65, 1.0, size=2)  # light on the left / right facades

        ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
        xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
        self.ys, self.xs = ys, xs
        self.fine = rng.standard_normal((height, width), dtype=np.float32)
        self.smooth = _value_noise(rng, height, width, max(3.0, width / 40))

    # ---- geometry ----------------------------------------------------------------------------------
    def ground_row(self, d: np.ndarray | float) -> np.ndarray | float:
        """Screen row of the ground at normalised inverse depth ``d = zmin / Z``."""
        return self.hz + d * (self.H - self.hz)

    def haze(self, z: np.ndarray) -> np.ndarray:
        return (1.0 - np.exp(-z / self.haze_m)).astype(np.float32)

    # ---- background -------------------------------------------------------------------------------
    def paint_background(self) -> None:
        rng, H, W = self.rng, self.H, self.W
        ys, xs = self.ys, self.xs
        f32 = np.float32
        chw = self.chw  # planes: numpy is far faster on long rows than on a trailing RGB axis

        # Sky: vertical gradient and soft clouds.
        t = np.clip(ys / self.hz, 0, 1) ** 0.7  # [H, 1]
        cloud = np.clip(_value_noise(rng, H, W, max(4.0, W / 9)) * 0.6 + self.cloud_cover, 0, 1) * f32(0.75)
        for c, white in enumerate((0.93, 0.93, 0.95)):
            chw[c] = (self.sky_top[c] * (1 - t) + self.sky_horizon[c] * t) * (1 - cloud) + cloud * f32(white)
        self.label[:] = SKY

        # Ground plane, rows below the horizon: depth, lateral metres from the road's centre, pixels per metre.
        r0 = min(max(int(np.ceil(self.hz - 0.5)), 0), H)
        d = ((ys[r0:] - self.hz) / (H - self.hz)).clip(1e-4, None)  # [Hg, 1]
        z = self.zmin / d
        px = self.s * d
        lat = (xs - self.vx) / px - self.c0  # [Hg, W]
        alat = np.abs(lat)
        walk_w = np.where(lat > 0, f32(self.walk[1]), f32(self.walk[0]))
        kind = (alat >= self.road).astype(np.int64) + (alat >= self.road + walk_w)  # 0 road, 1 walk, 2 terrain
        asphalt, pave = rng.uniform(0.24, 0.40), rng.uniform(0.52, 0.70)
        base = np.array(
            [
                (asphalt, asphalt, asphalt * 1.05),
                (pave, pave * 0.97, pave * rng.uniform(0.88, 0.98)),
                (rng.uniform(0.25, 0.45), rng.uniform(0.38, 0.50), rng.uniform(0.14, 0.24)),
            ],
            f32,
        )
        smooth, fine = self.smooth[r0:], self.fine[r0:]
        shade = 1 + np.take(np.array([0.07, 0.05, 0.18], f32), kind) * smooth
        shade += np.take(np.array([0.05, 0.04, 0.15], f32), kind) * fine
        # Lane markings (a dashed centre line, solid edge lines) and paving joints, anti-aliased by pixel width.
        dash = _frac(z / rng.uniform(6.0, 10.0)) < 0.45
        marks = np.maximum(_soft((alat - 0.08) * px) * dash, _soft((np.abs(alat - (self.road - 0.3)) - 0.07) * px))
        paint = 0.8 * marks * (kind == 0)
        tile = rng.uniform(0.4, 0.7)
        joints = np.maximum(
            _soft((np.abs(_frac(z / tile + 0.5) - 0.5) * tile - 0.02) * px),
            _soft((np.abs(_frac(lat / tile + 0.5) - 0.5) * tile - 0.02) * px),
        )
        paving = (1 - 0.25 * joints) * (1 + 0.25 * (alat < self.road + 0.22))  # the curb is lighter
        shade *= np.where(kind == 1, paving, f32(1.0))
        hz = self.haze(z)
        gain = shade * (1 - paint) * (1 - hz)
        for c, white in enumerate((0.88, 0.88, 0.84)):
            chw[c, r0:] = np.take(base[:, c], kind) * gain + (paint * f32(white)) * (1 - hz) + hz * self.sky_horizon[c]
        self.label[r0:] = np.take(np.array([ROAD, SIDEWALK, TERRAIN], np.uint8), kind)

        for side_i, sign in ((0, -1.0), (1, 1.0)):
            self._paint_facades(side_i, sign)

    def _paint_facades(self, side_i: int, sign: float) -> None:
        """Buildings, hedges, walls and fences on a vertical plane along the street on one side."""
        rng, f32 = self.rng, np.float32
        lateral = sign * float(self.road + self.walk[side_i] + self.strip[side_i]) + self.c0  # camera-relative
        cols = np.nonzero((self.xs[0] - self.vx) * sign > 0.5)[0]
        if cols.size == 0:
            return
        d = ((self.xs[0, cols] - self.vx) / (self.s * lateral)).clip(1e-4, None)  # depth of the plane per column
        z = self.zmin / d
        # Segments along the street: lengths grow with distance (far ones are a few pixels anyway).
        bounds, kinds_l, heights, colours, floor_h, win_w = [0.0], [], [], [], [], []
        zmax = float(z.max())
        while bounds[-1] <= zmax and len(bounds) < 400:
            kind = min(int(np.searchsorted((0.72, 0.86, 0.93), rng.random(), side="right")), 3)
            kinds_l.append(kind)  # building, vegetation, wall, fence
            lo, hi = ((7.0, 22.0), (2.5, 7.0), (1.2, 2.6), (1.0, 2.0))[kind]
            heights.append(rng.uniform(lo, hi))
            if kind == 0:
                colours.append(np.clip(_FACADES[rng.integers(len(_FACADES))] + rng.uniform(-0.05, 0.05, 3), 0, 1))
            elif kind == 1:
                colours.append((rng.uniform(0.12, 0.25), rng.uniform(0.28, 0.42), rng.uniform(0.06, 0.14)))
            elif kind == 2:
                grey = rng.uniform(0.55, 0.70)
                colours.append((grey, grey * 0.97, grey * 0.92))
            else:
                colours.append((0.45, 0.32, 0.18) if rng.random() < 0.5 else (0.35, 0.37, 0.38))
            floor_h.append(rng.uniform(2.8, 3.6))
            win_w.append(rng.uniform(2.0, 3.6))
            bounds.append(bounds[-1] + rng.uniform(6.0, 20.0) * (1.0 + bounds[-1] / 60.0))
        seg = np.clip(np.searchsorted(np.array(bounds), z, side="right") - 1, 0, len(kinds_l) - 1)
        kinds = np.array(kinds_l)[seg]
        top = np.array(heights, f32)[seg]
        # Hedge tops wave along the street.
        wave = 1 + 0.2 * np.sin(z * rng.uniform(0.2, 0.5) + rng.uniform(0, 6.3))
        wave += 0.1 * np.sin(z * rng.uniform(0.8, 1.5))
        top = np.where(kinds == 1, top * wave, top)
        # Height above the ground (metres) of every pixel of these columns on the plane; keep the covered ones.
        h = (self.ground_row(d)[None, :] - self.ys) / (self.s * d)[None, :]
        yy, ci = np.nonzero((h >= 0) & (h <= top[None, :]))
        if yy.size == 0:
            return
        xx = cols[ci]
        h, k, sg, zz, top = h[yy, ci], kinds[ci], seg[ci], z[ci], top[ci]
        base = np.array(colours, f32).T[:, sg]  # [3, N]
        smooth, fine = self.smooth[yy, xx], self.fine[yy, xx]
        tex = 1 + 0.06 * smooth + 0.04 * fine
        # Buildings: windows on a metric grid (floors x bays), some lit, a darker ground floor.
        fh, ww = np.array(floor_h, f32)[sg], np.array(win_w, f32)[sg]
        along = zz - np.array(bounds, f32)[sg]
        fy, fx = _frac(h / fh), _frac(along / ww)
        win = (k == 0) & (fy > 0.32) & (fy < 0.78) & (fx > 0.22) & (fx < 0.72) & (h > 2.8) & (h < top - 0.8)
        lit = ((np.floor(h / fh) * 7 + np.floor(along / ww) * 13 + sg) % 9) == 0
        glass = np.where(
            lit,
            np.array([0.68, 0.58, 0.34], f32)[:, None],
            np.array([0.13, 0.16, 0.22], f32)[:, None] + 0.25 * np.clip(h / 25, 0, 1) * self.sky_horizon[:, None],
        )
        # Per material brightness: building (darker ground floor), leafy hedge, wall with a cap, fence slats.
        leafy = 0.55 + 0.25 * smooth + 0.3 * np.clip(fine, -1.5, 1.5)
        slat = _soft((np.abs(_frac(zz / 0.22) - 0.5) * 0.22 - 0.03) * (self.s * d[ci]))
        gain = np.select(
            [k == 0, k == 1, k == 2],
            [tex * np.where(h < 2.6, f32(0.72), f32(1.0)), leafy, tex * np.where(h > top - 0.15, f32(1.15), f32(1.0))],
            tex * (1 - 0.4 * slat),
        ) * f32(self.sun[side_i])
        col = np.where(win, glass, base * gain)
        hz = self.haze(zz)
        self.chw[:, yy, xx] = col * (1 - hz) + hz * self.sky_horizon[:, None]
        self.label[yy, xx] = np.array([BUILDING, VEGETATION, WALL, FENCE], np.uint8)[k]

    # ---- objects ----------------------------------------------------------------------------------
    def project(self, x_m: float, z_m: float, w_m: float, h_m: float) -> tuple[float, float, float, float]:
        """Screen box ``(cx, bottom, width_px, height_px)`` of an upright object standing at (x_m, z_m)."""
        d = self.zmin / z_m
        px = self.s * d
        return self.vx + x_m * px, float(self.ground_row(d)), w_m * px, h_m * px

    def local(
        self, cx: float, yb: float, w: float, h: float, below: float = 0.0
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Pixel window of a box and its local coordinates: ``u`` in [-0.5, 0.5] across, ``v`` 0 (bottom) .. 1 (top).

        ``below`` extends the window under the box (fraction of the height) for shadows.
        """
        w = max(w, 1.0)
        x0 = max(int(np.floor(cx - w / 2)), 0)
        x1 = min(int(np.ceil(cx + w / 2)), self.W)
        y0 = max(int(np.floor(yb - h)), 0)
        y1 = min(int(np.ceil(yb + below * h)), self.H)
        if x1 <= x0 or y1 <= y0:
            return None
        u = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / w)[None, :]
        v = ((yb - np.arange(y0, y1, dtype=np.float32) - 0.5) / max(h, 1e-3))[:, None]
        return (slice(y0, y1), slice(x0, x1)), u, v

    def paint(self, win: tuple[slice, slice], mask: np.ndarray, cls: int, col: np.ndarray, iid: int | None) -> None:
        lab, ins, img = self.label[win], self.inst[win], self.img[win]
        mask = np.broadcast_to(mask, lab.shape)
        lab[mask] = cls
        ins[mask] = cls if iid is None else iid
        img[mask] = np.broadcast_to(col, (*lab.shape, 3))[mask]

    def new_instance(self, cls: int) -> int:
        k = self.next_k.get(cls, 0)
        self.next_k[cls] = k + 1
        return cls * 1000 + k

    def shadow(self, win: tuple[slice, slice], region: np.ndarray, strength: float = 0.45) -> None:
        lab = self.label[win]
        ground = (lab == ROAD) | (lab == SIDEWALK) | (lab == TERRAIN)
        m = np.broadcast_to(region, lab.shape) & ground
        self.img[win][m] *= 1 - strength

    def free(self, box: tuple[float, float, float, float], frac: float = 0.3) -> bool:
        """Whether ``box`` (x0, y0, x1, y1) is mostly on screen and hides no placed thing (nor is hidden)."""
        x0, y0, x1, y1 = box
        area = max((x1 - x0) * (y1 - y0), 1e-6)
        vis_w = min(x1, self.W) - max(x0, 0)
        if vis_w < 0.6 * (x1 - x0) or y0 < 0 or min(y1, self.H) - y0 < 0.6 * (y1 - y0):
            return False
        for b in self.boxes:
            iw = min(x1, b[2]) - max(x0, b[0])
            ih = min(y1, b[3]) - max(y0, b[1])
            if iw > 0 and ih > 0:
                other = (b[2] - b[0]) * (b[3] - b[1])
                if iw * ih > frac * min(area, other):
                    return False
        return True

    def place(
        self, draw_x: Callable[[], tuple[float, float]], w_m: float, h_m: float, tries: int
    ) -> tuple[float, float] | None:
        """Find a free ground position (x_m, z_m) for a ``w_m`` x ``h_m`` thing; reserve its screen box."""
        for _ in range(tries):
            x_m, z_m = draw_x()
            cx, yb, w, h = self.project(x_m, z_m, w_m, h_m)
            box = (cx - w / 2, yb - h, cx + w / 2, yb)
            if min(w, h) >= 2.0 and self.free(box):
                self.boxes.append(box)
                return x_m, z_m
        return None

    # Each painter draws at (x_m, z_m) with appearance parameters drawn beforehand (so the order of
    # random draws does not depend on the painter order).
    def car(self, x_m: float, z_m: float, paint: np.ndarray) -> None:
        cx, yb, w, h = self.project(x_m, z_m, 1.8, 1.5)
        loc = self.local(cx, yb, w, h, below=0.06)
        if loc is None:
            return
        win, u, v = loc
        au = np.abs(u)
        shadow = (au <= 0.52) & (v < 0.1) & (v > -0.06)
        self.shadow(win, shadow)
        body = (v >= 0.10) & (v < 0.55) & (au <= 0.5)
        half = 0.43 - 0.10 * (v - 0.55) / 0.40
        cabin = (v >= 0.55) & (v < 0.95) & (au <= half)
        wheels = (v >= 0) & (v < 0.16) & (au >= 0.27) & (au <= 0.47)
        glass = (v >= 0.60) & (v < 0.90) & (au <= half - 0.05)
        lights = (v >= 0.38) & (v < 0.48) & (au >= 0.36) & (au <= 0.48)
        plate = (v >= 0.20) & (v < 0.29) & (au <= 0.11)
        bumper = (v >= 0.10) & (v < 0.18)
        shade = (0.72 + 0.42 * np.clip(v, 0, 1) + 0.14 * np.exp(-(((v - 0.53) / 0.04) ** 2)))[..., None]
        col = paint * shade * (1 - 0.25 * au[..., None] ** 2)
        col = np.where(bumper[..., None], paint * 0.45 + 0.05, col)
        col = np.where(glass[..., None], (0.10 + 0.35 * (v - 0.6))[..., None] * np.array([0.9, 1.0, 1.2]), col)
        col = np.where(lights[..., None], np.array([0.80, 0.08, 0.06]), col)
        col = np.where(plate[..., None], np.array([0.86, 0.86, 0.80]), col)
        col = np.where(wheels[..., None], np.array([0.05, 0.05, 0.05]), col)
        self.paint(win, body | cabin | wheels, CAR, col, self.new_instance(CAR))

    def big_vehicle(self, x_m: float, z_m: float, cls: int, paint: np.ndarray) -> None:
        cx, yb, w, h = self.project(x_m, z_m, 2.5, 3.3)
        loc = self.local(cx, yb, w, h, below=0.04)
        if loc is None:
            return
        win, u, v = loc
        au = np.abs(u)
        self.shadow(win, (au <= 0.52) & (v < 0.07) & (v > -0.04))
        box = (v >= 0.07) & (v <= 1.0) & (au <= 0.5)
        wheels = (v >= 0) & (v < 0.1) & (au >= 0.3) & (au <= 0.46)
        col = paint * (0.75 + 0.3 * np.clip(v, 0, 1))[..., None] * (1 - 0.2 * au[..., None] ** 2)
        if cls == BUS:
            glass = (v >= 0.52) & (v < 0.88) & (au <= 0.42)
            sign = (v >= 0.9) & (v < 0.96) & (au <= 0.3)
            col = np.where(glass[..., None], np.array([0.12, 0.14, 0.18]) + 0.2 * (v - 0.52)[..., None], col)
            col = np.where(sign[..., None], np.array([0.95, 0.55, 0.10]), col)
        else:
            seam = (au < 0.012) & (v > 0.15)
            ribs = np.abs(_frac(v * 8) - 0.5) < 0.06
            col = np.where(ribs[..., None], col * 0.85, col)
            col = np.where(seam[..., None], col * 0.4, col)
        lights = (v >= 0.12) & (v < 0.2) & (au >= 0.38) & (au <= 0.48)
        col = np.where(lights[..., None], np.array([0.80, 0.08, 0.06]), col)
        col = np.where(wheels[..., None], np.array([0.05, 0.05, 0.05]), col)
        self.paint(win, box | wheels, cls, col, self.new_instance(cls))

    def person(
        self, x_m: float, z_m: float, height_m: float, shirt: np.ndarray, trousers: np.ndarray, skin: np.ndarray,
        hair: np.ndarray, cls: int = PERSON,
    ) -> None:  # fmt: skip
        cx, yb, w, h = self.project(x_m, z_m, 0.55, height_m)
        loc = self.local(cx, yb, w, h, below=0.02)
        if loc is None:
            return
        win, u, v = loc
        au = np.abs(u)
        self.shadow(win, (au <= 0.4) & (v < 0.0) & (v > -0.02), 0.3)
        legs = (v >= 0) & (v < 0.47) & (np.abs(au - 0.11) <= 0.085)
        hips = (v >= 0.42) & (v < 0.5) & (au <= 0.2)
        torso = (v >= 0.47) & (v < 0.8) & (au <= 0.24)
        arms = (v >= 0.5) & (v < 0.79) & (au > 0.24) & (au <= 0.34)
        neck = (v >= 0.8) & (v < 0.84) & (au <= 0.06)
        head = (u / 0.14) ** 2 + ((v - 0.905) / 0.075) ** 2 <= 1.0
        shade = (1 - 0.35 * au)[..., None]
        col = np.where((legs | hips)[..., None], trousers, shirt * np.where(arms, 0.85, 1.0)[..., None])
        col = np.where((neck | head)[..., None], skin, col)
        col = np.where((head & (v > 0.93))[..., None], hair, col)
        col = np.where((legs & (v < 0.03))[..., None], np.array([0.06, 0.05, 0.05]), col) * shade
        self.paint(win, legs | hips | torso | arms | neck | head, cls, col, self.new_instance(cls))

    def cyclist(
        self, x_m: float, z_m: float, frame: np.ndarray, shirt: np.ndarray, trousers: np.ndarray, skin: np.ndarray,
        hair: np.ndarray,
    ) -> None:  # fmt: skip
        cx, yb, w, h = self.project(x_m, z_m, 0.65, 1.85)
        loc = self.local(cx, yb, w, h)
        if loc is None:
            return
        win, u, v = loc
        au = np.abs(u)
        wheel = (v >= 0) & (v < 0.38) & (au <= 0.05)
        post = (v >= 0.3) & (v < 0.48) & (au <= 0.035)
        bar = (v >= 0.5) & (v < 0.54) & (au <= 0.46)
        saddle = (v >= 0.46) & (v < 0.5) & (au <= 0.09)
        bike = wheel | post | bar | saddle
        bcol = np.where(wheel[..., None], np.array([0.05, 0.05, 0.05]), frame * np.ones_like(u)[..., None])
        self.paint(win, bike, BICYCLE, bcol, self.new_instance(BICYCLE))
        legs = (v >= 0.15) & (v < 0.5) & (np.abs(au - 0.13) <= 0.06)
        torso = (v >= 0.5) & (v < 0.8) & (au <= 0.22) & ~bar
        arms = (v >= 0.55) & (v < 0.76) & (au > 0.22) & (au <= 0.42)
        head = (u / 0.13) ** 2 + ((v - 0.89) / 0.07) ** 2 <= 1.0
        col = np.where(legs[..., None], trousers, shirt * (1 - 0.3 * au)[..., None])
        col = np.where(head[..., None], np.where((v > 0.91)[..., None], hair, skin), col)
        self.paint(win, legs | torso | arms | head, RIDER, col, self.new_instance(RIDER))

    def pole(self, x_m: float, z_m: float, height_m: float, top: int, top_col: np.ndarray, shape: int) -> None:
        cx, yb, w, h = self.project(x_m, z_m, 0.14, height_m)
        loc = self.local(cx, yb, w, h)
        if loc is None:
            return
        win, u, v = loc
        grey = np.array([0.50, 0.52, 0.54], np.float32)
        self.paint(win, (v >= 0) & (np.abs(u) <= 0.5), POLE, grey * (1.1 - 0.6 * np.abs(u))[..., None], None)
        px = self.s * self.zmin / z_m
        if top == 1:  # traffic sign: a plate on the pole's top
            loc = self.local(cx, yb - (height_m - 0.75) * px, 0.65 * px, 0.65 * px)
            if loc is None:
                return
            win, u, v = loc
            r = np.maximum(np.abs(u), np.abs(v - 0.5)) if shape == 0 else np.sqrt(u**2 + (v - 0.5) ** 2)
            face = r <= 0.5
            col = np.where((r > 0.38)[..., None], np.array([0.92, 0.92, 0.92]) if shape == 0 else top_col, top_col)
            if shape == 1:
                col = np.where((r <= 0.38)[..., None], np.array([0.92, 0.92, 0.92]), col)
            self.paint(win, face, SIGN, col, None)
        elif top == 2:  # traffic light: a dark box with one lit lamp
            loc = self.local(cx, yb - (height_m - 1.0) * px, 0.34 * px, 1.0 * px)
            if loc is None:
                return
            win, u, v = loc
            body = (v >= 0) & (v <= 1) & (np.abs(u) <= 0.5)
            col = np.zeros((*np.broadcast_shapes(u.shape, v.shape), 3), np.float32) + 0.08
            for i, lamp in enumerate(((0.1, 0.75, 0.2), (0.95, 0.75, 0.1), (0.9, 0.1, 0.08))):
                disc = u**2 + ((v - (0.2 + 0.3 * i)) * 0.34) ** 2 <= 0.28**2
                bright = np.array(lamp) * (1.0 if i == shape else 0.25)
                col = np.where(disc[..., None], bright, col)
            self.paint(win, body, LIGHT, col, None)

    def tree(self, x_m: float, z_m: float, height_m: float, radius_m: float, green: np.ndarray) -> None:
        cx, yb, w, h = self.project(x_m, z_m, 2.2 * radius_m, height_m)
        loc = self.local(cx, yb, w, h)
        if loc is None:
            return
        win, u, v = loc
        rv = radius_m * 1.15 / height_m  # crown radii in local units
        cy = 1 - rv
        trunk = (v >= 0) & (v < cy) & (np.abs(u) <= 0.15 / (2.2 * radius_m))
        hh, ww = np.broadcast_shapes(u.shape, v.shape)
        wobble = _value_noise(self.rng, hh, ww, max(2.0, ww / 5))
        r = np.sqrt((u / 0.5) ** 2 + ((v - cy) / rv) ** 2)
        crown = r <= 1.0 + 0.18 * wobble
        self.paint(win, trunk & ~crown, VEGETATION, np.array([0.30, 0.22, 0.14]) * (1.1 - np.abs(u))[..., None], None)
        leafy = 0.5 + 0.2 * wobble + 0.3 * np.clip(self.rng.standard_normal((hh, ww)), -1.5, 1.5)
        shade = 1.1 - 0.35 * np.clip(r, 0, 1.2) + 0.15 * (v - cy) / rv
        self.paint(win, crown, VEGETATION, green * (leafy * shade)[..., None], None)

    # ---- whole scene ------------------------------------------------------------------------------
    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        self.paint_background()
        zmin = self.zmin
        lane = self.road - 1.1

        def on_road() -> tuple[float, float]:
            return self.c0 + rng.uniform(-lane, lane), zmin * rng.uniform(1.05, 8.0)

        def on_walk() -> tuple[float, float]:
            side = rng.integers(2)
            sign = 1.0 if side else -1.0
            if rng.random() < 0.15:  # crossing the road
                return self.c0 + rng.uniform(-lane, lane), zmin * rng.uniform(1.3, 6.0)
            return self.c0 + sign * (self.road + rng.uniform(0.4, self.walk[side] - 0.3)), zmin * rng.uniform(1.2, 7.0)

        def near_curb() -> tuple[float, float]:
            return self.c0 + rng.choice((-1.0, 1.0)) * (self.road - 0.7), zmin * rng.uniform(1.4, 6.0)

        # (depth, painter) pairs, painted far to near.
        draws: list[tuple[float, Callable[[], None]]] = []
        paints = rng.permutation(len(_CAR_PAINTS))  # distinct paints within a scene
        n_cars, n_people = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        for i in range(n_cars):
            pos = self.place(on_road, 1.8, 1.5, tries=200 if i < 2 else 30)
            if pos is not None:
                paint = np.clip(_CAR_PAINTS[paints[i % len(paints)]] + rng.uniform(-0.03, 0.03, 3), 0, 1)
                draws.append((pos[1], lambda p=pos, c=paint: self.car(p[0], p[1], c)))
        if rng.random() < 0.3:
            cls = BUS if rng.random() < 0.5 else TRUCK
            pos = self.place(on_road, 2.5, 3.3, tries=30)
            if pos is not None:
                paint = np.clip(_CAR_PAINTS[rng.integers(len(_CAR_PAINTS))] + rng.uniform(-0.05, 0.05, 3), 0, 1)
                draws.append((pos[1], lambda p=pos, k=cls, c=paint: self.big_vehicle(p[0], p[1], k, c)))

        def clothes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            return (
                np.clip(_SHIRTS[rng.integers(len(_SHIRTS))] + rng.uniform(-0.05, 0.05, 3), 0, 1),
                _TROUSERS[rng.integers(len(_TROUSERS))],
                _SKIN[rng.integers(len(_SKIN))],
                _HAIR[rng.integers(len(_HAIR))],
            )

        for i in range(n_people):
            height = rng.uniform(1.55, 1.95)
            pos = self.place(on_walk, 0.55, height, tries=200 if i < 2 else 30)
            if pos is not None:
                cl = clothes()
                draws.append((pos[1], lambda p=pos, hh=height, c=cl: self.person(p[0], p[1], hh, *c)))
        if rng.random() < 0.4:
            pos = self.place(near_curb, 0.65, 1.85, tries=30)
            if pos is not None:
                frame, cl = _SHIRTS[rng.integers(len(_SHIRTS))], clothes()
                draws.append((pos[1], lambda p=pos, f=frame, c=cl: self.cyclist(p[0], p[1], f, *c)))
        for _ in range(int(rng.integers(0, 4))):
            side = rng.integers(2)
            sign = 1.0 if side else -1.0
            height, radius = rng.uniform(5.0, 9.0), rng.uniform(1.4, 2.6)
            green = np.array([rng.uniform(0.12, 0.28), rng.uniform(0.30, 0.48), rng.uniform(0.06, 0.16)], np.float32)

            def at_tree(side: int = side, sign: float = sign) -> tuple[float, float]:
                return self.c0 + sign * (self.road + self.walk[side] - 0.6), zmin * rng.uniform(1.5, 8.0)

            pos = self.place(at_tree, 2.2 * radius, height, tries=10)
            if pos is not None:
                draws.append((pos[1], lambda p=pos, hh=height, r=radius, g=green: self.tree(p[0], p[1], hh, r, g)))
        for _ in range(int(rng.integers(1, 4))):
            sign = rng.choice((-1.0, 1.0))
            x_m, z_m = self.c0 + sign * (self.road + 0.35), zmin * rng.uniform(1.3, 8.0)
            top = int(rng.choice(3, p=(0.3, 0.4, 0.3)))
            top_col = np.array(((0.10, 0.30, 0.75), (0.85, 0.10, 0.10), (0.95, 0.80, 0.10))[rng.integers(3)])
            shape = int(rng.integers(3)) if top == 2 else int(rng.integers(2))
            hp = rng.uniform(3.5, 6.0)
            draws.append((z_m, lambda x=x_m, z=z_m, h=hp, t=top, c=top_col, s=shape: self.pole(x, z, h, t, c, s)))

        for _, draw in sorted(draws, key=lambda t: -t[0]):
            draw()

        # Camera: exposure, white balance, vignetting, sensor noise.
        H, W = self.H, self.W
        gain = rng.uniform(0.88, 1.12) * np.array([1 + rng.uniform(-0.05, 0.05), 1.0, 1 + rng.uniform(-0.05, 0.05)])
        r2 = ((self.xs - W / 2) / (W / 2)) ** 2 + ((self.ys - H / 2) / (H / 2)) ** 2
        img = self.chw * (gain.astype(np.float32)[:, None, None] * (1 - 0.12 * r2)[None])
        img += 0.012 * rng.standard_normal(img.shape, dtype=np.float32)
        np.clip(img, 0, 1, out=img)
        image = np.ascontiguousarray((img * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
        # Stuff pixels carry their class id (the background painters write labels only).
        inst = np.where(self.inst >= 1000, self.inst, self.label.astype(np.int32))
        return self.label, _renumber_instances(inst), image


def _renumber_instances(inst: np.ndarray) -> np.ndarray:
    """Number each thing class's visible objects 0, 1, ... (painting may hide an object entirely)."""
    present = np.nonzero(np.bincount(inst.ravel()))[0]
    lut = np.arange(present[-1] + 1, dtype=np.int32)
    things = present[present >= 1000]
    for c in np.unique(things // 1000):
        sel = things[things // 1000 == c]
        lut[sel] = c * 1000 + np.arange(sel.size)
    return lut[inst]


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one street scene.

    Args:
        rng: the generator everything is drawn from (same state -> same scene, bit for bit).
        height, width: image size in pixels (at least 16 x 32).

    Returns:
        ``(label uint8[H, W], inst int32[H, W], image uint8[H, W, 3])``: Cityscapes labelIds, instance ids
        (stuff: class id; things: ``class * 1000 + k``), and the RGB photo.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for name, v, lo in (("height", height, 16), ("width", width, 32)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return _Scene(rng, int(width), int(height)).render()


def parse_size(text: str) -> tuple[int, int]:
    """``"128x256"`` -> ``(128, 256)``: HEIGHTxWIDTH, the order of torch shapes (and of every size option).

    Raises:
        ValueError: not two positive integers joined by ``x``.
    """
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"size must look like HEIGHTxWIDTH with positive integers (e.g. 128x256), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _scene_rng(seed: int, phase: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(phase.encode()), index])


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    n: int = 200,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    n_test: int | None = None,
    phases: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic street-scene dataset in the pix2pixHD layout.

    Writes ``<out_dir>/<phase>_label/synth_<i>_gtFine_labelIds.png`` (8-bit labelIds),
    ``<phase>_inst/..._gtFine_instanceIds.png`` (16-bit), ``<phase>_img/..._leftImg8bit.png`` (RGB) for each
    phase, and ``<out_dir>/synthetic.json`` with the returned summary (without the timing).

    Args:
        out_dir: destination folder (created).
        n: training scenes.
        size: ``(height, width)``, the order of torch shapes (at least 16 x 32).
        seed: base seed (>= 0); same seed -> same files, byte for byte.
        n_test: test scenes (default ``max(1, n // 10)``).
        phases: ``{phase: count}``, replacing ``n``/``n_test`` (e.g. ``{"train": 8, "val": 2}``).
        overwrite: replace the PNG files of existing, non-empty phase folders (else an error).

    Returns:
        Summary dict: ``out_dir``, ``size``, ``seed``, ``label_nc`` (35), ``phases``, ``instances``
        (objects per thing class name), ``seconds``.
    """
    height, width = size
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if phases is None:
        phases = {"train": n, "test": max(1, n // 10) if n_test is None else n_test}
    for phase, count in phases.items():
        if not phase or "/" in phase or isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"bad phase {phase!r}: {count!r} (need a folder-safe name and a count >= 0)")
    if (
        isinstance(width, bool)
        or not isinstance(width, int)
        or width < 32
        or not isinstance(height, int)
        or height < 16
    ):
        swapped = isinstance(width, int) and isinstance(height, int) and width >= 16 and height >= 32
        flipped = f" (did you mean ({width}, {height})?)" if swapped else ""
        raise ValueError(f"size must be (height >= 16, width >= 32) ints, got {size!r}{flipped}")
    out = Path(out_dir)
    folders = {(p, kind): out / f"{p}_{kind}" for p in phases for kind in SYNTHETIC_FILE_SUFFIXES}
    for folder in folders.values():
        if folder.is_dir() and any(folder.iterdir()):
            if not overwrite:
                raise ValueError(f"{folder} is not empty; pass overwrite=True to replace the synthetic data there")
            for f in folder.iterdir():
                if f.is_file() and f.suffix == ".png":
                    f.unlink()
    start = time.perf_counter()
    things = {lab.id: lab.name for lab in CITYSCAPES_LABELS if lab.id in CITYSCAPES_THING_IDS}
    counts = dict.fromkeys(things.values(), 0)
    for (_, _), folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
    for phase, count in phases.items():
        for i in range(count):
            label, inst, image = render_scene(_scene_rng(seed, phase, i), height, width)
            name = f"synth_{i:06d}"
            Image.fromarray(label).save(folders[phase, "label"] / f"{name}{SYNTHETIC_FILE_SUFFIXES['label']}.png")
            Image.fromarray(inst.astype(np.uint16)).save(
                folders[phase, "inst"] / f"{name}{SYNTHETIC_FILE_SUFFIXES['inst']}.png"
            )
            Image.fromarray(image).save(
                folders[phase, "img"] / f"{name}{SYNTHETIC_FILE_SUFFIXES['img']}.png", compress_level=1
            )
            ids = np.unique(inst)
            for c in ids[ids >= 1000] // 1000:
                counts[things[int(c)]] += 1
    summary = {
        "out_dir": str(out),
        "size": [height, width],
        "seed": seed,
        "label_nc": CITYSCAPES_LABEL_NC,
        "phases": dict(phases),
        "instances": {k: v for k, v in counts.items() if v},
    }
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
