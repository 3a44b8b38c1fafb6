#!/usr/bin/env bash
# Megatron-Core DeepSeek-V3 checkpoint (torch_dist or legacy per-rank) -> Hugging Face safetensors (see docs/convert.md).
#
#   MCORE_DIR=/data/mcore/model OUT_DIR=/data/hf/model-back bash ckpt_convert_scripts/DeepSeek-V3/mcore_to_hf.sh
#
# HF_CONFIG: config.json (or its folder) of the model; default: hf_config.json stored by hf_to_mcore.sh.
# DTYPE=bf16|fp16|fp32, MAX_SHARD_SIZE (default 5GiB). Extra arguments go to `benchlib convert mcore-to-hf`.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
mcore_to_hf "$@"
