#!/usr/bin/env bash
# Session 2, device call 1 (one H200): profile the 1-GPU proxy step, try Megatron's native fused
# cross-entropy, and the 50-iteration loss curves native vs local at a gentle learning rate.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 bench/gpu_runs.py --out "$OUT/raw" --budget 480 "$@" 2>&1 | grep -v -i warn | tail -60
cp "$OUT/raw/summary.json" "$OUT/summary.json" 2>/dev/null
for d in "$OUT"/raw/*/; do [ -d "$d" ] && cp "$d"/profile_* "$OUT/" 2>/dev/null; done
tar -czf "$OUT/logs.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
