"""`benchlib plan`: enumerate valid parallel layouts that fit, rank them by a cost model.

Candidates: TP, CP, PP (uneven first/last stages where the layer count needs them, or a
`PP_LAYOUT` string that counts embedding and loss as layers, as the published recipes do), VPP
(1 to 8), EP, ETP, MBS, recompute (none / selective / full), and for EP > 1 the dispatcher
(NCCL alltoall, or DeepEP / HybridEP) with and without A2A overlap. Each layout is checked by the
suite's own layout checks (`benchlib.config.layout.check_layout`, the ones a launch runs) and by
the memory estimate; the survivors are ranked by the predicted step time of
`benchlib.planning.cost` (docs/planning.md derives every constant).
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
from benchlib.config import pp_layout as ppl
from benchlib.planning.cost import CostOptions, predict_step

MAX_LAYOUTS = 200_000  # refuse to enumerate absurd spaces rather than hang
# Virtual stages per rank tried: the published recipes use 3, 4, 7, 8 (docs/planning.md). Layout
# strings (embedding and loss counted as a layer each) for all of them; PP_FIRST/PP_LAST splits for SPLIT_VPP.
VPP_CHOICES = (1, 2, 3, 4, 6, 7, 8)
SPLIT_VPP = (1, 2, 4)


@dataclass
class Candidate:
    knobs: dict[str, Any]  # TP PP EP ETP CP VPP PP_FIRST PP_LAST PP_LAYOUT MBS GBS NNODES RECOMPUTE [RECOMPUTE_MODULES] DISPATCHER A2A_OVERLAP
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
        if k.get("PP_LAYOUT"):
            s += f" PP_LAYOUT='{k['PP_LAYOUT']}'"
        s += f" MBS={k['MBS']} RECOMPUTE={k['RECOMPUTE']}"
        if k.get("RECOMPUTE_MODULES"):
            s += f" RECOMPUTE_MODULES='{k['RECOMPUTE_MODULES']}'"
        if k.get("EP", 1) > 1:
            s += f" DISPATCHER={k.get('DISPATCHER', 'alltoall')} A2A_OVERLAP={int(bool(k.get('A2A_OVERLAP')))}"
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
    layouts_fit: int = 0  # layouts that fit; `ranked` adds their dispatcher / A2A-overlap variants

    def to_json(self, top: int) -> dict[str, Any]:
        return {
            "model": self.model, "gpu": self.gpu, "nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
            "gbs": self.gbs, "seq_len": self.seq_len, "considered": self.considered, "invalid": self.invalid,
            "too_big": self.too_big, "valid": len(self.ranked), "layouts_fit": self.layouts_fit,
            "seconds": round(self.seconds, 2),
            "top": [c.to_json() for c in self.ranked[:top]],
            "default": self.default.to_json() if self.default else None, "default_note": self.default_note,
        }


# --------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------

def _cost(args: dict[str, Any], shape: ModelShape, lay: Layout, gpu: GpuSpec, gpn: int, precision: str,
          recompute: str, modules: str, dispatcher: str = "alltoall", a2a_overlap: bool = False) -> tuple[float, dict[str, float]]:
    """Seconds per iteration and their causes (benchlib.planning.cost, docs/planning.md)."""
    mods = tuple(modules.split()) or (("core_attn",) if recompute == "selective" else ())
    opts = CostOptions(precision=precision, dispatcher=dispatcher, a2a_overlap=a2a_overlap, recompute=recompute,
                       recompute_modules=mods if recompute == "selective" else ())
    pred = predict_step(args, shape, lay, gpu, gpn, opts)
    return pred.step_s, pred.parts


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
    if lay.pp_layout:
        a["pipeline_model_parallel_layout"] = lay.pp_layout
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
    considered = invalid = too_big = layouts_fit = 0

    flex = "hybridep" if spec.nvlink_domain > spec.gpus_per_node else "deepep"
    dispatchers = ("alltoall", flex) if backend == "te" else ("alltoall",)

    def layout_of(knobs: dict[str, Any]) -> Layout:
        lay = Layout(world=world, tp=knobs["TP"], pp=knobs["PP"], ep=knobs["EP"], etp=knobs["ETP"], cp=knobs["CP"],
                     vpp=knobs["VPP"], pp_first=knobs["PP_FIRST"], pp_last=knobs["PP_LAST"], mbs=knobs["MBS"],
                     gbs=batch, num_layers=layers, seq_len=seq, pp_layout=knobs.get("PP_LAYOUT", ""))
        return dataclasses.replace(lay, vpp=lay.virtual_stages) if lay.pp_layout else lay

    def comm_variants(knobs: dict[str, Any], lay: Layout) -> list[tuple[str, bool]]:
        if knobs["EP"] == 1 or not shape.num_experts:
            return [(knobs.get("DISPATCHER", "alltoall"), False)]
        # --overlap-moe-expert-parallel-comm needs interleaving (VPP > 1) or no pipeline
        overlaps = (False, True) if lay.pp == 1 or lay.virtual_stages > 1 else (False,)
        return [(d, o) for d in dispatchers for o in overlaps]

    def evaluate(knobs: dict[str, Any], lay: Layout) -> list[Candidate]:
        """Every dispatcher / A2A-overlap variant of a layout that fits (empty when it does not)."""
        args = _args_for(base, lay, knobs["RECOMPUTE"], knobs.get("RECOMPUTE_MODULES", ""))
        est = estimate_from_args(args, lay, backend=backend, gpu_type=spec.name, with_flops=False)
        if not est.fits():
            return []
        key = (lay.gbs, lay.seq_len)
        if key not in flops_cache:
            from benchlib.metrics.flops import num_floating_point_operations

            flops_cache[key] = num_floating_point_operations(args, lay.gbs)
        out = []
        fixed = "DISPATCHER" in knobs
        for dispatcher, overlap in ([(knobs["DISPATCHER"], bool(knobs.get("A2A_OVERLAP")))] if fixed else comm_variants(knobs, lay)):
            secs, parts = _cost(args, shape, lay, spec, gpn, precision, knobs["RECOMPUTE"], knobs.get("RECOMPUTE_MODULES", ""),
                                dispatcher=dispatcher, a2a_overlap=overlap)
            out.append(Candidate(knobs={**knobs, "DISPATCHER": dispatcher, "A2A_OVERLAP": overlap}, memory_gib=est.total / GIB,
                                 iteration_s=secs, parts=parts, tokens_per_s_per_gpu=batch * seq / secs / world,
                                 mfu=flops_cache[key] / (secs * world * spec.peak_tflops(precision) * 1e12)))
        return out

    flops_cache: dict[tuple, float] = {}
    for tp, cp in itertools.product(tps, cps):
        if world % (tp * cp):
            continue
        for pp in _divisors(world // (tp * cp)):
            if pp > layers or pp > 64:
                continue
            for vpp in VPP_CHOICES if pp > 1 else (1,):
                placements: list[tuple[int, int, str]] = (
                    [(first, last, "") for (first, last) in _pp_splits(layers, pp)] if vpp in SPLIT_VPP else [])
                balanced = ppl.balanced_layout(layers, shape.mtp_layers, pp, vpp) if pp > 1 else None
                if balanced:
                    placements.append((0, 0, balanced))
                for (first, last, text) in placements:
                    for etp in sorted({1, tp}):
                        for ep in eps:
                            if world % (pp * ep * etp) or ep * etp > world // pp:
                                continue
                            for mbs in MICRO_BATCH_SIZES:
                                considered += 1
                                if considered > MAX_LAYOUTS:
                                    raise BenchError("layout space too large to enumerate", hint="pass fewer --nodes or --num-layers")
                                knobs = dict(TP=tp, PP=pp, EP=ep, ETP=etp, CP=cp, VPP=vpp, PP_FIRST=first, PP_LAST=last,
                                             PP_LAYOUT=text, MBS=mbs, GBS=batch, NNODES=nodes)
                                lay = layout_of(knobs)
                                try:
                                    check_layout(lay, arch)  # the launch's own checks
                                except BenchError:
                                    invalid += 1
                                    continue
                                for rc in ("none", "selective", "full"):
                                    full_knobs = {**knobs, "RECOMPUTE": rc,
                                                  "RECOMPUTE_MODULES": sel_modules if rc == "selective" else ""}
                                    cands = evaluate(full_knobs, lay)
                                    if cands:
                                        ranked.extend(cands)
                                        layouts_fit += 1
                                        break  # the lightest recompute that fits
                                else:
                                    too_big += 1
    ranked.sort(key=lambda c: c.iteration_s)
    for i, c in enumerate(ranked, 1):
        c.rank = i
    # Where does the shipped default land?
    dk = dict(TP=k0.TP, PP=k0.PP, EP=k0.EP, ETP=k0.ETP, CP=k0.CP, VPP=k0.VPP, PP_FIRST=k0.PP_FIRST, PP_LAST=k0.PP_LAST,
              PP_LAYOUT=k0.PP_LAYOUT, MBS=k0.MBS, GBS=batch, NNODES=nodes, RECOMPUTE=k0.RECOMPUTE,
              RECOMPUTE_MODULES=k0.RECOMPUTE_MODULES if k0.RECOMPUTE == "selective" else "",
              DISPATCHER=k0.DISPATCHER, A2A_OVERLAP=k0.A2A_OVERLAP)
    dlay = layout_of(dk)
    try:
        check_layout(dlay, arch)
        found = evaluate(dk, dlay)
        default, why = (found[0], "ok") if found else (None, "does not fit the GPU's memory")
    except BenchError as err:
        default, why = None, f"invalid: {err.message}"
    note = ""
    if default is None:
        note = f"shipped default ({_fmt(dk)}) at {nodes} nodes: {why}"
    else:
        default.is_default = True
        same = [c for c in ranked if c.knobs == default.knobs]
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
                      seconds=time.monotonic() - start, layouts_fit=layouts_fit)


def _fmt(k: dict[str, Any]) -> str:
    return " ".join(f"{n}={k[n]}" for n in ("TP", "PP", "EP", "ETP", "CP", "VPP", "PP_FIRST", "PP_LAST", "PP_LAYOUT", "MBS",
                                             "RECOMPUTE", "DISPATCHER", "A2A_OVERLAP") if n in k)


def print_plan(result: PlanResult, top: int, out: TextIO) -> None:
    r = result
    out.write(f"{r.model} on {r.nodes} x {r.gpus_per_node} {r.gpu} (GBS={r.gbs}, SEQ_LEN={r.seq_len}): "
              f"{r.layouts_fit} valid layouts that fit, of {r.considered} considered "
              f"({r.invalid} invalid, {r.too_big} over memory) in {r.seconds:.1f} s; "
              f"{len(r.ranked)} candidates with their dispatcher / A2A-overlap variants\n")
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
