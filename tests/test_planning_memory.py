"""Memory estimate: static terms against hand counts, schedule and recompute behaviour, the fit check.

Expected figures here are derived in the test from the architecture numbers (parameter counts
written out by hand), not copied from the estimator's output.
"""
from __future__ import annotations

import pytest

from benchlib.core.errors import BenchError
from benchlib.config.layout import Layout
from benchlib.planning.memory import MISC_BYTES, estimate_from_args, layout_from_args
from benchlib.planning.pipeline import expand_layout, in_flight, rank_stages
from benchlib.planning.arch import ModelShape

H, L, HEADS, FFN, V = 64, 2, 4, 128, 256


def dense_args(**over):
    args = {
        "hidden_size": H, "num_layers": L, "num_attention_heads": HEADS, "ffn_hidden_size": FFN,
        "vocab_size": V, "seq_length": 128, "micro_batch_size": 1, "global_batch_size": 1,
        "bf16": True, "normalization": "LayerNorm", "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "transformer_impl": "transformer_engine", "world_size": 1,
    }
    args.update(over)
    return args


def hand_params_dense() -> int:
    # embedding (tied with the output layer, PP=1)
    emb = V * H
    # per layer: QKV (3 h^2) + proj (h^2) + MLP up/down (2 h ffn) + 2 LayerNorms (weight + bias)
    layer = 3 * H * H + H * H + 2 * H * FFN + 2 * 2 * H
    final_norm = 2 * H
    return emb + L * layer + final_norm


def test_static_memory_matches_hand_count_without_distributed_optimizer():
    est = estimate_from_args(dense_args())
    n = hand_params_dense()
    assert est.params == n
    assert est.weights == 2 * n  # bf16
    assert est.gradients == 4 * n  # fp32 main grads
    assert est.optimizer == 12 * n  # fp32 master + two fp32 moments, unsharded


def test_distributed_optimizer_shards_over_dp_and_offload_moves_it_off_gpu():
    base = dense_args(use_distributed_optimizer=True, world_size=8, global_batch_size=8)
    n = hand_params_dense()
    est = estimate_from_args(base)
    assert est.optimizer == pytest.approx(12 * n / 8, abs=2)
    assert est.gradients == 4 * n  # main grads stay whole on every rank
    half = estimate_from_args({**base, "optimizer_cpu_offload": True, "optimizer_offload_fraction": 0.5})
    assert half.optimizer == pytest.approx(12 * n / 16, abs=2)
    pa = estimate_from_args({**base, "use_precision_aware_optimizer": True, "exp_avg_dtype": "bf16", "exp_avg_sq_dtype": "bf16"})
    assert pa.optimizer == pytest.approx((4 + 2 + 2) * n / 8, abs=2)


def moe_args(**over):
    args = dense_args(num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=32, swiglu=True,
                      normalization="RMSNorm", use_distributed_optimizer=True, untie_embeddings_and_output_weights=True)
    args.update(over)
    return args


def test_experts_are_sharded_by_ep_and_their_optimizer_by_expert_dp():
    # world 8, EP 8: each rank holds 1 of 8 experts per layer; expert-DP = 8 / 8 = 1.
    args = moe_args(world_size=8, expert_model_parallel_size=8, global_batch_size=8)
    est = estimate_from_args(args)
    experts_per_layer = 8 * 3 * H * 32
    dense_per_layer = 4 * H * H + 2 * H + 8 * H  # attention, 2 RMSNorms, router
    dense = 2 * V * H + H + L * dense_per_layer  # untied embedding + output layer, final norm
    local_experts = L * experts_per_layer / 8
    assert est.params == pytest.approx(dense + local_experts, abs=1)
    # distributed optimizer: dense state over DP*CP = 8, expert state over expert-DP = 1
    assert est.optimizer == pytest.approx(12 * (dense / 8 + local_experts / 1), abs=4)


def test_in_flight_micro_batches_follow_1f1b_and_interleaving():
    assert in_flight(0, 4, 1, 16) == 4  # first stage: PP warm-up forwards
    assert in_flight(3, 4, 1, 16) == 1  # last stage: one
    assert in_flight(0, 4, 1, 2) == 2  # fewer micro-batches than stages
    # interleaved: Megatron's penalty (1 + (p-1)/(p*v)) times p micro-batches
    assert in_flight(0, 4, 2, 16) == pytest.approx(4 * (1 + 3 / 8))
    assert in_flight(0, 8, 4, 64) == pytest.approx(8 * (1 + 7 / 32))


