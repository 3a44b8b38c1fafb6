#!/usr/bin/env bash
# Run a benchmark on a node you already hold (or your GPU box):  MODEL=Qwen3-30B-A3B-Proxy bash interactive_benchmarking.sh [KEY=VALUE ...] [extra Megatron args]
# DRY_RUN=1 prints the rendered launch script instead of running it. All logic lives in benchlib.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_NEEDS_TRAIN=1 source "$here/scripts/bench_python.sh"
exec "$BENCH_PYTHON" -m benchlib launch --mode interactive -- "$@"
