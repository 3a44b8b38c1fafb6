#!/usr/bin/env bash
# Device call 4: the suite's own interactive path on 4 and 1 H200s, issue 9's fewer-layer run,
# the same-config local baseline for the MBS 4 Qwen3 proxy, and (if present) the MLA conversion parity check.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
echo "== interactive: MODEL=Qwen3-30B-A3B-Proxy EP=4 bash interactive_benchmarking.sh MBS=4 GBS=64 TRAIN_ITERS=20"
MODEL=Qwen3-30B-A3B-Proxy EP=4 timeout 150 bash interactive_benchmarking.sh MBS=4 GBS=64 TRAIN_ITERS=20 > "$OUT/raw/interactive_qwen_ep4.log" 2>&1
echo "rc=$?"; grep -v -i warn "$OUT/raw/interactive_qwen_ep4.log" | tail -22
echo "== interactive: MODEL=DeepSeek-V2-Lite-Proxy bash interactive_benchmarking.sh (1 GPU)"
CUDA_VISIBLE_DEVICES=0 MODEL=DeepSeek-V2-Lite-Proxy timeout 120 bash interactive_benchmarking.sh TRAIN_ITERS=20 > "$OUT/raw/interactive_dsv2lite_proxy_1gpu.log" 2>&1
echo "rc=$?"; grep -v -i warn "$OUT/raw/interactive_dsv2lite_proxy_1gpu.log" | tail -16
if [ -f bench/gpu_convert_mla_parity.py ]; then
  echo "== bench/gpu_convert_mla_parity.py"
  timeout 90 python3 bench/gpu_convert_mla_parity.py > "$OUT/raw/convert_mla_parity.log" 2>&1; echo "rc=$?"
  grep -v -i warn "$OUT/raw/convert_mla_parity.log" | tail -15
fi
cp -r runs "$OUT/raw/runs" 2>/dev/null
python3 bench/gpu_runs.py --out "$OUT/raw" --budget 200 dsv2lite_8l_4gpu_native qwen_4gpu_l4_local_mbs4 qwen_4gpu_l4_native_mbs4_gc 2>&1 | grep -v -i warn | tail -14
mv "$OUT/raw/summary.json" "$OUT/summary.json" 2>/dev/null
tar -czf "$OUT/call4.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
