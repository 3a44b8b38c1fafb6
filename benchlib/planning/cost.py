"""Predicted step time of one layout: the planner's cost model (docs/planning.md derives every constant).

Per iteration, one pipeline's view (all DP replicas run in parallel):

    per_mb = slowest pipeline rank's work for one micro-batch:
             GEMMs (FP8 peak only for the GEMMs that run in FP8) + attention core
           + non-GEMM work (router, permutation, norms, element-wise; memory-bound)
           + host-bound forward: GPU idle while the host issues a layer (less what CUDA graphs capture)
           + exposed TP, CP, PP communication
           + exposed EP all-to-all (dispatcher-aware; hidden by A2A_OVERLAP up to its limit)
    step   = per_mb * (M + (PP - 1) / VPP) + exposed DP gradient/parameter sync

Inputs are Megatron argument names (a resolved run's flags), so the knobs of a launch, a
plan candidate and a calibration row all go through the same function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from benchlib.config.layout import Layout
from benchlib.core.errors import BenchError
from benchlib.core.gpus import GPU_TABLE
from benchlib.planning.arch import ModelShape, as_bool, as_list, get
from benchlib.planning.gpus import GpuSpec
from benchlib.planning.pipeline import rank_stages

# --- GEMMs and attention (fraction of the dense peak), measured on H200 in this project
# (../shared/notes/megatron-on-the-gpu-machine.md): a large bf16 GEMM ~790 of 989 TFLOP/s;
# causal SDPA forward+backward ~440; grouped expert GEMMs 280 / 353 / 406 TFLOP/s at 256 / 512
# / 1024 tokens per expert, which EFF_GEMM * 0.6 * m / (m + 184) fits (276, 349, 402).
EFF_GEMM = 0.8
EFF_ATTENTION = 0.45
EFF_EXPERT_MAX, EXPERT_HALF_TOKENS = 0.6, 184
# --- Non-GEMM work, memory-bound: NONGEMM_PASSES reads+writes of a [tokens, hidden] bf16
# tensor per token-copy (1 for the token, + top-k for its routed copies) per layer, forward and
# backward together, at the GPU's HBM bandwidth. From bench/results/h200x1_qwen3-30b-a3b-proxy_profile.json
# (after_fast_ops_without_rope, H200, 4 layers, hidden 2048, top-8, 131072 tokens a step):
# elementwise 170.8 + copy_cat 68.5 + reduce_norm_softmax 60.2 + index_scatter_gather 37.4 +
# triton 23.0 = 359.9 ms, less ~98 ms fp32 main-grad accumulation (the profile's reading) =
# 262 ms = 0.50 us per token-layer; at 4.8 TB/s that is 2.40 MB = 65 passes of 2 * 2048 * 9 bytes.
NONGEMM_PASSES = 65.0
# benchlib's native spec with FAST_OPS=0 (Megatron's unfused cross-entropy, permutation, sort): the
# same profile's before_fast_ops step spends 769 ms there (elementwise 395.3 + copy_cat 221.0 +
# index_scatter_gather 140.8 + reduce_norm_softmax 88.2 + triton 21.9, less the 98 ms main-grad
# adds) instead of 262: 2.93 times as much.
NONGEMM_UNFUSED_FACTOR = 2.93
# --- Links. NCCL reaches about BUS_EFFICIENCY of a link's peak on large messages (all-gather,
# reduce-scatter). DeepEP / HybridEP kernels reach more: deepseek-ai/DeepEP docs/legacy.md (V1
# performance table, commit 0297fc80; normal kernels, H800 + CX7 400 Gb/s) reports 153-158 GB/s
# NVLink of ~160 and 43-58 GB/s RDMA of ~50 per GPU ("bottleneck bandwidth"): FLEX_EFFICIENCY.
BUS_EFFICIENCY = 0.7
FLEX_EFFICIENCY = 0.9
# Megatron's NCCL all-to-all dispatcher inside a node moves far less: its token-count host sync per
# layer and NCCL's all-to-all reach ~135 GB/s per H200 of 450 in this project's runs (EP2 and EP4 of
# Qwen3-30B-A3B-Proxy vs one GPU: bench/results/h200x2_ep2_qwen3-30b-a3b-proxy_fastops_mbs4.json,
# h200x4_ep4_qwen3-30b-a3b-proxy_fastops_mbs4.json, h200x1_qwen3-30b-a3b-proxy_fastops_mbs4.json:
# +1.9 to +3 ms per all-to-all of 268 / 403 MB). Measured on NVLink only; applied to the network
# link as well (the host sync and NCCL's all-to-all are the dispatcher's, not the link's), which
# is unverified across nodes: every published cross-node EP recipe uses DeepEP/HybridEP.
NCCL_A2A_EFFICIENCY = 0.3
# Optimizer step and fp32 main-gradient accumulation, memory-bound: bytes moved per parameter of
# the local optimizer shard per step, and per local parameter per micro-batch when the wgrad GEMM
# does not accumulate into the main gradient itself (no TE), at the GPU's nominal HBM bandwidth;
# parameters counted with the embedding and output layer. Megatron's own path (FAST_OPTIMIZER=0,
# and Transformer Engine's): from bench/results/h200x1_qwen3-30b-a3b-proxy_profile.json (H200,
# ~3.1e9 parameters, 8 micro-batches: about 68 ms AdamW step with torch's foreach kernels and 98 ms
# fp32 main-grad adds per step).
OPTIMIZER_BYTES_PER_PARAM = 105.0
MAIN_GRAD_BYTES_PER_PARAM = 19.0
# benchlib's FAST_OPTIMIZER=1 (the default without TE): AdamW as one Triton kernel that also writes
# the bf16 parameters; the gradient buffer handled by benchlib/megatron/fast_grads.py: not zeroed
# (an iteration's first write to a parameter's main gradient copies, later micro-batches add, one
# vectorised kernel either way) and the NaN check's bucket norms taken from the squares the last
# micro-batch's kernel adds up (no pass of their own). From the torch-profiler summary of GBS-4
# steps (one micro-batch) of the Qwen3-30B-A3B proxy on one H200 with that code
# (bench/results/h200x1_qwen3-30b-a3b-proxy_profile_gbs4.json, suite 44c8450; 3.115e9 parameters):
# per step the Adam kernel 22.84 ms and the grad norm's multi-tensor L2 read 3.47 ms = 26.31 ms =
# 40.5 bytes per parameter of the shard at 4.8 TB/s; the first write of a step, the accumulate
# kernel copying (39 calls, 4.745 ms) = 7.3 bytes per local parameter (bf16 read, fp32 write).
# Later micro-batches add: the same kernel's adds, 7.28 ms = 11.2 bytes per local parameter, from
# the trace before the copy (bench/results/h200x1_host_gaps_profile_fast_optimizer.json; the add
# path did not change).
OPTIMIZER_BYTES_PER_PARAM_FAST = 40.5
MAIN_GRAD_FIRST_BYTES_PER_PARAM_FAST = 7.3
MAIN_GRAD_BYTES_PER_PARAM_FAST = 11.2
# The two passes over the gradient buffer fast_grads.py removed, per local parameter per step, from
# that earlier trace (suite c88885d): the fp32 zeroing 2.72 ms = 4.2 bytes and the NaN check's
# per-bucket norms 3.11 ms = 4.8 bytes. Charged to a FAST_OPTIMIZER record made before fast_grads.py
# (FAST_GRADS_SINCE; then the first write added, 11.2 bytes); the zeroing also where fast_grads.py
# keeps Megatron's (CUDA graphs: something else may write main_grad).
GRAD_ZEROING_BYTES_PER_PARAM_FAST = 4.2
BUCKET_NORM_BYTES_PER_PARAM_FAST = 4.8
# fast_grads.py came in at commit 39dcffb (2026-12-01 21:45:22 UTC): a record of a FAST_OPTIMIZER run
# made before then ran the zeroing, bucket norms and per-bucket host round trips
# (benchlib.planning.memory.args_from_record sets `fast_optimizer_grads` from the record's date).
FAST_GRADS_COMMIT = "39dcffb"
FAST_GRADS_SINCE = datetime(2026, 12, 1, 21, 45, 22, tzinfo=timezone.utc)
# With Transformer Engine's gradient-accumulation fusion the wgrad GEMM adds into the fp32 main
# gradient itself: its epilogue still reads and writes it, 4 + 4 bytes per local parameter per
# micro-batch at HBM bandwidth (memory-bound; it matters where a GPU holds many expert weights).
FUSED_WGRAD_BYTES_PER_PARAM = 8.0
# All-to-alls per MoE layer and micro-batch: dispatch + combine, forward and backward.
A2A_PER_LAYER = 4
# --- A2A_OVERLAP (--overlap-moe-expert-parallel-comm): one micro-batch's all-to-all runs beside
# another's compute in the steady 1F1B phase. What it cannot hide: the all-to-all beyond the
# compute it overlaps, and A2A_OVERLAP_RESIDUAL of the rest (stream synchronisation, the warm-up
# and cool-down micro-batches, the SMs the communication kernels take from the GEMMs). Fitted to
# the one published same-layout pair with and without it: Qwen3-235B-A22B on 256 H100, DeepEP,
# TP2 PP8 VPP4 EP32, 19.7 s -> 17.6 s (Megatron-MoE-ModelZoo best_practice/qwen3/readme.md,
# commit e8650517): 2.1 s saved of the model's ~5.7 s all-to-all = 37% hidden. That fit predates the
# host-bound forward below, which the overlap also hides (1.5 s more on that pair; docs/planning.md).
A2A_OVERLAP_RESIDUAL = 0.63
# With --overlap-grad-reduce / --overlap-param-gather most DP traffic hides behind compute;
# the last bucket's reduce and the first forward's gather do not.
DP_EXPOSED = 0.2
# Context-parallel K/V ring exchange overlaps attention compute; half is counted.
CP_EXPOSED = 0.5
# --- Host-bound forward. Megatron's MoE dispatchers copy the per-expert token counts to the host
# once per MoE layer and forward pass (the alltoall dispatcher's split sizes; DeepEP/HybridEP's
# receive counts): the GPU queue drains there, and until the next sync the GPU can only run what the
# host has issued. When issuing a layer's forward takes the host longer than the GPU takes to run
# it, the GPU waits for the difference; a larger micro-batch gives the GPU more work per launch.
# Backward is issued by autograd's C++ engine and runs ahead of the GPU.
# Measured in torch-profiler traces of steps 6 and 7 on one H200 (native spec, fast ops on),
# summarised by bench/trace_gaps.py. The suite as it is now (main after the FAST_OPTIMIZER kernels,
# 2026-12-01; bench/results/h200x1_host_gaps_profile_fast_optimizer.json): between two MoE layers'
# syncs (one layer's worth of forward ops, about 98 kernels) the GPU span, which is the host's
# issue time where the GPU waits inside, has medians 6.55 / 6.32 ms (Qwen3-30B-A3B proxy, MBS 4;
# GPU busy 6.0 ms of it; the host's first-to-last launch 6.8 / 6.2 ms): HOST_FORWARD_PER_LAYER_S is
# their middle. It is this suite's torch-eager (native and local spec) path on the GPU machine's
# host. Before the experts' token offsets went to the GPU through pinned memory (two pageable
# copies per MoE layer, each draining the GPU queue) the same spans were 7.3 / 9.2 ms (Qwen, MBS 4)
# and 7.3 / 8.2 ms (DeepSeek-V2-Lite proxy, MBS 2; its forward passes idle 106-117 ms of a
# 686-701 ms step): bench/results/h200x1_host_gaps_profile.json, where the 8 ms used until then
# came from. Transformer Engine's modules issue fewer, fused kernels from the same Python layer
# code: HOST_FORWARD_PER_LAYER_TE_S is that path's host time per layer, not measured here (no TE
# trace). It is the one constant fitted to the published Qwen3-235B-A22B H100 table (ModelZoo
# best_practice/qwen3/readme.md, commit e8650517): the MBS-1 layouts there are host-bound, the
# Megatron-FSDP layout at MBS 4 is not; the ranking needs at least 6.0 ms, and all three targets of
# tests/test_planning_calibration.py hold up to 7.5 ms.
HOST_FORWARD_PER_LAYER_S = 6.4e-3
HOST_FORWARD_PER_LAYER_TE_S = 6.0e-3
# --- Once per step, after the backward: the GPU idles while the host finishes the gradient sync
# (the NaN check's verdict), reads the grad norm back before the optimizer step and does the
# step's bookkeeping after it. Traced idle from the backward's last kernel to the step's end
# (bench/trace_gaps.py's by_phase after_backward + optimizer_and_after): 9.5 / 10.0 ms in the
# Qwen3 proxy trace of FAST_OPTIMIZER before fast_grads.py (suite c88885d, steps 6 / 7), 10.8 / 10.3
# ms before the FAST_OPTIMIZER kernels, 8.5 / 8.8 ms for the DeepSeek-V2-Lite proxy. It is Megatron's
# training loop, not the layers: charged to every run on Megatron's optimizer path (FAST_OPTIMIZER=0,
# TE) and to FAST_OPTIMIZER records made before fast_grads.py.
STEP_HOST_IDLE_S = 9.7e-3
# FAST_OPTIMIZER with fast_grads.py and step_stats.py (one host sync for all the NaN/Inf checks, no
# device round trips for a one-rank group's step statistics). No per-phase trace of this code: the
# profiled GBS-4 steps (bench/results/h200x1_qwen3-30b-a3b-proxy_profile_gbs4.json) idle 15.5 / 21.0
# ms of 169.1 / 172.5, but the profiler adds host time (unprofiled steps of the same run ~161 ms, the
# GPU's busy time the same). The figure is the unprofiled step less the GPU's busy time: the
# configuration's side-by-side record (h200x1_qwen3-30b-a3b-proxy_vs_torchtitan_gbs4.json, same
# code, 0.1609 s) less the profiled steps' busy 153.6 / 151.5 ms = 7.3 / 9.4 ms, their middle. It
# is all the idle of that step (the model gives that configuration no host-bound forward), the
# forward's few ms included: an upper bound on the epilogue alone.
STEP_HOST_IDLE_FAST_S = 8.3e-3
# Where that host time goes inside a layer (the Qwen3 proxy trace before the pinned offsets, step 7, the main thread's
# ops between its 2nd and 3rd sync, 9.85 ms): the attention block with its norms and residual add
# 3.25 ms, the router with its top-k and aux loss 2.05 ms, the dispatcher's preprocessing (token
# counts before the sync, sort and local permutation after it) 1.0 ms, the rest (all-to-all,
# experts, unpermutation) 3.5 ms. A dense layer's MLP takes the MoE block's share.
HOST_SHARE = {"attn": 0.33, "router": 0.21, "preprocess": 0.10, "experts": 0.36, "mlp": 0.67}
# CUDA graphs (--cuda-graph-impl with --cuda-graph-modules, or the deprecated --cuda-graph-scope)
# replay a captured scope with one launch: its parts' host time is removed. "layer" is a whole
# layer (no scope given), "full_iteration" the whole step.
CUDA_GRAPH_SCOPE_PARTS = {"attn": {"attn"}, "moe_router": {"router"}, "moe_preprocess": {"preprocess"},
                          "moe": {"router", "preprocess", "experts"}, "mlp": {"mlp"},
                          "layer": set(HOST_SHARE), "full_iteration": set(HOST_SHARE)}


def host_forward_per_layer_s(args: Mapping[str, Any], opts: "CostOptions") -> dict[str, float]:
    """Host seconds to issue one layer's forward of one micro-batch, by layer kind, after CUDA graphs."""
    eager = "benchlib" in str(get(args, "spec", "") or "") or str(get(args, "transformer_impl", "")) == "local"
    host = HOST_FORWARD_PER_LAYER_S if eager else HOST_FORWARD_PER_LAYER_TE_S
    captured: set[str] = set()
    for scope in opts.cuda_graph_scopes:
        captured |= CUDA_GRAPH_SCOPE_PARTS.get(scope, set())
    kinds = {"dense": ("attn", "mlp"), "moe": ("attn", "router", "preprocess", "experts")}
    return {kind: host * sum(HOST_SHARE[p] for p in parts if p not in captured) for kind, parts in kinds.items()}


