"""PP_LAYOUT: benchlib's pure-Python reading of --pipeline-model-parallel-layout agrees with
Megatron-Core 0.19.2's own parser and validator (imported here, on CPU), is used by the layout
check, the memory estimate's per-stage placement and the rendered flags."""
from __future__ import annotations

import pytest

from benchlib.config import pp_layout as ppl
from benchlib.config.resolve import resolve_run
from benchlib.core.errors import BenchError
from benchlib.planning.memory import estimate_memory

PUBLISHED = [
    # (layout, PP, NUM_LAYERS, MTP layers): Megatron-MoE-ModelZoo best_practice scripts
    ("Et|(tt|)*30mL", 8, 61, 1),  # deepseek-v3/run_deepseek_v3_h100.sh
    ("Et*2|(tt|)*22t|(tt|)*7mL", 8, 61, 1),  # deepseek-v3/run_deepseek_v3_h100.sh (offload rows)
    ("Ett|(ttt|)*30ttL", 8, 94, 0),  # qwen3 235B, account-for-embedding/loss split of 96 over PP8 VPP4
    ("E|(t|)*94L", 32, 94, 0),  # qwen3 235B PP32 VPP3
]


def _megatron(text: str, pp: int, layers: int, mtp: int):
    from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

    lay = PipelineParallelLayerLayout(text, pp)
    lay.validate_layer_layout(layers, mtp)
    return lay


@pytest.mark.parametrize("text,pp,layers,mtp", PUBLISHED + [
    ("Ettt|tttL", 2, 6, 0), ("E,t*3|(t|)*2,tL", 2, 6, 0), ("Et|t|tm|L", 2, 3, 1), ("E|tt|tt|ttL", 2, 6, 0),
])
def test_accepted_layouts_match_megatron(text, pp, layers, mtp):
    ours = ppl.parse(text, pp)
    ppl.validate(ours, layers, mtp)
    theirs = _megatron(text, pp, layers, mtp)
    assert ours.vpp == theirs.virtual_pipeline_model_parallel_size
    for rank in range(pp):
        for v in range(ours.vpp):
            names = [x.name for x in theirs.layout[rank][v]]
            assert ours.chunk(rank, v).count("t") == names.count("decoder")
            assert ours.chunk(rank, v).count("m") == names.count("mtp")
            assert ("E" in ours.chunk(rank, v), "L" in ours.chunk(rank, v)) == ("embedding" in names, "loss" in names)


@pytest.mark.parametrize("text,pp,layers,mtp", [
    ("Ett|ttL", 3, 4, 0),  # 2 stages, PP=3
    ("tEt|ttL", 2, 4, 0),  # E not first
    ("Ett|tLt", 2, 4, 0),  # L not last
    ("Ett|tL", 2, 4, 0),  # 3 t for 4 layers
    ("Ett|ttmL", 2, 4, 0),  # MTP the model lacks
    ("Etm|ttL", 2, 4, 1),  # t after m
    ("Ettx|ttL", 2, 4, 0),  # unknown character
    ("Et t|ttL", 2, 4, 0),  # a space is not cosmetic for Megatron
    ("Et|tm|t|tL", 2, 4, 1),  # t after m (MTP in an earlier virtual stage of a rank)
])
def test_refused_layouts_match_megatron(text, pp, layers, mtp):
    with pytest.raises(BenchError):
        ppl.validate(ppl.parse(text, pp), layers, mtp)
    with pytest.raises((AssertionError, ValueError, KeyError)):
        _megatron(text, pp, layers, mtp)


