#!/usr/bin/env bash
# Device call 5: issue 9 on 4 GPUs (DeepSeek-V2-Lite, 8 layers, EP=4) and the interactive path on one H200.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/raw"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
echo "== interactive: MODEL=DeepSeek-V2-Lite-Proxy bash interactive_benchmarking.sh GPUS_PER_NODE=1 TRAIN_ITERS=20"
MODEL=DeepSeek-V2-Lite-Proxy timeout 120 bash interactive_benchmarking.sh GPUS_PER_NODE=1 TRAIN_ITERS=20 > "$OUT/raw/interactive_dsv2lite_proxy_1gpu.log" 2>&1
echo "rc=$?"; grep -v -i warn "$OUT/raw/interactive_dsv2lite_proxy_1gpu.log" | tail -14
if [ -f bench/gpu_convert_mla_parity.py ]; then
  echo "== bench/gpu_convert_mla_parity.py"
  timeout 120 python3 bench/gpu_convert_mla_parity.py "$OUT/raw" > "$OUT/raw/convert_mla_parity.log" 2>&1; echo "rc=$?"
  grep -v -i warn "$OUT/raw/convert_mla_parity.log" | tail -15
fi
python3 bench/gpu_runs.py --out "$OUT/raw" --budget 150 dsv2lite_8l_4gpu_native 2>&1 | grep -v -i warn | tail -8
cp -r runs "$OUT/raw/runs" 2>/dev/null
mv "$OUT/raw/summary.json" "$OUT/summary.json" 2>/dev/null
tar -czf "$OUT/call5.tar.gz" -C "$OUT/raw" . && rm -rf "$OUT/raw"