def test_first_stage_activations_scale_with_pipeline_depth():
    args = dense_args(num_layers=8, world_size=4, global_batch_size=16)
    one = estimate_from_args(args, Layout(world=4, tp=1, pp=4, ep=1, etp=1, cp=1, vpp=1, pp_first=0, pp_last=0,
                                          mbs=1, gbs=16, num_layers=8, seq_len=128))
    # rank 0 holds 2 layers x 4 micro-batches of layer activations; the last rank 2 layers x 1 + logits
    assert one.per_rank_peak[0] > one.per_rank_peak[1] > one.per_rank_peak[2]


def test_recompute_drops_activations_in_order():
    none = estimate_from_args(moe_args())
    sel = estimate_from_args(moe_args(recompute_granularity="selective", recompute_modules=["moe_act", "layernorm"]))
    full = estimate_from_args(moe_args(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1))
    layer_part = lambda e: e.activation_total - e.activations.get("logits (fp32, for the loss)", 0)  # noqa: E731
    assert layer_part(full) < layer_part(sel) < layer_part(none)
    # full recompute keeps exactly each layer's input: [s*b, h] in bf16 per layer
    assert full.activations["layer inputs (full recompute)"] == 2 * 128 * H * L


def test_materialized_attention_grows_with_the_square_of_sequence():
    def core(seq, impl):
        est = estimate_from_args(dense_args(seq_length=seq, transformer_impl=impl))
        return est.activations["attn"]
    # local attention keeps the b*heads*s*s softmax output (bf16, 2 bytes): beyond linear growth,
    # doubling s adds 2 * heads * (s2^2 - 2 * s1^2) bytes per layer
    extra = core(2048, "local") - 2 * core(1024, "local")
    assert extra == L * 2 * HEADS * (2048**2 - 2 * 1024**2)
    # flash attention is linear in s
    assert core(2048, "transformer_engine") == pytest.approx(2 * core(1024, "transformer_engine"), rel=1e-6)


def test_logits_are_fp32_and_counted_for_mtp_heads():
    est = estimate_from_args(moe_args(seq_length=256))
    assert est.activations["logits (fp32, for the loss)"] == 4 * 256 * V
    mtp = estimate_from_args(moe_args(seq_length=256, mtp_num_layers=1))
    assert mtp.activations["logits (fp32, for the loss)"] == 2 * 4 * 256 * V


def test_pipeline_layout_string_places_layers():
    assert expand_layout("Et*3|(tt|)*2L") == ["Ettt", "tt", "tt", "L"]
    assert expand_layout("E|(t|)*2t,L") == ["E", "t", "t", "tL"]
    shape = ModelShape.from_args(moe_args(num_layers=7, mtp_num_layers=1))
    lay = Layout(world=3, tp=1, pp=3, ep=1, etp=1, cp=1, vpp=1, pp_first=0, pp_last=0, mbs=1, gbs=3, num_layers=7, seq_len=128)
    stages = rank_stages(shape, lay, {"pipeline_model_parallel_layout": "Et*3|tt|ttmL"})
    assert [len(s.layers) for s in stages] == [3, 2, 3]
    assert stages[0].embedding and stages[2].loss and 7 in stages[2].layers
    with pytest.raises(BenchError):
        rank_stages(shape, lay, {"pipeline_model_parallel_layout": "Et*3|tt|tmL"})


def test_layout_from_a_log_dump_with_string_values():
    dump = {k: str(v) for k, v in moe_args(world_size=8, expert_model_parallel_size=4, global_batch_size=16,
                                            tensor_model_parallel_size=2).items()}
    dump["virtual_pipeline_model_parallel_size"] = "None"
    lay = layout_from_args(dump)
    assert (lay.world, lay.tp, lay.ep, lay.vpp, lay.dp) == (8, 2, 4, 1, 4)
    assert estimate_from_args(dump).peak_allocated > MISC_BYTES
