// bindings.cpp — the pybind11 module lenet5_fast._C.
//
// Every function takes raw addresses (Python ints from Tensor.data_ptr()) and the shapes of its
// input and output (torch.Size tuples), from which it builds the op's shape struct (lenet5.h)
// after checking that they agree. The Python side (lenet5_fast/ops.py) has already checked
// dtype, device and shapes, made the inputs contiguous, and allocated the outputs. Each call names its device (0 CPU, 1 CUDA) and whether the data is
// float64; `extra` is the thread count on CPU and the cudaStream_t on CUDA. The GIL is released
// while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "lenet5.h"
#include "support/simd.h"

namespace py = pybind11;
using Addr = uintptr_t;

namespace {

template <class T> T* P(Addr a) { return reinterpret_cast<T*>(a); }
inline const int32_t* I(Addr a) { return reinterpret_cast<const int32_t*>(a); }

// Calls cpu_fn(T{}, nthreads) or cuda_fn(T{}, stream) for T = float or double, without the GIL.
template <class CpuFn, class CudaFn>
void dispatch(int device, bool f64, uint64_t extra, CpuFn&& cpu_fn, CudaFn&& cuda_fn) {
  py::gil_scoped_release no_gil;
  if (device == 0) {
    const int nthreads = static_cast<int>(extra);
    if (f64) cpu_fn(double{}, nthreads); else cpu_fn(float{}, nthreads);
    return;
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
namespace cpu = lenet5::cpu;

// One float address per parameter of the variant (the fused engines' params, grads, steps).
std::vector<float*> param_ptrs(lenet5::Variant variant, const std::vector<Addr>& a, const char* what) {
  const size_t n = static_cast<size_t>(lenet5::param_order(variant).count);
  if (a.size() != n)
    throw std::invalid_argument(std::string("lenet5_fast._C: expected ") + std::to_string(n) + " " + what +
                                " addresses, got " + std::to_string(a.size()));
  std::vector<float*> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = P<float>(a[i]);
  return p;
}
lenet5::Variant variant_code(int variant) {
  if (variant < 0 || variant >= lenet5::kNumVariants)
    throw std::invalid_argument("lenet5_fast._C: variant must be 0 (classic) or 1 (modern), got " +
                                std::to_string(variant));
  return static_cast<lenet5::Variant>(variant);
}
// The network for the fused engines from the bindings' arguments (the same for both engines);
// sizes and the table are checked in C++ (std::invalid_argument, ValueError in Python).
cpu::FusedNet fused_net(int variant, int in_channels, int classes, const std::vector<Addr>& params, Addr codes,
                        Addr offsets, Addr inputs) {
  cpu::FusedNet net{};
  net.variant = variant_code(variant);
  net.in_channels = in_channels;
  net.classes = classes;
  const std::vector<float*> p = param_ptrs(net.variant, params, "parameter");
  std::copy(p.begin(), p.end(), net.param);
  net.codes = P<const float>(codes);
  net.c3 = lenet5::ConnTable{I(offsets), I(inputs)};
  return net;
}
// The arguments every fused entry point starts with, and the FusedNet they make.
#define LENET5_NET_PARAMS \
  int variant, int in_channels, int classes, const std::vector<Addr>&params, Addr codes, Addr offsets, Addr inputs
#define LENET5_NET fused_net(variant, in_channels, classes, params, codes, offsets, inputs)

// The op shape structs, built from the tensors' shapes (torch.Size tuples): the input's and the
// output's, which must agree (so a pointer is never handed over with a size it does not have).
using Shape4 = std::array<int64_t, 4>;
using Shape2 = std::array<int64_t, 2>;
[[noreturn]] void shape_mismatch(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("lenet5_fast._C.") + op + ": " + what);
}
std::string str(const int64_t* v, size_t n) {
  std::string r = "(";
  for (size_t i = 0; i < n; ++i) r += (i ? ", " : "") + std::to_string(v[i]);
  return r + ")";
}
lenet5::ConvShape conv_shape(const char* op, const Shape4& x, const Shape4& y) {
  const lenet5::ConvShape s{x[0], x[1], x[2], x[3], y[1]};
  if (y[0] != s.N || y[2] != s.out_h() || y[3] != s.out_w() || s.out_h() < 1 || s.out_w() < 1)
    shape_mismatch(op, "input " + str(x.data(), 4) + " and output " + str(y.data(), 4) + " do not match");
  return s;
}
lenet5::PoolShape pool_shape(const char* op, const Shape4& x, const Shape4& y) {
  const lenet5::PoolShape s{x[0], x[1], x[2], x[3]};
  if (y[0] != s.N || y[1] != s.C || y[2] != s.out_h() || y[3] != s.out_w())
    shape_mismatch(op, "input " + str(x.data(), 4) + " and output " + str(y.data(), 4) + " do not match");
  return s;
}
lenet5::FullShape full_shape(const char* op, const Shape2& x, const Shape2& y) {
  if (y[0] != x[0]) shape_mismatch(op, "input " + str(x.data(), 2) + " and output " + str(y.data(), 2) + " do not match");
  return lenet5::FullShape{x[0], x[1], y[1]};
}
lenet5::Act act_code(int act) {
  if (act < 0 || act >= lenet5::kNumActivations) throw std::invalid_argument("lenet5_fast._C: activation code " + std::to_string(act));
  return static_cast<lenet5::Act>(act);
}
lenet5::ConnTable table(Addr offsets, Addr inputs) { return lenet5::ConnTable{I(offsets), I(inputs)}; }

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
          cpu::name<T>(LENET5_UNPACK args, nthreads);                                           \
        },                                                                                      \
        [&](auto t, void* stream) {                                                             \
          using T = decltype(t);                                                                \
          LENET5_CUDA_CALL(dev::name<T>(LENET5_UNPACK args, stream));                           \
        });                                                                                     \
  })

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lenet5_fast native kernels (CPU SIMD and CUDA), called through lenet5_fast.ops";

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

  // The fused engines (float32 CPU only; engine/engine.h). Every call starts with the network:
  // (variant, in_channels, classes, params, codes, offsets, inputs), params the trainable
  // tensors' addresses in model.parameters() order (_C.param_layout), codes / offsets / inputs
  // 0 for the modern variant. grads / hessian / steps: one address per parameter, same order.
  // The per-image engine (classic, one input channel):
  m.def("lenet5_forward", [](LENET5_NET_PARAMS, Addr x, Addr out, int64_t N, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    py::gil_scoped_release no_gil;
    cpu::lenet5_forward(net, P<const float>(x), P<float>(out), N, nthreads);
  });
  m.def("lenet5_sdlm_hessian", [](LENET5_NET_PARAMS, Addr x, Addr labels, int64_t N, double map_j,
                                  const std::vector<Addr>& hessian, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    const std::vector<float*> h = param_ptrs(net.variant, hessian, "hessian");
    py::gil_scoped_release no_gil;
    cpu::lenet5_sdlm_hessian(net, P<const float>(x), P<const int64_t>(labels), N, map_j, h.data(), nthreads);
  });
  m.def("lenet5_sdlm_pass", [](LENET5_NET_PARAMS, Addr x, Addr labels, int64_t N, Addr order, int64_t n,
                               double map_j, const std::vector<Addr>& steps) {
    const cpu::FusedNet net = LENET5_NET;
    const std::vector<float*> s = param_ptrs(net.variant, steps, "step");
    const std::vector<const float*> cs(s.begin(), s.end());
    double loss = 0;
    int64_t errors = 0;
    {
      py::gil_scoped_release no_gil;
      cpu::lenet5_sdlm_pass(net, P<const float>(x), P<const int64_t>(labels), N, P<const int64_t>(order), n, map_j,
                            cs.data(), &loss, &errors);
    }
    return py::make_tuple(loss, errors);
  });
  m.def("lenet5_sample_saved_floats", &cpu::lenet5_sample_saved_floats,
        "Floats lenet5_sample_forward_save writes per image (its saved buffer is [N, this], 64-byte aligned)");
  m.def("lenet5_sample_forward_save", [](LENET5_NET_PARAMS, Addr x, Addr out, Addr saved, int64_t N, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    py::gil_scoped_release no_gil;
    cpu::lenet5_sample_forward_save(net, P<const float>(x), P<float>(out), P<float>(saved), N, nthreads);
  });
  m.def("lenet5_sample_backward", [](LENET5_NET_PARAMS, Addr saved, Addr grad_out, int64_t N,
                                     const std::vector<Addr>& grads, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    const std::vector<float*> g = param_ptrs(net.variant, grads, "gradient");
    py::gil_scoped_release no_gil;
    cpu::lenet5_sample_backward(net, P<const float>(saved), P<const float>(grad_out), N, g.data(), nthreads);
  });
  m.def("lenet5_sample_train", [](LENET5_NET_PARAMS, Addr x, Addr labels, int64_t N, double map_j, double scale,
                                  Addr out, Addr loss, const std::vector<Addr>& grads, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    const std::vector<float*> g = param_ptrs(net.variant, grads, "gradient");
    py::gil_scoped_release no_gil;
    cpu::lenet5_sample_train(net, P<const float>(x), P<const int64_t>(labels), N, map_j, scale, P<float>(out),
                             P<float>(loss), g.data(), nthreads);
  });
  // The batch engine (classic and modern, images in the SIMD lanes):
  m.def("lenet5_batch_saved_floats", [](int variant, int in_channels, int classes, int64_t N) {
    return cpu::lenet5_batch_saved_floats(variant_code(variant), in_channels, classes, N);
  }, "Floats lenet5_batch_forward's saved buffer needs for N images (64-byte aligned)");
  m.def("lenet5_batch_forward", [](LENET5_NET_PARAMS, Addr x, Addr out, Addr saved, int64_t N, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    py::gil_scoped_release no_gil;
    cpu::lenet5_batch_forward(net, P<const float>(x), P<float>(out), P<float>(saved), N, nthreads);
  });
  m.def("lenet5_batch_backward", [](LENET5_NET_PARAMS, Addr x, Addr saved, Addr grad_out, int64_t N,
                                    const std::vector<Addr>& grads, Addr grad_x, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    const std::vector<float*> g = param_ptrs(net.variant, grads, "gradient");
    py::gil_scoped_release no_gil;
    cpu::lenet5_batch_backward(net, P<const float>(x), P<const float>(saved), P<const float>(grad_out), N, g.data(),
                               P<float>(grad_x), nthreads);
  });
  m.def("lenet5_batch_train", [](LENET5_NET_PARAMS, Addr x, Addr labels, int64_t N, double map_j, double scale,
                                 Addr out, Addr loss, const std::vector<Addr>& grads, Addr grad_x, int nthreads) {
    const cpu::FusedNet net = LENET5_NET;
    const std::vector<float*> g = param_ptrs(net.variant, grads, "gradient");
    py::gil_scoped_release no_gil;
    cpu::lenet5_batch_train(net, P<const float>(x), P<const int64_t>(labels), N, map_j, scale, P<float>(out),
                            P<float>(loss), g.data(), P<float>(grad_x), nthreads);
  });

  // The network declared once (network.h): sizes, variants, each variant's parameters, and
  // the activation codes (activations.h).
  {
    namespace g = lenet5::geometry;
    py::dict geo;
    geo["input"] = g::kInput;
    geo["kernel"] = g::kKernel;
    geo["pool"] = g::kPool;
    geo["c1_maps"] = g::kC1Maps;
    geo["c1_size"] = g::kC1Size;
    geo["s2_size"] = g::kS2Size;
    geo["c3_maps"] = g::kC3Maps;
    geo["c3_size"] = g::kC3Size;
    geo["c3_max_kernels"] = g::kC3MaxKernels;
    geo["s4_size"] = g::kS4Size;
    geo["c5_units"] = g::kC5Units;
    geo["c5_inputs"] = g::kC5Inputs;
    geo["f6_units"] = g::kF6Units;
    geo["classes"] = g::kClasses;
    geo["max_in_channels"] = g::kMaxInChannels;
    geo["max_classes"] = g::kMaxClasses;
    m.attr("geometry") = geo;
    py::dict variants, acts;
    for (int v = 0; v < lenet5::kNumVariants; ++v) variants[lenet5::variant_name(lenet5::Variant(v))] = v;
    m.attr("variants") = variants;
    for (int a = 0; a < lenet5::kNumActivations; ++a) acts[lenet5::activation_name(lenet5::Act(a))] = a;
    m.attr("activations") = acts;
    m.attr("scaled_tanh") = py::make_tuple(lenet5::kTanhA, lenet5::kTanhS);  // A, S of A tanh(S a)
  }
  m.def("param_layout", [](int variant) {
    const lenet5::Variant v = variant_code(variant);
    const lenet5::ParamOrder& order = lenet5::param_order(v);
    // The free sizes as names: the shapes are evaluated at sizes no real shape has (negative).
    const char* free[] = {"in_channels", "c3_kernels", "classes"};
    py::list layout;
    for (int p = 0; p < order.count; ++p) {
      const lenet5::ParamShape s = lenet5::param_shape(v, order.role[p], {-1, -2, -3});
      py::tuple shape(s.rank);
      for (int i = 0; i < s.rank; ++i)
        shape[i] = s.dim[i] < 0 ? py::object(py::str(free[-s.dim[i] - 1])) : py::object(py::int_(s.dim[i]));
      layout.append(py::make_tuple(lenet5::role_name(order.role[p]), shape));
    }
    return layout;
  }, "[(name, shape)] of a variant's trainable tensors in model.parameters() order, the order the fused "
     "engines take them in; a shape names its free sizes: 'in_channels', 'c3_kernels' (the classic "
     "table's kernels), 'classes' (the modern output's units)");

  m.def("simd_level", &cpu::simd_level, "SIMD level the float32 CPU kernels use: 0 portable, 1 AVX2, 2 AVX-512");
  m.def("set_simd_level", &cpu::set_simd_level, "Force a lower SIMD level (tests); -1 restores the best");
  m.def("simd_supported", &cpu::simd_supported, "Best SIMD level this CPU and OS support: 0, 1 (AVX2+FMA) or 2 (AVX-512)");
  m.def("simd_isa", [] { return std::string(cpu::isa_name(cpu::current_isa())); },
        "Kernel family float32 CPU calls use now: portable, avx2, avx512 or avx2-wide16 (test mode)");
  m.def("_fma_probe", [](int64_t iters, int nthreads, int accumulators) {
    py::gil_scoped_release no_gil;
    return cpu::fma_probe(iters, nthreads, accumulators);
  }, py::arg("iters"), py::arg("nthreads"), py::arg("accumulators") = 0,
        "Benchmarks only: FLOPs done by `iters` rounds of `accumulators` independent vector FMA chains (0: the "
        "level's default) on each of nthreads threads, at the current SIMD level (0.0 at level 0)");
  m.def("_fma_probe_counts", &cpu::fma_probe_counts,
        "Benchmarks only: the chain counts _fma_probe takes at the current SIMD level (those that fit its registers)");
  m.def("_set_wide_emulation", &cpu::set_wide_emulation,
        "Tests only: at level 1, run the 16-lane (AVX-512) kernels, per-op and fused, on pairs of AVX2 registers");
#ifdef LENET5_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
