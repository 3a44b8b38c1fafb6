"""The model families the converter knows: how a Hugging Face config.json maps to Megatron flags.

One `ModelShape` per checkpoint, read from config.json (no transformers import needed). The
Megatron flags it gives are the model-shape flags a run needs to build the same network
(`--num-layers`, MLA / GQA shapes, MoE router settings, ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError

# model_type -> family name used by the CLI and ckpt_convert_scripts/<Family>/.
FAMILIES: dict[str, str] = {
    "qwen3_moe": "Qwen3-MoE",
    "mixtral": "Mixtral",
    "deepseek_v2": "DeepSeek-V2",
    "deepseek_v3": "DeepSeek-V3",
    "glm4_moe": "GLM-4.5-Air",
}
ARCHITECTURES: dict[str, str] = {
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "MixtralForCausalLM": "mixtral",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "Glm4MoeForCausalLM": "glm4_moe",
}


@dataclass
class ModelShape:
    """What the tensor mapping and the Megatron flags need from config.json."""

    model_type: str
    num_layers: int
    hidden: int
    heads: int
    vocab: int
    ffn: int  # dense MLP intermediate size
    eps: float
    rope_theta: float
    max_pos: int
    tie_embeddings: bool
    moe_pattern: list[int]  # 1 = MoE layer, 0 = dense, per decoder layer
    num_experts: int
    topk: int
    moe_ffn: int
    shared_ffn: int  # 0 = no shared expert
    mla: bool
    kv_heads: int = 0
    head_dim: int = 0
    qk_norm: bool = False
    qkv_bias: bool = False
    rotary_percent: float = 1.0
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    score_function: str = "softmax"
    expert_bias: bool = False
    norm_topk: bool = True
    scaling_factor: float = 1.0
    n_group: int | None = None
    topk_group: int | None = None
    mtp_layers: int = 0
    rope_scaling: dict[str, Any] | None = None
    fp8_block: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)  # differences between HF's and Megatron's computation
    # routing Megatron-Core cannot reproduce: (reason, fix); conversion refuses unless allowed
    routing_mismatches: list[tuple[str, str]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def family(self) -> str:
        return FAMILIES[self.model_type]

    @property
    def moe_block(self) -> str:
        return "block_sparse_moe" if self.model_type == "mixtral" else "mlp"

    @property
    def expert_names(self) -> tuple[str, str, str]:
        """(gate, up, down) projection names of one HF expert."""
        return ("w1", "w3", "w2") if self.model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")

    def megatron_flags(self) -> list[str]:
        """Model-shape flags for Megatron-Core (parallelism, precision and data flags are the run's)."""
        f = [
            "--num-layers", str(self.num_layers), "--hidden-size", str(self.hidden),
            "--num-attention-heads", str(self.heads), "--ffn-hidden-size", str(self.ffn),
            "--normalization", "RMSNorm", "--norm-epsilon", repr(self.eps), "--swiglu",
            "--disable-bias-linear", "--position-embedding-type", "rope",
            "--rotary-base", str(int(self.rope_theta)) if float(self.rope_theta).is_integer() else str(self.rope_theta),
            "--vocab-size", str(self.vocab), "--max-position-embeddings", str(self.max_pos),
        ]
        if not self.tie_embeddings:
            f.append("--untie-embeddings-and-output-weights")
        if self.rotary_percent != 1.0:
            f += ["--rotary-percent", str(self.rotary_percent)]
        if self.mla:
            f += ["--multi-latent-attention", "--qk-layernorm", "--kv-lora-rank", str(self.kv_lora_rank),
                  "--qk-head-dim", str(self.qk_nope_dim), "--qk-pos-emb-head-dim", str(self.qk_rope_dim),
                  "--v-head-dim", str(self.v_head_dim)]
            if self.q_lora_rank:
                f += ["--q-lora-rank", str(self.q_lora_rank)]
            rs = self.rope_scaling or {}
            if rs.get("type", rs.get("rope_type")) == "yarn":
                # original_max_position_embeddings / beta_fast / beta_slow have no flag for MLA in
                # Megatron-Core 0.19.2: MLATransformerConfig's defaults (4096, 32, 1) apply (see notes)
                f += ["--rope-type", "yarn", "--rotary-scaling-factor", str(rs["factor"]),
                      "--mscale", str(rs.get("mscale", 1.0)), "--mscale-all-dim", str(rs.get("mscale_all_dim", 0.0))]
            else:
                f += ["--rope-type", "rope"]
        else:
            f += ["--group-query-attention", "--num-query-groups", str(self.kv_heads), "--kv-channels", str(self.head_dim)]
            if self.qk_norm:
                f.append("--qk-layernorm")
            if self.qkv_bias:
                f.append("--add-qkv-bias")
        if self.num_experts:
            f += ["--num-experts", str(self.num_experts), "--moe-router-topk", str(self.topk),
                  "--moe-ffn-hidden-size", str(self.moe_ffn),
                  "--moe-layer-freq", "[" + ",".join(str(x) for x in self.moe_pattern) + "]"]
            if self.shared_ffn:
                f += ["--moe-shared-expert-intermediate-size", str(self.shared_ffn)]
            if self.score_function == "sigmoid":
                f += ["--moe-router-score-function", "sigmoid"]
            elif not self.norm_topk:
                # softmax over all experts, then top-k, no renormalisation
                f.append("--moe-router-pre-softmax")
            if self.expert_bias:
                f.append("--moe-router-enable-expert-bias")
            if self.scaling_factor != 1.0:
                f += ["--moe-router-topk-scaling-factor", str(self.scaling_factor)]
            if self.n_group and self.n_group > 1:
                f += ["--moe-router-num-groups", str(self.n_group), "--moe-router-group-topk", str(self.topk_group)]
        if self.mtp_layers:
            f += ["--mtp-num-layers", str(self.mtp_layers)]
        return f


def _rope(cfg: dict[str, Any]) -> tuple[float, float, dict[str, Any] | None]:
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    partial = cfg.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type") not in (None, "default") else None)
    return float(theta), float(partial), scaling


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """Read a config.json dict; BenchError for an architecture the converter does not know."""
    mt = cfg.get("model_type")
    if mt not in FAMILIES:
        arch = (cfg.get("architectures") or [None])[0]
        mt = ARCHITECTURES.get(arch or "", mt)
    if mt not in FAMILIES:
        raise BenchError(
            f"unsupported architecture: model_type={cfg.get('model_type')!r}, architectures={cfg.get('architectures')}",
            hint=f"the converter supports {', '.join(sorted(set(FAMILIES.values())))} ({', '.join(sorted(ARCHITECTURES))})",
        )
    L = int(cfg["num_hidden_layers"])
    theta, partial, scaling = _rope(cfg)
    common: dict[str, Any] = dict(
        model_type=mt, num_layers=L, hidden=int(cfg["hidden_size"]), heads=int(cfg["num_attention_heads"]),
        vocab=int(cfg["vocab_size"]), ffn=int(cfg["intermediate_size"]), eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, max_pos=int(cfg.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), rotary_percent=partial, rope_scaling=scaling, raw=cfg,
    )
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") == "fp8":
        blk = q.get("weight_block_size") or [128, 128]
        common["fp8_block"] = (int(blk[0]), int(blk[1]))
    heads = common["heads"]
    if mt in ("qwen3_moe", "mixtral", "glm4_moe"):
        common.update(kv_heads=int(cfg.get("num_key_value_heads") or heads),
                      head_dim=int(cfg.get("head_dim") or common["hidden"] // heads), mla=False)
    if mt == "qwen3_moe":
        E = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
        only = set(cfg.get("mlp_only_layers") or [])
        step = int(cfg.get("decoder_sparse_step") or 1)
        pattern = [1 if (E and i not in only and (i + 1) % step == 0) else 0 for i in range(L)]
        return ModelShape(**common, moe_pattern=pattern, num_experts=E, topk=int(cfg["num_experts_per_tok"]),
                          moe_ffn=int(cfg["moe_intermediate_size"]), shared_ffn=0, qk_norm=True,
                          qkv_bias=bool(cfg.get("attention_bias", False)), norm_topk=bool(cfg.get("norm_topk_prob", True)))
    if mt == "mixtral":
        return ModelShape(**common, moe_pattern=[1] * L, num_experts=int(cfg["num_local_experts"]),
                          topk=int(cfg["num_experts_per_tok"]), moe_ffn=int(cfg["intermediate_size"]), shared_ffn=0)
    # DeepSeek-V2/V3 and GLM-4.5: first_k_dense_replace dense layers, then MoE every moe_layer_freq
    k_dense = int(cfg.get("first_k_dense_replace") or 0)
    freq = int(cfg.get("moe_layer_freq") or 1)
    E = int(cfg.get("n_routed_experts") or 0)
    pattern = [1 if (E and i >= k_dense and i % freq == 0) else 0 for i in range(L)]
    moe_ffn = int(cfg["moe_intermediate_size"])
    shared = int(cfg.get("n_shared_experts") or 0) * moe_ffn
    router: dict[str, Any] = dict(
        num_experts=E, topk=int(cfg["num_experts_per_tok"]), moe_ffn=moe_ffn, shared_ffn=shared, moe_pattern=pattern,
        norm_topk=bool(cfg.get("norm_topk_prob", False)), scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
        n_group=cfg.get("n_group"), topk_group=cfg.get("topk_group"),
        mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0),
    )
    if mt == "glm4_moe":
        shape = ModelShape(**common, **router, qk_norm=bool(cfg.get("use_qk_norm", False)),
                           qkv_bias=bool(cfg.get("attention_bias", False)), score_function="sigmoid", expert_bias=True)
        shape.routing_mismatches = routing_mismatches(shape, cfg)
        return shape
    sigmoid = mt == "deepseek_v3" or cfg.get("scoring_func") == "sigmoid"
    notes: list[str] = []
    if mt == "deepseek_v2":
        router["mtp_layers"] = 0
        if cfg.get("topk_method") != "group_limited_greedy":
            router["n_group"] = None
    rs = scaling or {}
    rs = scaling or {}
    if rs.get("type", rs.get("rope_type")) == "yarn":
        for key, default in (("original_max_position_embeddings", 4096), ("beta_fast", 32), ("beta_slow", 1)):
            if float(rs.get(key, default)) != float(default):
                notes.append(f"rope_scaling.{key}={rs[key]} but Megatron-Core 0.19.2 has no flag for it with MLA (uses {default})")
    shape = ModelShape(
        **common, **router, mla=True, q_lora_rank=cfg.get("q_lora_rank"), kv_lora_rank=int(cfg["kv_lora_rank"]),
        qk_nope_dim=int(cfg["qk_nope_head_dim"]), qk_rope_dim=int(cfg["qk_rope_head_dim"]),
        v_head_dim=int(cfg["v_head_dim"]), score_function="sigmoid" if sigmoid else "softmax",
        expert_bias=mt == "deepseek_v3", notes=notes,
    )
    shape.routing_mismatches = routing_mismatches(shape, cfg)
    return shape


ALLOW_FIX = "or pass --allow-routing-mismatch to convert anyway (the checkpoint then computes different routing than Hugging Face)"


def routing_mismatches(s: ModelShape, cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """Where Hugging Face's router (transformers' modeling code) and Megatron-Core 0.19.2's
    `topk_routing_with_score_function` (moe_utils.py), given `s.megatron_flags()`, compute different
    expert choices or weights. Qwen3-MoE and Mixtral (softmax, with or without renormalisation) always match."""
    out: list[tuple[str, str]] = []
    if not s.num_experts or s.model_type in ("qwen3_moe", "mixtral"):
        return out
    groups = bool(s.n_group and s.n_group > 1)
    topk_group = int(s.topk_group or 1)
    per_group = s.topk // topk_group  # Megatron: groups ranked by the sum of their top (topk // group_topk) scores
    if s.model_type in ("deepseek_v3", "glm4_moe"):
        if groups and per_group != 2:
            out.append((
                f"{s.family} ranks expert groups by the sum of their top-2 expert scores (hard-coded in transformers); "
                f"Megatron-Core ranks them by the sum of their top topk // topk_group = {s.topk} // {topk_group} = {per_group}, "
                f"so experts are chosen differently (n_group={s.n_group}, topk_group={topk_group}, num_experts_per_tok={s.topk})",
                "no Megatron flag sets the per-group count; only configs with num_experts_per_tok // topk_group == 2 "
                "(as the published DeepSeek-V3) route alike",
            ))
        if s.topk > 1 and not s.norm_topk:
            out.append((
                "norm_topk_prob is false: Hugging Face keeps the raw sigmoid scores of the chosen experts, "
                "Megatron-Core always renormalises sigmoid scores to sum to 1 when top-k > 1",
                "no Megatron flag turns the renormalisation off",
            ))
        if s.topk == 1 and s.norm_topk:
            out.append((
                "top-1 with norm_topk_prob: Hugging Face renormalises the single weight to 1, Megatron-Core keeps the sigmoid score",
                "set norm_topk_prob to false in config.json if the score is meant",
            ))
    if s.model_type == "deepseek_v2":
        method = cfg.get("topk_method", "greedy")
        if s.score_function == "sigmoid":
            out.append(("scoring_func is sigmoid, but transformers' DeepseekV2 router always scores with softmax",
                        "set scoring_func to softmax in config.json to convert what transformers computes"))
        if method not in ("greedy", "group_limited_greedy"):
            out.append((f"topk_method={method!r}: transformers' DeepseekV2 router only computes greedy and group_limited_greedy",
                        "convert with topk_method greedy or group_limited_greedy"))
        if method == "group_limited_greedy" and groups and per_group != 1:
            out.append((
                f"DeepSeek-V2 group_limited_greedy ranks expert groups by their best expert; Megatron-Core ranks them by the sum "
                f"of their top topk // topk_group = {s.topk} // {topk_group} = {per_group} experts (--moe-router-group-topk), "
                "so experts are chosen differently",
                "no Megatron flag ranks groups by their best expert; only num_experts_per_tok == topk_group routes alike",
            ))
        if s.norm_topk:
            out.append((
                "norm_topk_prob is true, but transformers' DeepseekV2 router never renormalises the top-k weights; "
                "Megatron-Core would (softmax over the chosen experts' logits)",
                "set norm_topk_prob to false in config.json to convert what transformers computes",
            ))
    return out


def read_config(hf_dir: Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise BenchError(f"no config.json in {hf_dir}", hint="point --hf-dir at a Hugging Face model folder (config.json + *.safetensors)")
    return json.loads(path.read_text())
