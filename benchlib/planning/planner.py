"""`benchlib plan`: enumerate valid parallel layouts that fit, rank them by a cost model.

Candidates: TP, CP, PP (with uneven first/last stages where the layer count needs them), VPP,
EP, ETP, MBS and recompute (none / selective / full). Each is checked by the suite's own layout
checks (`benchlib.config.layout.check_layout`, the ones a launch runs) and by the memory estimate; the
survivors are ranked by the estimated iteration time of the cost model below (docs/planning.md
derives every constant).

Cost model, per iteration (one pipeline's view; all DP replicas run in parallel):
    t_mb  = compute of the slowest stage for one micro-batch (FLOPs / (peak * efficiency))
          + exposed TP, EP (all-to-all) and CP communication of that micro-batch
    T     = t_mb * (M + (PP - 1) / VPP)          # M micro-batches + the pipeline bubble
          + DP_EXPOSED * (gradient reduce-scatter + parameter all-gather)
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from benchlib.core.errors import BenchError
from benchlib.config.layout import Layout, check_layout
from benchlib.planning.arch import ModelShape
from benchlib.planning.gpus import GIB, GpuSpec, gpu_spec
from benchlib.planning.memory import estimate_from_args, run_args
from benchlib.planning.pipeline import rank_stages

# Efficiencies (fraction of the GPU's dense peak), from kernels measured on H200 in this
# project (../shared/notes/megatron-on-the-gpu-machine.md): a large bf16 GEMM ran at ~790 of
# 989 TFLOP/s; causal SDPA forward+backward ~440; grouped expert GEMMs forward+backward 280,
# 353, 406 TFLOP/s at 256, 512, 1024 tokens per expert, which 0.8 * 0.6 * m / (m + 184) of the
# peak fits (276, 349, 402).
EFF_GEMM = 0.8
EFF_ATTENTION = 0.45
EFF_EXPERT_MAX, EXPERT_HALF_TOKENS = 0.6, 184
# NCCL reaches about this fraction of a link's peak on large messages.
BUS_EFFICIENCY = 0.7
# With --overlap-grad-reduce / --overlap-param-gather most DP traffic hides behind compute;
# the last bucket's reduce and the first forward's gather do not.
DP_EXPOSED = 0.2
# Context-parallel K/V ring exchange overlaps attention compute; half is counted.
CP_EXPOSED = 0.5
MAX_LAYOUTS = 200_000  # refuse to enumerate absurd spaces rather than hang


@dataclass
class Candidate:
    knobs: dict[str, Any]  # TP PP EP ETP CP VPP PP_FIRST PP_LAST MBS GBS NNODES RECOMPUTE [RECOMPUTE_MODULES]
    memory_gib: float
    iteration_s: float
    parts: dict[str, float]  # seconds per iteration by cause
    tokens_per_s_per_gpu: float
    mfu: float
    is_default: bool = False
    rank: int = 0

    def reason(self) -> str:
        total = sum(self.parts.values()) or 1.0
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v / total:.0%}" for k, v in top if v / total >= 0.02)

    def layout_str(self) -> str:
        k = self.knobs
        s = f"TP={k['TP']} PP={k['PP']} EP={k['EP']} ETP={k['ETP']} CP={k['CP']} VPP={k['VPP']}"
        if k["PP_FIRST"] or k["PP_LAST"]:
            s += f" PP_FIRST={k['PP_FIRST']} PP_LAST={k['PP_LAST']}"
        s += f" MBS={k['MBS']} RECOMPUTE={k['RECOMPUTE']}"
        if k.get("RECOMPUTE_MODULES"):
            s += f" RECOMPUTE_MODULES='{k['RECOMPUTE_MODULES']}'"
        return s

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["reason"] = self.reason()
        return out


@dataclass
class PlanResult:
    model: str
    gpu: str
    nodes: int
    gpus_per_node: int
    gbs: int
    seq_len: int
    ranked: list[Candidate]
    considered: int
    invalid: int
    too_big: int
    default: Candidate | None
    default_note: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self, top: int) -> dict[str, Any]:
        return {
            "model": self.model, "gpu": self.gpu, "nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
            "gbs": self.gbs, "seq_len": self.seq_len, "considered": self.considered, "invalid": self.invalid,
            "too_big": self.too_big, "valid": len(self.ranked), "seconds": round(self.seconds, 2),
            "top": [c.to_json() for c in self.ranked[:top]],
            "default": self.default.to_json() if self.default else None, "default_note": self.default_note,
        }


# --------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------

def _layer_macs(args: dict[str, Any], shape: ModelShape, seq: int) -> tuple[float, float, float, float]:
    """Forward MACs per token: (attention linear, attention core, dense MLP, MoE) per layer of each kind."""
    from benchlib.metrics.flops import breakdown

    b = breakdown(args)
    n_total = shape.num_layers + shape.mtp_layers
    n_moe = sum(1 for i in range(n_total) if shape.is_moe(i))
    n_dense = n_total - n_moe
    return (b.attention_linear / n_total, b.attention_core * seq / n_total,
            b.mlp_dense / n_dense if n_dense else 0.0, b.moe / n_moe if n_moe else 0.0)


def _cost(args: dict[str, Any], shape: ModelShape, lay: Layout, gpu: GpuSpec, gpn: int, precision: str,
          recompute: str, modules: str) -> tuple[float, dict[str, float]]:
    peak = gpu.peak_tflops(precision) * 1e12
    seq = lay.seq_len
    t_mb = lay.mbs * seq  # tokens per micro-batch (whole sequence; CP and TP split the work)
    attn_lin, attn_core, mlp_dense, moe = _layer_macs(args, shape, seq)
    split = lay.tp * lay.cp
    # Routed-expert GEMM efficiency from the tokens each local expert sees per micro-batch.
    if shape.num_experts:
        # each expert receives top-k copies of the tokens of its EP x ETP group
        m = t_mb / lay.cp / lay.tp * shape.topk * lay.etp * lay.ep / shape.num_experts
        eff_expert = EFF_GEMM * EFF_EXPERT_MAX * m / (m + EXPERT_HALF_TOKENS)
        shared = 3 * shape.hidden * shape.shared_ffn if shape.swiglu else 2 * shape.hidden * shape.shared_ffn
        routed = max(0.0, moe - shared)
    else:
        eff_expert, shared, routed = EFF_GEMM, 0.0, 0.0
    # fwd + bwd = 3 forward passes; recompute adds forward work back.
    fwd = 1.0
    extra_core = extra_lin = 0.0
    if recompute == "full":
        extra_core = extra_lin = 1.0
    elif recompute == "selective":
        mods = set(modules.split()) or {"core_attn"}
        extra_core = 1.0 if "core_attn" in mods else 0.0
        extra_lin = 0.25 if "mla_up_proj" in mods else 0.0
    per_layer_s = {}
    for kind, ffn_macs, ffn_eff, routed_part in (("dense", mlp_dense, EFF_GEMM, 0.0), ("moe", shared, EFF_GEMM, routed)):
        mult = 3 * fwd
        secs = 2 * t_mb * (
            attn_lin * (mult + extra_lin) / EFF_GEMM + attn_core * (mult + extra_core) / EFF_ATTENTION
            + ffn_macs * (mult + (1.0 if recompute == "full" else 0.0)) / ffn_eff
            + routed_part * (mult + (1.0 if recompute == "full" else 0.0)) / eff_expert
        ) / (split * peak)
        per_layer_s[kind] = secs
    logits_s = 2 * t_mb * shape.hidden * shape.vocab * 3 * (1 + shape.mtp_layers) / (split * peak * EFF_GEMM)
    stages = rank_stages(shape, lay, args)
    stage_s = []
    for st in stages:
        s = sum(per_layer_s["moe" if shape.is_moe(i) else "dense"] for i in st.layers)
        if st.loss:
            s += logits_s
        stage_s.append(s)
    compute_mb = max(stage_s)
    slowest = stage_s.index(compute_mb)
    layers_on_slowest = stages[slowest].layers
    n_moe = sum(1 for i in layers_on_slowest if shape.is_moe(i))
    n_all = len(layers_on_slowest)
    # TP with sequence parallelism: all-gather + reduce-scatter around attention and around a
    # dense MLP / shared expert, forward and backward: 4 (or 8) collectives of [t, h] bf16.
    nvlink = gpu.nvlink_gbps * 1e9 * BUS_EFFICIENCY
    net = gpu.network_gbps * 1e9 * BUS_EFFICIENCY
    tok_rank = t_mb / lay.cp
    tp_s = 0.0
    if lay.tp > 1:
        msg = 2 * tok_rank * shape.hidden * (lay.tp - 1) / lay.tp
        colls = 4 * n_all + 4 * (n_all - n_moe) + (4 * n_moe if shape.shared_ffn else 0)
        tp_s = colls * msg / nvlink
    # EP all-to-all: dispatch + combine, forward + backward; top-k copies of each token's
    # hidden vector leave the GPU for (EP-1)/EP of the peers. Peers beyond the NVLink domain
    # (EP*ETP consecutive ranks) are reached over the network.
    ep_s = 0.0
    if lay.ep > 1 and n_moe:
        group = lay.ep * lay.etp
        # NVL72 racks (GB200/GB300) reach beyond the node; elsewhere NVLink ends at the node
        domain = gpu.nvlink_domain if gpu.nvlink_domain > gpu.gpus_per_node else gpn
        intra = min(1.0, domain / group)
        bytes_out = 2 * tok_rank / lay.tp * shape.topk * shape.hidden * (lay.ep - 1) / lay.ep
        per_a2a = bytes_out * (intra / nvlink + (1 - intra) / net)
        ep_s = 4 * n_moe * per_a2a
    cp_s = 0.0
    if lay.cp > 1:
        kv = 2 * 2 * tok_rank * shape.query_groups * shape.kv_channels / lay.tp
        link = nvlink if lay.tp * lay.cp <= gpn else net
        cp_s = CP_EXPOSED * 3 * n_all * kv * (lay.cp - 1) / link
    pp_s = 0.0
    if lay.pp > 1:
        act = 2 * tok_rank * shape.hidden / (lay.tp if lay.tp > 1 else 1)
        link = net if lay.tp * lay.cp * lay.pp > gpn else nvlink
        pp_s = 2 * act * lay.vpp / link
    M = lay.gbs // (lay.mbs * lay.dp)
    bubble = (lay.pp - 1) / lay.vpp if lay.pp > 1 else 0.0
    per_mb = compute_mb + tp_s + ep_s + cp_s + pp_s
    # DP: reduce-scatter fp32 grads + all-gather bf16 params over the (expert) data-parallel group.
    dp_s = 0.0
    st = stages[slowest]
    dense_p = sum((shape.attention_params() / lay.tp + (0 if shape.is_moe(i) else shape.dense_mlp_params() / lay.tp)
                   + (shape.shared_params() / lay.tp if shape.is_moe(i) else 0)) for i in st.layers)
    expert_p = sum(shape.expert_params() / (lay.ep * lay.etp) for i in st.layers if shape.is_moe(i))
    for params, size in ((dense_p, lay.dp * lay.cp), (expert_p, lay.world // (lay.pp * lay.ep * lay.etp))):
        if size > 1 and params:
            link = net if lay.world // lay.pp > gpn else nvlink
            dp_s += DP_EXPOSED * params * (4 + 2) * (size - 1) / size / link
    parts = {
        "compute": compute_mb * M,
        "pipeline bubble": per_mb * bubble,
        "TP comm": tp_s * M,
        "EP all-to-all": ep_s * M,
        "CP comm": cp_s * M,
        "PP p2p": pp_s * M,
        "DP grad/param sync": dp_s,
    }
    return per_mb * (M + bubble) + dp_s, parts


# --------------------------------------------------------------------------------------------
# Enumeration
# --------------------------------------------------------------------------------------------

# MBS 8 belongs: on one H200 the 8-layer proxy ran 384 TFLOP/s/GPU at MBS 8 against 295 at MBS 2.
MICRO_BATCH_SIZES = (1, 2, 4, 8)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pp_splits(layers: int, pp: int) -> list[tuple[int, int]]:
    """(PP_FIRST, PP_LAST) options: even when possible, else the most balanced uneven splits
    (the last stage one or more layers lighter: it also runs the output layer and loss)."""
    if pp == 1:
        return [(0, 0)]
    if layers % pp == 0:
        return [(0, 0)]
    if pp == 2:
        return [(math.ceil(layers / 2), layers // 2)]
    out = []
    base = math.ceil(layers / pp)
    for mid in (base, base + 1, base - 1):
        rest = mid * (pp - 2)
        for last in range(1, mid + 1):
            first = layers - rest - last
            if 1 <= first <= mid + 1:
                out.append((first, last))
                break
    return list(dict.fromkeys(out))[:2]


def _selective_modules(shape: ModelShape) -> str:
    mods = ["layernorm"]
    if shape.mla:
        mods.insert(0, "mla_up_proj")
    if shape.num_experts:
        mods.append("moe_act")
    return " ".join(mods)


def _args_for(base: dict[str, Any], lay: Layout, recompute: str, modules: str) -> dict[str, Any]:
    a = dict(base)
    a.update(tensor_model_parallel_size=lay.tp, pipeline_model_parallel_size=lay.pp, expert_model_parallel_size=lay.ep,
             expert_tensor_parallel_size=lay.etp, context_parallel_size=lay.cp, micro_batch_size=lay.mbs,
             global_batch_size=lay.gbs, world_size=lay.world, sequence_parallel=lay.tp > 1, seq_length=lay.seq_len)
    for k in ("pipeline_model_parallel_layout", "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers",
              "num_layers_per_virtual_pipeline_stage", "num_virtual_stages_per_pipeline_rank",
              "recompute_granularity", "recompute_method", "recompute_num_layers", "recompute_modules"):
        a.pop(k, None)
    if recompute == "selective":
        a.update(recompute_granularity="selective", recompute_modules=modules.split())
    elif recompute == "full":
        a.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return a


def plan(model: str, *, nodes: int, gpu: str, seq_len: int | None = None, gbs: int | None = None,
         num_layers: int | None = None, gpus_per_node: int | None = None, backend: str = "te") -> PlanResult:
    """`backend`: the layer implementation the memory estimate assumes: te (a cluster with
    Transformer Engine, the default), native (benchlib's torch spec) or local (Megatron's)."""
    from benchlib.config.resolve import resolve_run

    start = time.monotonic()
    spec = gpu_spec(gpu)
    gpn = gpus_per_node or spec.gpus_per_node
    if nodes < 1:
        raise BenchError(f"--nodes {nodes} must be at least 1")
    if backend not in ("te", "native", "local"):
        raise BenchError(f"unknown backend {backend!r}", hint="use te, native or local")
    # The shipped defaults for this model on this GPU type (runtime.conf), on a TE cluster.
    argv = [f"MODEL={model}", f"GPU_TYPE={spec.name}", f"GPUS_PER_NODE={gpn}"]
    default_run = resolve_run(argv, {"CLUSTER": "template"})
    k0 = default_run.knobs
    seq = seq_len or k0.SEQ_LEN
    layers = num_layers or k0.NUM_LAYERS
    batch = gbs or k0.GBS
    world = nodes * gpn
    base = run_args(default_run)
    base["num_layers"] = layers
    shape = ModelShape.from_args(base)
    precision = k0.PR
    arch = {k: v for k, v in base.items()}
    sel_modules = _selective_modules(shape)

    tps = [t for t in (1, 2, 4, 8) if t <= gpn and shape.heads % t == 0 and shape.query_groups % t == 0]
    cps = [c for c in (1, 2, 4, 8) if seq % (2 * c) == 0 and (c == 1 or seq >= 8192)]
    if backend != "te":
        # What the launch refuses without Transformer Engine (benchlib.config.backend.refuse_unsupported),
        # checked on the shipped knobs; and what the torch-native spec cannot build: TP>1 (sequence
        # parallelism with torch norms), CP>1, ETP>1.
        from benchlib.config.backend import BackendChoice, refuse_unsupported

        refuse_unsupported(BackendChoice(backend, f"plan --backend {backend}", [], {}), k0,
                           default_run.model.model_args, set())
        tps, cps = [1], [1]
    eps = _divisors(shape.num_experts) if shape.num_experts else [1]
    ranked: list[Candidate] = []
    considered = invalid = too_big = 0

    def layout_of(knobs: dict[str, Any]) -> Layout:
        return Layout(world=world, tp=knobs["TP"], pp=knobs["PP"], ep=knobs["EP"], etp=knobs["ETP"], cp=knobs["CP"],
                      vpp=knobs["VPP"], pp_first=knobs["PP_FIRST"], pp_last=knobs["PP_LAST"], mbs=knobs["MBS"],
                      gbs=batch, num_layers=layers, seq_len=seq)

    def evaluate(knobs: dict[str, Any], lay: Layout) -> tuple[Candidate | None, str]:
        args = _args_for(base, lay, knobs["RECOMPUTE"], knobs.get("RECOMPUTE_MODULES", ""))
        est = estimate_from_args(args, lay, backend=backend, gpu_type=spec.name, with_flops=False)
        if not est.fits():
            return None, f"does not fit: estimated {est.total / GIB:.1f} GiB > {spec.memory_bytes / GIB:.1f} GiB"
        secs, parts = _cost(args, shape, lay, spec, gpn, precision, knobs["RECOMPUTE"], knobs.get("RECOMPUTE_MODULES", ""))
        key = (lay.gbs, lay.seq_len)
        if key not in flops_cache:
            from benchlib.metrics.flops import num_floating_point_operations

            flops_cache[key] = num_floating_point_operations(args, lay.gbs)
        return Candidate(knobs=knobs, memory_gib=est.total / GIB, iteration_s=secs, parts=parts,
                         tokens_per_s_per_gpu=batch * seq / secs / world,
                         mfu=flops_cache[key] / (secs * world * spec.peak_tflops(precision) * 1e12)), "ok"

    flops_cache: dict[tuple, float] = {}
    for tp, cp in itertools.product(tps, cps):
        if world % (tp * cp):
            continue
        for pp in _divisors(world // (tp * cp)):
            if pp > layers or pp > 64:
                continue
            for (first, last) in _pp_splits(layers, pp):
                for vpp in (1, 2, 4) if pp > 1 else (1,):
                    for etp in sorted({1, tp}):
                        for ep in eps:
                            if world % (pp * ep * etp) or ep * etp > world // pp:
                                continue
                            for mbs in MICRO_BATCH_SIZES:
                                considered += 1
                                if considered > MAX_LAYOUTS:
                                    raise BenchError("layout space too large to enumerate", hint="pass fewer --nodes or --num-layers")
                                knobs = dict(TP=tp, PP=pp, EP=ep, ETP=etp, CP=cp, VPP=vpp, PP_FIRST=first, PP_LAST=last,
                                             MBS=mbs, GBS=batch, NNODES=nodes)
                                lay = layout_of(knobs)
                                try:
                                    check_layout(lay, arch)  # the launch's own checks
                                except BenchError:
                                    invalid += 1
                                    continue
                                for rc in ("none", "selective", "full"):
                                    full_knobs = {**knobs, "RECOMPUTE": rc,
                                                  "RECOMPUTE_MODULES": sel_modules if rc == "selective" else ""}
                                    cand, _why = evaluate(full_knobs, lay)
                                    if cand is not None:
                                        ranked.append(cand)
                                        break  # the lightest recompute that fits
                                else:
                                    too_big += 1
    ranked.sort(key=lambda c: c.iteration_s)
    for i, c in enumerate(ranked, 1):
        c.rank = i
    # Where does the shipped default land?
    dk = dict(TP=k0.TP, PP=k0.PP, EP=k0.EP, ETP=k0.ETP, CP=k0.CP, VPP=k0.VPP, PP_FIRST=k0.PP_FIRST, PP_LAST=k0.PP_LAST,
              MBS=k0.MBS, GBS=batch, NNODES=nodes, RECOMPUTE=k0.RECOMPUTE,
              RECOMPUTE_MODULES=k0.RECOMPUTE_MODULES if k0.RECOMPUTE == "selective" else "")
    dlay = layout_of(dk)
    try:
        check_layout(dlay, arch)
        default, why = evaluate(dk, dlay)
    except BenchError as err:
        default, why = None, f"invalid: {err.message}"
    note = ""
    if default is None:
        note = f"shipped default ({_fmt(dk)}) at {nodes} nodes: {why}"
    else:
        default.is_default = True
        same = [c for c in ranked if c.knobs == dk]
        if same:
            same[0].is_default = True
            default.rank = same[0].rank
        else:
            default.rank = 1 + sum(1 for c in ranked if c.iteration_s < default.iteration_s)
        note = f"shipped default ranks {default.rank} of {len(ranked)}"
    if k0.NNODES != nodes:
        note += f" (its runtime.conf row is for NNODES={k0.NNODES})"
    return PlanResult(model=model, gpu=spec.name, nodes=nodes, gpus_per_node=gpn, gbs=batch, seq_len=seq, ranked=ranked,
                      considered=considered, invalid=invalid, too_big=too_big, default=default, default_note=note,
                      seconds=time.monotonic() - start)


def _fmt(k: dict[str, Any]) -> str:
    return " ".join(f"{n}={k[n]}" for n in ("TP", "PP", "EP", "ETP", "CP", "VPP", "PP_FIRST", "PP_LAST", "MBS", "RECOMPUTE"))


def print_plan(result: PlanResult, top: int, out: TextIO) -> None:
    r = result
    out.write(f"{r.model} on {r.nodes} x {r.gpus_per_node} {r.gpu} (GBS={r.gbs}, SEQ_LEN={r.seq_len}): "
              f"{len(r.ranked)} valid layouts that fit, of {r.considered} considered "
              f"({r.invalid} invalid, {r.too_big} over memory) in {r.seconds:.1f} s\n")
    out.write(f"{'rank':>4}  {'est. s/iter':>11}  {'tok/s/GPU':>9}  {'MFU':>5}  {'mem GiB':>7}  layout  |  where the time goes\n")
    shown = r.ranked[:top]
    for c in shown:
        mark = "  <- shipped default" if c.is_default else ""
        out.write(f"{c.rank:>4}  {c.iteration_s:>11.2f}  {c.tokens_per_s_per_gpu:>9.0f}  {c.mfu:>5.1%}  {c.memory_gib:>7.1f}  "
                  f"{c.layout_str()}  |  {c.reason()}{mark}\n")
    d = r.default
    if d is not None and not any(c.is_default for c in shown):
        out.write(f"{d.rank:>4}  {d.iteration_s:>11.2f}  {d.tokens_per_s_per_gpu:>9.0f}  {d.mfu:>5.1%}  {d.memory_gib:>7.1f}  "
                  f"{d.layout_str()}  |  {d.reason()}  <- shipped default\n")
    if not r.ranked:
        out.write(f"no layout fits {r.nodes} node(s) of {r.gpu}: try more --nodes, a shorter --seq-len or a smaller --gbs\n")
    out.write(r.default_note + "\n")
    out.write("Estimates from the cost model in docs/planning.md: rank by them, then measure (`benchlib sweep`).\n")
