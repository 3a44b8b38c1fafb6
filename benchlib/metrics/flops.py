"""Model FLOPs per global batch, from Megatron argument names.

The figure is the one Megatron-Core 0.19 prints as "throughput per GPU": model FLOPs of the
matrix multiplies (no activation recompute, no router GEMM, norms only where Megatron counts
them), forward + backward (x3), one multiply-accumulate = 2 FLOPs. Input is a mapping of
Megatron's argument names (the `---- arguments ----` dump of a log, or
`benchlib.config.flags.megatron_arg_dict(run)`), so the same function serves logs and configs.

Written independently from Megatron's `num_floating_point_operations`; a test checks the two
agree for every shipped model config. Counting is done in multiply-accumulates (MACs) per
token for one forward pass, then scaled once at the end.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any, Mapping

from benchlib.config.layer_pattern import eval_layer_pattern, layer_pattern  # noqa: F401 (re-exported)
from benchlib.core.errors import BenchError

FWD_BWD = 3  # forward, backward data-grad, backward weight-grad: each GEMM runs three times
FLOPS_PER_MAC = 2


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    if isinstance(value, str) and value.strip() in ("None", ""):
        return default
    return value


def _int(cfg: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = _get(cfg, key, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BenchError(f"FLOPs model: {key}={value!r} is not an integer",
                         hint=f"give --{key.replace('_', '-')} as a whole number") from None


def _bool(cfg: Mapping[str, Any], key: str) -> bool:
    value = _get(cfg, key, False)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward MACs per token (token-linear parts) and per token per context token (attention core)."""
    attention_linear: float
    attention_core: float  # multiply by seq_length: causal QK^T and PV
    mlp_dense: float
    moe: float
    mtp_extra: float
    logits: float
    moe_routed: float = 0.0  # the two parts of `moe`
    moe_shared: float = 0.0
    router_uncounted: float = 0.0  # the router GEMM (h x experts): not in Megatron's figure, so not in the total

    def total_macs_per_token(self, seq_length: int) -> float:
        return (self.attention_linear + self.mlp_dense + self.moe + self.mtp_extra + self.logits
                + self.attention_core * seq_length)


def default_ffn_hidden_size(hidden: int, swiglu: bool) -> int:
    """Megatron's --ffn-hidden-size when unset (SwiGLU keeps the parameter count of 4h)."""
    return int((4 * hidden * 2 / 3) / 64) * 64 if swiglu else 4 * hidden


def pad_vocab(vocab: int, divisible_by: int, tp: int) -> int:
    """Megatron pads the vocabulary to a multiple of make_vocab_size_divisible_by x TP."""
    multiple = divisible_by * tp
    return math.ceil(vocab / multiple) * multiple


def _padded_vocab(cfg: Mapping[str, Any]) -> int:
    padded = _int(cfg, "padded_vocab_size")
    if padded is not None:
        return padded
    vocab = _int(cfg, "vocab_size")
    if vocab is None:
        raise BenchError("FLOPs model needs padded_vocab_size (or vocab_size)",
                         hint="pass the run's config or a log with Megatron's argument dump")
    return pad_vocab(vocab, _int(cfg, "make_vocab_size_divisible_by", 128) or 128, _int(cfg, "tensor_model_parallel_size", 1) or 1)


