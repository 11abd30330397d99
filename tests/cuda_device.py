"""The CUDA device the CUDA tests run on: a real GPU when one is visible and this build has CUDA
kernels; otherwise the emulated CUDA device, lenet5_fast._C_cuda_emu (CMake's
LENET5_CUDA_EMU=ON; csrc/cuda_emu): the same csrc/cuda kernels compiled for the CPU and run under
the CUDA execution model, on CPU tensors, with the same bindings as lenet5_fast._C.

A test moves tensors there with ``DEVICE.put``, calls the ops on them inside ``with
DEVICE.run():`` and brings results back with ``DEVICE.get``; everything outside ``run()`` is the
CPU (``DEVICE.module`` moves a model). On the emulated device, ``run()`` sends every per-op kernel
call of lenet5_fast.ops (all go through ``ops._run``) to the emulated module (as device 1) and
turns the fused CPU engines off, so a model runs layer by layer on the CUDA kernels, as it does on
a GPU.

Which module: ``LENET5_CUDA_EMU_MODULE=/path/_C_cuda_emu*.so`` (CI builds it apart from the
installed package; a path that does not load is an error), else ``lenet5_fast._C_cuda_emu`` when
present (``scripts/dev_build.sh -DLENET5_CUDA_EMU=ON`` puts it there). ``LENET5_CUDA_DEVICE=emulated``
picks the emulated device even where a GPU is visible. ``DEVICE`` is None when there is neither.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os

import torch

from lenet5_fast import _C, fused, ops


class Gpu:
    name = "gpu"
    emulated = False

    def put(self, t):
        return t.to("cuda") if isinstance(t, torch.Tensor) else t

    def get(self, t):
        return t.cpu()

    def holds(self, t) -> bool:
        return t.is_cuda

    def module(self, m):
        return m.cuda()

    def run(self):
        return contextlib.nullcontext()


class Emulated:
    name = "emulated"
    emulated = True

    def __init__(self, kernels):
        self.kernels = kernels  # the emulated module
        self._per_op = {name: getattr(kernels, name) for name in dir(kernels)
                        if name.endswith(("_forward", "_backward")) and hasattr(_C, name)}
        self._cpu_run = ops._run

    def _run(self, kernel, like, *args):
        """ops._run inside run(): a per-op kernel of _C (by its name) runs as the emulated
        module's CUDA kernel (device 1) on the CPU addresses ops.py passes; a kernel of _C that is
        neither a per-op kernel nor a fused engine's is an error, never a silent CPU run."""
        name = getattr(kernel, "__name__", "")
        emulated = self._per_op.get(name)
        if emulated is not None:
            return emulated(1, like.dtype == torch.float64, 0, *args)
        if not name.startswith("lenet5_"):
            raise AssertionError(f"lenet5_fast.ops ran {name or kernel!r}, which the emulated CUDA device does not have")
        return self._cpu_run(kernel, like, *args)

    def put(self, t):
        return t.detach().clone() if isinstance(t, torch.Tensor) else t

    def get(self, t):
        return t

    def holds(self, t) -> bool:
        return t.device.type == "cpu"

    def module(self, m):
        return m

    @contextlib.contextmanager
    def run(self):
        """Also fills every new tensor with NaN (torch's deterministic mode), so an output element
        a kernel fails to write cannot pass for a value left there by an earlier run."""
        saved, deterministic = ops._run, torch.are_deterministic_algorithms_enabled()
        ops._run = self._run
        torch.use_deterministic_algorithms(True)
        try:
            with fused.disabled():
                yield
        finally:
            ops._run = saved
            torch.use_deterministic_algorithms(deterministic)


def _emulator():
    path = os.environ.get("LENET5_CUDA_EMU_MODULE")
    if path:
        spec = importlib.util.spec_from_file_location("lenet5_fast._C_cuda_emu", path)
        if spec is None:
            raise ImportError(f"LENET5_CUDA_EMU_MODULE={path} is not an extension module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module("lenet5_fast._C_cuda_emu")
    except ImportError:
        return None


def _pick():
    if os.environ.get("LENET5_CUDA_DEVICE") != "emulated" and _C.with_cuda and torch.cuda.is_available():
        return Gpu()
    module = _emulator()
    return Emulated(module) if module is not None else None


DEVICE = _pick()
WHY_NONE = ("no CUDA GPU visible (or no CUDA kernels in this build) and no emulated CUDA device "
            "(build it with -DLENET5_CUDA_EMU=ON, see tests/cuda_device.py)")
