#!/usr/bin/env bash
# Creates (once) the test environment in .venv: Python 3.12, the suite with every extra
# (torch, megatron-core, transformers, wandb, ...) at the versions tests/constraints.txt pins.
# Re-running is cheap when it is up to date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

find_python312() {
  for cand in python3.12 "$(command -v pyenv >/dev/null 2>&1 && PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || true)"; do
    if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2] >= (3, 12)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])'); do
      p="$(PYENV_VERSION=$v pyenv which python3 2>/dev/null || true)"
      [ -n "$p" ] && { echo "$p"; return 0; }
    done
  fi
  return 1
}

stamp=.venv/.bench-installed
want="$(cat pyproject.toml tests/constraints.txt | sha256sum | cut -c1-16)"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] >= (3, 12)' 2>/dev/null; then
  # e.g. a core-only .venv made by the launch scripts with an older python3: the tests need 3.12
  echo "[setup] .venv has Python < 3.12 (megatron-core 0.19 needs 3.12): recreating it"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  py="$(find_python312)" || { echo "error: the tests need Python >= 3.12 (megatron-core 0.19 requires it); install python3.12 and retry" >&2; exit 2; }
  echo "[setup] creating .venv with $py"
  PYENV_VERSION=3.12.1 "$py" -m venv .venv
fi
echo "[setup] installing the suite with its test extras (first time: a few minutes, torch is large)"
.venv/bin/python -m pip install -q --upgrade pip
# pinned: tests/constraints.txt is the test environment's lock (torch, triton, transformers, wandb, ...)
.venv/bin/python -m pip install -q -c tests/constraints.txt -e ".[test]"
echo "$want" > "$stamp"