def made_with_fast_grads(record: Mapping[str, Any]) -> bool:
    """Whether a record's FAST_OPTIMIZER run had fast_grads.py: made at or after FAST_GRADS_SINCE.

    A record names the time it was made (`date`, ISO 8601, UTC without an offset); a run cannot have
    run code committed after it. A date without a time counts as that day's start (on the day of the
    change: before it); a record without a date is taken as made with the suite now."""
    raw = str(record.get("date") or "").strip()
    if not raw:
        return True
    try:
        made = datetime.fromisoformat(raw)
    except ValueError as e:
        raise BenchError(f"record date {raw!r} is not ISO 8601",
                         hint="write it as python -m bench run does, e.g. 2026-12-01T21:47:18+0000") from e
    if made.tzinfo is None:
        made = made.replace(tzinfo=timezone.utc)
    return made >= FAST_GRADS_SINCE


def uses_transformer_engine(args: Mapping[str, Any]) -> bool:
    """Megatron's TE layers: no benchlib spec and the TE implementation (Megatron's default)."""
    return str(get(args, "transformer_impl", "transformer_engine")) == "transformer_engine" and not get(args, "spec", None)


@dataclass
class CostOptions:
    """What the cost model reads besides the layout: how the run communicates and computes."""

    precision: str = "bf16"  # bf16 | fp8 | mxfp8
    dispatcher: str = "alltoall"  # alltoall | allgather | deepep | hybridep
    a2a_overlap: bool = False
    recompute: str = "none"  # none | selective | full
    recompute_modules: tuple[str, ...] = ()
    cuda_graph_scopes: tuple[str, ...] = ()
    fsdp: bool = False
    # benchlib's FAST_OPTIMIZER (Triton AdamW and main-grad kernels; the suite's default without TE);
    # False: Megatron's own optimizer path. Transformer Engine runs always take Megatron's.
    fast_optimizer: bool = True
    # with it, benchlib/megatron/fast_grads.py's gradient buffer (no zeroing, first write copies, NaN
    # check from the last micro-batch's squares); False for a FAST_OPTIMIZER record made before it
    fast_grads: bool = True

    @staticmethod
    def from_args(args: Mapping[str, Any]) -> "CostOptions":
        fp8 = get(args, "fp8_recipe", None) or get(args, "fp8_format", None)
        recipe = str(get(args, "fp8_recipe", "") or "")
        dispatcher = str(get(args, "moe_token_dispatcher_type", "alltoall"))
        if dispatcher == "flex":
            dispatcher = str(get(args, "moe_flex_dispatcher_backend", "deepep"))
        gran = str(get(args, "recompute_granularity", "") or "none")
        modules = tuple(as_list(args, "recompute_modules")) if gran == "selective" else ()
        scopes: tuple[str, ...] = ()
        impl = str(get(args, "cuda_graph_impl", "none"))
        if impl == "full_iteration":
            scopes = ("full_iteration",)
        elif impl != "none" or as_bool(args, "enable_cuda_graph"):
            # Megatron-Core 0.19: --cuda-graph-modules (or the deprecated --cuda-graph-scope); none
            # given, or "full", captures the whole layer
            named = tuple(as_list(args, "cuda_graph_modules")) or tuple(as_list(args, "cuda_graph_scope"))
            scopes = ("full_iteration",) if "full_iteration" in named else (
                tuple(s for s in named if s != "full") or ("layer",))
        return CostOptions(
            precision=("mxfp8" if recipe == "mxfp8" else "fp8") if fp8 else "bf16",
            dispatcher=dispatcher, a2a_overlap=as_bool(args, "overlap_moe_expert_parallel_comm"),
            recompute=gran, recompute_modules=modules or (("core_attn",) if gran == "selective" else ()),
            cuda_graph_scopes=scopes, fsdp=as_bool(args, "use_megatron_fsdp"),
            # the knob, where the arguments carry it (a resolved run's, a record's); else the default
            fast_optimizer=as_bool(args, "FAST_OPTIMIZER", True) and not uses_transformer_engine(args),
            # set for a record by args_from_record (its date); other arguments describe the suite now
            fast_grads=as_bool(args, "fast_optimizer_grads", True),
        )


