#!/usr/bin/env bash
# Device call 6: after the plain linear_q_proj change for MLA without q-LoRA: conversion parity
# (DeepSeek-V2-Lite native included) and DeepSeek-V2-Lite-Proxy training again on one H200.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
timeout 70 python3 bench/gpu_convert_mla_parity.py "$OUT/raw" > "$OUT/raw/convert_mla_parity.log" 2>&1; echo "parity rc=$?"
grep -E "max\|diff\||VERDICT" "$OUT/raw/convert_mla_parity.log" | tail -8
python3 bench/gpu_runs.py --out "$OUT/raw" --budget 80 dsv2lite_proxy_1gpu_native 2>&1 | grep -v -i warn | tail -4
mv "$OUT/raw/summary.json" "$OUT/summary.json" 2>/dev/null
tar -czf "$OUT/call6.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
