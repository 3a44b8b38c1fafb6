"""A minimal core attention (torch SDPA) that accepts MLA's `k_channels` / `v_channels`.

Megatron-Core 0.19.2's local `DotProductAttention` refuses the `k_channels` keyword that
Multi-Latent Attention passes, so DeepSeek-V2/V3 models do not build with
`--transformer-impl local`. The conversion parity checks (CPU tests, bench/gpu_convert_mla_parity.py)
swap this module into the local spec's `core_attention` slot. It computes plain causal softmax
attention, nothing more: no dropout, no context parallelism, no packed sequences.
"""
from __future__ import annotations

import math
from typing import Any, Optional


def _module_base() -> type:
    from megatron.core.transformer.module import MegatronModule

    return MegatronModule


class SDPACoreAttention(_module_base()):  # type: ignore[misc]
    def __init__(
        self,
        config: Any,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        k_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        self.k_channels = k_channels or config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.k_channels)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None):  # noqa: ANN001
        import torch.nn.functional as F

        assert packed_seq_params is None, "SDPACoreAttention: packed sequences are not supported"
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        gqa = q.shape[1] != k.shape[1]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale, enable_gqa=gqa)
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)


def patch_core_attention(layer_spec: Any, q_lora_rank: Optional[int] = 1) -> Any:
    """Replace core_attention in a block/layer spec (in place) with SDPACoreAttention.

    Without a q LoRA (DeepSeek-V2-Lite) there is no q norm: the local spec would still build one
    with --qk-layernorm (and Megatron refuses it), so it becomes an IdentityOp, as in the TE spec.
    """
    from megatron.core.transformer.identity_op import IdentityOp

    specs = getattr(layer_spec, "layer_specs", None) or [layer_spec]
    for spec in specs:
        attn = spec.submodules.self_attention
        attn.submodules.core_attention = SDPACoreAttention
        if not q_lora_rank and hasattr(attn.submodules, "q_layernorm"):
            attn.submodules.q_layernorm = IdentityOp
    return layer_spec
