#!/usr/bin/env bash
# Hugging Face GLM-4.5-Air checkpoint -> Megatron-Core checkpoint (see docs/convert.md).
#
#   HF_DIR=/data/hf/model OUT_DIR=/data/mcore/model bash ckpt_convert_scripts/GLM-4.5-Air/hf_to_mcore.sh
#
# FORMAT=torch_dist (default; loads at any TP/PP/EP), legacy (per-rank files at TP/PP/EP) or both.
# Legacy layout: TP, PP, EP, FIRST_STAGE_LAYERS / LAST_STAGE_LAYERS (uneven PP), EXPERT_LAYOUT=auto|sequential|grouped, SPEC=module:function.
# DTYPE=bf16|fp16|fp32. PYTHON picks the interpreter. Extra arguments go to `benchlib convert hf-to-mcore`.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
hf_to_mcore "GLM-4.5-Air" "$@"
