// module.cpp — lenet5_fast._C_cuda_emu, the emulated CUDA device's test module (cuda_emu.h):
// the per-op CUDA kernels of csrc/cuda compiled for the CPU, bound exactly like lenet5_fast._C's
// (op_bindings.h) but taking CPU addresses, with device 1 only; plus the launch log and the
// faulty kernels (faults.cpp) that show each of the emulator's checks firing.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cuda/common.cuh"  // the emulated device (LENET5_CUDA_EMU) and the chunking constants
#include "op_bindings.h"

namespace cuda_emu {
void run_fault(const std::string& name);  // faults.cpp
}

PYBIND11_MODULE(_C_cuda_emu, m) {
  namespace py = pybind11;
  m.doc() = "lenet5_fast's CUDA kernels on the emulated CUDA device (tests only): same bindings as _C, device 1";
  lenet5::bind::bind_per_op_kernels(m);
  m.attr("with_cuda") = true;
  m.def("chunking", [] {
    return py::make_tuple(LENET5_CUDA_TARGET_BLOCKS, LENET5_CUDA_MIN_CHUNK_ITEMS, LENET5_CUDA_MAX_BLOCKS);
  },
        "The chunking constants this module was built with: (TARGET_BLOCKS, MIN_CHUNK_ITEMS, MAX_BLOCKS)");
  m.def("record_launches", [](bool on) {
    py::list out;
    for (const auto& r : cuda_emu::record_launches(on))
      out.append(py::make_tuple(r.kernel, py::make_tuple(r.grid.x, r.grid.y, r.grid.z),
                                py::make_tuple(r.block.x, r.block.y, r.block.z)));
    return out;
  }, "The launches (kernel, grid, block) recorded since the last call; records the next ones when on");
  m.def("run_fault", [](const std::string& name) {
    py::gil_scoped_release no_gil;
    cuda_emu::run_fault(name);
  }, "Launches one of the faulty kernels of faults.cpp (raises RuntimeError for the launch's error)");
}