def breakdown(cfg: Mapping[str, Any]) -> FlopsBreakdown:
    """Per-token forward MACs of each part of a GPT (MoE) model."""
    if _get(cfg, "hybrid_layer_pattern") is not None:
        raise BenchError("FLOPs model: hybrid (Mamba) models are not supported",
                         hint="benchlib's FLOPs model covers transformer (dense/MoE, MLA, GDN) models")
    h = _int(cfg, "hidden_size")
    layers = _int(cfg, "num_layers")
    heads = _int(cfg, "num_attention_heads")
    if not h or not layers or not heads:
        raise BenchError("FLOPs model needs hidden_size, num_layers and num_attention_heads",
                         hint="pass the run's config or a log with Megatron's argument dump")
    swiglu = _bool(cfg, "swiglu")
    gemms_per_mlp = 3 if swiglu else 2  # gate+up+down with SwiGLU, up+down without
    ffn = _int(cfg, "ffn_hidden_size")
    if ffn is None:
        ffn = default_ffn_hidden_size(h, swiglu)

    mtp = _int(cfg, "mtp_num_layers", 0) or 0
    total_layers = layers + mtp

    # Which layers carry MoE. MTP layers repeat the kind of the last decoder layer.
    num_experts = _int(cfg, "num_experts")
    if num_experts is None:
        moe_layers, topk = 0, 0
        last_is_moe = 0
    else:
        pattern = layer_pattern(_get(cfg, "moe_layer_freq", 1), layers)
        moe_layers, topk = sum(pattern), _int(cfg, "moe_router_topk", 2)
        last_is_moe = pattern[-1]
    moe_layers += last_is_moe * mtp
    dense_layers = total_layers - moe_layers

    # Attention layers that use standard (softmax) attention vs linear attention (gated delta net).
    variant = _get(cfg, "experimental_attention_variant")
    linear_layers = 0
    linear_macs = 0.0
    if variant == "gated_delta_net":
        freq = _get(cfg, "linear_attention_freq")
        if freq is None:
            raise BenchError("gated_delta_net needs linear_attention_freq", hint="set --linear-attention-freq")
        if isinstance(freq, str):
            freq = eval_layer_pattern(freq) if "[" in freq else int(freq)
        if isinstance(freq, int):
            # every freq-th layer (1-based) is full attention, the rest linear
            la = [0 if (i + 1) % freq == 0 else 1 for i in range(total_layers)]
        else:
            la = [int(v) for v in freq]
            if len(la) != total_layers:
                raise BenchError(f"linear_attention_freq has {len(la)} entries, expected {total_layers}",
                                 hint="one entry per layer, MTP layers included")
        linear_layers = sum(la)
        dk, dv = _int(cfg, "linear_key_head_dim"), _int(cfg, "linear_value_head_dim")
        nk, nv = _int(cfg, "linear_num_key_heads"), _int(cfg, "linear_num_value_heads")
        conv = _int(cfg, "linear_conv_kernel_dim")
        qk_dim, v_dim = dk * nk, dv * nv
        linear_macs = (h * (2 * qk_dim + 2 * v_dim + 2 * nv)  # in projection
                       + conv * (2 * qk_dim + v_dim)  # depthwise conv
                       + 4 * nv * dv * dv  # delta-rule state updates and read-out
                       + v_dim * h)  # out projection
    elif variant not in (None, "None"):
        # Megatron counts other variants (e.g. DSA) like standard attention.
        pass
    std_layers = total_layers - linear_layers

    if _bool(cfg, "multi_latent_attention"):
        qk, rope, v = _int(cfg, "qk_head_dim"), _int(cfg, "qk_pos_emb_head_dim"), _int(cfg, "v_head_dim")
        kv_rank, q_rank = _int(cfg, "kv_lora_rank"), _int(cfg, "q_lora_rank")
        q_out = heads * (qk + rope)
        # Query: direct projection, or down-projection to q_lora_rank then up (+1: its norm).
        q_macs = h * q_out if q_rank is None else q_rank * (h + q_out + 1)
        # Keys/values: down to kv_lora_rank (+1 norm), up to per-head k and v; plus the shared RoPE key.
        kv_macs = kv_rank * (h + heads * (qk + v) + 1) + h * rope
        out_macs = heads * v * h
        attn_linear = q_macs + kv_macs + out_macs
        # Causal: half of QK^T (width qk+rope) and half of PV (width v) per context token.
        attn_core = heads * (qk + rope) / 2 + heads * v / 2
    else:
        kv_ch = _int(cfg, "kv_channels") or h // heads
        groups = _int(cfg, "num_query_groups") if _bool(cfg, "group_query_attention") else heads
        q_dim, kv_dim = kv_ch * heads, kv_ch * groups
        gate = q_dim if _bool(cfg, "attention_output_gate") else 0
        attn_linear = h * (q_dim + 2 * kv_dim + gate) + q_dim * h
        attn_core = q_dim  # causal: QK^T and PV, each half of q_dim per context token

    moe_ffn = _int(cfg, "moe_ffn_hidden_size") or ffn
    shared = _int(cfg, "moe_shared_expert_intermediate_size", 0) or 0
    latent = _int(cfg, "moe_latent_size")
    if latent is None:
        routed = h * moe_ffn * topk * gemms_per_mlp
    else:  # experts run in a latent space, with a projection down and up
        routed = latent * moe_ffn * topk * gemms_per_mlp + 2 * latent * h
    shared_macs = h * shared * gemms_per_mlp
    moe_per_layer = routed + shared_macs

    vocab = _padded_vocab(cfg)
    return FlopsBreakdown(
        attention_linear=attn_linear * std_layers + linear_macs * linear_layers,
        attention_core=attn_core * std_layers,
        mlp_dense=h * ffn * gemms_per_mlp * dense_layers,
        moe=moe_per_layer * moe_layers,
        # each MTP block: embedding/hidden norms (counted as 3h) and the 2h -> h projection
        mtp_extra=mtp * (3 * h + 2 * h * h),
        logits=h * vocab * (1 + mtp),
        moe_routed=routed * moe_layers,
        moe_shared=shared_macs * moe_layers,
        router_uncounted=h * (num_experts or 0) * moe_layers,
    )


