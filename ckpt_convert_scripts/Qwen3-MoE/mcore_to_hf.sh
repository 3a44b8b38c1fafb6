#!/usr/bin/env bash
# Megatron-Core Qwen3-MoE checkpoint (torch_dist or legacy per-rank) -> Hugging Face safetensors (see docs/convert.md).
#
#   MCORE_DIR=/data/mcore/model OUT_DIR=/data/hf/model-back bash ckpt_convert_scripts/Qwen3-MoE/mcore_to_hf.sh
#
# HF_CONFIG: config.json (or its folder) of the model; default: hf_config.json stored by hf_to_mcore.sh.
# DTYPE=bf16|fp16|fp32, MAX_SHARD_SIZE (default 5GiB). Extra arguments go to `benchlib convert mcore-to-hf`.
set -euo pipefail
# benchlib from this checkout, wherever the script is called from
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
: "${MCORE_DIR:?set MCORE_DIR to the Megatron checkpoint folder}"
: "${OUT_DIR:?set OUT_DIR to the Hugging Face folder to create}"
args=(--mcore-dir "$MCORE_DIR" --out "$OUT_DIR" --dtype "${DTYPE:-bf16}" --max-shard-size "${MAX_SHARD_SIZE:-5GiB}")
[[ -n "${HF_CONFIG:-}" ]] && args+=(--hf-config "$HF_CONFIG")
exec "${PYTHON:-python3}" -m benchlib convert mcore-to-hf "${args[@]}" "$@"
