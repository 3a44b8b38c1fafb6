#!/usr/bin/env bash
# Session 2, device call 3 (one H200): the kernel check with RoPE, the suite's own interactive
# path for both 1-GPU proxies with all fast ops (and Megatron's local spec as the same-run
# baseline), and the 50-iteration loss curves native (fast ops) vs local.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export CUDA_VISIBLE_DEVICES=0
timeout 150 python3 bench/gpu_fast_ops_check.py "$OUT/fast_ops_check.json" > "$OUT/raw/fast_ops_check.log" 2>&1
echo "fast_ops_check rc=$?"; grep -E '"(ok|speedup|max_abs_[a-z_]+|grad_max_abs_diff|permuted_equal|[a-z]+_ms_[a-z_]+)"' "$OUT/raw/fast_ops_check.log" | tr -s ' ' | tr '\n' ' '; echo
# shellcheck source=bench/interactive_runs.sh
source "$(dirname "$0")/interactive_runs.sh"
run_i qwen_native 120 MODEL=Qwen3-30B-A3B-Proxy TRAIN_ITERS=15
run_i qwen_local 200 MODEL=Qwen3-30B-A3B-Proxy BACKEND=local TRAIN_ITERS=10 ||
  run_i qwen_local_mbs2 200 MODEL=Qwen3-30B-A3B-Proxy BACKEND=local TRAIN_ITERS=10 MBS=2 GBS=16
run_i dsv2lite_proxy_native 120 MODEL=DeepSeek-V2-Lite-Proxy TRAIN_ITERS=15
cp -r runs "$OUT/raw/runs" 2>/dev/null
python3 bench/gpu_runs.py --out "$OUT/raw" --budget 260 qwen_1gpu_native_lc qwen_1gpu_local_lc 2>&1 | grep -v -i warn | tail -6
cp "$OUT/raw/summary.json" "$OUT/summary.json" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
