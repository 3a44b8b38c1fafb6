"""Core attention on `torch.nn.functional.scaled_dot_product_attention`.

A drop-in for Megatron-Core's `DotProductAttention` (same constructor and forward), with
`k_channels` / `v_channels` so Multi-Latent Attention builds: q/k head dim 192 and v head dim
128 in DeepSeek-V2/V3. Megatron's own local attention materialises the [b, n, s, s] score
matrix; SDPA picks a fused kernel (flash / cuDNN / memory-efficient) instead.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import divide


class SDPAttention(MegatronModule):
    """Causal / padding-masked attention through SDPA, GQA without repeating K and V."""

    def __init__(
        self,
        config: Any,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        k_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        _refuse_unsupported(config, layer_number)
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection = pg_collection
        self.tp_group = pg_collection.tp
        tp = self.tp_group.size() if self.tp_group is not None else 1
        self.k_channels = k_channels if k_channels is not None else config.kv_channels
        self.v_channels = v_channels if v_channels is not None else config.kv_channels
        self.num_heads_per_partition = divide(config.num_attention_heads, tp)
        self.num_groups_per_partition = divide(config.num_query_groups or config.num_attention_heads, tp)
        self.hidden_size_per_attention_head_v = self.v_channels
        # Megatron's apply_query_key_layer_scaling divides the scale by the layer number and
        # multiplies it back inside the softmax: the net scale is unchanged, so ignore it here.
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.k_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Any = None,
        **unused: Any,
    ) -> torch.Tensor:
        """query [sq, b, np, hk], key [sk, b, ng, hk], value [sk, b, ng, hv] -> [sq, b, np*hv]."""
        if packed_seq_params is not None:
            raise NotImplementedError(
                "benchlib native spec: packed sequences (THD) need Transformer Engine's attention"
            )
        if attention_bias is not None:
            raise NotImplementedError("benchlib native spec: attention bias is not supported")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        # [s, b, h, d] -> [b, h, s, d] (a view; SDPA accepts strided inputs)
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        causal = mask_type == AttnMaskType.causal
        sdpa_mask = None
        if not causal and attention_mask is not None:
            # Megatron's masks are True where attention is NOT allowed; SDPA's the opposite.
            sdpa_mask = ~attention_mask
        p = self.dropout_p if self.training else 0.0
        gqa = q.size(1) != k.size(1)
        if p > 0.0 and not self.config.sequence_parallel:
            from megatron.core import tensor_parallel

            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = _sdpa(q, k, v, sdpa_mask, p, causal, self.softmax_scale, gqa)
        else:
            out = _sdpa(q, k, v, sdpa_mask, p, causal, self.softmax_scale, gqa)
        # [b, np, sq, hv] -> [sq, b, np*hv]
        sq, b = out.size(2), out.size(0)
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)


def _sdpa(q, k, v, mask, p, causal, scale, gqa):  # type: ignore[no-untyped-def]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=scale, enable_gqa=gqa
    )


def _refuse_unsupported(config: Any, layer_number: int) -> None:
    from megatron.core.transformer.utils import is_layer_window_attention

    if getattr(config, "context_parallel_size", 1) != 1:
        raise NotImplementedError("benchlib native spec: context parallelism (CP>1) needs Transformer Engine")
    if getattr(config, "softmax_type", "vanilla") != "vanilla":
        raise NotImplementedError(f"benchlib native spec: softmax_type={config.softmax_type} is not supported")
    if getattr(config, "window_size", None) is not None and is_layer_window_attention(
        config.window_size, getattr(config, "window_attn_skip_freq", None), layer_number
    ):
        raise NotImplementedError("benchlib native spec: sliding-window attention is not supported")
