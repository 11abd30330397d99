"""lenet5_fast — LeNet-5 exactly as LeCun, Bottou, Bengio and Haffner (1998) described it,
on hand-written C++ (CPU) and CUDA kernels exposed as PyTorch custom ops and nn.Modules.

Imported before torch, it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already says
otherwise: our kernels run on their own thread pool between torch's OpenMP regions (optimizer
steps, losses), and torch's OpenMP workers, spinning after each region by default, would hold
the cores our threads need (measured in README "Training speed"). Imported after torch, it
changes nothing (OpenMP has read its environment by then).
"""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import ops  # noqa: E402
from .layers import (PAPER_C3_TABLE, Convolution, EuclideanRBF, FullConnection, MaxPool,  # noqa: E402
                     ScaledTanh, SparseConvolution, Subsampling)
from .model import LeNet5, map_loss, summary  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ops", "LeNet5", "map_loss", "summary", "PAPER_C3_TABLE", "Convolution", "SparseConvolution",
    "Subsampling", "MaxPool", "ScaledTanh", "FullConnection", "EuclideanRBF", "__version__",
]