@dataclass
class StepPrediction:
    step_s: float
    parts: dict[str, float]  # seconds per iteration by cause (they add up to step_s)
    microbatches: int
    notes: list[str] = field(default_factory=list)


_MACS_CACHE: dict[tuple[ModelShape, int], tuple[float, float, float, float]] = {}


def _layer_macs(args: Mapping[str, Any], shape: ModelShape, seq: int) -> tuple[float, float, float, float]:
    """Forward MACs per token: (attention linear, attention core, dense MLP, MoE) per layer of each kind."""
    key = (shape, seq)
    if key not in _MACS_CACHE:
        _MACS_CACHE[key] = _layer_macs_uncached(args, shape, seq)
    return _MACS_CACHE[key]


def _layer_macs_uncached(args: Mapping[str, Any], shape: ModelShape, seq: int) -> tuple[float, float, float, float]:
    from benchlib.metrics.flops import breakdown

    b = breakdown(args)
    n_total = shape.num_layers + shape.mtp_layers
    n_moe = sum(1 for i in range(n_total) if shape.is_moe(i))
    n_dense = n_total - n_moe
    return (b.attention_linear / n_total, b.attention_core * seq / n_total,
            b.mlp_dense / n_dense if n_dense else 0.0, b.moe / n_moe if n_moe else 0.0)


