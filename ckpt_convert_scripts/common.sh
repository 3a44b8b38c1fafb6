# Sourced by ckpt_convert_scripts/<Family>/*.sh: the two conversions as functions, settings from
# the environment (see docs/convert.md). Extra arguments go to `benchlib convert ...` unchanged.
set -euo pipefail
# benchlib from this checkout, wherever the script is called from
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"

# HF_DIR, OUT_DIR; FORMAT=torch_dist|legacy|both; legacy layout TP, PP, EP, FIRST_STAGE_LAYERS,
# LAST_STAGE_LAYERS, EXPERT_LAYOUT=auto|sequential|grouped; SPEC=module:function; DTYPE; PYTHON;
# VERIFY=1 (run `benchlib convert verify` after converting; VERIFY=layer-by-layer for models larger than
# host memory); ALLOW_ROUTING_MISMATCH=1 (convert a router Megatron cannot reproduce, recorded in the checkpoint).
hf_to_mcore() {
  local family="$1"; shift
  : "${HF_DIR:?set HF_DIR to the Hugging Face folder (config.json + *.safetensors)}"
  : "${OUT_DIR:?set OUT_DIR to the Megatron checkpoint folder to create}"
  local args=(--family "$family" --hf-dir "$HF_DIR" --out "$OUT_DIR" --format "${FORMAT:-torch_dist}" --dtype "${DTYPE:-bf16}"
        --target-tp "${TP:-1}" --target-pp "${PP:-1}" --target-ep "${EP:-1}" --expert-layout "${EXPERT_LAYOUT:-auto}")
  [[ -n "${FIRST_STAGE_LAYERS:-}" ]] && args+=(--target-first-stage-layers "$FIRST_STAGE_LAYERS")
  [[ -n "${LAST_STAGE_LAYERS:-}" ]] && args+=(--target-last-stage-layers "$LAST_STAGE_LAYERS")
  [[ -n "${SPEC:-}" ]] && args+=(--spec "$SPEC")
  case "${VERIFY:-0}" in
    0|"") ;;
    layer-by-layer) args+=(--verify --verify-layer-by-layer) ;;
    *) args+=(--verify) ;;
  esac
  [[ "${ALLOW_ROUTING_MISMATCH:-0}" == "1" ]] && args+=(--allow-routing-mismatch)
  exec "${PYTHON:-python3}" -m benchlib convert hf-to-mcore "${args[@]}" "$@"
}

# MCORE_DIR, OUT_DIR; HF_CONFIG (default: the hf_config.json stored by hf_to_mcore); DTYPE; MAX_SHARD_SIZE; PYTHON.
mcore_to_hf() {
  : "${MCORE_DIR:?set MCORE_DIR to the Megatron checkpoint folder}"
  : "${OUT_DIR:?set OUT_DIR to the Hugging Face folder to create}"
  local args=(--mcore-dir "$MCORE_DIR" --out "$OUT_DIR" --dtype "${DTYPE:-bf16}" --max-shard-size "${MAX_SHARD_SIZE:-5GiB}")
  [[ -n "${HF_CONFIG:-}" ]] && args+=(--hf-config "$HF_CONFIG")
  exec "${PYTHON:-python3}" -m benchlib convert mcore-to-hf "${args[@]}" "$@"
}