def test_published_qwen3_235b_layout_resolves_renders_and_places_stages():
    """Issue 19: TP2 PP8 VPP4 EP32 on 256 H100 with the layout string was refused for 94 layers."""
    argv = ["MODEL=Qwen3-235B-A22B", "GPU_TYPE=H100", "NNODES=32", "TP=2", "PP=8", "EP=32", "PP_FIRST=0", "PP_LAST=0",
            "PP_LAYOUT=Ett|(ttt|)*30ttL", "RECOMPUTE=selective", "RECOMPUTE_MODULES=moe_act layernorm"]
    run = resolve_run(argv, {"CLUSTER": "template"})
    toks = run.megatron_args
    i = toks.index("--pipeline-model-parallel-layout")
    assert toks[i + 1] == "Ett|(ttt|)*30ttL"
    for flag in ("--num-virtual-stages-per-pipeline-rank", "--decoder-first-pipeline-num-layers"):
        assert flag not in toks
    est = estimate_memory(run)
    assert est.in_flight > 1 and len(est.per_rank_peak) == 8
    # without the layout the same knobs are refused, with the suite's message
    with pytest.raises(BenchError, match="does not split evenly"):
        resolve_run([a for a in argv if not a.startswith("PP_LAYOUT")] + ["PP_LAYOUT=", "VPP=4"], {"CLUSTER": "template"})
    # the user's own flag is read the same way (and replaces the knobs' pipeline flags)
    run = resolve_run([a for a in argv if not a.startswith("PP_LAYOUT")] + ["PP_LAYOUT=", "--pipeline-model-parallel-layout",
                                                                             "Ett|(ttt|)*30ttL"], {"CLUSTER": "template"})
    assert estimate_memory(run).per_rank_peak == est.per_rank_peak
    with pytest.raises(BenchError, match="places 93 transformer layers"):
        resolve_run([a for a in argv if not a.startswith("PP_LAYOUT")] + ["PP_LAYOUT=", "--pipeline-model-parallel-layout",
                                                                           "Et|(ttt|)*30ttL"], {"CLUSTER": "template"})


def test_layout_places_embedding_loss_and_mtp_where_it_says():
    from benchlib.config.layout import Layout
    from benchlib.planning.arch import ModelShape
    from benchlib.planning.memory import run_args
    from benchlib.planning.pipeline import rank_stages

    run = resolve_run(["MODEL=DeepSeek-V3", "GPU_TYPE=H100", "NNODES=128", "TP=2", "PP=8", "EP=64", "PP_FIRST=0",
                       "PP_LAST=0", "PP_LAYOUT=Et|(tt|)*30mL"], {"CLUSTER": "template"})
    args = run_args(run)
    shape = ModelShape.from_args(args)
    lay = Layout(1024, 2, 8, 64, 1, 1, 4, 0, 0, 1, 8192, 61, 4096, pp_layout="Et|(tt|)*30mL")
    stages = rank_stages(shape, lay, args)
    assert stages[0].embedding and not stages[0].loss
    assert stages[7].loss and 61 in stages[7].layers  # the MTP layer sits with the loss on the last rank
    assert [len(s.layers) for s in stages] == [7, 8, 8, 8, 8, 8, 8, 6 + 1]  # Et+3x tt | 4x tt | 3x tt + mL


@pytest.mark.parametrize("extra,match", [
    (["PP_FIRST=2"], "PP_FIRST"),
    (["VPP=2"], "conflicts"),
    (["PP_LAYOUT=Et|(tt|)*30L"], "MTP"),
])
def test_layout_conflicts_are_refused_before_rendering(extra, match):
    argv = ["MODEL=DeepSeek-V3", "GPU_TYPE=H100", "NNODES=128", "TP=2", "PP=8", "EP=64", "PP_FIRST=0", "PP_LAST=0",
            "PP_LAYOUT=Et|(tt|)*30mL"] + extra
    with pytest.raises(BenchError, match=match):
        resolve_run(argv, {"CLUSTER": "template"})


def test_plan_lists_the_published_layouts_with_their_breakdown():
    """Issue 19: layout strings, VPP 3 and EP across nodes with DeepEP are candidates."""
    from benchlib.planning.planner import plan

    result = plan("Qwen3-235B-A22B", nodes=32, gpu="H100")
    by_knobs = {(c.knobs["TP"], c.knobs["PP"], c.knobs["EP"], c.knobs["VPP"], c.knobs["PP_LAYOUT"], c.knobs["DISPATCHER"],
                 c.knobs["A2A_OVERLAP"]): c for c in result.ranked}
    published = by_knobs[(2, 8, 32, 4, "Ett|(ttt|)*30ttL", "deepep", True)]
    assert published.parts["EP all-to-all"] > 0 and published.parts["GEMM + attention"] > 0
    assert "PP_LAYOUT='Ett|(ttt|)*30ttL'" in published.layout_str() and "DISPATCHER=deepep" in published.layout_str()
    # the same layout without the overlap, and with NCCL's all-to-all, are slower
    assert by_knobs[(2, 8, 32, 4, "Ett|(ttt|)*30ttL", "deepep", False)].iteration_s > published.iteration_s
    assert by_knobs[(2, 8, 32, 4, "Ett|(ttt|)*30ttL", "alltoall", True)].iteration_s > published.iteration_s
    assert any(k[3] == 3 and k[4] for k in by_knobs)  # VPP 3 through a layout string
    # the shipped H100 row is the published recipe and is ranked among the candidates
    assert result.default is not None and result.default.knobs["PP_LAYOUT"] == "Ett|(ttt|)*30ttL"


