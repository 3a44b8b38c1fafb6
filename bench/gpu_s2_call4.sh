#!/usr/bin/env bash
# Session 2, device call 4 (4 x H200): issue 6's done-when run through the suite's own path,
# Qwen3-30B-A3B-Proxy with EP=4 and the fast ops, without and with A2A overlap, and Megatron's
# local spec as the same-run baseline.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
# shellcheck source=bench/interactive_runs.sh
source "$(dirname "$0")/interactive_runs.sh"
run_i qwen_ep4_native 150 MODEL=Qwen3-30B-A3B-Proxy EP=4 MBS=4 GBS=64 TRAIN_ITERS=20
run_i qwen_ep4_native_a2a 150 MODEL=Qwen3-30B-A3B-Proxy EP=4 MBS=4 GBS=64 TRAIN_ITERS=20 A2A_OVERLAP=1
run_i qwen_ep4_local 150 MODEL=Qwen3-30B-A3B-Proxy EP=4 MBS=4 GBS=64 TRAIN_ITERS=10 BACKEND=local
cp -r runs "$OUT/raw/runs" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
