"""The SIMD kernel families: every op of the table in op_table.py at every SIMD level the CPU has
(plus level 0, and the 16-lane kernels run on AVX2 register pairs), float32 against the float64
kernels, forward, backward and the Gauss-Newton backward, on the table's awkward shapes (batch 1,
odd sizes, batches that are not a multiple of the lane count, H or W = 5, arbitrary C3 tables);
the fast tanh's error bound; and what simd_level reports."""
import os

import pytest
import torch

from lenet5_fast import _C, ops
from lenet5_fast.layers import PAPER_C3_TABLE
from op_table import as_dtype, cases

F32, F64 = torch.float32, torch.float64
MODES = [("portable", 0, False), ("avx2", 1, False), ("avx2-wide16", 1, True), ("avx512", 2, False)]


@pytest.fixture(params=MODES, ids=[m[0] for m in MODES])
def mode(request):
    name, level, wide = request.param
    if _C.simd_supported() < level:
        pytest.skip(f"this CPU does not support SIMD level {level}")
    _C.set_simd_level(level)
    _C._set_wide_emulation(wide)
    assert _C.simd_isa() == name
    yield name
    _C.set_simd_level(-1)
    _C._set_wide_emulation(False)


def _close(got, want, what, tol=3e-5):
    got = got.to(F64)
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert torch.isfinite(got).all(), what
    assert err <= tol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


CASES, IDS = cases()


@pytest.mark.parametrize("entry,sample", CASES, ids=IDS)
def test_op_float32_against_float64(mode, entry, sample):
    """forward, backward and the Gauss-Newton backward of every op (the table in op_table.py)
    in float32 at this SIMD level against the float64 kernels."""
    x64, x32 = as_dtype(sample.args, F64), as_dtype(sample.args, F32)
    y64, y32 = entry.forward(*x64), entry.forward(*x32)
    if entry.name == "maxpool2x2":  # exact: a max picks a value, and the ties are exact in float32
        assert torch.equal(y32.double(), y64)
    else:
        _close(y32, y64, "forward")
    g = torch.randn(y64.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    if entry.name == "maxpool2x2":
        g = g.float().double()  # float32 values, exact in both precisions
    for gn in (False, True):
        gg = g.abs() if gn else g
        want = entry.backward_outputs(gg, y64, x64, gn)
        got = entry.backward_outputs(gg.to(F32), y32, x32, gn)
        for i, (a, b) in enumerate(zip(got, want)):
            if entry.name == "maxpool2x2":
                assert torch.equal(a.double(), b), f"backward gn={gn}"
            else:
                _close(a, b, f"backward gn={gn} output {i}", tol=1e-4)


def test_maxpool2x2_ties_and_nan(mode):
    x = torch.tensor([[[[1.0, 1.0, 2.0, float("nan"), 0.0], [1.0, 0.0, float("nan"), 5.0, 0.0]]]])
    x = x.repeat(3, 1, 1, 9)  # rows of 45: full vectors and a tail
    y = ops.maxpool2x2(x)
    want = ops.maxpool2x2(x.double())
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    assert torch.equal(y.nan_to_num(7.0).double(), want.nan_to_num(7.0))
    g = torch.rand_like(y)
    assert torch.equal(ops.maxpool2x2_backward(g, x, y).double(),
                       ops.maxpool2x2_backward(g.double(), x.double(), want))


def test_tanh_error_bound(mode):
    """The squashing 1.7159 tanh(2x/3) in float32 is within 1e-6 relative of float64 (the
    measured maximum is about 3e-7), saturates at exactly +-1.7159f, and keeps NaN."""
    x = torch.cat([torch.linspace(-20, 20, 400_001), torch.logspace(-30, 1.3, 20_000), -torch.logspace(-30, 1.3, 20_000)])
    y = ops.activation(x, 1).double()
    ref = 1.7159 * torch.tanh(x.double() * (2.0 / 3.0))
    rel = ((y - ref).abs() / ref.abs().clamp_min(1e-300))[ref != 0]
    assert rel.max().item() <= 1e-6
    special = ops.activation(torch.tensor([float("inf"), -float("inf"), 100.0, -30.0, 0.0, float("nan")]), 1)
    a = torch.tensor(1.7159, dtype=F32).item()
    assert special[:4].tolist() == [a, -a, a, -a] and special[4].item() == 0.0 and torch.isnan(special[5])


def test_weight_gradients_bitwise_independent_of_threads(mode):
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    x3, w3 = torch.randn(37, 6, 14, 14), torch.randn(60, 5, 5)
    y3 = ops.sparse_conv5x5(x3, w3, torch.randn(16), off, inp, 1)
    xf, wf = torch.randn(37, 400), torch.randn(120, 400) * 0.05
    yf = ops.full(xf, wf, torch.randn(120), 1)
    xs = torch.randn(37, 6, 28, 28)
    ys = ops.subsample2x2(xs, torch.randn(6), torch.randn(6), 1)
    xr, wr = torch.randn(37, 84), torch.randn(10, 84)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append([
                *ops.sparse_conv5x5_backward(y3, y3, x3, w3, off, inp, 1, False, True),
                *ops.full_backward(yf, yf, xf, wf, 1, True, True),
                *ops.subsample2x2_backward(ys, ys, xs, torch.ones(6), 1, False, True),
                *ops.euclidean_rbf_backward(torch.randn(37, 10, generator=torch.Generator().manual_seed(1)), xr, wr, False, True, True),
            ])
    finally:
        torch.set_num_threads(old)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a, b)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_simd_level_reporting():
    best = _C.simd_supported()
    assert best in (0, 1, 2) and _C.simd_level() == best
    flags = _cpu_flags()
    if flags is not None and os.uname().machine in ("x86_64", "AMD64"):
        has2 = {"avx2", "fma"} <= flags
        has512 = has2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
        assert best == (2 if has512 else 1 if has2 else 0)
    try:
        _C.set_simd_level(0)
        assert _C.simd_level() == 0 and _C.simd_isa() == "portable"
        _C.set_simd_level(7)
        assert _C.simd_level() == best
        if best >= 1:
            _C.set_simd_level(1)
            assert _C.simd_level() == 1 and _C.simd_isa() == "avx2"
            _C._set_wide_emulation(True)
            assert _C.simd_level() == 1 and _C.simd_isa() == "avx2-wide16"
            _C._set_wide_emulation(False)
    finally:
        _C.set_simd_level(-1)
        _C._set_wide_emulation(False)
    assert _C.simd_isa() == {0: "portable", 1: "avx2", 2: "avx512"}[best]


def test_relu_nan_rule(mode):
    """One NaN rule for ReLU in every kernel that applies it (csrc/activations.h), torch's:
    relu(NaN) = NaN, and the gradient passes where the output is NaN (NaN <= 0 is false)."""
    nan = float("nan")
    x = torch.tensor([nan, -1.0, 0.0, 2.0] * 5)
    ref = x.clone().requires_grad_()
    torch.relu(ref).backward(torch.ones_like(x))
    y = ops.activation(x, 2)
    torch.testing.assert_close(y, torch.relu(x), equal_nan=True)
    torch.testing.assert_close(ops.activation_backward(torch.ones_like(x), y, 2, False), ref.grad)
    # fused into an op's output: a NaN input pixel makes NaN outputs, never 0
    xc = torch.randn(2, 1, 9, 9)
    xc[0, 0, 4, 4] = nan
    yc = ops.conv5x5(xc, torch.randn(3, 1, 5, 5), torch.randn(3), 2)
    assert torch.isnan(yc[0]).any() and not torch.isnan(yc[1]).any()
