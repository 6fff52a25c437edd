"""Image grids: the misclassified gallery and image-beside-CAM overlays.

Each grid is composed as one RGB array, placed pixel for pixel with figimage, with the titles as
figure text on top: one Matplotlib Axes per tile was several times slower (tick and title layout
of every Axes, even with axes off; docs/BENCHMARKS.md, 'Moved from code comments'). Tiles are the
32x32 images upscaled 5x with nearest neighbour (160 px), so pixels stay crisp; titles are 9 pt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.figures import DPI, FONT, new_figure, save_figure

SCALE = 5  # 32 px -> 160 px on screen
CAM_CMAP = "jet"
CAM_ALPHA = 0.5
PT = DPI / 72  # pixels per point


@dataclass
class Grid:
    """Pixel layout: rows of tiles, each with a title band above; tiles optionally in groups."""

    rows: int
    cols: int
    tile: int
    gap: int  # between tiles
    group: int = 1  # tiles per group (2 = image + overlay pairs)
    group_gap: int = 0  # extra space between groups
    title_h: int = int(2.6 * FONT * PT)  # two lines of FONT-pt text
    row_gap: int = 14
    header: int = int(3.0 * FONT * PT)
    margin: int = 12
    right: int = 0  # reserved at the right edge (colour bar)

    def x0(self, col: int) -> int:
        return self.margin + col * (self.tile + self.gap) + (col // self.group) * self.group_gap

    def y0(self, row: int) -> int:
        return self.header + row * (self.title_h + self.tile + self.row_gap) + self.title_h

    @property
    def width(self) -> int:
        return self.x0(self.cols - 1) + self.tile + self.margin + self.right

    @property
    def height(self) -> int:
        return self.y0(self.rows - 1) + self.tile + self.row_gap


def upscale_nearest(img: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def _upscale_bilinear(a: np.ndarray, k: int) -> np.ndarray:
    """(H, W) -> (kH, kW), pixel-centre aligned like cv2.resize; maps are smooth, so no blockiness."""
    def axis_weights(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n * k) + 0.5) / k - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, pos - lo

    h, w = a.shape
    r0, r1, fr = axis_weights(h)
    c0, c1, fc = axis_weights(w)
    rows = a[r0] * (1 - fr)[:, None] + a[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc)[None, :] + rows[:, c1] * fc[None, :]


def draw(grid: Grid, canvas: np.ndarray, texts: list[tuple[int, int, str]], title: str):
    """Figure showing `canvas` pixel for pixel and the tile titles, centred above (x, y) in pixels.

    figimage places the array without resampling (imshow resampled it, at a cost per figure).
    """
    fig = new_figure(grid.width / DPI, grid.height / DPI)
    fig.figimage(canvas, xo=0, yo=0, origin="upper", zorder=-1)  # below the colour bar
    w, h = grid.width, grid.height
    for x, y, text in texts:
        fig.text(x / w, 1 - (y - 4) / h, text, ha="center", va="bottom", fontsize=FONT, linespacing=1.3)
    fig.text((w - grid.right) / 2 / w, 1 - grid.header / 2 / h, title, ha="center", va="center",
             fontsize=FONT + 2)
    return fig


def misclassified_layout(n: int, tile: int, columns: int = 5) -> Grid:
    """Where each tile of the misclassified gallery goes (wide gaps: titles are wider than tiles)."""
    cols = max(1, min(columns, n))
    grid = Grid(rows=math.ceil(n / cols), cols=cols, tile=tile, gap=int(0.3 * tile))
    grid.margin = max(grid.margin, (grid.gap + 1) // 2)
    return grid


def plot_misclassified(images: np.ndarray, indices: Sequence[int], labels: Sequence[int],
                       preds: Sequence[int], conf: Sequence[float], classes: Sequence[str],
                       path: str | Path, title: str, columns: int = 5) -> Path:
    """Tile k is images[k] (raw uint8 test image indices[k]), titled 'true → predicted (conf%)'."""
    n = len(indices)
    grid = misclassified_layout(n, images.shape[1] * SCALE, columns)
    cols, tile = grid.cols, grid.tile
    canvas = np.full((grid.height, grid.width, 3), 255, dtype=np.uint8)
    texts = []
    for k in range(n):
        r, c = divmod(k, cols)
        x, y = grid.x0(c), grid.y0(r)
        canvas[y:y + tile, x:x + tile] = upscale_nearest(images[k], SCALE)
        texts.append((x + tile // 2, y, f"{classes[labels[k]]} → {classes[preds[k]]} "
                                         f"({100 * conf[k]:.0f}%)\ntest #{int(indices[k])}"))
    return save_figure(draw(grid, canvas, texts, title), path)


def overlay(image: np.ndarray, cam: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """uint8 RGB image blended with the colour-mapped CAM (both upscaled by `scale`)."""
    from matplotlib import colormaps

    big = upscale_nearest(image, scale).astype(np.float32) / 255
    heat = colormaps[CAM_CMAP](np.clip(_upscale_bilinear(cam.astype(np.float32), scale), 0, 1))[..., :3]
    return np.round(255 * ((1 - CAM_ALPHA) * big + CAM_ALPHA * heat)).astype(np.uint8)


def plot_cam_overlays(images: np.ndarray, cams: np.ndarray, indices: Sequence[int],
                      labels: Sequence[int], preds: Sequence[int], conf: Sequence[float],
                      explained: Sequence[int], scores: Sequence[float] | None,
                      classes: Sequence[str], path: str | Path, title: str,
                      score_name: str = "ROAD", pairs_per_row: int = 4) -> Path:
    """Original beside the CAM overlay for each image; one colour bar for all maps.

    Each map is min-max scaled per image by the library, so colours compare places within an
    image, not strengths across images; the colour bar's label says so.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n = len(indices)
    pairs = max(1, min(pairs_per_row, n))
    tile = images.shape[1] * SCALE
    grid = Grid(rows=math.ceil(n / pairs), cols=2 * pairs, tile=tile, gap=6, group=2,
                 group_gap=int(0.2 * tile), right=int(1.0 * DPI))
    canvas = np.full((grid.height, grid.width, 3), 255, dtype=np.uint8)
    texts = []
    for k in range(n):
        r, p = divmod(k, pairs)
        xi, xc, y = grid.x0(2 * p), grid.x0(2 * p + 1), grid.y0(r)
        canvas[y:y + tile, xi:xi + tile] = upscale_nearest(images[k], SCALE)
        canvas[y:y + tile, xc:xc + tile] = overlay(images[k], cams[k])
        texts.append((xi + tile // 2, y, f"test #{int(indices[k])}\ntrue: {classes[labels[k]]}"))
        what = f"pred: {classes[preds[k]]} {100 * conf[k]:.0f}%"
        if explained[k] != preds[k]:
            what = f"CAM of {classes[explained[k]]}"
        second = f"{score_name} {scores[k] + 0.0:+.3f}" if scores is not None else ""
        if not cams[k].max() > 0:
            # Grad-CAM's ReLU leaves nothing when no channel has positive evidence for the class.
            second = "empty map"
        texts.append((xc + tile // 2, y, f"{what}\n{second}".rstrip()))
    fig = draw(grid, canvas, texts, title)
    top = grid.y0(0) / grid.height
    left = (grid.width - grid.right + 18) / grid.width
    cax = fig.add_axes((left, 0.06, 14 / grid.width, 1 - top - 0.06))
    cb = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps[CAM_CMAP]), cax=cax)
    cb.set_label("relevance (scaled per image: 0 = least, 1 = most)", fontsize=FONT)
    cb.ax.tick_params(labelsize=FONT - 1)
    return save_figure(fig, path)
