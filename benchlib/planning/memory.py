"""Per-rank GPU memory of a Megatron-Core MoE training run, from first principles.

`estimate_from_args(args, layout)` works on Megatron argument names (a config, a log's argument
dump or a GPU record); `estimate_memory(run)` on a `ResolvedRun`; `check_fits(run)` stops a
launch whose estimate does not fit the cluster's GPU (MEM_CHECK=0 lets it through).

What is counted (docs/planning.md derives each term):
- static: bf16 weights, main gradients (fp32 unless --grad-reduce-in-bf16), Adam state (fp32
  main params + two moments; sharded over DP*CP for dense and expert-DP for experts with the
  distributed optimizer; dtypes of the precision-aware optimizer; the offloaded fraction is
  on the CPU);
- activations saved for backward, per layer and micro-batch, tensor by tensor, times the
  micro-batches the pipeline schedule keeps in flight, minus what recompute drops;
- transients: the loss's bf16 logits next to their fp32 copy (not with the native spec's fused
  cross-entropy, which keeps only the bf16 logits), the bf16 weight gradient of the
  largest parameter before it is added to the main gradient, the optimizer step's scratch;
- a fixed allocator constant (MISC_BYTES) and, for the fit check only, the CUDA/NCCL context
  and the allocator's fragmentation as measured on recorded runs of the same kind and GPU
  count (not part of what `torch.cuda.max_memory_allocated` counts).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from benchlib.core.errors import BenchError
from benchlib.config import pp_layout as ppl
from benchlib.config.layout import Layout
from benchlib.planning.arch import Args, ModelShape, as_bool, as_float, as_int, as_list, get
from benchlib.planning.gpus import GIB, MIB, gpu_spec
from benchlib.planning.pipeline import RankStage, in_flight, rank_stages

# cuBLAS workspaces (torch gives each handle/stream 32 MiB through the caching allocator on
# Hopper), RNG states, loss and grad-norm scratch: a fixed amount, not tuned to any record.
MISC_BYTES = 128 * MIB
# The fit check's margin: what the GPU holds beyond `max allocated` (used only by the check).
# - The CUDA context with its loaded kernels (cuBLAS, NCCL, Triton; lazy module loading) is
#   outside torch's allocator; per process: an estimate, not in any recorded log.
# - NCCL's communicator buffers, also outside torch's allocator, only with several GPUs.
# - The caching allocator's fragmentation: Megatron's `max reserved - max allocated`,
#   calibrated on the recorded H200 runs in tests/fixtures/logs/ (names say GPUs and kind):
#   the largest measured gap per kind and GPU count, rounded up to 1/8 GiB
#   (tests/test_planning_margin.py recomputes it from the logs). Overlapping the MoE
#   all-to-all (A2A_OVERLAP) allocates on a second stream, whose blocks the first cannot reuse.
# A run of 134.7 GiB allocated ran on an H200 (140.4 GiB): with the margin this check refuses
# nothing that ran and what went out of memory (tests/fixtures/planning/h200_fit_records.json).
CUDA_CONTEXT_BYTES = 768 * MIB
NCCL_BYTES = 1 * GIB  # several GPUs only
FRAGMENTATION_GIB: dict[str, dict[int, float]] = {
    # kind -> {GPU count of the recorded runs: GiB}
    "native": {1: 1.875, 2: 1.375, 4: 1.375},
    "native_a2a_overlap": {2: 9.125, 4: 9.0},
    "local": {1: 6.875, 2: 6.75, 4: 7.25},
}
DTYPE_BYTES = {"fp32": 4, "float32": 4, "torch.float32": 4, "bf16": 2, "bfloat16": 2, "torch.bfloat16": 2,
               "fp16": 2, "float16": 2, "torch.float16": 2, "fp8": 1, "uint8": 1, "torch.uint8": 1}
DEFAULT_SELECTIVE = ("core_attn",)  # Megatron's default --recompute-modules


@dataclass
class MemoryEstimate:
    """Memory of the most loaded rank (bytes), broken down; `peak_allocated` is comparable with
    Megatron's `max allocated`, `total` adds what the fit check also needs."""

    rank: int  # pipeline rank with the highest estimate
    params: int  # parameters held by that rank
    weights: int
    gradients: int
    optimizer: int
    activations: dict[str, int]  # saved for backward, all in-flight micro-batches
    transient: dict[str, int]  # the largest short-lived allocation at the peak
    misc: int
    in_flight: float  # micro-batches (in units of the rank's whole stage) held at the peak
    microbatches: int
    backend: str
    gpu_type: str | None = None
    capacity: int | None = None
    flops_per_iteration: float | None = None
    per_rank_peak: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    context: int = CUDA_CONTEXT_BYTES  # CUDA context (+ NCCL buffers with several GPUs), for the fit check
    fragmentation: int = int(FRAGMENTATION_GIB["native"][1] * GIB)  # reserved beyond allocated, for the fit check

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def activation_total(self) -> int:
        return sum(self.activations.values())

    @property
    def transient_total(self) -> int:
        return max(self.transient.values(), default=0)

    @property
    def peak_allocated(self) -> int:
        return self.static + self.activation_total + self.transient_total + self.misc

    @property
    def overhead(self) -> int:
        return self.context + self.fragmentation

    @property
    def total(self) -> int:
        return self.peak_allocated + self.overhead

    def fits(self) -> bool | None:
        return None if self.capacity is None else self.total <= self.capacity

    def table(self) -> str:
        def g(b: float) -> str:
            return f"{b / GIB:9.2f} GiB"

        lines = [
            f"most loaded rank: pipeline rank {self.rank} ({self.params / 1e9:.3f} B parameters, "
            f"{self.in_flight:g} micro-batches in flight of {self.microbatches}, attention backend {self.backend})",
            f"  weights            {g(self.weights)}",
            f"  gradients          {g(self.gradients)}",
            f"  optimizer state    {g(self.optimizer)}",
            f"  activations        {g(self.activation_total)}",
        ]
        for name, value in sorted(self.activations.items(), key=lambda kv: -kv[1]):
            if value:
                lines.append(f"    {name:<17}{g(value)}")
        if self.transient:
            worst = max(self.transient, key=lambda k: self.transient[k])
            lines.append(f"  transient          {g(self.transient_total)}  ({worst})")
        lines += [
            f"  misc (allocator)   {g(self.misc)}",
            f"  = peak allocated   {g(self.peak_allocated)}   (compare: Megatron's 'max allocated')",
            f"  + CUDA context/NCCL {g(self.context)}",
            f"  + fragmentation    {g(self.fragmentation)}   (measured max reserved - max allocated)",
            f"  = total            {g(self.total)}",
        ]
        if self.capacity is not None:
            verdict = "fits" if self.fits() else "DOES NOT FIT"
            lines.append(f"  GPU {self.gpu_type}: {g(self.capacity).strip()} -> {verdict}")
        if len(self.per_rank_peak) > 1:
            lines.append("peak allocated per pipeline rank (GiB): "
                         + " ".join(f"{b / GIB:.1f}" for b in self.per_rank_peak))
        if self.flops_per_iteration:
            lines.append(f"model FLOPs per iteration: {self.flops_per_iteration:.4e}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(static=self.static, activation_total=self.activation_total, transient_total=self.transient_total,
                   peak_allocated=self.peak_allocated, overhead=self.overhead, total=self.total)
        return out


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

