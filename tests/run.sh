#!/usr/bin/env bash
# The test command (README): sets itself up on a fresh machine, then runs every test.
#   bash tests/run.sh [pytest args]
# Setup: .venv with Python 3.12 + the suite's test extras (tests/setup_env.sh), and Debian's
# Slurm packages when missing (tests/install_slurm.sh; the tests start and stop the daemons).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/setup_env.sh
bash tests/install_slurm.sh
# WandB stays offline in tests; a real key in the caller's shell must not be used.
unset WANDB_API_KEY
export WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
