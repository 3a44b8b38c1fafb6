"""`benchlib convert` on a login node: the CLI and the planning modules load without torch/megatron."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_convert_modules_import_without_torch() -> None:
    code = (
        "import sys, argparse\n"
        "import benchlib.convert.cli as c, benchlib.convert.convert, benchlib.convert.families, benchlib.convert.layout, benchlib.convert.verify\n"
        "p = argparse.ArgumentParser(); s = p.add_subparsers(); c.register(s)\n"
        "a = p.parse_args(['convert', 'hf-to-mcore', '--hf-dir', 'x', '--out', 'y', '--format', 'legacy', '--target-pp', '2'])\n"
        "assert a.target_pp == 2 and a.format == 'legacy' and a.expert_layout == 'auto'\n"
        "bad = [m for m in ('torch', 'megatron', 'safetensors', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_layout_split_and_refusals() -> None:
    from benchlib.convert.layout import Layout, rank_dir
    from benchlib.core.errors import BenchError

    assert [list(r) for r in Layout(pp=4, first=13).stage_layers(61)] == [list(range(13)), list(range(13, 29)), list(range(29, 45)), list(range(45, 61))]
    assert [len(r) for r in Layout(pp=3, first=2, last=3).stage_layers(9)] == [2, 4, 3]
    assert [len(r) for r in Layout(pp=2).stage_layers(6)] == [3, 3]
    for bad in (Layout(pp=4, first=12), Layout(pp=2, first=4, last=4), Layout(pp=4)):
        try:
            bad.stage_layers(61 if bad.first != 4 else 6)
        except BenchError as err:
            assert "does not divide the model" in str(err)
        else:
            raise AssertionError(bad)
    assert rank_dir(1, 0, 0, Layout(tp=2)) == "mp_rank_01"
    assert rank_dir(1, 2, 0, Layout(tp=2, pp=4)) == "mp_rank_01_002"
    assert rank_dir(0, 0, 3, Layout(ep=4)) == "mp_rank_00_003"
    assert rank_dir(1, 1, 3, Layout(tp=2, pp=2, ep=4)) == "mp_rank_01_001_003"


def test_tp_split_merge_are_inverse_and_keep_swiglu_halves() -> None:
    import pytest

    torch = pytest.importorskip("torch")
    from benchlib.convert.layout import tp_merge, tp_split

    fc1 = torch.arange(8 * 3).reshape(8, 3).float()  # rows 0-3 gate, 4-7 up
    parts = tp_split("decoder.layers.0.mlp.linear_fc1.weight", fc1, 2)
    assert torch.equal(parts[0], fc1[[0, 1, 4, 5]]) and torch.equal(parts[1], fc1[[2, 3, 6, 7]])
    assert torch.equal(tp_merge("decoder.layers.0.mlp.linear_fc1.weight", parts), fc1)
    proj = torch.randn(4, 6)
    halves = tp_split("decoder.layers.0.self_attention.linear_proj.weight", proj, 2)
    assert halves[0].shape == (4, 3) and torch.equal(tp_merge("x.linear_proj.weight", halves), proj)
    grouped = tp_split("decoder.layers.0.mlp.experts.linear_fc1.weight3", fc1, 2)
    assert torch.equal(grouped[1], fc1[[2, 3, 6, 7]])
    norm = torch.randn(5)
    assert all(p is norm for p in tp_split("decoder.final_layernorm.weight", norm, 4))


def _router_config(model_type: str, **router: object) -> dict:
    base = {"model_type": model_type, "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 256,
            "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts_per_tok": 8, "first_k_dense_replace": 1}
    if model_type == "qwen3_moe":
        return {**base, "num_experts": 16, **router}
    mla = {"kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "q_lora_rank": 24}
    return {**base, **(mla if model_type != "glm4_moe" else {"num_key_value_heads": 2}), "n_routed_experts": 256, **router}


def test_router_settings_megatron_cannot_reproduce() -> None:
    """Each family's router compared with Megatron-Core 0.19.2's (moe_utils.topk_routing_with_score_function);
    pure config logic, no torch."""
    from benchlib.convert.families import shape_from_config

    def mismatches(cfg: dict) -> list[str]:
        return [reason for reason, _ in shape_from_config(cfg).routing_mismatches]

    # the published routers route alike: DeepSeek-V3 (8 // 4 = 2), GLM-4.5 (no groups), V2-Lite greedy, Qwen3 either way
    assert mismatches(_router_config("deepseek_v3", n_group=8, topk_group=4, norm_topk_prob=True)) == []
    assert mismatches(_router_config("glm4_moe", n_group=1, topk_group=1, norm_topk_prob=True)) == []
    assert mismatches(_router_config("deepseek_v2", num_experts_per_tok=6, topk_method="greedy", norm_topk_prob=False)) == []
    assert mismatches(_router_config("qwen3_moe", norm_topk_prob=False)) == []
    # V3-style group score with topk // topk_group != 2
    (reason,) = mismatches(_router_config("deepseek_v3", n_routed_experts=12, num_experts_per_tok=3, n_group=4, topk_group=2,
                                          norm_topk_prob=True))
    assert "top-2" in reason and "3 // 2 = 1" in reason
    # DeepSeek-V2 group_limited_greedy (best expert per group) vs Megatron's top-(6 // 3) sum
    (reason,) = mismatches(_router_config("deepseek_v2", n_routed_experts=160, num_experts_per_tok=6, n_group=8, topk_group=3,
                                          topk_method="group_limited_greedy", norm_topk_prob=False))
    assert "best expert" in reason and "6 // 3 = 2" in reason
    # ... equal when one expert per group is taken
    assert mismatches(_router_config("deepseek_v2", num_experts_per_tok=3, n_group=8, topk_group=3,
                                     topk_method="group_limited_greedy", norm_topk_prob=False)) == []
    # sigmoid without renormalisation (Megatron always renormalises top-k > 1); V2's ignored norm_topk_prob
    assert any("renormalises sigmoid" in r for r in mismatches(_router_config("glm4_moe", n_group=1, topk_group=1, norm_topk_prob=False)))
    assert any("never renormalises" in r for r in mismatches(_router_config("deepseek_v2", num_experts_per_tok=6, topk_method="greedy",
                                                                             norm_topk_prob=True)))
    assert any("always scores with softmax" in r for r in mismatches(_router_config("deepseek_v2", num_experts_per_tok=6, topk_method="greedy",
                                                                                     scoring_func="sigmoid")))