def layout_from_args(args: Args) -> Layout:
    """The parallel layout recorded in Megatron argument names (a log dump or a config)."""
    tp = as_int(args, "tensor_model_parallel_size", 1) or 1
    pp = as_int(args, "pipeline_model_parallel_size", 1) or 1
    cp = as_int(args, "context_parallel_size", 1) or 1
    ep = as_int(args, "expert_model_parallel_size", 1) or 1
    etp = as_int(args, "expert_tensor_parallel_size", tp) or tp
    layers = as_int(args, "num_layers", 1) or 1
    text = str(get(args, "pipeline_model_parallel_layout", "") or "")
    vpp = as_int(args, "virtual_pipeline_model_parallel_size") or as_int(args, "num_virtual_stages_per_pipeline_rank")
    if text and not vpp:
        vpp = ppl.parse(text, pp).vpp
    if not vpp:
        per_stage = as_int(args, "num_layers_per_virtual_pipeline_stage")
        vpp = layers // (pp * per_stage) if per_stage else 1
    mbs = as_int(args, "micro_batch_size", 1) or 1
    world = as_int(args, "world_size")
    if not world:
        dp = as_int(args, "data_parallel_size", 1) or 1
        world = dp * tp * pp * cp
    gbs = as_int(args, "global_batch_size") or mbs * (world // (tp * pp * cp))
    return Layout(world=world, tp=tp, pp=pp, ep=ep, etp=etp, cp=cp, vpp=vpp or 1,
                  pp_first=as_int(args, "decoder_first_pipeline_num_layers", 0) or 0,
                  pp_last=as_int(args, "decoder_last_pipeline_num_layers", 0) or 0,
                  mbs=mbs, gbs=gbs, num_layers=layers, seq_len=as_int(args, "seq_length", 4096) or 4096,
                  pp_layout=text)


def args_from_record(record: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(Megatron argument names, backend) of a GPU result record (bench/results/*.json).

    `megatron_args` may be the argument dump (a mapping) or the command line (a list of
    tokens); the world size comes from the record when the arguments do not carry it, the
    backend from `backend` (a name, or a resolved run's backend object)."""
    from benchlib.config.flags import megatron_arg_dict, tokens_to_dict

    raw = record.get("megatron_args")
    if isinstance(raw, list):
        args = megatron_arg_dict(tokens_to_dict([str(t) for t in raw]))
    elif isinstance(raw, Mapping):
        args = dict(raw)
    else:
        raise BenchError("record has no megatron_args (mapping or token list)",
                         hint="records written by `python -m bench run` carry them")
    for key in ("world_size", "gpus", "gpu_count", "num_gpus"):
        if record.get(key) and "world_size" not in args:
            args["world_size"] = int(record[key])
    if "world_size" not in args and "data_parallel_size" not in args:
        raise BenchError("record does not say how many GPUs the run used",
                         hint="records carry gpus / gpu_count / world_size, or megatron_args with world_size")
    backend = record.get("backend")
    if isinstance(backend, Mapping):  # a resolved run's BackendChoice as JSON
        backend = backend.get("name")
    if backend not in ("te", "native", "local"):
        backend = None
    knobs = record.get("knobs") if isinstance(record.get("knobs"), Mapping) else {}
    if backend == "native" and "FAST_OPS" not in args:
        # the run's resolved knobs; historical records say `fast_ops`; native records made before the
        # fast ops existed say nothing
        args["FAST_OPS"] = bool(knobs.get("FAST_OPS", record.get("FAST_OPS", record.get("fast_ops", False))))
    if backend in ("native", "local") and "FAST_OPTIMIZER" not in args:
        # records made before the knob existed ran Megatron's foreach AdamW
        args["FAST_OPTIMIZER"] = bool(knobs.get("FAST_OPTIMIZER", record.get("FAST_OPTIMIZER", False)))
    if "fast_optimizer_grads" not in args:
        # the same knob meant another gradient-buffer path before fast_grads.py (cost.FAST_GRADS_SINCE)
        from benchlib.planning.cost import made_with_fast_grads

        args["fast_optimizer_grads"] = made_with_fast_grads(record)
    return args, backend


def log_args(dump: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(arguments, backend) from a log's argument dump (benchlib.metrics.logparse's `config`).
    The dump carries world_size and, for benchlib's native spec, `spec` naming benchlib."""
    if not dump:
        raise BenchError("the log has no Megatron argument dump",
                         hint="give the whole log (the dump is printed at start-up), or use --record / a config")
    return dict(dump), None


def attention_backend(args: Args, backend: str | None = None) -> str:
    """'flash' (Transformer Engine), 'sdpa' (benchlib's torch-native spec) or 'materialized'
    (Megatron's local DotProductAttention, which builds the [b, heads, s, s] score matrix)."""
    if backend in ("te", "transformer_engine"):
        return "flash"
    if backend == "native":
        return "sdpa"
    if backend == "local":
        return "materialized"
    spec = get(args, "spec", None)
    if spec and "benchlib" in str(spec):
        return "sdpa"
    impl = str(get(args, "transformer_impl", "transformer_engine"))
    return "flash" if impl == "transformer_engine" else "materialized"


@dataclass(frozen=True)
class _Ctx:
    """Per-micro-batch quantities shared by the layer formulas."""
    t: int  # tokens per micro-batch on this rank before TP/SP: MBS * SEQ_LEN / CP
    s: int  # sequence length on this rank
    b: int
    tp: int
    sp: bool
    etp: int
    attn: str
    modules: frozenset[str]  # selective recompute modules
    softmax_fp32: bool
    attn_dropout: bool
    hidden_dropout: bool
    fused_swiglu: bool
    router_fp32: bool

    @property
    def th(self) -> float:
        """Elements of one [tokens, hidden]-shaped tensor per hidden unit: sharded by SP."""
        return self.t / self.tp if self.sp else self.t


# --------------------------------------------------------------------------------------------
# Activations saved for backward, per layer and micro-batch (bytes)
# --------------------------------------------------------------------------------------------

def _attention_acts(m: ModelShape, c: _Ctx) -> dict[str, float]:
    h, tp, t = m.hidden, c.tp, c.t
    out: dict[str, float] = {}
    nh = m.heads / tp
    if m.mla:
        qk = m.qk_head_dim + m.qk_pos_emb_head_dim
        latent = 0.0
        if m.q_lora_rank:
            latent += 2 * t * m.q_lora_rank * 2  # q latent: saved by q-norm and by the up-projection
        latent += 2 * t * (m.kv_lora_rank + m.qk_pos_emb_head_dim) + 2 * t * m.kv_lora_rank  # kv latent + its norm output
        out["attn.mla_latent"] = latent
        up = 2 * t * nh * (m.qk_head_dim + m.v_head_dim)  # kv up-projection output (v is a view of it)
        up += 2 * t * nh * qk * 2  # q and k after RoPE + concat
        if "mla_up_proj" not in c.modules:
            out["attn.qkv"] = up
        q_dim, v_dim = nh * qk, nh * m.v_head_dim
        kv_heads = nh
    else:
        q_dim = nh * m.kv_channels
        kv_dim = m.query_groups / tp * m.kv_channels
        v_dim = q_dim
        kv_heads = m.query_groups / tp
        # QKV projection output stays alive (V and, with qk-layernorm, Q/K are views of it),
        # plus Q and K after RoPE (new tensors).
        out["attn.qkv"] = 2 * t * (q_dim + 2 * kv_dim) + 2 * t * (q_dim + kv_dim)
    if "layernorm" not in c.modules:
        out["attn.input"] = 2 * c.th * h  # input-norm output, saved by the QKV (or down) projection
    core: float = 0
    scores = c.b * nh * c.s * c.s
    if c.attn == "materialized":
        core += scores * (4 + 2 if c.softmax_fp32 else 2)  # softmax output (+ its bf16 copy for PV)
        if c.attn_dropout:
            core += scores * 3  # dropout mask (bool) + dropped probabilities
        if not m.mla and kv_heads < nh:
            core += 2 * 2 * t * (q_dim - kv_heads * m.kv_channels)  # K and V expanded to all heads
        proj_in = 2 * t * v_dim  # context made contiguous for the output projection
    elif c.attn == "sdpa":
        core += 2 * t * v_dim + 4 * t * nh  # SDPA's saved output + log-sum-exp (fp32)
        proj_in = 2 * t * v_dim  # the output permuted back to [s, b, h] is a copy
    else:  # flash (TE): the saved output is also the projection's input
        core += 4 * t * nh
        proj_in = 2 * t * v_dim
    if "core_attn" in c.modules:
        core = 0  # recomputed from Q, K, V (which stay saved as the checkpoint's inputs)
    out["attn.core"] = core
    out["attn.proj_input"] = proj_in
    return out


def _mlp_acts(ffn: float, tokens: float, c: _Ctx, swiglu: bool, *, fused: bool) -> float:
    """fc1 output (saved by the activation) + activation output (saved by fc2); ffn per rank."""
    width = 2 * ffn if swiglu else ffn
    acts = 2 * tokens * width + 2 * tokens * ffn
    if swiglu and not fused:
        acts += 2 * tokens * ffn  # unfused SwiGLU also keeps silu(gate)
    return acts


def _ffn_acts(m: ModelShape, moe: bool, c: _Ctx, imbalance: float) -> dict[str, float]:
    h, t = m.hidden, c.t
    out: dict[str, float] = {}
    if "layernorm" not in c.modules:
        out["mlp.input"] = 2 * c.th * h  # pre-MLP norm output (router / shared / dispatch input)
    if not moe:
        if "mlp" not in c.modules:
            out["mlp.dense"] = _mlp_acts(m.ffn / c.tp, t, c, m.swiglu, fused=c.fused_swiglu)
        return out
    if "moe" in c.modules:
        return out  # whole MoE layer recomputed from its input
    t_local = c.th  # tokens entering the router on this rank
    out["moe.router"] = t_local * m.num_experts * (4 if c.router_fp32 else 2) * 3  # logits, scores, routing map/aux
    expert_tokens = t_local * m.topk * c.etp * imbalance  # top-k expansion after dispatch
    ffn = m.moe_ffn / c.etp
    out["moe.dispatched"] = 2 * expert_tokens * h + 4 * expert_tokens  # tokens into fc1 + their probs
    width = 2 * ffn if m.swiglu else ffn
    out["moe.experts"] = 2 * expert_tokens * width
    if "moe_act" not in c.modules:
        out["moe.experts"] += 2 * expert_tokens * ffn * (1 if c.fused_swiglu else 2)
    if m.shared_ffn and not ({"shared_experts", "mlp"} & c.modules):
        out["moe.shared"] = _mlp_acts(m.shared_ffn / c.tp, t, c, m.swiglu, fused=c.fused_swiglu)
    return out


def layer_activations(m: ModelShape, index: int, c: _Ctx, imbalance: float = 1.0) -> dict[str, float]:
    """Bytes one transformer layer saves for backward for one micro-batch (no full recompute)."""
    acts = {"norms": 2 * (2 * c.th * m.hidden + 4 * c.th)}  # inputs of the two norms + fp32 rstd
    if c.hidden_dropout:
        acts["norms"] += 2 * c.th * m.hidden * 1  # bias-dropout-add masks (bool)
    acts.update(_attention_acts(m, c))
    acts.update(_ffn_acts(m, m.is_moe(index), c, imbalance))
    return acts


def _largest_tensor(acts: dict[str, float]) -> float:
    return max(acts.values(), default=0)


# --------------------------------------------------------------------------------------------
# Static memory
# --------------------------------------------------------------------------------------------

@dataclass
class _Params:
    dense: float = 0  # sharded over DP*CP by the distributed optimizer
    expert: float = 0  # sharded over expert-DP
    largest: float = 0  # largest single parameter tensor (its bf16 grad is a transient)


def _rank_params(m: ModelShape, st: RankStage, lay: Layout, grouped_experts: bool) -> _Params:
    p = _Params()
    tp, ep_etp = lay.tp, lay.ep * lay.etp
    for i in st.layers:
        p.dense += m.attention_params() / tp + m.attention_norm_params() + m.layer_norm_params()
        if m.is_moe(i):
            p.dense += m.shared_params() / tp + m.router_params()
            p.expert += m.expert_params() / ep_etp
            local = m.num_experts / lay.ep if grouped_experts else 1
            p.largest = max(p.largest, local * m.one_expert_weight() / lay.etp)
        else:
            p.dense += m.dense_mlp_params() / tp
            p.largest = max(p.largest, m.hidden * m.ffn * (2 if m.swiglu else 1) / tp)
        if i >= m.num_layers:
            p.dense += m.mtp_extra_params() / tp
    embed = m.vocab * m.hidden / tp
    if st.embedding:
        p.dense += embed
        p.largest = max(p.largest, embed)
    if st.loss:
        p.dense += m.hidden * m.norm_params
        if m.untied or not st.embedding:  # tied weights need a copy on the last stage when PP > 1
            p.dense += embed
        p.largest = max(p.largest, embed)
    return p


def _dtype_bytes(args: Args, key: str, default: int) -> int:
    value = get(args, key, None)
    if value is None:
        return default
    return DTYPE_BYTES.get(str(value).lower(), default)


# --------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------

def estimate_from_args(args: Args, layout: Layout | None = None, *, backend: str | None = None,
                       gpu_type: str | None = None, imbalance: float = 1.0, with_flops: bool = True) -> MemoryEstimate:
    """Estimate every pipeline rank and return the most loaded one. `args`: Megatron argument
    names; `layout` overrides the parallel layout they record (the planner's candidates)."""
    lay = layout or layout_from_args(args)
    if lay.world % (lay.tp * lay.pp * lay.cp) or lay.world % (lay.pp * lay.ep * lay.etp):
        raise BenchError(f"{lay.world} GPUs cannot hold TP={lay.tp} PP={lay.pp} CP={lay.cp} EP={lay.ep} ETP={lay.etp}",
                         hint="give the run's world size (world_size) with its layout")
    m = ModelShape.from_args(args, tp=lay.tp)
    attn = attention_backend(args, backend)
    # the native spec's fast ops (benchlib/megatron/spec/fast_ops.py) replace the fp32 cross-entropy
    # for TP=1; `FAST_OPS: false` describes a run with the knob FAST_OPS=0 (or made before them)
    fused_loss = attn == "sdpa" and lay.tp == 1 and as_bool(args, "FAST_OPS", True)
    # benchlib's fast optimizer (FAST_OPTIMIZER=1, no TE) steps with one Triton kernel (earlier: torch's
    # fused AdamW), which needs no scratch; arguments without the knob are costed as Megatron's foreach
    # AdamW here, the larger of the two
    fused_adam = attn != "flash" and as_bool(args, "FAST_OPTIMIZER", False)
    granularity = str(get(args, "recompute_granularity", "") or "")
    modules = frozenset(as_list(args, "recompute_modules") or DEFAULT_SELECTIVE) if granularity == "selective" else frozenset()
    sp = as_bool(args, "sequence_parallel")
    ctx = _Ctx(
        t=lay.mbs * lay.seq_len // lay.cp, s=lay.seq_len // lay.cp, b=lay.mbs, tp=lay.tp, sp=sp and lay.tp > 1,
        etp=lay.etp, attn=attn, modules=modules,
        softmax_fp32=as_bool(args, "attention_softmax_in_fp32") or as_bool(args, "apply_query_key_layer_scaling"),
        attn_dropout=as_float(args, "attention_dropout", 0.1) > 0,
        hidden_dropout=as_float(args, "hidden_dropout", 0.1) > 0,
        fused_swiglu=as_bool(args, "bias_swiglu_fusion", True),
        router_fp32=str(get(args, "moe_router_dtype", "")) in ("fp32", "fp64"),
    )
    dp_cp = lay.world // (lay.tp * lay.pp)
    edp = max(1, lay.world // (lay.pp * lay.ep * lay.etp))
    microbatches = max(1, lay.gbs // (lay.mbs * max(1, lay.dp)))
    # Weight / grad / optimizer bytes per parameter.
    w_bytes = 2 if (as_bool(args, "bf16") or as_bool(args, "fp16")) else 4
    g_bytes = 2 if as_bool(args, "grad_reduce_in_bf16") else _dtype_bytes(args, "main_grads_dtype", 4)
    if as_bool(args, "use_precision_aware_optimizer"):
        o_bytes = (_dtype_bytes(args, "main_params_dtype", 4) + _dtype_bytes(args, "exp_avg_dtype", 4)
                   + _dtype_bytes(args, "exp_avg_sq_dtype", 4))
    else:
        o_bytes = 12
    distributed = as_bool(args, "use_distributed_optimizer")
    offload = as_float(args, "optimizer_offload_fraction", 1.0) if as_bool(args, "optimizer_cpu_offload") else 0.0
    # benchlib's native grouped experts hold all local experts of a projection in ONE tensor.
    grouped = attn == "sdpa" and as_bool(args, "moe_grouped_gemm")
    grad_acc_fusion = attn == "flash" and as_bool(args, "gradient_accumulation_fusion", True)
    full = granularity == "full"
    method = str(get(args, "recompute_method", "uniform"))
    n_recompute = as_int(args, "recompute_num_layers", 1) or 1

    # A layer's activations depend only on its kind (dense or MoE).
    kind_acts = {False: layer_activations(m, _first_of_kind(m, False), ctx, imbalance),
                 True: layer_activations(m, _first_of_kind(m, True), ctx, imbalance)}
    best: MemoryEstimate | None = None
    per_rank: list[int] = []
    for st in rank_stages(m, lay, args):
        params = _rank_params(m, st, lay, grouped)
        n_params = params.dense + params.expert
        weights = w_bytes * n_params
        grads = g_bytes * n_params
        if distributed:
            opt = o_bytes * (params.dense / dp_cp + params.expert / edp)
        else:
            opt = o_bytes * n_params
        opt *= 1 - offload
        # Activations of one micro-batch through this rank's layers.
        layer_acts = [kind_acts[m.is_moe(i)] for i in st.layers]
        per_mb: dict[str, float] = {}
        for k_, acts in enumerate(layer_acts):
            if full:
                per_chunk = max(1, len(st.layers) // max(1, lay.vpp))
                recomputed = method == "uniform" or (k_ % per_chunk) < n_recompute
                if recomputed:
                    per_mb["layer inputs (full recompute)"] = per_mb.get("layer inputs (full recompute)", 0) + 2 * ctx.th * m.hidden
                    continue
            for name, v in acts.items():
                key = name.split(".")[0] if name != "moe.dispatched" else "moe.topk_expansion"
                per_mb[key] = per_mb.get(key, 0) + v
        flight = in_flight(st.rank, lay.pp, lay.vpp, microbatches)
        acts_total = {k: v * flight for k, v in per_mb.items()}
        transient: dict[str, float] = {}
        if full and layer_acts:
            transient["one layer recomputed in backward"] = max(sum(a.values()) for a in layer_acts)
        mtp_here = sum(1 for i in st.layers if i >= m.num_layers)
        if st.loss:
            # Final norm input + output-layer input, fp32 logits kept by the cross entropy, per loss
            # (main + each MTP head); MTP blocks also keep enorm/hnorm inputs and the 2h concat.
            if fused_loss:  # benchlib's fused cross-entropy keeps the bf16 logits and a log-sum-exp per token
                acts_total["logits (bf16, kept by the fused loss)"] = (2 * ctx.t * m.vocab / lay.tp + 4 * ctx.t) * (1 + mtp_here)
            else:
                acts_total["logits (fp32, for the loss)"] = 4 * ctx.t * m.vocab / lay.tp * (1 + mtp_here)
            acts_total["norms"] = acts_total.get("norms", 0) + (2 * 2 * ctx.th * m.hidden) * (1 + mtp_here)
            if mtp_here:
                acts_total["mtp"] = mtp_here * (2 * ctx.th * m.hidden + 4 * ctx.th * m.hidden)
            if not fused_loss:
                transient["bf16 logits beside their fp32 copy"] = 2 * ctx.t * m.vocab / lay.tp
        if st.embedding:
            acts_total["embedding"] = 16 * ctx.t * flight  # token ids, position ids, labels, loss mask
        wgrad = 0.0 if grad_acc_fusion else 2 * params.largest
        if st.embedding:  # the embedding's weight gradient is dense bf16 whatever the backend
            wgrad = max(wgrad, 2 * m.vocab * m.hidden / lay.tp)
        working = max((_largest_tensor(a) for a in layer_acts), default=0)
        transient["backward: bf16 weight grad + activation grad"] = wgrad + working
        if attn != "flash" and not fused_adam:  # torch's foreach AdamW: one fp32 scratch copy of the state shard
            shard = (params.dense / dp_cp + params.expert / edp) if distributed else n_params
            step = 4 * shard * (1 - offload)
            # At the step the activations are gone: compare against them, not on top of them.
            transient["optimizer step scratch"] = max(0.0, step - sum(acts_total.values()))
        misc = MISC_BYTES
        if attn == "materialized":
            # Megatron's local attention takes the [b*heads, s, s] bf16 baddbmm input from a global
            # buffer that stays allocated, and caches the [s, s] bool causal mask.
            misc += 2 * ctx.b * (m.heads / lay.tp) * ctx.s * ctx.s + ctx.s * ctx.s
        est = MemoryEstimate(
            rank=st.rank, params=int(n_params), weights=int(weights), gradients=int(grads), optimizer=int(opt),
            activations={k: int(v) for k, v in acts_total.items()}, transient={k: int(v) for k, v in transient.items()},
            misc=int(misc), in_flight=flight, microbatches=microbatches, backend=attn,
        )
        per_rank.append(est.peak_allocated)
        if best is None or est.peak_allocated > best.peak_allocated:
            best = est
    assert best is not None
    best.per_rank_peak = per_rank
    if gpu_type:
        best.gpu_type = gpu_type
        try:
            best.capacity = gpu_spec(gpu_type).memory_bytes
        except BenchError:  # a GPU we have no figures for: estimate, but nothing to check against
            best.notes.append(f"no memory figure for GPU type {gpu_type!r}: the fit is not checked")
    best.context, best.fragmentation, note = fit_margin(lay.world, attn, as_bool(args, "overlap_moe_expert_parallel_comm"))
    if note:
        best.notes.append(note)
    if imbalance != 1.0:
        best.notes.append(f"MoE dispatch assumes the most loaded rank receives {imbalance:g}x the average tokens")
    if with_flops:
        best.flops_per_iteration = _flops(args, lay)
    return best


def fit_margin(world: int, attn: str, a2a_overlap: bool) -> tuple[int, int, str | None]:
    """(context, fragmentation, note) in bytes for a run on `world` GPUs: the recorded
    fragmentation of the same kind at the largest recorded GPU count not above `world`."""
    context = CUDA_CONTEXT_BYTES + (NCCL_BYTES if world > 1 else 0)
    kind = "local" if attn == "materialized" else "native_a2a_overlap" if a2a_overlap else "native"
    note = None
    if attn == "flash":  # no recorded Transformer Engine run: take the torch-native spec's figures
        note = "no recorded Transformer Engine run: the fit check uses the native spec's measured fragmentation"
    recorded = FRAGMENTATION_GIB[kind]
    counts = [n for n in sorted(recorded) if n <= world] or [min(recorded)]
    if counts[-1] != world:
        note = ((note + "; ") if note else "") + (
            f"fragmentation as recorded on {counts[-1]} GPU(s) ({kind}); none recorded on {world}")
    return context, int(recorded[counts[-1]] * GIB), note


def _first_of_kind(m: ModelShape, moe: bool) -> int:
    for i in range(m.num_layers + m.mtp_layers):
        if m.is_moe(i) == moe:
            return i
    return 0


def _flops(args: Args, lay: Layout) -> float | None:
    from benchlib.metrics.flops import num_floating_point_operations

    cfg = dict(args)
    cfg.setdefault("seq_length", lay.seq_len)
    cfg["num_layers"] = cfg.get("num_layers", lay.num_layers)
    try:
        return float(num_floating_point_operations(cfg, lay.gbs))
    except BenchError:
        return None


# --------------------------------------------------------------------------------------------
# ResolvedRun entry points
# --------------------------------------------------------------------------------------------

def run_layout(run: Any) -> Layout:
    k = run.knobs
    text = str(run.flags.get("--pipeline-model-parallel-layout") or "")  # PP_LAYOUT or the user's own flag
    if text:
        lay = Layout(world=run.world_size, tp=k.TP, pp=k.PP, ep=k.EP, etp=k.ETP, cp=k.CP, vpp=1, pp_first=0, pp_last=0,
                     mbs=k.MBS, gbs=k.GBS, num_layers=k.NUM_LAYERS, seq_len=k.SEQ_LEN, pp_layout=text)
        return dataclasses.replace(lay, vpp=lay.virtual_stages)
    return Layout(world=run.world_size, tp=k.TP, pp=k.PP, ep=k.EP, etp=k.ETP, cp=k.CP, vpp=k.VPP,
                  pp_first=k.PP_FIRST, pp_last=k.PP_LAST, mbs=k.MBS, gbs=k.GBS, num_layers=k.NUM_LAYERS, seq_len=k.SEQ_LEN)


def run_args(run: Any) -> dict[str, Any]:
    from benchlib.config.flags import megatron_arg_dict

    args = megatron_arg_dict(run.flags)
    k = run.knobs
    # Layout-derived names Megatron fills in itself (no flag carries them).
    args.setdefault("tensor_model_parallel_size", k.TP)
    args.setdefault("pipeline_model_parallel_size", k.PP)
    args.setdefault("expert_model_parallel_size", k.EP)
    args.setdefault("expert_tensor_parallel_size", k.ETP)
    args.setdefault("context_parallel_size", k.CP)
    args.setdefault("micro_batch_size", k.MBS)
    args.setdefault("global_batch_size", k.GBS)
    args.setdefault("seq_length", k.SEQ_LEN)
    args.setdefault("world_size", run.world_size)
    args.setdefault("FAST_OPS", k.FAST_OPS)
    args.setdefault("FAST_OPTIMIZER", k.FAST_OPTIMIZER)
    return args


def estimate_memory(run: Any) -> MemoryEstimate:
    """Most loaded rank of a ResolvedRun, on the cluster's GPU type."""
    backend = getattr(getattr(run, "backend", None), "name", None)
    return estimate_from_args(run_args(run), run_layout(run), backend=backend, gpu_type=run.cluster.GPU_TYPE)


def check_fits(run: Any) -> None:
    """Raise BenchError with the breakdown when the estimate exceeds the cluster GPU's memory."""
    if not getattr(run.knobs, "MEM_CHECK", True):
        return
    est = estimate_memory(run)
    if est.fits() is False:
        raise BenchError(
            f"estimated memory {est.total / GIB:.1f} GiB per GPU exceeds the {est.gpu_type}'s "
            f"{est.capacity / GIB:.1f} GiB (model {run.knobs.MODEL}, TP={run.knobs.TP} PP={run.knobs.PP} "
            f"EP={run.knobs.EP} ETP={run.knobs.ETP} CP={run.knobs.CP} VPP={run.knobs.VPP} MBS={run.knobs.MBS}):\n"
            + est.table(),
            hint="lower MBS, raise TP/PP/EP, use RECOMPUTE=selective or full, or OPTIMIZER_OFFLOAD=1 "
            "(`benchlib plan` lists layouts that fit); MEM_CHECK=0 lets the launch through anyway",
        )
