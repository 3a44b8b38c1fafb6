#!/usr/bin/env bash
# Session 2, device call 2 (2 x H200): the fast ops' kernel check, the 1-GPU proxy with them
# (profiled), and EP=2 on two GPUs: native with and without the fast ops, with A2A overlap,
# and Megatron's local spec as the same-run baseline.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 bench/gpu_fast_ops_check.py "$OUT/fast_ops_check.json" > "$OUT/raw/fast_ops_check.log" 2>&1
echo "fast_ops_check rc=$?"; grep -E '"(ok|speedup|max_abs_[a-z_]+|permuted_equal|[a-z]+_ms_[a-z_]+)"' "$OUT/raw/fast_ops_check.log" | tr -s ' ' | tr '\n' ' '; echo
python3 bench/gpu_runs.py --out "$OUT/raw" --budget 450 "$@" 2>&1 | grep -v -i warn | tail -40
cp "$OUT/raw/summary.json" "$OUT/summary.json" 2>/dev/null
for d in "$OUT"/raw/*/; do [ -d "$d" ] && cp "$d"/profile_* "$OUT/" 2>/dev/null; done
tar -czf "$OUT/logs.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
