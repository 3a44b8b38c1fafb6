"""The tiny MoE TransformerConfig the CPU tests of the native spec build (two layers, four experts)."""
from __future__ import annotations

from typing import Any


def tiny_moe_config(**overrides: Any) -> Any:
    """Megatron's TransformerConfig for a 2-layer, 4-expert GPT on the CPU, local impl, no fusions."""
    import torch
    from megatron.core.transformer.transformer_config import TransformerConfig

    fields: dict[str, Any] = dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, kv_channels=16, ffn_hidden_size=96,
        num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32, gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, normalization="RMSNorm", qk_layernorm=True, add_bias_linear=False,
        use_cpu_initialization=True, moe_token_dispatcher_type="allgather", bias_activation_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False, apply_rope_fusion=False,
        transformer_impl="local", init_method_std=0.02, moe_grouped_gemm=True, moe_aux_loss_coeff=0.0,
        hidden_dropout=0.0, attention_dropout=0.0,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)
