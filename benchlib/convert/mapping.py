"""Tensor name mapping between Hugging Face and Megatron-Core (one full, unsharded tensor each).

A `Rule` says how one Megatron parameter (named as Megatron's local spec names it, TP=1, experts
as `local_experts.{e}`) is made from Hugging Face tensors, and back:
  copy  one HF tensor as is
  cat   HF tensors stacked along dim 0 (SwiGLU linear_fc1 = [gate; up])
  qkv   GQA q/k/v interleaved per query group: [q heads of group g, k_g, v_g] for each g
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from benchlib.convert.families import ModelShape


@dataclass(frozen=True)
class Rule:
    mcore: str
    kind: str  # copy | cat | qkv
    hf: tuple[str, ...]
    layer: str = "global"  # "global", "decoder.{i}" or "mtp.{k}": the unit streamed together


def combine(rule: Rule, tensors: list[Any], shape: ModelShape) -> Any:
    import torch

    if rule.kind == "copy":
        return tensors[0]
    if rule.kind == "cat":
        return torch.cat(tensors, dim=0)
    q, k, v = tensors
    ng, hd = shape.kv_heads, shape.head_dim
    per = shape.heads // ng
    rest = q.shape[1:]
    return torch.cat([q.reshape(ng, per * hd, *rest), k.reshape(ng, hd, *rest), v.reshape(ng, hd, *rest)], dim=1).reshape(-1, *rest)


def split(rule: Rule, tensor: Any, shape: ModelShape) -> list[Any]:
    """Inverse of combine: the HF tensors, in rule.hf order."""
    if rule.kind == "copy":
        return [tensor]
    if rule.kind == "cat":
        n = len(rule.hf)
        return [t.contiguous() for t in tensor.chunk(n, dim=0)]
    ng, hd = shape.kv_heads, shape.head_dim
    per = shape.heads // ng
    rest = tensor.shape[1:]
    g = tensor.reshape(ng, (per + 2) * hd, *rest)
    q, k, v = g.split([per * hd, hd, hd], dim=1)
    return [t.reshape(-1, *rest).contiguous() for t in (q, k, v)]


def _attention(s: ModelShape, hf: str, mc: str, unit: str) -> Iterator[Rule]:
    a = f"{hf}self_attn."
    m = f"{mc}self_attention."
    if s.mla:
        if s.q_lora_rank:
            yield Rule(f"{m}linear_q_down_proj.weight", "copy", (f"{a}q_a_proj.weight",), unit)
            yield Rule(f"{m}q_layernorm.weight", "copy", (f"{a}q_a_layernorm.weight",), unit)
            yield Rule(f"{m}linear_q_up_proj.weight", "copy", (f"{a}q_b_proj.weight",), unit)
        else:
            yield Rule(f"{m}linear_q_proj.weight", "copy", (f"{a}q_proj.weight",), unit)
        yield Rule(f"{m}linear_kv_down_proj.weight", "copy", (f"{a}kv_a_proj_with_mqa.weight",), unit)
        yield Rule(f"{m}kv_layernorm.weight", "copy", (f"{a}kv_a_layernorm.weight",), unit)
        yield Rule(f"{m}linear_kv_up_proj.weight", "copy", (f"{a}kv_b_proj.weight",), unit)
    else:
        yield Rule(f"{m}linear_qkv.weight", "qkv", tuple(f"{a}{p}_proj.weight" for p in "qkv"), unit)
        if s.qkv_bias:
            yield Rule(f"{m}linear_qkv.bias", "qkv", tuple(f"{a}{p}_proj.bias" for p in "qkv"), unit)
        if s.qk_norm:
            yield Rule(f"{m}q_layernorm.weight", "copy", (f"{a}q_norm.weight",), unit)
            yield Rule(f"{m}k_layernorm.weight", "copy", (f"{a}k_norm.weight",), unit)
    yield Rule(f"{m}linear_proj.weight", "copy", (f"{a}o_proj.weight",), unit)


def _mlp(hf: str, mc: str, unit: str, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> Iterator[Rule]:
    g, u, d = names
    yield Rule(f"{mc}linear_fc1.weight", "cat", (f"{hf}{g}.weight", f"{hf}{u}.weight"), unit)
    yield Rule(f"{mc}linear_fc2.weight", "copy", (f"{hf}{d}.weight",), unit)


def layer_rules(s: ModelShape, hf: str, mc: str, moe: bool, unit: str) -> Iterator[Rule]:
    """One transformer layer: hf / mc are the name prefixes ending in '.'."""
    yield Rule(f"{mc}input_layernorm.weight", "copy", (f"{hf}input_layernorm.weight",), unit)
    yield from _attention(s, hf, mc, unit)
    yield Rule(f"{mc}pre_mlp_layernorm.weight", "copy", (f"{hf}post_attention_layernorm.weight",), unit)
    if not moe:
        yield from _mlp(f"{hf}mlp.", f"{mc}mlp.", unit)
        return
    blk = f"{hf}{s.moe_block}."
    yield Rule(f"{mc}mlp.router.weight", "copy", (f"{blk}gate.weight",), unit)
    if s.expert_bias:
        yield Rule(f"{mc}mlp.router.expert_bias", "copy", (f"{blk}gate.e_score_correction_bias",), unit)
    for e in range(s.num_experts):
        yield from _mlp(f"{blk}experts.{e}.", f"{mc}mlp.experts.local_experts.{e}.", unit, s.expert_names)
    if s.shared_ffn:
        yield from _mlp(f"{blk}shared_experts.", f"{mc}mlp.shared_experts.", unit)


def all_rules(s: ModelShape) -> list[Rule]:
    """Every Megatron parameter of the model, in streaming order (embedding, layers, MTP, head)."""
    rules = [Rule("embedding.word_embeddings.weight", "copy", ("model.embed_tokens.weight",))]
    for i in range(s.num_layers):
        rules += layer_rules(s, f"model.layers.{i}.", f"decoder.layers.{i}.", bool(s.moe_pattern[i]), f"decoder.{i}")
    rules.append(Rule("decoder.final_layernorm.weight", "copy", ("model.norm.weight",)))
    for k in range(s.mtp_layers):
        hf, mc, unit = f"model.layers.{s.num_layers + k}.", f"mtp.layers.{k}.", f"mtp.{k}"
        rules += [
            Rule(f"{mc}enorm.weight", "copy", (f"{hf}enorm.weight",), unit),
            Rule(f"{mc}hnorm.weight", "copy", (f"{hf}hnorm.weight",), unit),
            Rule(f"{mc}eh_proj.weight", "copy", (f"{hf}eh_proj.weight",), unit),
        ]
        # the MTP block's transformer layer is an MoE layer like the last decoder layer
        rules += layer_rules(s, hf, f"{mc}mtp_model_layer.", bool(s.moe_pattern[-1]), unit)
        rules.append(Rule(f"{mc}final_layernorm.weight", "copy", (f"{hf}shared_head.norm.weight",), unit))
    if not s.tie_embeddings:
        rules.append(Rule("output_layer.weight", "copy", ("lm_head.weight",)))
    return rules


def mtp_shared_copies(s: ModelShape) -> dict[str, str]:
    """HF tensors an MTP layer repeats from the main model (Megatron shares them): name -> source."""
    out: dict[str, str] = {}
    for k in range(s.mtp_layers):
        hf = f"model.layers.{s.num_layers + k}."
        out[f"{hf}embed_tokens.weight"] = "model.embed_tokens.weight"
        out[f"{hf}shared_head.head.weight"] = "lm_head.weight" if not s.tie_embeddings else "model.embed_tokens.weight"
    return out


# HF tensors that carry no weights of the model (buffers some exporters write).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def canonical_name(name: str) -> str:
    """A model's parameter name in the mapping's terms: grouped experts (TEGroupedMLP and the
    torch-native spec, `experts.linear_fc1.weight{i}`) become `experts.local_experts.{i}.linear_fc1.weight`."""
    import re

    return re.sub(r"\.experts\.linear_fc([12])\.weight(\d+)$", r".experts.local_experts.\2.linear_fc\1.weight", name)
