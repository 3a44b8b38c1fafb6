"""MLA on Megatron's local spec, for the conversion's parity checks.

Megatron-Core 0.19.2's local `DotProductAttention` refuses the `k_channels` keyword that
Multi-Latent Attention passes, so DeepSeek-V2/V3 models do not build with
`--transformer-impl local`. The conversion parity checks (CPU tests, bench/gpu_convert_mla_parity.py)
put the torch-native spec's SDPA core attention (benchlib.megatron.spec.attention) into the local spec's
`core_attention` slot, keeping the local spec's other modules (sequential experts).

Without a q LoRA (DeepSeek-V2-Lite) 0.19.2 also asks the backend for a fused norm+linear `linear_q_proj`,
which only Transformer Engine has; the attention module becomes the native spec's
`NativeMLASelfAttention` (benchlib.megatron.spec.mla), which builds a plain linear there. With a q LoRA
the local spec's explicit q/kv norms keep the projections unfused, so that class builds what
MLASelfAttention builds.
"""
from __future__ import annotations

from typing import Any, Optional


def patch_core_attention(layer_spec: Any, q_lora_rank: Optional[int] = 1) -> Any:
    """Replace core_attention in a block/layer spec (in place) with the native spec's SDPAttention.

    Without a q LoRA (DeepSeek-V2-Lite) there is no q norm: the local spec would still build one
    with --qk-layernorm (and Megatron refuses it), so it becomes an IdentityOp, as in the TE spec.
    """
    from megatron.core.transformer.identity_op import IdentityOp

    from benchlib.megatron.spec.attention import SDPAttention
    from benchlib.megatron.spec.mla import NativeMLASelfAttention

    specs = getattr(layer_spec, "layer_specs", None) or [layer_spec]
    for spec in specs:
        attn = spec.submodules.self_attention
        attn.module = NativeMLASelfAttention  # plain linear_q_proj without a q LoRA (see module doc)
        attn.submodules.core_attention = SDPAttention
        if not q_lora_rank and hasattr(attn.submodules, "q_layernorm"):
            attn.submodules.q_layernorm = IdentityOp
    return layer_spec
