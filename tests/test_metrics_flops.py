"""benchlib's FLOPs model against Megatron-Core 0.19.2's own `num_floating_point_operations`.

Megatron's namespace is built by Megatron itself (parse_args + validate_args on CPU, GPU
capability answered for the cluster's GPU: there is no GPU here), then both functions get the
same arguments: Megatron's the namespace, benchlib's `vars(namespace)`.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from benchlib.core.errors import BenchError
from benchlib.metrics.flops import layer_pattern, num_floating_point_operations
from benchlib.core.paths import MODEL_DIR

MODELS = sorted(p.stem for p in Path(MODEL_DIR).glob("*.yaml"))


def _megatron(ns, gbs: int) -> float:
    from megatron.training.training import num_floating_point_operations as megatron_flops

    return megatron_flops(copy.deepcopy(ns), gbs)


def _with_padded_vocab(ns):
    """The tokenizer pads the vocabulary at start-up (after validation); do what it does."""
    from megatron.core.tokenizers.utils.build_tokenizer import vocab_size_with_padding

    if getattr(ns, "padded_vocab_size", None) is None:
        assert ns.vocab_size, "config must give --vocab-size for the FLOPs comparison"
        ns.padded_vocab_size = vocab_size_with_padding(ns.vocab_size, ns, logging_enabled=False)
    return ns


def _namespace(argv: list[str], world: int = 8, gpu: str = "H100"):
    from benchlib.megatron.validate import validate_megatron_args

    return _with_padded_vocab(validate_megatron_args(argv, gpu, world))


BASE = ["--seq-length", "4096", "--max-position-embeddings", "4096", "--micro-batch-size", "1",
        "--global-batch-size", "64", "--train-iters", "10", "--lr", "1e-4", "--bf16", "--mock-data",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", "32000"]
DENSE = ["--num-layers", "6", "--hidden-size", "1024", "--num-attention-heads", "16"]
MOE = ["--num-experts", "16", "--moe-router-topk", "2", "--moe-ffn-hidden-size", "512", "--expert-model-parallel-size", "8"]
MLA = ["--multi-latent-attention", "--kv-lora-rank", "128", "--qk-head-dim", "64", "--qk-pos-emb-head-dim", "32",
       "--v-head-dim", "64", "--kv-channels", "64"]

BRANCHES = {
    "dense_gelu": DENSE,
    "dense_swiglu": [*DENSE, "--swiglu"],
    "dense_swiglu_ffn": [*DENSE, "--swiglu", "--ffn-hidden-size", "2816"],
    "gqa": [*DENSE, "--swiglu", "--group-query-attention", "--num-query-groups", "4"],
    "gqa_kv_channels": [*DENSE, "--group-query-attention", "--num-query-groups", "2", "--kv-channels", "128"],
    "moe_every_layer": [*DENSE, "--swiglu", *MOE],
    "moe_freq_2": [*DENSE, "--swiglu", *MOE, "--moe-layer-freq", "2"],
    "moe_pattern_first_dense": [*DENSE, "--swiglu", *MOE, "--moe-layer-freq", "([0]*2+[1]*4)"],
    "moe_pattern_last_dense": [*DENSE, *MOE, "--moe-layer-freq", "([1]*2+[0]*1)*2"],
    "moe_shared": [*DENSE, "--swiglu", *MOE, "--moe-shared-expert-intermediate-size", "1024"],
    "moe_top8_no_swiglu": [*DENSE, *MOE[:2], "--moe-router-topk", "8", "--moe-ffn-hidden-size", "256",
                           "--expert-model-parallel-size", "8"],
    "mla_no_q_lora": [*DENSE, "--swiglu", *MLA],
    "mla_q_lora": [*DENSE, "--swiglu", *MLA, "--q-lora-rank", "384"],
    "mla_moe_mtp": [*DENSE, "--swiglu", *MLA, "--q-lora-rank", "384", *MOE, "--moe-layer-freq", "([0]+[1]*5)",
                    "--moe-shared-expert-intermediate-size", "512", "--mtp-num-layers", "1", "--position-embedding-type", "rope"],
    "gqa_moe_mtp_last_dense": [*DENSE, "--swiglu", "--group-query-attention", "--num-query-groups", "4", *MOE,
                               "--moe-layer-freq", "([1]*5+[0])", "--mtp-num-layers", "2", "--position-embedding-type", "rope"],
}


@pytest.mark.megatron
@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_every_branch_equals_megatron(name):
    ns = _namespace([*BASE, *BRANCHES[name]])
    ours = num_floating_point_operations(dict(vars(ns)), 64)
    theirs = _megatron(ns, 64)
    assert ours == pytest.approx(theirs, rel=1e-9), name


@pytest.mark.megatron
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_shipped_model_config_equals_megatron(model, clean_env, monkeypatch):
    """Every model_configs/benchmarking/*.yaml, resolved as the suite resolves it, validated by Megatron.

    No GPU here: besides the capability (benchlib.megatron.validate answers it), Megatron asks
    `torch.cuda.get_device_properties(0).major` for TP>1 / CP>1; it is answered as the template
    cluster's H100 (major 9).
    """
    import types

    import torch

    from benchlib.config.resolve import resolve_run
    from benchlib.megatron.validate import megatron_namespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=9, minor=0))

    env = {**clean_env, "CLUSTER": "template", "MODEL": model, "OUTPUT_ROOT": "/runs"}
    run = resolve_run([], env, mode="sbatch", stamp="20260101-000000")
    ns = megatron_namespace(run)
    if getattr(ns, "padded_vocab_size", None) is None and not ns.vocab_size:
        pytest.fail(f"{model}: no --vocab-size in the resolved flags; the FLOPs need the padded vocabulary")
    ns = _with_padded_vocab(ns)
    gbs = ns.global_batch_size
    ours = num_floating_point_operations(dict(vars(ns)), gbs)
    theirs = _megatron(ns, gbs)
    assert ours == pytest.approx(theirs, rel=1e-9), model
    # and the same from the resolver's own argument dict (no Megatron defaults filled in)
    from_flags = num_floating_point_operations({**run.arch, "padded_vocab_size": ns.padded_vocab_size}, gbs)
    assert from_flags == pytest.approx(theirs, rel=1e-9), f"{model}: from benchlib.config.flags.megatron_arg_dict"


def test_dense_mha_by_hand():
    """Derived on paper, not from either implementation.

    2 layers, h=64, 4 heads (head dim 16), ffn 256 (GELU MLP: 2 GEMMs), vocab 128, seq 8, batch 2.
    Per token, forward multiply-accumulates:
      QKV projection 64 x 192 = 12288, output projection 64 x 64 = 4096  -> 16384 per layer
      MLP 64 x 256 x 2 = 32768 per layer
      logits 64 x 128 = 8192 once
      causal attention: QK^T over on average s/2 keys at width 64, PV the same: 64 x 8 = 512 per layer
    per token = 2 x (16384 + 32768 + 512) + 8192 = 107520 MACs
    tokens = 16; FLOPs = 16 x 107520 x 2 (FLOPs per MAC) x 3 (forward, 2 backward) = 10321920
    """
    cfg = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "ffn_hidden_size": 256, "seq_length": 8,
           "padded_vocab_size": 128, "swiglu": False, "group_query_attention": False}
    assert num_floating_point_operations(cfg, 2) == 10321920


def test_moe_mla_mtp_by_hand():
    """MoE + MLA with q-LoRA + 1 MTP layer, derived on paper.

    h=32, 2 heads, 2 layers with pattern [0, 1], SwiGLU (3 GEMMs), ffn 64, moe ffn 16, top-2,
    shared expert 8, q_lora 8, kv_lora 4, qk 8, rope 4, v 8, vocab 64, seq 4, batch 1, MTP 1.
    Layers: 2 decoder + 1 MTP; last decoder layer is MoE -> the MTP layer is MoE: 1 dense, 2 MoE.
    Per token per layer (MACs):
      q: 8 x (32 + 2 x 12 + 1) = 456; kv: 4 x (32 + 2 x 16 + 1) = 260; rope key: 32 x 4 = 128;
      out: 2 x 8 x 32 = 512  -> attention linear 1356
      core: (2 x 12 / 2 + 2 x 8 / 2) x seq 4 = (12 + 8) x 4 = 80
      dense MLP: 32 x 64 x 3 = 6144;  MoE: 32 x (16 x 2 + 8) x 3 = 3840
    Totals per token: 3 x (1356 + 80) + 6144 + 2 x 3840 + MTP (3 x 32 + 2 x 32 x 32 = 2144)
      + logits 32 x 64 x 2 = 4096  -> 4308 + 6144 + 7680 + 2144 + 4096 = 24372
    FLOPs = 4 tokens x 24372 x 6 = 584928
    """
    cfg = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "ffn_hidden_size": 64, "seq_length": 4,
           "padded_vocab_size": 64, "swiglu": True, "num_experts": 4, "moe_layer_freq": [0, 1], "moe_router_topk": 2,
           "moe_ffn_hidden_size": 16, "moe_shared_expert_intermediate_size": 8, "multi_latent_attention": True,
           "q_lora_rank": 8, "kv_lora_rank": 4, "qk_head_dim": 8, "qk_pos_emb_head_dim": 4, "v_head_dim": 8,
           "mtp_num_layers": 1}
    assert num_floating_point_operations(cfg, 1) == 584928


def test_string_values_from_a_flag_dict_give_the_same_figure():
    typed = {"num_layers": 4, "hidden_size": 256, "num_attention_heads": 8, "seq_length": 128, "padded_vocab_size": 1024,
             "swiglu": True, "num_experts": 8, "moe_router_topk": 2, "moe_ffn_hidden_size": 128,
             "moe_layer_freq": [0, 1, 1, 1], "group_query_attention": True, "num_query_groups": 2}
    strings = {k: (str(v) if not isinstance(v, (bool, list)) else v) for k, v in typed.items()}
    strings["moe_layer_freq"] = "([0]*1+[1]*3)"
    strings["swiglu"] = "True"
    assert num_floating_point_operations(strings, 4) == num_floating_point_operations(typed, 4)


def test_layer_patterns():
    assert layer_pattern(1, 3) == [1, 1, 1]
    assert layer_pattern(2, 4) == [1, 0, 1, 0]
    assert layer_pattern("([1]*3+[0]*2)*2", 10) == [1, 1, 1, 0, 0] * 2
    with pytest.raises(BenchError, match="entries"):
        layer_pattern([0, 1], 3)
    with pytest.raises(BenchError, match="cannot read"):
        layer_pattern("__import__('os')", 3)


def test_missing_shape_is_a_bench_error_with_a_fix():
    with pytest.raises(BenchError) as err:
        num_floating_point_operations({"num_layers": 2}, 1)
    assert "hidden_size" in str(err.value) and err.value.hint


def test_padded_vocab_from_vocab_size_like_megatron():
    cfg = {"num_layers": 1, "hidden_size": 8, "num_attention_heads": 1, "seq_length": 2, "ffn_hidden_size": 8,
           "vocab_size": 1000, "make_vocab_size_divisible_by": 128, "tensor_model_parallel_size": 2}
    a = num_floating_point_operations(cfg, 1)
    b = num_floating_point_operations({**cfg, "vocab_size": None, "padded_vocab_size": 1024}, 1)
    assert a == b and math.ceil(1000 / 256) * 256 == 1024


def test_components_of_the_moe_mla_mtp_case_by_hand():
    """The same paper model as above, split by part (per token, forward MACs):
    attention 3 x (1356 + 80) = 4308; routed experts 2 MoE layers x 32 x 16 x 2 x 3 = 6144;
    shared experts 2 x 32 x 8 x 3 = 1536; dense MLP 6144; output layer 4096; MTP norms + projection 2144.
    """
    from benchlib.metrics.flops import component_flops, component_shares

    cfg = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "ffn_hidden_size": 64, "seq_length": 4,
           "padded_vocab_size": 64, "swiglu": True, "num_experts": 4, "moe_layer_freq": [0, 1], "moe_router_topk": 2,
           "moe_ffn_hidden_size": 16, "moe_shared_expert_intermediate_size": 8, "multi_latent_attention": True,
           "q_lora_rank": 8, "kv_lora_rank": 4, "qk_head_dim": 8, "qk_pos_emb_head_dim": 4, "v_head_dim": 8,
           "mtp_num_layers": 1}
    per_token = {"attention": 4308, "routed_experts": 6144, "shared_experts": 1536, "dense_mlp": 6144, "router": 0,
                 "output_layer": 4096, "mtp_other": 2144}
    assert component_flops(cfg, 1) == {k: v * 4 * 6 for k, v in per_token.items()}
    shares = component_shares(cfg)
    assert shares["shares"]["output_layer"] == pytest.approx(4096 / 24372)
    # the router (h x experts per MoE layer: 32 x 4 x 2 layers) is reported apart, not in the total
    assert shares["router_if_counted"] == pytest.approx(32 * 4 * 2 / 24372)


@pytest.mark.parametrize("model", MODELS)
def test_components_sum_to_the_total_for_every_shipped_model(model, clean_env):
    """The breakdown the summary shows comes from the same formula as the total (and the MFU)."""
    from benchlib.config.resolve import resolve_run
    from benchlib.metrics.flops import COMPONENTS, component_flops, component_shares, pad_vocab

    env = {**clean_env, "CLUSTER": "template", "MODEL": model, "OUTPUT_ROOT": "/runs"}
    run = resolve_run([], env, mode="sbatch", stamp="20260101-000000")
    cfg = dict(run.arch)
    cfg.setdefault("seq_length", run.knobs.SEQ_LEN)
    cfg["padded_vocab_size"] = pad_vocab(cfg["vocab_size"], cfg.get("make_vocab_size_divisible_by") or 128,
                                         cfg.get("tensor_model_parallel_size") or 1)
    gbs = run.knobs.GBS
    parts = component_flops(cfg, gbs)
    assert tuple(parts) == COMPONENTS
    assert sum(parts.values()) == pytest.approx(num_floating_point_operations(cfg, gbs), rel=1e-12), model
    shares = component_shares(cfg)["shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    assert shares["attention"] > 0 and shares["output_layer"] > 0
    assert shares["routed_experts"] > 0, f"{model} is an MoE model: its routed experts must have a share"