def _hbm_bytes_per_s(gpu: GpuSpec) -> float:
    entry = GPU_TABLE.get(gpu.name)
    return (entry.hbm_gbps if entry and entry.hbm_gbps else 3350.0) * 1e9


def expected_remote_nodes(topk: int, nodes: int) -> float:
    """Distinct other nodes a token's top-k experts land on, experts spread evenly over `nodes`."""
    if nodes <= 1:
        return 0.0
    distinct = nodes * (1 - (1 - 1 / nodes) ** topk)
    return distinct * (nodes - 1) / nodes


def _per_all_to_all_s(shape: ModelShape, lay: Layout, opts: CostOptions, tok_rank: float, nvlink: float,
                      net: float, domain: int) -> float:
    """Seconds of one EP all-to-all (dispatch or combine) of one micro-batch on one rank."""
    if lay.ep <= 1 or not shape.num_experts:
        return 0.0
    group = lay.ep * lay.etp  # consecutive ranks (Megatron's expert grid: etp, ep, edp, pp)
    gpus_in_domain = min(group, domain)
    nodes = max(1, math.ceil(group / domain))
    copies = shape.topk
    token_bytes = 2 * shape.hidden
    tokens = tok_rank / lay.tp  # each rank dispatches its sequence-parallel shard
    if opts.dispatcher in ("deepep", "hybridep"):
        # one copy per distinct remote node over the network, fanned out over NVLink there
        net_copies = expected_remote_nodes(copies, nodes)
        nvl_copies = copies * (gpus_in_domain - 1) / group + net_copies
        eff = FLEX_EFFICIENCY
        return tokens * token_bytes * max(net_copies / (net * eff), nvl_copies / (nvlink * eff))
    # NCCL all-to-all (allgather is costed the same): every routed copy travels on its own
    net_copies = copies * (group - gpus_in_domain) / group
    nvl_copies = copies * (gpus_in_domain - 1) / group
    return tokens * token_bytes * (net_copies / (net * NCCL_A2A_EFFICIENCY)
                                   + nvl_copies / (nvlink * NCCL_A2A_EFFICIENCY))


