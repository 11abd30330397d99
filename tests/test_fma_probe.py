"""The FMA probe behind the benchmarks' ceiling (csrc/cpu/activation.cpp, bench/ceiling.py): its
FLOP count, the chain counts each level takes, that every chain lives in a register (the
compiled loop), and that the AVX-512 probe is not below the AVX2 one where two 512-bit FMA
ports make it twice as fast."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lenet5_fast import _C

ROOT = Path(__file__).resolve().parents[1]
LANES = {1: 8, 2: 16}


@pytest.fixture
def pin():
    yield _C.set_simd_level
    _C.set_simd_level(-1)


@pytest.mark.parametrize("lvl", [1, 2])
def test_probe_counts_its_flops(pin, lvl):
    if _C.simd_supported() < lvl:
        pytest.skip(f"the CPU has no SIMD level {lvl}")
    pin(lvl)
    counts = _C._fma_probe_counts()  # those that fit next to two constants: 14 of 16 ymm, 30 of 32 zmm
    assert counts == [1, 2, 4, 6, 8, 10, 12, 14] + ([16, 20, 24, 28, 30] if lvl == 2 else [])
    for c in counts:
        # iters rounds x c chains x L lanes x 2 FLOPs, on each thread
        assert _C._fma_probe(100, 2, c) == 100 * c * LANES[lvl] * 2 * 2
    assert _C._fma_probe(10, 1) == _C._fma_probe(10, 1, {1: 12, 2: 24}[lvl])  # the default


def test_probe_refuses_counts_that_spill(pin):
    if _C.simd_supported() < 1:
        pytest.skip("no SIMD level")
    pin(1)
    for bad in (3, 16, 30, -1):
        with pytest.raises(ValueError, match="accumulators at level avx2"):
            _C._fma_probe(10, 1, bad)
    pin(0)
    assert _C._fma_probe(10, 1) == 0.0 and _C._fma_probe_counts() == []


def _tools():
    cxx, objdump = shutil.which("c++") or shutil.which("g++"), shutil.which("objdump")
    src = ROOT / "csrc" / "cpu" / "activation.cpp"
    if not (cxx and objdump and src.exists()):
        pytest.skip("needs the source tree, a C++ compiler and objdump")
    return src, cxx, objdump


def test_every_probe_chain_is_a_register(tmp_path):
    """activation.cpp compiled as the build does (-O3, no -march; without LTO, so the symbols
    stay): each probe instantiation's hot loop is its chains' FMAs on registers, no memory."""
    src, cxx, objdump = _tools()
    obj = tmp_path / "activation.o"
    subprocess.run([cxx, "-O3", "-std=gnu++17", "-fPIC", "-fno-math-errno", f"-I{ROOT / 'csrc'}", "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True, timeout=600)
    asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", str(obj)], check=True, capture_output=True,
                         text=True).stdout
    seen = {}
    for func in re.split(r"\n(?=[0-9a-f]+ <)", asm):
        m = re.match(r"[0-9a-f]+ <double lenet5::cpu::\w+::fma_probe_simd<lenet5::cpu::\w+::(\w+), (\d+)>", func)
        if not m:
            continue
        kind, chains = m.group(1), int(m.group(2))
        insns = [(int(a, 16), i.strip()) for a, i in re.findall(r"^\s*([0-9a-f]+):\s+(.*)$", func, re.M)]
        addr, lines = [a for a, _ in insns], [i for _, i in insns]
        # the hot loop: the backward jump's range (target to jump) with the most FMAs
        loops = [lines[addr.index(int(j.group(1), 16)):k + 1] for k, ln in enumerate(lines)
                 if (j := re.match(r"j\w+\s+([0-9a-f]+) <", ln)) and int(j.group(1), 16) in addr[:k + 1]]
        assert loops, (kind, chains)
        loop = max(loops, key=lambda lp: sum(i.startswith("vfmadd") for i in lp))
        fmas = [ln for ln in loop if ln.startswith("vfmadd")]
        per_value = 2 if kind == "Avx2x2" else 1
        assert len(fmas) == chains * per_value, (kind, chains, loop)
        memory = [ln for ln in loop if "(" in ln.split("<")[0]]  # an operand like 0x40(%rsp)
        assert not memory, f"{kind} x {chains}: memory access in the probe loop {loop}"
        seen[kind, chains] = True
    assert ("Avx512", 24) in seen and ("Avx2", 12) in seen and ("Avx2x2", 6) in seen


# Intel CPUs with two 512-bit FMA units (Intel ARK, "# of AVX-512 FMA Units": 2): every Xeon of
# Ice Lake-SP (family 6, models 106, 108), Sapphire Rapids (143), Emerald Rapids (207) and
# Granite Rapids (173, 174); of Skylake-SP / Cascade Lake / Cooper Lake (model 85) only the
# Platinum and Gold 6xxx parts (Silver, Bronze and most Gold 5xxx have one). Nothing else is
# assumed (AMD Zen 4 runs 512-bit FMAs on its two 256-bit pipes: AVX-512 gains no FLOPs there).
_TWO_PORT_MODELS = {106, 108, 143, 207, 173, 174}


def _cpuinfo():
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def two_512bit_fma_ports() -> bool:
    info = _cpuinfo()
    if info.get("vendor_id") != "GenuineIntel" or info.get("cpu family") != "6":
        return False
    model, name = int(info.get("model", "-1")), info.get("model name", "")
    return model in _TWO_PORT_MODELS or (model == 85 and bool(re.search(r"Platinum|Gold 6\d", name)))


def test_avx512_probe_not_below_avx2_where_two_512bit_ports(pin):
    if _C.simd_supported() < 2 or not two_512bit_fma_ports():
        pytest.skip("only on a CPU with AVX-512 and two 512-bit FMA ports (an Intel Xeon model list, see above)")

    def gflops(lvl, iters=1 << 22):
        pin(lvl)
        s = time.perf_counter()
        f = _C._fma_probe(iters, 1)
        return f / (time.perf_counter() - s)

    best = {1: 0.0, 2: 0.0}
    for _ in range(5):  # interleaved, best of 5: another process can only slow a run down
        for lvl in (1, 2):
            best[lvl] = max(best[lvl], gflops(lvl))
    assert best[2] >= best[1], f"AVX-512 probe {best[2] / 1e9:.1f} GFLOP/s below AVX2's {best[1] / 1e9:.1f}"
