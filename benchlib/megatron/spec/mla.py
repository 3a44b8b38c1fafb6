"""MLA pieces Megatron-Core 0.19.2 only provides through Transformer Engine.

With `--qk-layernorm` and no q-LoRA (DeepSeek-V2-Lite), 0.19.2's MLA asks the backend for a fused
norm+linear for `linear_q_proj` (TE's LayerNormLinear: an extra norm on the query path); the local
backend has none, so the model does not build. DeepSeek-V2-Lite itself (Hugging Face) has no norm
there: q_proj reads the input-normed hidden states, only the kv latent is normed. So the native
spec builds a plain ColumnParallelLinear `linear_q_proj` in that case (what the checkpoint
converter maps, benchlib/convert). `NormColumnParallelLinear` (torch norm + linear, TE's parameter
names) answers any other request the resolver makes for a fused norm+linear.
"""
from __future__ import annotations

from typing import Any

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.multi_latent_attention import MLASelfAttention


class NormColumnParallelLinear(ColumnParallelLinear):
    """RMSNorm / LayerNorm over the input, then a column-parallel linear (TE's LayerNormLinear)."""

    def __init__(self, input_size: int, output_size: int, *, config: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)
        super().__init__(input_size, output_size, config=config, **kwargs)
        device = torch.device("cpu") if config.use_cpu_initialization else torch.cuda.current_device()
        self.rms = config.normalization == "RMSNorm"
        self.eps = config.layernorm_epsilon
        self.layer_norm_weight = torch.nn.Parameter(torch.ones(input_size, dtype=config.params_dtype, device=device))
        if not self.rms:
            self.layer_norm_bias = torch.nn.Parameter(torch.zeros(input_size, dtype=config.params_dtype, device=device))
        for p in self._norm_params():
            setattr(p, "sequence_parallel", config.sequence_parallel)

    def _norm_params(self) -> list[torch.nn.Parameter]:
        return [self.layer_norm_weight] + ([] if self.rms else [self.layer_norm_bias])

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        w = self.layer_norm_weight
        if self.config.layernorm_zero_centered_gamma:
            w = w + 1
        if self.rms:
            x = torch.nn.functional.rms_norm(x, (x.shape[-1],), w, self.eps)
        else:
            x = torch.nn.functional.layer_norm(x, (x.shape[-1],), w, self.layer_norm_bias, self.eps)
        return super().forward(x, *args, **kwargs)


class NativeMLASelfAttention(MLASelfAttention):
    """Megatron's MLASelfAttention whose q/kv norm resolution knows NormColumnParallelLinear."""

    def _resolve_qk_norm_config(self, submodules: Any) -> Any:
        from megatron.core.transformer.mla_qk_norm_config import QKNormConfigResolver

        resolver = QKNormConfigResolver(self.config, submodules)
        resolver.fused_norm_linear_impl = NormColumnParallelLinear
        out = resolver.resolve()
        if self.config.q_lora_rank is None and out.get("linear_q_proj") is NormColumnParallelLinear:
            out["linear_q_proj"] = resolver.linear_impl  # no q norm without q-LoRA (see module doc)
        return out
