"""lenet5_fast — LeNet-5 exactly as LeCun, Bottou, Bengio and Haffner (1998) described it,
on hand-written C++ (CPU) and CUDA kernels exposed as PyTorch custom ops and nn.Modules."""
from . import ops, weights
from .layers import (PAPER_C3_TABLE, Convolution, EuclideanRBF, FullConnection, MaxPool,
                     ScaledTanh, SparseConvolution, Subsampling)
from .model import LeNet5, map_loss, summary

__version__ = "0.1.0"

__all__ = [
    "ops", "weights", "LeNet5", "map_loss", "summary", "PAPER_C3_TABLE", "Convolution", "SparseConvolution",
    "Subsampling", "MaxPool", "ScaledTanh", "FullConnection", "EuclideanRBF", "__version__",
]
