"""Image grids as PNG files and as tensors for TensorBoard (Pillow, no plotting state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


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


def save_png(grid: Tensor, path: Path, scale: int = 2) -> Path:
    """Write a grey grid (H, W) in [0, 1] as a PNG, enlarged ``scale`` times."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (grid.numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    image.save(path)
    return path


def reconstruction_grid(
    data: Tensor, recon: Tensor, image_shape: tuple[int, int], ncol: int = 8
) -> Tensor:
    """Rows of data, each above the row of its reconstructions."""
    rows = []
    for start in range(0, data.shape[0], ncol):
        rows += [data[start : start + ncol], recon[start : start + ncol]]
    return tile(torch.cat(rows), image_shape, ncol)
