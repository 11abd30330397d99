# Sourced by scripts/build_wheels.sh, .ci/wheel and .ci/run.
# find_python X.Y prints the path of a CPython X.Y interpreter: pyenv's (~/.pyenv/versions/X.Y.*,
# the newest patch release), else pythonX.Y on PATH; it fails, saying where it looked, when
# there is none.
find_python() {
  local root=${PYENV_ROOT:-$HOME/.pyenv} p
  for p in $(ls -d "$root/versions/$1".* 2>/dev/null | sort -V -r); do
    [ -x "$p/bin/python$1" ] && { echo "$p/bin/python$1"; return 0; }
  done
  p=$(command -v "python$1") && { echo "$p"; return 0; }
  echo "no Python $1: looked in $root/versions/$1.* and for python$1 on PATH" >&2
  return 1
}
