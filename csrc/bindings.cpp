// bindings.cpp — the pybind11 module lenet5_fast._C: the per-op kernels (op_bindings.h, CPU and,
// when built, CUDA), the fused CPU engines, the network's geometry and the SIMD controls.
//
// Every function takes raw addresses (Python ints from Tensor.data_ptr()); see op_bindings.h.
// The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "lenet5.h"
#include "op_bindings.h"
#include "support/simd.h"

namespace py = pybind11;
using lenet5::bind::Addr;
using lenet5::bind::I;
using lenet5::bind::P;

namespace {

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lenet5_fast native kernels (CPU SIMD and CUDA), called through lenet5_fast.ops";

  lenet5::bind::bind_per_op_kernels(m);

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
