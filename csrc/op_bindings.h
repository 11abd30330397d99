// op_bindings.h — the per-op kernels' pybind11 bindings, written once for two modules:
// lenet5_fast._C (bindings.cpp: device 0 runs the CPU kernels, device 1 the CUDA kernels when
// they are built) and the emulated CUDA device's test module lenet5_fast._C_cuda_emu
// (cuda_emu/module.cpp, built with LENET5_CPU_KERNELS=0: device 1 only, on CPU addresses).
//
// Every function takes raw addresses (Python ints from Tensor.data_ptr()) and the shapes of its
// input and output (torch.Size tuples), from which it builds the op's shape struct (lenet5.h)
// after checking that they agree. The Python side (lenet5_fast/ops.py) has already checked
// dtype, device and shapes, made the inputs contiguous, and allocated the outputs. Each call names
// its device (0 CPU, 1 CUDA) and whether the data is float64; `extra` is the thread count on CPU
// and the cudaStream_t on CUDA. The GIL is released while a kernel runs.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "lenet5.h"

#ifndef LENET5_CPU_KERNELS
#define LENET5_CPU_KERNELS 1
#endif

namespace lenet5 {
namespace bind {

namespace py = pybind11;
using Addr = uintptr_t;

template <class T> T* P(Addr a) { return reinterpret_cast<T*>(a); }
inline const int32_t* I(Addr a) { return reinterpret_cast<const int32_t*>(a); }

// Calls cpu_fn(T{}, nthreads) or cuda_fn(T{}, stream) for T = float or double, without the GIL.
template <class CpuFn, class CudaFn>
void dispatch(int device, bool f64, uint64_t extra, CpuFn&& cpu_fn, CudaFn&& cuda_fn) {
  py::gil_scoped_release no_gil;
  if (device == 0) {
#if LENET5_CPU_KERNELS
    const int nthreads = static_cast<int>(extra);
    if (f64) cpu_fn(double{}, nthreads); else cpu_fn(float{}, nthreads);
    return;
#else
    (void)cpu_fn;
    throw std::runtime_error("this module runs only the (emulated) CUDA kernels: device must be 1");
#endif
  }
#ifdef LENET5_WITH_CUDA
  void* stream = reinterpret_cast<void*>(extra);
  if (f64) cuda_fn(double{}, stream); else cuda_fn(float{}, stream);
#else
  (void)cuda_fn;
  throw std::runtime_error("lenet5_fast was built without CUDA kernels");
#endif
}

#ifdef LENET5_WITH_CUDA
namespace dev = lenet5::cuda;
#define LENET5_CUDA_CALL(expr) expr
#else
#define LENET5_CUDA_CALL(expr) (void)0
#endif
#if LENET5_CPU_KERNELS
#define LENET5_CPU_CALL(expr) expr
#else
#define LENET5_CPU_CALL(expr) (void)0
#endif

// The op shape structs, built from the tensors' shapes (torch.Size tuples): the input's and the
// output's, which must agree (so a pointer is never handed over with a size it does not have).
using Shape4 = std::array<int64_t, 4>;
using Shape2 = std::array<int64_t, 2>;
[[noreturn]] inline void shape_mismatch(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("lenet5_fast._C.") + op + ": " + what);
}
inline std::string str(const int64_t* v, size_t n) {
  std::string r = "(";
  for (size_t i = 0; i < n; ++i) r += (i ? ", " : "") + std::to_string(v[i]);
  return r + ")";
}
inline lenet5::ConvShape conv_shape(const char* op, const Shape4& x, const Shape4& y) {
  const lenet5::ConvShape s{x[0], x[1], x[2], x[3], y[1]};
  if (y[0] != s.N || y[2] != s.out_h() || y[3] != s.out_w() || s.out_h() < 1 || s.out_w() < 1)
    shape_mismatch(op, "input " + str(x.data(), 4) + " and output " + str(y.data(), 4) + " do not match");
  return s;
}
inline lenet5::PoolShape pool_shape(const char* op, const Shape4& x, const Shape4& y) {
  const lenet5::PoolShape s{x[0], x[1], x[2], x[3]};
  if (y[0] != s.N || y[1] != s.C || y[2] != s.out_h() || y[3] != s.out_w())
    shape_mismatch(op, "input " + str(x.data(), 4) + " and output " + str(y.data(), 4) + " do not match");
  return s;
}
inline lenet5::FullShape full_shape(const char* op, const Shape2& x, const Shape2& y) {
  if (y[0] != x[0]) shape_mismatch(op, "input " + str(x.data(), 2) + " and output " + str(y.data(), 2) + " do not match");
  return lenet5::FullShape{x[0], x[1], y[1]};
}
inline lenet5::Act act_code(int act) {
  if (act < 0 || act >= lenet5::kNumActivations) throw std::invalid_argument("lenet5_fast._C: activation code " + std::to_string(act));
  return static_cast<lenet5::Act>(act);
}
inline lenet5::ConnTable table(Addr offsets, Addr inputs) { return lenet5::ConnTable{I(offsets), I(inputs)}; }

// One binding per op: the same argument list runs the CPU or the CUDA kernel. `shape` computes
// the op's shape struct (with the GIL held) before the kernel runs without it.
#define LENET5_UNPACK(...) __VA_ARGS__
#define LENET5_BIND(name, params, shape, args)                                                  \
  m.def(#name, [] params {                                                                      \
    const auto s = shape;                                                                       \
    dispatch(                                                                                   \
        device, f64, extra,                                                                     \
        [&](auto t, int nthreads) {                                                             \
          using T = decltype(t);                                                                \
          LENET5_CPU_CALL(lenet5::cpu::name<T>(LENET5_UNPACK args, nthreads));                  \
        },                                                                                      \
        [&](auto t, void* stream) {                                                             \
          using T = decltype(t);                                                                \
          LENET5_CUDA_CALL(dev::name<T>(LENET5_UNPACK args, stream));                           \
        });                                                                                     \
  })

