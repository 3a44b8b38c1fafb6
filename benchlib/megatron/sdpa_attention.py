"""MLA on Megatron's local spec, for the conversion's parity checks.

Megatron-Core 0.19.2's local `DotProductAttention` refuses the `k_channels` keyword that
Multi-Latent Attention passes, so DeepSeek-V2/V3 models do not build with
`--transformer-impl local`. The conversion parity checks (CPU tests, bench/gpu_convert_mla_parity.py)
put the torch-native spec's SDPA core attention (benchlib.megatron.spec.attention) into the local spec's
`core_attention` slot, keeping the local spec's other modules (sequential experts).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional


def patch_core_attention(layer_spec: Any, q_lora_rank: Optional[int] = 1) -> Any:
    """Replace core_attention in a block/layer spec (in place) with the native spec's SDPAttention.

    Without a q LoRA (DeepSeek-V2-Lite) there is no q norm: the local spec would still build one
    with --qk-layernorm (and Megatron refuses it), so it becomes an IdentityOp, as in the TE spec.
    """
    from megatron.core.transformer.identity_op import IdentityOp

    from benchlib.megatron.spec.attention import SDPAttention

    specs = getattr(layer_spec, "layer_specs", None) or [layer_spec]
    for spec in specs:
        attn = spec.submodules.self_attention
        attn.submodules.core_attention = SDPAttention
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