def predict_step(args: Mapping[str, Any], shape: ModelShape, lay: Layout, gpu: GpuSpec, gpus_per_node: int,
                 opts: CostOptions) -> StepPrediction:
    """Seconds per iteration of `lay` with `opts`, split by cause."""
    dense_peak = gpu.peak_tflops("bf16") * 1e12
    fp8_peak = gpu.peak_tflops("fp8") * 1e12 if opts.precision in ("fp8", "mxfp8") else dense_peak
    seq = lay.seq_len
    t_mb = lay.mbs * seq
    attn_lin, attn_core, mlp_dense, moe = _layer_macs(args, shape, seq)
    split = lay.tp * lay.cp
    if shape.num_experts:
        m = t_mb / lay.cp / lay.tp * shape.topk * lay.etp * lay.ep / shape.num_experts
        eff_expert = EFF_GEMM * EFF_EXPERT_MAX * m / (m + EXPERT_HALF_TOKENS)
        shared = (3 if shape.swiglu else 2) * shape.hidden * shape.shared_ffn
        routed = max(0.0, moe - shared)
    else:
        eff_expert, shared, routed = EFF_GEMM, 0.0, 0.0
    mods = set(opts.recompute_modules)
    full = opts.recompute == "full"
    extra_core = 1.0 if full or "core_attn" in mods else 0.0
    extra_lin = 1.0 if full else (0.25 if "mla_up_proj" in mods else 0.0)
    extra_ffn = 1.0 if full or "mlp" in mods else 0.0
    extra_moe = 1.0 if full or "moe" in mods else 0.0
    gemm_s, core_s = {}, {}
    for kind, ffn_macs, ffn_eff, routed_part, extra_mlp in (
            ("dense", mlp_dense, EFF_GEMM, 0.0, extra_ffn), ("moe", shared, EFF_GEMM, routed, extra_moe)):
        gemm = 2 * t_mb * (attn_lin * (3 + extra_lin) / EFF_GEMM + ffn_macs * (3 + extra_mlp) / ffn_eff
                           + routed_part * (3 + extra_mlp) / eff_expert) / (split * fp8_peak)
        gemm_s[kind] = gemm
        core_s[kind] = 2 * t_mb * attn_core * (3 + extra_core) / EFF_ATTENTION / (split * dense_peak)
    # the output layer and loss stay in bf16 in Megatron's FP8 recipes
    logits_s = 2 * t_mb * shape.hidden * shape.vocab * 3 * (1 + shape.mtp_layers) / (split * dense_peak * EFF_GEMM)
    # non-GEMM, per layer: tokens on this rank (sequence-parallel shard) x (1 + top-k copies)
    tok_rank = t_mb / lay.cp
    hbm = _hbm_bytes_per_s(gpu)
    recompute_ng = 4 / 3 if full else 1.0  # full recompute replays the forward third of it
    native = "benchlib" in str(get(args, "spec", "") or "") or str(get(args, "transformer_impl", "")) == "local"
    if native and not as_bool(args, "FAST_OPS", True):
        recompute_ng *= NONGEMM_UNFUSED_FACTOR
    nongemm_s = {kind: NONGEMM_PASSES * 2 * shape.hidden * (1 + (shape.topk if kind == "moe" else 0))
                 * tok_rank / lay.tp / hbm * recompute_ng for kind in ("dense", "moe")}

    nvlink = gpu.nvlink_gbps * 1e9
    net = gpu.network_gbps * 1e9
    domain = gpu.nvlink_domain if gpu.nvlink_domain > gpu.gpus_per_node else gpus_per_node
    per_a2a = _per_all_to_all_s(shape, lay, opts, tok_rank, nvlink, net, domain)

    # host-bound forward: the GPU waits while the host issues a layer's forward ops (see HOST_*)
    host_layer = host_forward_per_layer_s(args, opts)
    # the GPU work the host's issuing races: a layer's forward share of its compute and a MoE
    # layer's dispatch + combine; with A2A_OVERLAP one micro-batch's forward and another's backward
    # of the layer are issued together, so all of it
    passes = 1.0 if opts.a2a_overlap else (4.0 if full else 3.0)
    a2a_fwd = (A2A_PER_LAYER + (2 if full or "moe" in mods else 0) if opts.a2a_overlap else 2) * per_a2a
    fwd_gpu = {kind: (gemm_s[kind] + core_s[kind] + nongemm_s[kind]) / passes + (a2a_fwd if kind == "moe" else 0.0)
               for kind in ("dense", "moe")}
    host_gap = {kind: max(0.0, host_layer[kind] - fwd_gpu[kind]) for kind in ("dense", "moe")}

    stages = rank_stages(shape, lay, args)
    stage_s = []
    for st in stages:
        s = 0.0
        for i in st.layers:
            kind = "moe" if shape.is_moe(i) else "dense"
            s += gemm_s[kind] + core_s[kind] + nongemm_s[kind] + host_gap[kind]
        if st.loss:
            s += logits_s
        stage_s.append(s)
    work_mb = max(stage_s)
    slowest = stages[stage_s.index(work_mb)]
    layers_here = slowest.layers
    n_moe = sum(1 for i in layers_here if shape.is_moe(i))
    n_all = len(layers_here)
    gemm_part = sum(gemm_s["moe" if shape.is_moe(i) else "dense"] + core_s["moe" if shape.is_moe(i) else "dense"]
                    for i in layers_here) + (logits_s if slowest.loss else 0.0)
    host_part = sum(host_gap["moe" if shape.is_moe(i) else "dense"] for i in layers_here)
    nongemm_part = work_mb - gemm_part - host_part

    tp_s = 0.0
    if lay.tp > 1:
        msg = 2 * tok_rank * shape.hidden * (lay.tp - 1) / lay.tp
        colls = 4 * n_all + 4 * (n_all - n_moe) + (4 * n_moe if shape.shared_ffn else 0)
        tp_s = colls * msg / (nvlink * BUS_EFFICIENCY) * (1.5 if full else 1.0)

    n_a2a = A2A_PER_LAYER + (2 if full or "moe" in mods else 0)
    ep_s = n_a2a * n_moe * per_a2a
    ep_exposed = ep_s
    if opts.a2a_overlap and ep_s:
        hidden = min(ep_s, work_mb)
        ep_exposed = ep_s - hidden + A2A_OVERLAP_RESIDUAL * hidden

    cp_s = 0.0
    if lay.cp > 1:
        kv = 2 * 2 * tok_rank * shape.query_groups * shape.kv_channels / lay.tp
        link = nvlink if lay.tp * lay.cp <= gpus_per_node else net
        cp_s = CP_EXPOSED * 3 * n_all * kv * (lay.cp - 1) / (link * BUS_EFFICIENCY)
    vpp = lay.virtual_stages
    pp_s = 0.0
    if lay.pp > 1:
        act = 2 * tok_rank * shape.hidden / lay.tp
        link = net if lay.tp * lay.cp * lay.pp > gpus_per_node else nvlink
        pp_s = 2 * act * vpp / (link * BUS_EFFICIENCY)

    M = max(1, lay.gbs // (lay.mbs * lay.dp))
    bubble = (lay.pp - 1) / vpp if lay.pp > 1 else 0.0
    per_mb = work_mb + tp_s + ep_exposed + cp_s + pp_s

    dp_s = 0.0
    dense_p = sum(shape.attention_params() / lay.tp + (shape.shared_params() / lay.tp if shape.is_moe(i)
                  else shape.dense_mlp_params() / lay.tp) for i in layers_here)
    expert_p = sum(shape.expert_params() / (lay.ep * lay.etp) for i in layers_here if shape.is_moe(i))
    for params, size in ((dense_p, lay.dp * lay.cp), (expert_p, lay.world // (lay.pp * lay.ep * lay.etp))):
        if size > 1 and params:
            link = net if lay.world // lay.pp > gpus_per_node else nvlink
            # Megatron-FSDP's per-layer gathers are prefetched behind compute: costed as the
            # distributed optimizer's sync (docs/planning.md, "not modelled")
            dp_s += DP_EXPOSED * params * (4 + 2) * (size - 1) / size / (link * BUS_EFFICIENCY)

    # optimizer step on this rank's shard, and main-grad accumulation without TE's wgrad fusion;
    # the embedding and output layer are dense parameters of the stages that hold them
    embed = shape.vocab * shape.hidden / lay.tp
    embed_p = (embed if slowest.embedding else 0.0) + (
        embed + shape.hidden * shape.norm_params if slowest.loss and (shape.untied or not slowest.embedding) else 0.0)
    local_p = dense_p + embed_p + expert_p
    distributed = as_bool(args, "use_distributed_optimizer")
    edp = max(1, lay.world // (lay.pp * lay.ep * lay.etp))
    shard = (dense_p + embed_p) / (lay.dp * lay.cp) + expert_p / edp if distributed else local_p
    te = uses_transformer_engine(args)
    fast = opts.fast_optimizer and not te
    optim_s = (OPTIMIZER_BYTES_PER_PARAM_FAST if fast else OPTIMIZER_BYTES_PER_PARAM) * shard / hbm
    fused = te and as_bool(args, "gradient_accumulation_fusion", True)
    grad_bytes = (FUSED_WGRAD_BYTES_PER_PARAM if fused
                  else MAIN_GRAD_BYTES_PER_PARAM_FAST if fast else MAIN_GRAD_BYTES_PER_PARAM)
    step_idle_s = STEP_HOST_IDLE_S
    if fast and opts.fast_grads:
        step_idle_s = STEP_HOST_IDLE_FAST_S
        if opts.cuda_graph_scopes:  # fast_grads.py keeps Megatron's zeroing; every write adds
            optim_s += GRAD_ZEROING_BYTES_PER_PARAM_FAST * local_p / hbm
        else:  # each micro-batch writes every local gradient once; the step's first write copies
            grad_bytes += (MAIN_GRAD_FIRST_BYTES_PER_PARAM_FAST - MAIN_GRAD_BYTES_PER_PARAM_FAST) / M
    elif fast:  # before fast_grads.py: the buffer zeroed and read again for the NaN check's norms
        optim_s += (GRAD_ZEROING_BYTES_PER_PARAM_FAST + BUCKET_NORM_BYTES_PER_PARAM_FAST) * local_p / hbm
    optim_s += grad_bytes * local_p * M / hbm

    scale = M + bubble
    parts = {
        "GEMM + attention": gemm_part * M,
        "non-GEMM (router, permute, element-wise)": nongemm_part * M,
        "host-bound forward (GPU idle)": host_part * M,
        "pipeline bubble": per_mb * bubble,
        "TP comm": tp_s * M,
        "EP all-to-all": ep_exposed * M,
        "CP comm": cp_s * M,
        "PP p2p": pp_s * M,
        "DP grad/param sync": dp_s,
        "optimizer + main-grad": optim_s,
        "step's host epilogue (GPU idle)": step_idle_s,
    }
    return StepPrediction(step_s=per_mb * scale + dp_s + optim_s + step_idle_s, parts=parts, microbatches=M)


@dataclass
class RunPrediction:
    """`benchlib estimate`'s prediction for one resolved run."""

    step: StepPrediction
    options: CostOptions
    flops_per_iteration: float
    world: int
    tokens_per_iteration: int

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_iteration / self.step.step_s / self.world

    @property
    def tflops_per_gpu(self) -> float:
        return self.flops_per_iteration / self.step.step_s / self.world / 1e12

    def table(self) -> str:
        o = self.options
        lines = [f"predicted step time {self.step.step_s:.3f} s ({self.step.microbatches} micro-batches), "
                 f"{self.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, {self.tflops_per_gpu:.0f} TFLOP/s/GPU "
                 f"({o.precision}, dispatcher {o.dispatcher}, A2A overlap {'on' if o.a2a_overlap else 'off'}, "
                 f"recompute {o.recompute}, FAST_OPTIMIZER {'on' if o.fast_optimizer else 'off'}"
                 f"{' before fast_grads' if o.fast_optimizer and not o.fast_grads else ''})"]
        for name, secs in sorted(self.step.parts.items(), key=lambda kv: -kv[1]):
            if secs > 0:
                lines.append(f"  {name:<42}{secs:9.3f} s  {secs / self.step.step_s:6.1%}")
        if o.cuda_graph_scopes:
            lines.append(f"  (CUDA graphs {' '.join(o.cuda_graph_scopes)}: their share of the host time removed)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"predicted_step_time_s": self.step.step_s, "predicted_tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
                "predicted_tflops_per_gpu": self.tflops_per_gpu, "predicted_parts_s": self.step.parts,
                "cost_options": {"precision": self.options.precision, "dispatcher": self.options.dispatcher,
                                 "a2a_overlap": self.options.a2a_overlap, "recompute": self.options.recompute,
                                 "cuda_graph_scopes": list(self.options.cuda_graph_scopes),
                                 "fast_optimizer": self.options.fast_optimizer,
                                 "fast_grads": self.options.fast_optimizer and self.options.fast_grads}}


def predict_from_args(args: Mapping[str, Any], gpu_type: str, gpus_per_node: int | None = None,
                      layout: Layout | None = None) -> RunPrediction:
    """The cost model for Megatron argument names (a run's flags, a record's or a log's arguments)."""
    from benchlib.metrics.flops import num_floating_point_operations
    from benchlib.planning.gpus import gpu_spec
    from benchlib.planning.memory import layout_from_args

    lay = layout or layout_from_args(args)
    spec = gpu_spec(gpu_type)
    shape = ModelShape.from_args(args, tp=lay.tp)
    opts = CostOptions.from_args(args)
    step = predict_step(args, shape, lay, spec, gpus_per_node or min(spec.gpus_per_node, lay.world), opts)
    cfg = dict(args)
    cfg.setdefault("seq_length", lay.seq_len)
    flops = float(num_floating_point_operations(cfg, lay.gbs))
    return RunPrediction(step=step, options=opts, flops_per_iteration=flops, world=lay.world,
                         tokens_per_iteration=lay.gbs * lay.seq_len)


def predict_run(run: Any) -> RunPrediction:
    """The cost model for a ResolvedRun (the knobs and extra args of a launch, PP_LAYOUT included)."""
    from benchlib.planning.memory import run_args, run_layout

    return predict_from_args(run_args(run), run.cluster.GPU_TYPE, run.gpus_per_node, run_layout(run))