def test_estimate_json_gives_the_prediction_beside_the_memory(capsys):
    import json

    from benchlib.cli import main

    assert main(["estimate", "Qwen3-235B-A22B", "CLUSTER=template", "GPU_TYPE=H100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True and out["predicted_step_time_s"] > 0
    tokens = 2048 * 4096
    assert out["predicted_tokens_per_s_per_gpu"] == pytest.approx(tokens / out["predicted_step_time_s"] / 256)
    assert sum(out["predicted_parts_s"].values()) == pytest.approx(out["predicted_step_time_s"])
    assert out["cost_options"]["dispatcher"] == "deepep" and out["cost_options"]["a2a_overlap"] is True
    # a different layout, given as knobs, changes the prediction
    assert main(["estimate", "Qwen3-235B-A22B", "CLUSTER=template", "GPU_TYPE=H100", "A2A_OVERLAP=0", "--json"]) == 0
    slower = json.loads(capsys.readouterr().out)
    assert slower["predicted_step_time_s"] > out["predicted_step_time_s"]
    assert main(["estimate", "Qwen3-235B-A22B", "CLUSTER=template", "GPU_TYPE=H100"]) == 0
    text = capsys.readouterr().out
    assert "predicted step time" in text and "TFLOP/s/GPU" in text and "EP all-to-all" in text


@pytest.mark.megatron
@pytest.mark.slow
@pytest.mark.parametrize("knobs", [
    # ModelZoo best_practice/qwen3/readme.md, intra-node EP row: A2A, TP2 PP32 VPP3 EP8 (1 layer a stage)
    ["MODEL=Qwen3-235B-A22B", "TP=2", "PP=32", "EP=8", "VPP=3", "PP_LAYOUT=E|(t|)*94L", "DISPATCHER=alltoall",
     "A2A_OVERLAP=0"],
    # ModelZoo best_practice/deepseek-v3/run_deepseek_v3_h100.sh, the optimizer-offload layout
    ["MODEL=DeepSeek-V3", "TP=1", "PP=8", "EP=32", "NNODES=32", "GBS=8192", "VPP=4", "PP_LAYOUT=Et*2|(tt|)*22t|(tt|)*7mL",
     "A2A_OVERLAP=0", "OPTIMIZER_OFFLOAD=1", "RECOMPUTE_MODULES=mla_up_proj moe mlp layernorm"],
])
def test_megatron_validates_published_layout_strings(knobs, clean_env):
    """`benchlib validate` renders PP_LAYOUT as --pipeline-model-parallel-layout and Megatron-Core's
    own validate_args (on this CPU) accepts it."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "benchlib", "validate", "CLUSTER=template", "GPU_TYPE=H100", *knobs],
                          env=clean_env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ok: Megatron-Core accepts" in proc.stdout


@pytest.mark.megatron
@pytest.mark.slow
def test_kimi_k2_gb300_row_is_the_published_recipe_and_megatron_accepts_it(clean_env):
    """[Kimi-K2:GB300] applies on a GB300 cluster (Megatron-Bridge's MXFP8 perf recipe: TP1 PP4 VP4
    EP64, HybridEP, its layout string) and Megatron-Core's validate_args accepts it on this CPU."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**clean_env, "MODEL": "Kimi-K2", "GPU_TYPE": "GB300", "GPUS_PER_NODE": "4"}
    run = resolve_run([], {**env, "CLUSTER": "template"})
    assert run.world_size == 256 and run.provenance["PP_LAYOUT"] == "runtime.conf [Kimi-K2:GB300]"
    args = run.megatron_args
    assert args[args.index("--pipeline-model-parallel-layout") + 1] == "Etttt|(tttt|)*14tL"
    assert args[args.index("--fp8-recipe") + 1] == "mxfp8"
    assert args[args.index("--moe-flex-dispatcher-backend") + 1] == "hybridep"
    proc = subprocess.run([sys.executable, "-m", "benchlib", "validate", "CLUSTER=template"], env=env,
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ok: Megatron-Core accepts Kimi-K2 on 256 x GB300" in proc.stdout
