"""Build the torch-native layer spec: Megatron's local spec with SDPA core attention and
grouped-GEMM experts swapped in. Norms stay Megatron's torch norms (RMSNorm / LayerNorm)."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Optional


def transformer_config_of(config: Any) -> Any:
    """GPTModelConfig (megatron.training.models) wraps a TransformerConfig; accept either."""
    return getattr(config, "transformer", config)


def build_native_spec(config: Any, vp_stage: Optional[int] = None) -> Any:
    """Decoder block spec (MoE / mixed dense+MoE) or layer spec (dense) for `config`."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec

    cfg = transformer_config_of(config)
    check_supported(cfg)
    q_lora = getattr(cfg, "q_lora_rank", None) is not None
    if cfg.num_moe_experts is not None:
        spec = get_gpt_decoder_block_spec(
            cfg,
            use_transformer_engine=False,
            normalization=cfg.normalization,
            qk_l2_norm=cfg.qk_l2_norm,
            vp_stage=vp_stage,
        )
        spec.layer_specs = [nativize_layer_spec(s, q_lora=q_lora) for s in spec.layer_specs]
        return spec
    layer = get_gpt_layer_local_spec(
        None,
        False,
        cfg.qk_layernorm,
        cfg.multi_latent_attention,
        normalization=cfg.normalization,
        qk_l2_norm=cfg.qk_l2_norm,
    )
    return nativize_layer_spec(layer, q_lora=q_lora)


def nativize_layer_spec(layer_spec: Any, q_lora: bool = True) -> Any:
    """A copy of a local TransformerLayer spec with SDPA attention and grouped experts.

    MLA without q-LoRA (DeepSeek-V2-Lite) has no query norm: Megatron's local spec still puts
    one in with --qk-layernorm and 0.19.2 then refuses it, so it becomes IdentityOp here (the
    kv norm stays)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.moe.experts import SequentialMLP
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from benchlib.megatron.spec.attention import SDPAttention
    from benchlib.megatron.spec.experts import NativeGroupedMLP

    subs = layer_spec.submodules
    attn = layer_spec_copy(subs.self_attention)
    if getattr(attn.submodules, "core_attention", None) in (DotProductAttention, None) or _is(
        attn.submodules.core_attention, DotProductAttention
    ):
        attn.submodules = dataclasses.replace(attn.submodules, core_attention=SDPAttention)
    from megatron.core.transformer.multi_latent_attention import MLASelfAttention

    if attn.module is MLASelfAttention:
        from benchlib.megatron.spec.mla import NativeMLASelfAttention

        attn.module = NativeMLASelfAttention
        if not q_lora:
            from megatron.core.transformer.identity_op import IdentityOp

            attn.submodules = dataclasses.replace(attn.submodules, q_layernorm=IdentityOp)
    mlp = subs.mlp
    if isinstance(mlp, partial) and mlp.func is MoELayer:
        moe_subs = mlp.keywords["submodules"]
        if _is(moe_subs.experts, SequentialMLP):
            moe_subs = dataclasses.replace(moe_subs, experts=NativeGroupedMLP)
        mlp = partial(MoELayer, *mlp.args, **{**mlp.keywords, "submodules": moe_subs})
    new_subs = dataclasses.replace(subs, self_attention=attn, mlp=mlp)
    return dataclasses.replace(layer_spec, submodules=new_subs)


def layer_spec_copy(spec: Any) -> Any:
    return dataclasses.replace(spec)


def _is(obj: Any, cls: type) -> bool:
    """True for the class itself, a partial of it, or a ModuleSpec of it."""
    if obj is cls:
        return True
    if isinstance(obj, partial):
        return obj.func is cls
    return getattr(obj, "module", None) is cls


def native_mtp_block_spec(config: Any, transformer_layer_spec: Any, vp_stage: Optional[int] = None) -> Any:
    """MTP block for the native spec: the last decoder layer's native spec inside Megatron's MTP
    wrapper (Megatron's builder would otherwise rebuild a local layer, which fails for MLA)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

    cfg = transformer_config_of(config)
    if cfg.mtp_num_layers is None:
        return None
    full = build_native_spec(config, vp_stage=vp_stage)
    if not hasattr(full, "layer_specs"):
        last = full
    elif full.layer_specs:
        last = full.layer_specs[-1]
    else:  # this pipeline stage builds no decoder layer: take the model's last layer kind
        last = _last_layer_spec_any_stage(cfg)
    return get_gpt_mtp_block_spec(cfg, last, use_transformer_engine=False, vp_stage=vp_stage)


def _last_layer_spec_any_stage(cfg: Any) -> Any:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_layer_specs

    specs = get_gpt_decoder_layer_specs(cfg, use_transformer_engine=False, normalization=cfg.normalization, qk_l2_norm=cfg.qk_l2_norm)
    return nativize_layer_spec(specs[-1], q_lora=getattr(cfg, "q_lora_rank", None) is not None)


def check_supported(cfg: Any) -> None:
    """Refuse, before any module is built, what this spec cannot run (names the missing piece)."""
    problems = unsupported_features(cfg)
    if problems:
        raise NotImplementedError("benchlib native spec cannot run: " + "; ".join(problems))


def unsupported_features(cfg: Any) -> list[str]:
    out: list[str] = []
    if getattr(cfg, "context_parallel_size", 1) > 1:
        out.append("context parallelism (CP>1) needs Transformer Engine's attention")
    if getattr(cfg, "expert_tensor_parallel_size", 1) not in (None, 1) and cfg.num_moe_experts:
        out.append("expert tensor parallelism (ETP>1) is not implemented by the grouped experts")
    if getattr(cfg, "fp8", None) or getattr(cfg, "fp4", None):
        out.append("fp8/fp4 need Transformer Engine")
    if getattr(cfg, "sequence_parallel", False):
        out.append("sequence parallelism needs Transformer Engine's norms (torch norms refuse it)")
    if getattr(cfg, "add_bias_linear", False) and cfg.num_moe_experts:
        out.append("expert biases (--add-bias-linear) are not implemented by the grouped experts")
    if getattr(cfg, "moe_permute_fusion", False):
        out.append("--moe-permute-fusion needs Transformer Engine")
    if getattr(cfg, "moe_token_dispatcher_type", "alltoall") == "flex":
        out.append("the flex dispatcher needs DeepEP or HybridEP")
    return out
