"""Random planar affine distortions, generated on the fly (LeCun et al. 1998, section III-C:
"horizontal and vertical translations, scaling, squeezing (simultaneous horizontal compression
and vertical elongation, or the reverse), and horizontal shearing"; the paper trained on the
60,000 digits plus 540,000 such distorted copies, i.e. 9 distorted for each original).

The paper does not give the ranges; ours (:data:`DEFAULT_RANGES`) keep a 20x20 digit inside
the 28x28 field of the 32x32 input. Each image in a pass is left as it is with probability
``p_original`` (0.1, the paper's 60,000 of 600,000) and otherwise gets its own random transform.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import PAPER_BACKGROUND

__all__ = ["DEFAULT_RANGES", "random_affine", "distort"]

DEFAULT_RANGES = dict(
    shift=2.0,     # horizontal and vertical translation, pixels: uniform in [-2, 2]
    scale=0.10,    # isotropic scaling: factor uniform in [0.9, 1.1]
    squeeze=0.10,  # x scaled by q, y by 1/q, q uniform in [0.9, 1.1]
    shear=0.20,    # horizontal shear: x += k * y, k uniform in [-0.2, 0.2]
)


def random_affine(n: int, size: int = 32, generator: Optional[torch.Generator] = None,
                  shift: float = DEFAULT_RANGES["shift"], scale: float = DEFAULT_RANGES["scale"],
                  squeeze: float = DEFAULT_RANGES["squeeze"], shear: float = DEFAULT_RANGES["shear"]) -> Tensor:
    """``n`` random sampling matrices theta[n, 2, 3] for ``F.affine_grid`` (normalised
    coordinates, centre of the image fixed apart from the translation)."""
    if n < 0 or size < 1:
        raise ValueError(f"random_affine: need n >= 0 and size >= 1, got n={n}, size={size}")

    def u(r):
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * r

    s = 1 + u(scale)
    q = 1 + u(squeeze)
    k = u(shear)
    tx, ty = u(shift) * 2 / size, u(shift) * 2 / size
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = 1 / (s * q)
    theta[:, 0, 1] = k
    theta[:, 1, 1] = q / s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta


@torch.no_grad()
def distort(x: Tensor, generator: Optional[torch.Generator] = None, p_original: float = 0.1,
            background: float = PAPER_BACKGROUND, chunk: int = 8192, **ranges) -> Tensor:
    """Returns a distorted copy of images ``x[N, C, H, W]`` (bilinear resampling; what moves in
    from outside the image is ``background``). Deterministic for a seeded ``generator``."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError("distort: x must be a float tensor [N, C, H, W]")
    if not 0.0 <= p_original <= 1.0:
        raise ValueError(f"distort: p_original must be in [0, 1], got {p_original}")
    n, c, h, w = x.shape
    theta = random_affine(n, max(h, w), generator, **ranges)
    keep = torch.rand(n, generator=generator) < p_original
    out = torch.empty_like(x)
    for i in range(0, n, chunk):
        xb = x[i:i + chunk] - background
        grid = F.affine_grid(theta[i:i + chunk].to(x.dtype), list(xb.shape), align_corners=False)
        out[i:i + chunk] = F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False) + background
    out[keep] = x[keep]
    return out