# The parts the summary names, in this order; "router" is 0 in the total (Megatron does not count it).
COMPONENTS = ("attention", "routed_experts", "shared_experts", "dense_mlp", "router", "output_layer", "mtp_other")


def component_flops(cfg: Mapping[str, Any], batch_size: int) -> dict[str, float]:
    """Model FLOPs of one iteration per part, from the same breakdown as `num_floating_point_operations`:
    the values sum to it. MTP blocks' attention and MLPs count under attention / experts / dense MLP,
    their extra norms and projection under mtp_other, their output layers under output_layer."""
    parts = breakdown(cfg)
    seq = _int(cfg, "seq_length")
    if not seq:
        raise BenchError("FLOPs model needs seq_length", hint="pass --seq-length in the config")
    scale = FWD_BWD * FLOPS_PER_MAC * batch_size * seq
    return {
        "attention": scale * (parts.attention_linear + parts.attention_core * seq),
        "routed_experts": scale * parts.moe_routed,
        "shared_experts": scale * parts.moe_shared,
        "dense_mlp": scale * parts.mlp_dense,
        "router": 0.0,
        "output_layer": scale * parts.logits,
        "mtp_other": scale * parts.mtp_extra,
    }


def component_shares(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Each part's share of the model FLOPs (fractions summing to 1), and what the uncounted router would add."""
    flops = component_flops(cfg, 1)
    total = sum(flops.values())
    seq = _int(cfg, "seq_length") or 0
    router = FWD_BWD * FLOPS_PER_MAC * seq * breakdown(cfg).router_uncounted
    return {
        "shares": {k: (v / total if total else 0.0) for k, v in flops.items()},
        "flops_per_sequence": flops,
        "router_if_counted": router / total if total else 0.0,
        "note": "shares of Megatron's model FLOPs (the MFU numerator); the router GEMM is not counted there: "
                "router_if_counted is what it would add",
    }


def num_floating_point_operations(cfg: Mapping[str, Any], batch_size: int) -> float:
    """Model FLOPs of one training iteration over `batch_size` sequences of cfg['seq_length']."""
    parts = breakdown(cfg)
    seq = _int(cfg, "seq_length")
    if not seq:
        raise BenchError("FLOPs model needs seq_length", hint="pass --seq-length in the config")
    tokens = batch_size * seq
    return FWD_BWD * FLOPS_PER_MAC * tokens * parts.total_macs_per_token(seq)
