"""Image grids as labelled PNG figures, readable at 1:1 (Pillow, no plotting state).

A figure is rows of images, each row labelled on the left ("data", "recon", "prior"), under a caption
(the run, the step and the temperature). Small images are enlarged by an integer factor so that each
is at least :data:`MIN_SIDE` pixels tall: the 8x8 ``digits`` become 40 px, MNIST's 28 px become 56.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..checkpoint import atomic_write_bytes

MIN_SIDE = 40  # pixels per image side at 1:1, at least
FONT_PX = 14


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_PX)  # a scalable font (Pillow >= 10.1 with FreeType)
    except TypeError:
        return ImageFont.load_default()


def tile(images: Tensor, image_shape: tuple[int, int], ncol: int, pad: int = 1) -> Tensor:
    """``images`` (n, D) in [0, 1] -> one grey grid (H, W) with ``ncol`` columns and a 1-px border."""
    h, w = image_shape
    images = images.detach().float().cpu().clamp(0, 1).view(-1, h, w)
    n = images.shape[0]
    nrow = -(-n // ncol)
    grid = torch.ones(nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def figure(rows: list[tuple[str, Tensor]], image_shape: tuple[int, int], caption: str = "",
           ncol: int = 8) -> Image.Image:
    """A grey PIL image: each ``(label, images (n, D))`` entry as rows of ``ncol`` tiles, labelled on the
    left, under ``caption``; enlarged so that an image side is at least :data:`MIN_SIDE` pixels."""
    scale = max(2, math.ceil(MIN_SIDE / image_shape[0]))
    font = _font()
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    label_w = max((int(draw.textlength(label, font=font)) for label, _ in rows), default=0) + 8
    line_h = FONT_PX + 6
    blocks = []  # (label, grid image)
    for label, images in rows:
        array = (tile(images, image_shape, ncol).numpy() * 255).round().astype(np.uint8)
        grid = Image.fromarray(array)
        size = (grid.width * scale, grid.height * scale)
        blocks.append((label, grid.resize(size, Image.Resampling.NEAREST)))
    width = label_w + max(g.width for _, g in blocks)
    text_w = int(draw.textlength(caption, font=font)) + 8 if caption else 0
    height = (line_h if caption else 0) + sum(g.height for _, g in blocks)
    out = Image.new("L", (max(width, text_w), height), 255)
    pen = ImageDraw.Draw(out)
    top = 0
    if caption:
        pen.text((4, 3), caption, fill=0, font=font)
        top = line_h
    for label, grid in blocks:
        out.paste(grid, (label_w, top))
        pen.text((4, top + (grid.height - FONT_PX) // 2), label, fill=0, font=font)
        top += grid.height
    return out


def reconstruction_figure(data: Tensor, recon: Tensor, image_shape: tuple[int, int], caption: str = "",
                          ncol: int = 8) -> Image.Image:
    """Rows of data (``data``), each above the row of its reconstructions (``recon``)."""
    rows = []
    for start in range(0, data.shape[0], ncol):
        rows += [("data", data[start : start + ncol]), ("recon", recon[start : start + ncol])]
    return figure(rows, image_shape, caption, ncol)


def samples_figure(images: Tensor, image_shape: tuple[int, int], caption: str = "",
                   ncol: int = 8) -> Image.Image:
    """Decoder means of draws from the prior, ``ncol`` a row; the first row is labelled "prior"."""
    starts = range(0, images.shape[0], ncol)
    rows = [("" if start else "prior", images[start : start + ncol]) for start in starts]
    return figure(rows, image_shape, caption, ncol)


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as a PNG file atomically (readers never see half a file)."""
    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def as_array(image: Image.Image) -> np.ndarray:
    """``image`` as an (H, W) float array in [0, 1] (for TensorBoard)."""
    return np.asarray(image, dtype=np.float32) / 255.0
