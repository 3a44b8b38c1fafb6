"""A model's shape and parameter counts, read from Megatron argument names.

Input is a mapping of Megatron's argument names: `benchlib.config.flags.megatron_arg_dict(run.flags)`,
the `---- arguments ----` dump of a log, or a GPU result record's `megatron_args`. Values may be
typed or strings (a log dump says "None", "True", "4096"). Absent arguments take Megatron-Core
0.19's defaults (the ones that matter for memory are filled in `ModelShape.from_args`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from benchlib.core.errors import BenchError
from benchlib.metrics.flops import default_ffn_hidden_size, layer_pattern, pad_vocab

Args = Mapping[str, Any]


def get(args: Args, key: str, default: Any = None) -> Any:
    value = args.get(key, default)
    if isinstance(value, str) and value.strip() in ("None", ""):
        return default
    return default if value is None else value


def as_int(args: Args, key: str, default: int | None = None) -> int | None:
    value = get(args, key, default)
    if value is None:
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise BenchError(f"memory model: {key}={value!r} is not a number",
                         hint=f"give --{key.replace('_', '-')} as a whole number") from None


def as_float(args: Args, key: str, default: float) -> float:
    value = get(args, key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BenchError(f"memory model: {key}={value!r} is not a number") from None


def as_bool(args: Args, key: str, default: bool = False) -> bool:
    value = get(args, key, default)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def as_list(args: Args, key: str) -> list[str]:
    value = get(args, key, None)
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip().strip("[]")
        return [w.strip(" '\"") for w in text.replace(",", " ").split() if w.strip(" '\"")]
    return [str(v) for v in value]


_PATTERNS: dict[tuple[str, int], tuple[int, ...]] = {}


def _pattern(freq: Any, layers: int) -> tuple[int, ...]:
    """--moe-layer-freq as a 0/1 tuple; cached (the planner reads the same pattern thousands of times)."""
    key = (repr(freq), layers)
    if key not in _PATTERNS:
        _PATTERNS[key] = tuple(layer_pattern(freq, layers))
    return _PATTERNS[key]


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about the network (whole model, not per rank)."""

    num_layers: int
    hidden: int
    ffn: int  # dense MLP intermediate size
    heads: int
    query_groups: int
    kv_channels: int
    vocab: int  # padded vocabulary (Megatron pads to 128 * TP)
    swiglu: bool
    norm_params: int  # per-norm parameters per hidden unit: RMSNorm 1, LayerNorm 2
    untied: bool
    qk_layernorm: bool
    moe_pattern: tuple[int, ...]  # 1 = MoE layer
    num_experts: int
    topk: int
    moe_ffn: int
    shared_ffn: int
    shared_gate: bool
    mtp_layers: int
    mla: bool
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_head_dim: int
    qk_pos_emb_head_dim: int
    v_head_dim: int

    @staticmethod
    def from_args(args: Args, tp: int = 1) -> "ModelShape":
        h = as_int(args, "hidden_size")
        layers = as_int(args, "num_layers")
        heads = as_int(args, "num_attention_heads")
        if not h or not layers or not heads:
            raise BenchError("memory model needs hidden_size, num_layers and num_attention_heads",
                             hint="pass a model config (MODEL=...) or a record/log with Megatron's argument dump")
        swiglu = as_bool(args, "swiglu")
        ffn = as_int(args, "ffn_hidden_size")
        if ffn is None:
            ffn = default_ffn_hidden_size(h, swiglu)
        gqa = as_bool(args, "group_query_attention")
        groups = as_int(args, "num_query_groups") if gqa else heads
        vocab = as_int(args, "padded_vocab_size")
        if vocab is None:
            raw = as_int(args, "vocab_size")
            if raw is None:
                raise BenchError("memory model needs vocab_size", hint="add --vocab-size to the model config")
            vocab = pad_vocab(raw, as_int(args, "make_vocab_size_divisible_by", 128) or 128, tp)
        experts = as_int(args, "num_experts", 0) or 0
        pattern = _pattern(get(args, "moe_layer_freq", 1), layers) if experts else tuple([0] * layers)
        return ModelShape(
            num_layers=layers,
            hidden=h,
            ffn=ffn,
            heads=heads,
            query_groups=groups or heads,
            kv_channels=as_int(args, "kv_channels") or h // heads,
            vocab=vocab,
            swiglu=swiglu,
            norm_params=1 if str(get(args, "normalization", "LayerNorm")) == "RMSNorm" else 2,
            untied=as_bool(args, "untie_embeddings_and_output_weights"),
            qk_layernorm=as_bool(args, "qk_layernorm"),
            moe_pattern=pattern,
            num_experts=experts,
            topk=as_int(args, "moe_router_topk", 2) or 2,
            moe_ffn=as_int(args, "moe_ffn_hidden_size") or ffn,
            shared_ffn=as_int(args, "moe_shared_expert_intermediate_size", 0) or 0,
            shared_gate=as_bool(args, "moe_shared_expert_gate"),
            mtp_layers=as_int(args, "mtp_num_layers", 0) or 0,
            mla=as_bool(args, "multi_latent_attention"),
            q_lora_rank=as_int(args, "q_lora_rank"),
            kv_lora_rank=as_int(args, "kv_lora_rank", 512) or 512,
            qk_head_dim=as_int(args, "qk_head_dim", 128) or 128,
            qk_pos_emb_head_dim=as_int(args, "qk_pos_emb_head_dim", 64) or 64,
            v_head_dim=as_int(args, "v_head_dim", 128) or 128,
        )

    # --- parameter counts per layer (whole, before any sharding) -----------------------
    @property
    def glu(self) -> int:
        return 3 if self.swiglu else 2  # weight matrices per MLP

    def attention_params(self) -> int:
        h = self.hidden
        if self.mla:
            q_out = self.heads * (self.qk_head_dim + self.qk_pos_emb_head_dim)
            q = h * q_out if self.q_lora_rank is None else h * self.q_lora_rank + self.q_lora_rank * q_out
            kv = h * (self.kv_lora_rank + self.qk_pos_emb_head_dim) + self.kv_lora_rank * self.heads * (self.qk_head_dim + self.v_head_dim)
            return q + kv + self.heads * self.v_head_dim * h
        q = self.heads * self.kv_channels
        kv = 2 * self.query_groups * self.kv_channels
        return h * (q + kv) + q * h

    def attention_norm_params(self) -> int:
        """Replicated (not TP-sharded) norms inside attention: q/k layernorm or MLA's latent norms."""
        if self.mla:
            return (self.q_lora_rank or 0) + self.kv_lora_rank
        return 2 * self.kv_channels if self.qk_layernorm else 0

    def dense_mlp_params(self) -> int:
        return self.glu * self.hidden * self.ffn

    def expert_params(self) -> int:
        """All routed experts of one MoE layer."""
        return self.num_experts * self.glu * self.hidden * self.moe_ffn

    def one_expert_weight(self) -> int:
        """Largest single expert weight tensor (fc1: hidden x (2 x) moe_ffn)."""
        return self.hidden * self.moe_ffn * (2 if self.swiglu else 1)

    def shared_params(self) -> int:
        return self.glu * self.hidden * self.shared_ffn

    def router_params(self) -> int:
        return self.hidden * self.num_experts + (self.hidden if self.shared_gate and self.shared_ffn else 0)

    def layer_norm_params(self) -> int:
        return 2 * self.hidden * self.norm_params  # input norm + pre-MLP norm

    def mtp_extra_params(self) -> int:
        """Per MTP block besides its transformer layer: enorm, hnorm, eh_proj (2h -> h), final norm."""
        return 3 * self.hidden * self.norm_params + 2 * self.hidden * self.hidden

    def is_moe(self, layer_index: int) -> bool:
        """Layer kind; MTP layers (index >= num_layers) repeat the last decoder layer's kind."""
        if not self.num_experts:
            return False
        return bool(self.moe_pattern[layer_index if layer_index < self.num_layers else self.num_layers - 1])

    def total_params(self) -> int:
        total = self.vocab * self.hidden * (2 if self.untied else 1) + self.hidden * self.norm_params
        for i in range(self.num_layers + self.mtp_layers):
            total += self.attention_params() + self.attention_norm_params() + self.layer_norm_params()
            if self.is_moe(i):
                total += self.expert_params() + self.shared_params() + self.router_params()
            else:
                total += self.dense_mlp_params()
        return total + self.mtp_layers * self.mtp_extra_params()