// Every per-op kernel, as the functions of module m.
inline void bind_per_op_kernels(py::module_& m) {
  // Every op: (device, f64, extra, tensor addresses..., the input's and output's shapes, act[, gn]).
  LENET5_BIND(conv5x5_forward,
      (int device, bool f64, uint64_t extra, Addr x, Addr w, Addr b, Addr y, const Shape4& xs,
       const Shape4& ys, int act),
      conv_shape("conv5x5_forward", xs, ys),
      (P<const T>(x), P<const T>(w), P<const T>(b), P<T>(y), s, act_code(act)));
  LENET5_BIND(conv5x5_backward,
      (int device, bool f64, uint64_t extra, Addr gy, Addr y, Addr x, Addr w, Addr gx, Addr gw,
       Addr gb, const Shape4& xs, const Shape4& ys, int act, bool gn),
      conv_shape("conv5x5_backward", xs, ys),
      (P<const T>(gy), P<const T>(y), P<const T>(x), P<const T>(w), P<T>(gx), P<T>(gw), P<T>(gb), s,
        act_code(act), gn));
  LENET5_BIND(sparse_conv5x5_forward,
      (int device, bool f64, uint64_t extra, Addr x, Addr w, Addr b, Addr offsets, Addr inputs,
       Addr y, const Shape4& xs, const Shape4& ys, int act),
      conv_shape("sparse_conv5x5_forward", xs, ys),
      (P<const T>(x), P<const T>(w), P<const T>(b), table(offsets, inputs), P<T>(y), s, act_code(act)));
  LENET5_BIND(sparse_conv5x5_backward,
      (int device, bool f64, uint64_t extra, Addr gy, Addr y, Addr x, Addr w, Addr offsets,
       Addr inputs, Addr gx, Addr gw, Addr gb, const Shape4& xs, const Shape4& ys, int act, bool gn),
      conv_shape("sparse_conv5x5_backward", xs, ys),
      (P<const T>(gy), P<const T>(y), P<const T>(x), P<const T>(w), table(offsets, inputs), P<T>(gx),
        P<T>(gw), P<T>(gb), s, act_code(act), gn));
  LENET5_BIND(subsample2x2_forward,
      (int device, bool f64, uint64_t extra, Addr x, Addr coef, Addr bias, Addr y, const Shape4& xs,
       const Shape4& ys, int act),
      pool_shape("subsample2x2_forward", xs, ys),
      (P<const T>(x), P<const T>(coef), P<const T>(bias), P<T>(y), s, act_code(act)));
  LENET5_BIND(subsample2x2_backward,
      (int device, bool f64, uint64_t extra, Addr gy, Addr y, Addr x, Addr coef, Addr gx,
       Addr gcoef, Addr gbias, const Shape4& xs, const Shape4& ys, int act, bool gn),
      pool_shape("subsample2x2_backward", xs, ys),
      (P<const T>(gy), P<const T>(y), P<const T>(x), P<const T>(coef), P<T>(gx), P<T>(gcoef),
        P<T>(gbias), s, act_code(act), gn));
  LENET5_BIND(maxpool2x2_forward,
      (int device, bool f64, uint64_t extra, Addr x, Addr y, const Shape4& xs, const Shape4& ys),
      pool_shape("maxpool2x2_forward", xs, ys),
      (P<const T>(x), P<T>(y), s));
  LENET5_BIND(maxpool2x2_backward,
      (int device, bool f64, uint64_t extra, Addr gy, Addr x, Addr y, Addr gx, const Shape4& xs,
       const Shape4& ys),
      pool_shape("maxpool2x2_backward", xs, ys),
      (P<const T>(gy), P<const T>(x), P<const T>(y), P<T>(gx), s));
  LENET5_BIND(full_forward,
      (int device, bool f64, uint64_t extra, Addr x, Addr w, Addr b, Addr y, const Shape2& xs,
       const Shape2& ys, int act),
      full_shape("full_forward", xs, ys),
      (P<const T>(x), P<const T>(w), P<const T>(b), P<T>(y), s, act_code(act)));
  LENET5_BIND(full_backward,
      (int device, bool f64, uint64_t extra, Addr gy, Addr y, Addr x, Addr w, Addr gx, Addr gw,
       Addr gb, const Shape2& xs, const Shape2& ys, int act, bool gn),
      full_shape("full_backward", xs, ys),
      (P<const T>(gy), P<const T>(y), P<const T>(x), P<const T>(w), P<T>(gx), P<T>(gw), P<T>(gb), s,
        act_code(act), gn));
  LENET5_BIND(euclidean_rbf_forward,
      (int device, bool f64, uint64_t extra, Addr x, Addr w, Addr y, const Shape2& xs, const Shape2& ys),
      full_shape("euclidean_rbf_forward", xs, ys),
      (P<const T>(x), P<const T>(w), P<T>(y), s));
  LENET5_BIND(euclidean_rbf_backward,
      (int device, bool f64, uint64_t extra, Addr gy, Addr x, Addr w, Addr gx, Addr gw,
       const Shape2& xs, const Shape2& ys, bool gn),
      full_shape("euclidean_rbf_backward", xs, ys),
      (P<const T>(gy), P<const T>(x), P<const T>(w), P<T>(gx), P<T>(gw), s, gn));
  LENET5_BIND(activation_forward,
      (int device, bool f64, uint64_t extra, Addr x, Addr y, int64_t n, int act),
      n,
      (P<const T>(x), P<T>(y), s, act_code(act)));
  LENET5_BIND(activation_backward,
      (int device, bool f64, uint64_t extra, Addr gy, Addr y, Addr gx, int64_t n, int act, bool gn),
      n,
      (P<const T>(gy), P<const T>(y), P<T>(gx), s, act_code(act), gn));

}

}  // namespace bind
}  // namespace lenet5
