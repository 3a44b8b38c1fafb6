# Sourced by sbatch_benchmarking.sh / interactive_benchmarking.sh: sets BENCH_PYTHON to an
# interpreter that can run benchlib, creating .venv on first use. benchlib itself runs from this
# checkout (PYTHONPATH), so nothing needs building; only its dependencies are installed.
#   core (render, submit, parse): jinja2, pyyaml        (any Python >= 3.10)
#   training (BENCH_NEEDS_TRAIN=1 on a GPU machine): torch, triton, megatron-core 0.19.2  (Python >= 3.12)
#
# What is already importable by python3 is reused, whatever python3 is (system Python, NGC
# container, a venv, a conda env): .venv gets a .pth file that adds python3's own site-packages
# (`python3 -m venv --system-site-packages` would not do: from inside a venv or conda env it exposes
# the *base* interpreter's packages, not the env's), and only the missing packages go into .venv.
# Offline machines: put the missing wheels in .whl/ (docs/gpu.md, Offline setup); then no index is used,
# and a wheel that is needed but not there is named with the command that fetches it.
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$BENCH_ROOT${PYTHONPATH:+:$PYTHONPATH}"
BENCH_MEGATRON_CORE="megatron-core==0.19.2"

_bench_needs_train() {
  [ -n "${BENCH_NEEDS_TRAIN:-}" ] && [ "${DRY_RUN:-0}" = "0" ] && command -v nvidia-smi >/dev/null 2>&1
}
# "module=requirement" for each dependency this machine needs, in install order.
_bench_deps() {
  echo "markupsafe=markupsafe" "jinja2=jinja2" "yaml=pyyaml"
  if _bench_needs_train; then echo "torch=torch>=2.9" "triton=triton" "megatron.core=$BENCH_MEGATRON_CORE"; fi
}
# The requirements whose module $1 cannot import (nothing printed: it has everything).
_bench_missing() {
  local dep
  for dep in $(_bench_deps); do
    "$1" -c "import ${dep%%=*}" >/dev/null 2>&1 || printf '%s\n' "${dep#*=}"
  done
}
# The wheel-file prefix of a requirement (PEP 427 names: lower case, - and . become _).
_bench_wheel_glob() {
  local name="${1%%[<>=!~]*}"
  name="$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr '.-' '__')"
  printf '%s-*.whl' "$name"
}
_bench_has_wheel() {
  local glob f
  glob="$(_bench_wheel_glob "$1")"
  for f in "$BENCH_ROOT"/.whl/*.whl; do
    # Wheel names may keep upper case (Jinja2-..., PyYAML-...): compare in lower case.
    # shellcheck disable=SC2053  # the glob is meant to match
    [[ "$(basename "$f" | tr '[:upper:]' '[:lower:]')" == $glob ]] && return 0
  done
  return 1
}
_bench_offline() {
  [ -d "$BENCH_ROOT/.whl" ] && ls "$BENCH_ROOT"/.whl/*.whl >/dev/null 2>&1
}
_bench_install() {  # install the requirements "$@" into .venv
  local venv_py="$BENCH_ROOT/.venv/bin/python" req pyver
  if _bench_offline; then
    pyver="$("$venv_py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    for req in "$@"; do
      if ! _bench_has_wheel "$req"; then
        echo "[setup] error: offline install (.whl/ is used, no package index), but .whl/ has no wheel for '$req'" >&2
        echo "[setup]   ($venv_py cannot import it, and the machine's python3 does not have it either)" >&2
        echo "[setup]   fetch it on a machine with internet, from this checkout's root, and copy .whl/ here:" >&2
        echo "[setup]   python3 -m pip download --no-deps --only-binary=:all: --python-version $pyver --implementation cp --platform manylinux_2_28_x86_64 -d .whl '$req'" >&2
        echo "[setup]   (docs/gpu.md, Offline setup lists the wheels; or install it into python3 yourself)" >&2
        return 1
      fi
    done
    "$venv_py" -m pip install -q --no-index --no-deps --find-links "$BENCH_ROOT/.whl" "$@"
  else
    "$venv_py" -m pip install -q "$@"
  fi
}
# The interpreter that makes .venv: python3 unless training needs a newer one (megatron-core 0.17+
# needs Python >= 3.12), then the first python3.13 / python3.12 found.
_bench_base_python() {
  if ! _bench_needs_train || python3 -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
    echo python3; return
  fi
  local cand
  for cand in python3.13 python3.12; do
    "$cand" -c 'import venv' >/dev/null 2>&1 && { echo "$cand"; return; }
  done
  echo python3
}

if [ -n "${BENCH_PYTHON:-}" ]; then
  :
elif [ -x "$BENCH_ROOT/.venv/bin/python" ] && [ -z "$(_bench_missing "$BENCH_ROOT/.venv/bin/python")" ]; then
  BENCH_PYTHON="$BENCH_ROOT/.venv/bin/python"
elif command -v python3 >/dev/null 2>&1 && [ -z "$(_bench_missing python3)" ]; then
  BENCH_PYTHON="$(command -v python3)"
else
  _bench_py="$(_bench_base_python)"
  if [ ! -x "$BENCH_ROOT/.venv/bin/python" ]; then
    echo "[setup] first use: creating $BENCH_ROOT/.venv on $(command -v "$_bench_py"), reusing its packages" >&2
    "$_bench_py" -m venv "$BENCH_ROOT/.venv" || return 1
  fi
  _bench_site="$("$BENCH_ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  _bench_pyver='import sys; print(sys.version_info[:2])'
  # Every site-packages folder the base interpreter sees (its venv's or conda env's included),
  # added after .venv's own through site.addsitedir (which also runs their .pth files). Also
  # added to a .venv made before this file existed, when it runs the same Python version.
  if [ ! -f "$_bench_site/_bench_base_site.pth" ] \
     && [ "$("$_bench_py" -c "$_bench_pyver")" = "$("$BENCH_ROOT/.venv/bin/python" -c "$_bench_pyver")" ]; then
    "$_bench_py" -c '
import site, sys
dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))
' > "$_bench_site/_bench_base_site.pth" || return 1
  fi
  # shellcheck disable=SC2046  # one requirement per line, none with spaces
  _bench_todo=$(_bench_missing "$BENCH_ROOT/.venv/bin/python")
  if [ -n "$_bench_todo" ]; then
    echo "[setup] installing into .venv what is missing: ${_bench_todo//$'\n'/ }" >&2
    # shellcheck disable=SC2086
    _bench_install $_bench_todo || return 1
  fi
  BENCH_PYTHON="$BENCH_ROOT/.venv/bin/python"
fi
export BENCH_PYTHON
