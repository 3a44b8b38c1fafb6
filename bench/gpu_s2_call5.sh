#!/usr/bin/env bash
# Session 2, device call 5 (4 x H200): pipeline parallelism with the fast ops, through the
# suite's own path: PP=2 EP=2, PP=2 VPP=2 EP=2 with A2A overlap, and MLA (DeepSeek-V2-Lite-Proxy)
# with PP=2 EP=2.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
# shellcheck source=bench/interactive_runs.sh
source "$(dirname "$0")/interactive_runs.sh"
run_i qwen_pp2_ep2 120 MODEL=Qwen3-30B-A3B-Proxy PP=2 EP=2 MBS=4 GBS=64 TRAIN_ITERS=12
run_i qwen_pp2_vpp2_ep2_a2a 120 MODEL=Qwen3-30B-A3B-Proxy PP=2 VPP=2 EP=2 MBS=4 GBS=64 TRAIN_ITERS=12 A2A_OVERLAP=1
run_i dsv2lite_proxy_pp2_ep2 120 MODEL=DeepSeek-V2-Lite-Proxy PP=2 EP=2 TRAIN_ITERS=12
cp -r runs "$OUT/raw/runs" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
