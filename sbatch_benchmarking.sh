#!/usr/bin/env bash
# Submit a benchmark to Slurm:  MODEL=DeepSeek-V3 CLUSTER=mycluster bash sbatch_benchmarking.sh [KEY=VALUE ...] [extra Megatron args]
# DRY_RUN=1 prints the rendered sbatch script instead of submitting. All logic lives in benchlib.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/scripts/bench_python.sh"
exec "$BENCH_PYTHON" -m benchlib launch --mode sbatch -- "$@"
