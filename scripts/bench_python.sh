# Sourced by sbatch_benchmarking.sh / interactive_benchmarking.sh: sets BENCH_PYTHON to an
# interpreter that can run benchlib, creating .venv on first use. benchlib itself runs from this
# checkout (PYTHONPATH), so nothing needs building; only its dependencies are installed.
#   core (render, submit, parse): jinja2, pyyaml        (any Python >= 3.10)
#   training (BENCH_NEEDS_TRAIN=1 on a GPU machine): torch, megatron-core 0.19.2  (Python >= 3.12)
# Offline machines: put wheels in .whl/ (see docs/gpu.md); they are used without an index.
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$BENCH_ROOT${PYTHONPATH:+:$PYTHONPATH}"

_bench_needs_train() {
  [ -n "${BENCH_NEEDS_TRAIN:-}" ] && [ "${DRY_RUN:-0}" = "0" ] && command -v nvidia-smi >/dev/null 2>&1
}
_bench_ok() {
  "$1" -c 'import yaml, jinja2' >/dev/null 2>&1 || return 1
  if _bench_needs_train; then "$1" -c 'import torch, megatron.core' >/dev/null 2>&1 || return 1; fi
  return 0
}
_bench_pip() {
  if [ -d "$BENCH_ROOT/.whl" ] && ls "$BENCH_ROOT"/.whl/*.whl >/dev/null 2>&1; then
    "$BENCH_ROOT/.venv/bin/python" -m pip install -q --no-index --no-deps --find-links "$BENCH_ROOT/.whl" "$@"
  else
    "$BENCH_ROOT/.venv/bin/python" -m pip install -q "$@"
  fi
}

if [ -n "${BENCH_PYTHON:-}" ]; then
  :
elif [ -x "$BENCH_ROOT/.venv/bin/python" ] && _bench_ok "$BENCH_ROOT/.venv/bin/python"; then
  BENCH_PYTHON="$BENCH_ROOT/.venv/bin/python"
elif command -v python3 >/dev/null 2>&1 && _bench_ok python3; then
  BENCH_PYTHON="$(command -v python3)"
else
  if [ ! -x "$BENCH_ROOT/.venv/bin/python" ]; then
    echo "[setup] first use: creating $BENCH_ROOT/.venv (reusing this machine's packages, e.g. torch)" >&2
    # Prefer a Python >= 3.12 (megatron-core 0.19 needs it for training); any python3 renders.
    _py=python3
    for _cand in python3.13 python3.12; do "$_cand" -c "import venv" >/dev/null 2>&1 && { _py="$_cand"; break; }; done
    "$_py" -m venv --system-site-packages "$BENCH_ROOT/.venv"
  fi
  "$BENCH_ROOT/.venv/bin/python" -c 'import yaml, jinja2' >/dev/null 2>&1 || _bench_pip jinja2 pyyaml markupsafe
  if _bench_needs_train && ! "$BENCH_ROOT/.venv/bin/python" -c 'import torch, megatron.core' >/dev/null 2>&1; then
    echo "[setup] installing megatron-core 0.19.2 into .venv" >&2
    "$BENCH_ROOT/.venv/bin/python" -c 'import torch' >/dev/null 2>&1 || _bench_pip "torch>=2.9"
    _bench_pip "megatron-core==0.19.2"
  fi
  BENCH_PYTHON="$BENCH_ROOT/.venv/bin/python"
fi
export BENCH_PYTHON
