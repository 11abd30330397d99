"""Reading a photo or scan of one handwritten digit and normalising it as MNIST was made, and
drawing a gallery of digits (the paper's Fig. 8).

MNIST's recipe: the digit's bounding box is scaled to fit 20x20 keeping its aspect ratio
(anti-aliased, so grey levels appear), then placed in a 28x28 field so that its centre of mass
is at the centre. The network's input then pads that to 32x32 (:func:`lenet5_fast.data.preprocess`).
Decoding image files needs pillow (``pip install 'lenet5_fast[plot]'``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import preprocess

__all__ = ["read_grey", "normalize_digit", "load_digit", "save_gallery"]


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        from .train import MissingExtra

        raise MissingExtra("pillow is not installed; install it with `pip install 'lenet5_fast[plot]'` "
                           "to read and write images") from e
    return Image


def read_grey(path) -> np.ndarray:
    """An image file as float grey levels in [0, 1] (transparent parts count as white paper)."""
    Image = _pil()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from e
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"{path}: empty image")
    return a


def normalize_digit(grey: np.ndarray) -> np.ndarray:
    """Grey levels [H, W] in [0, 1] (ink dark on light paper, or the reverse) -> a 28x28 uint8
    MNIST-style digit: white ink (255) on black, bounding box fitted into 20x20 keeping the
    aspect ratio, centre of mass at the centre of the field."""
    g = np.asarray(grey, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"normalize_digit: expected a 2-D grey image, got shape {g.shape}")
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if np.median(border) > 0.5:      # light paper: make the ink the bright part
        g = 1.0 - g
    bg = float(np.median(border if np.median(border) <= 0.5 else 1.0 - border))
    peak = float(np.percentile(g, 99.5))
    if peak - bg < 0.1:
        raise ValueError("normalize_digit: no digit found (the image has almost no contrast)")
    ink = np.clip((g - bg) / (peak - bg), 0.0, 1.0)
    ink = np.clip((ink - 0.25) / 0.75, 0.0, 1.0)   # paper texture, shadows and noise -> 0
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        raise ValueError("normalize_digit: no digit found")
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = ink.shape
    f = 20.0 / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    t = torch.from_numpy(ink)[None, None]
    box = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    box = np.clip(box, 0.0, 1.0)
    mass = box.sum()
    cy = (box.sum(1) * np.arange(nh)).sum() / mass
    cx = (box.sum(0) * np.arange(nw)).sum() / mass
    top, left = int(round(14.0 - cy)), int(round(14.0 - cx))  # MNIST: centre of mass at (14, 14)
    field = np.zeros((28, 28))
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(28, top + nh), min(28, left + nw)
    field[y0:y1, x0:x1] = box[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.round(field * 255.0).astype(np.uint8)


def load_digit(path) -> torch.Tensor:
    """An image file of one handwritten digit -> the network's input, float32 [1, 1, 32, 32]."""
    return preprocess(normalize_digit(read_grey(path)))


def save_gallery(path, images: torch.Tensor, captions: Sequence[str], cols: int = 10,
                 title: str = "") -> None:
    """A PNG grid of digits ``images[N, 1, H, W]`` (network inputs or uint8) with a caption under
    each, like the paper's Fig. 8 of misclassified test digits. Needs matplotlib."""
    from .checkpoint import atomic_write_bytes
    from .train import _pyplot

    plt = _pyplot()
    n = len(captions)
    if images.shape[0] != n:
        raise ValueError("save_gallery: one caption per image")
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.25 + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k, 0].float().cpu().numpy(), cmap="gray_r", interpolation="nearest")
            ax.set_title(captions[k], fontsize=8, pad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
