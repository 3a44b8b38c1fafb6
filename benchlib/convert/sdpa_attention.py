"""A minimal core attention (torch SDPA) that accepts MLA's `k_channels` / `v_channels`.

Megatron-Core 0.19.2's local `DotProductAttention` refuses the `k_channels` keyword that
Multi-Latent Attention passes, so DeepSeek-V2/V3 models do not build with
`--transformer-impl local`. The conversion parity checks (CPU tests, bench/gpu_convert_mla_parity.py)
swap this module into the local spec's `core_attention` slot. It computes plain causal softmax
attention, nothing more: no dropout, no context parallelism, no packed sequences.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional


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


@contextlib.contextmanager
def plain_q_proj_without_q_lora() -> Iterator[None]:
    """Let MLA without a q LoRA (DeepSeek-V2-Lite) build with a plain linear_q_proj on the local backend.

    Megatron-Core 0.19.2's QKNormConfigResolver asks, with --qk-layernorm and no q LoRA, for a fused
    norm+linear linear_q_proj, which only Transformer Engine provides (the local backend raises).
    DeepSeek-V2-Lite has no norm on that path (q_proj reads the input-normed hidden states; only the
    kv latent is normed), so for the duration of the build a plain ColumnParallelLinear is used.
    """
    from megatron.core.transformer import mla_qk_norm_config as mod

    real = mod.QKNormConfigResolver._mla_fused_linear_or_default

    def patched(self, module_spec, module_name):  # noqa: ANN001, ANN202
        if module_name == "linear_q_proj" and not self.has_q_lora and self.fused_norm_linear_impl is None:
            return module_spec or self.linear_impl
        return real(self, module_spec, module_name)

    mod.QKNormConfigResolver._mla_fused_linear_or_default = patched
    try:
        yield
    finally:
        mod.QKNormConfigResolver._mla_fused_linear_or_default = real
