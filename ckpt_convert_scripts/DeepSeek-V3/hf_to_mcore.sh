#!/usr/bin/env bash
# Hugging Face DeepSeek-V3 checkpoint -> Megatron-Core checkpoint (see docs/convert.md).
# The published fp8 weights (weight_scale_inv, 128x128 blocks) are dequantized to DTYPE; the MTP
# layer (model.layers.61.*) becomes Megatron's mtp.layers.0 (train with --mtp-num-layers 1); a checkpoint
# re-saved by transformers has no MTP weights and converts without MTP (then leave --mtp-num-layers out).
# VERIFY=1 checks the result against Hugging Face (VERIFY=layer-by-layer for the full model, see docs/convert.md).
#
#   HF_DIR=/data/hf/model OUT_DIR=/data/mcore/model bash ckpt_convert_scripts/DeepSeek-V3/hf_to_mcore.sh
#
# FORMAT=torch_dist (default; loads at any TP/PP/EP), legacy (per-rank files at TP/PP/EP) or both.
# Legacy layout: TP, PP, EP, FIRST_STAGE_LAYERS / LAST_STAGE_LAYERS (uneven PP), EXPERT_LAYOUT=auto|sequential|grouped, SPEC=module:function.
# DTYPE=bf16|fp16|fp32. PYTHON picks the interpreter. Extra arguments go to `benchlib convert hf-to-mcore`.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
hf_to_mcore "DeepSeek-V3" "$@"
