"""Parallel-layout checks that need no torch: each failure says which numbers clash and how to fix it.

Megatron's own validator (benchlib/megatron/validate.py) runs after these; these exist so the common
mistakes are refused in milliseconds, with a message in the suite's terms (knob names).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchlib.core.errors import BenchError
from benchlib.config import pp_layout as ppl
from benchlib.config.layer_pattern import eval_layer_pattern


@dataclass(frozen=True)
class Layout:
    world: int
    tp: int
    pp: int
    ep: int
    etp: int
    cp: int
    vpp: int
    pp_first: int
    pp_last: int
    mbs: int
    gbs: int
    num_layers: int
    seq_len: int
    pp_layout: str = ""  # Megatron's --pipeline-model-parallel-layout (PP_LAYOUT); "" = PP_FIRST/PP_LAST/VPP

    @property
    def virtual_stages(self) -> int:
        """VPP as Megatron runs it: the layout's stage count / PP when a layout is given."""
        if self.pp_layout:
            return ppl.parse(self.pp_layout, self.pp).vpp
        return self.vpp

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp * self.cp)

    @property
    def expert_dp(self) -> int:
        return self.world // (self.pp * self.ep * self.etp)


def stage_layer_counts(lay: Layout) -> list[int]:
    """Layers per pipeline rank (all its virtual stages), honouring a layout or uneven first/last stages."""
    if lay.pp_layout:
        parsed = ppl.parse(lay.pp_layout, lay.pp)
        return [sum(c.count("t") for c in parsed.rank_chunks(r)) for r in range(lay.pp)]
    if lay.pp == 1:
        return [lay.num_layers]
    first = lay.pp_first or None
    last = lay.pp_last or None
    middle_stages = lay.pp - (first is not None) - (last is not None)
    rest = lay.num_layers - (first or 0) - (last or 0)
    if middle_stages == 0:
        if rest != 0:
            raise BenchError(
                f"PP={lay.pp} with PP_FIRST={lay.pp_first} and PP_LAST={lay.pp_last} places {lay.num_layers - rest} layers, but NUM_LAYERS={lay.num_layers}",
                hint="make PP_FIRST + PP_LAST equal NUM_LAYERS when PP=2, or leave them 0",
            )
        counts = []
    else:
        if rest <= 0 or rest % middle_stages:
            raise BenchError(
                f"NUM_LAYERS={lay.num_layers} minus PP_FIRST={lay.pp_first} and PP_LAST={lay.pp_last} leaves {rest} layers, "
                f"which do not split evenly over the other {middle_stages} pipeline stages",
                hint="choose NUM_LAYERS, PP, PP_FIRST, PP_LAST so the remaining layers divide evenly",
            )
        counts = [rest // middle_stages] * middle_stages
    if first is not None:
        counts.insert(0, first)
    if last is not None:
        counts.append(last)
    return counts


def check_layout(lay: Layout, arch: dict[str, Any]) -> None:
    """Raise BenchError for the first impossible setting. `arch` holds Megatron argument names."""
    for name, value in (("TP", lay.tp), ("PP", lay.pp), ("EP", lay.ep), ("ETP", lay.etp), ("CP", lay.cp), ("VPP", lay.vpp), ("MBS", lay.mbs), ("GBS", lay.gbs), ("NUM_LAYERS", lay.num_layers), ("SEQ_LEN", lay.seq_len)):
        if value < 1:
            raise BenchError(f"{name}={value} must be at least 1")
    model_parallel = lay.tp * lay.pp * lay.cp
    if lay.world % model_parallel:
        raise BenchError(
            f"world size {lay.world} (NNODES x GPUS_PER_NODE) is not divisible by TP*PP*CP = {lay.tp}*{lay.pp}*{lay.cp} = {model_parallel}",
            hint="world size must equal TP*PP*CP*DP: change NNODES or the parallel sizes",
        )
    num_experts = arch.get("num_experts")
    if num_experts:
        if num_experts % lay.ep:
            raise BenchError(
                f"{num_experts} experts are not divisible by EP={lay.ep}",
                hint=f"choose EP from the divisors of {num_experts}: {', '.join(str(d) for d in _divisors(num_experts))}",
            )
        if lay.world % (lay.pp * lay.ep * lay.etp):
            raise BenchError(
                f"world size {lay.world} is not divisible by PP*EP*ETP = {lay.pp}*{lay.ep}*{lay.etp}",
                hint="the expert layout must tile the GPUs of each pipeline stage: change EP, ETP or NNODES",
            )
        freq = arch.get("moe_layer_freq")
        pattern = eval_layer_pattern(freq) if isinstance(freq, str) and "[" in freq else (freq if isinstance(freq, list) else None)
        if pattern is not None and len(pattern) != lay.num_layers:
            raise BenchError(
                f"--moe-layer-freq lists {len(pattern)} layers but NUM_LAYERS={lay.num_layers}",
                hint="give --moe-layer-freq a pattern of NUM_LAYERS entries, e.g. --moe-layer-freq '([0]*1+[1]*(N-1))' with N written out",
            )
    elif lay.ep > 1:
        raise BenchError(f"EP={lay.ep} but the model has no experts", hint="use EP=1")
    heads = arch.get("num_attention_heads")
    if heads and heads % lay.tp:
        raise BenchError(f"{heads} attention heads are not divisible by TP={lay.tp}", hint="choose TP dividing the head count")
    groups = arch.get("num_query_groups") if arch.get("group_query_attention") else None
    if groups and groups % lay.tp:
        raise BenchError(f"{groups} query groups are not divisible by TP={lay.tp}", hint="choose TP dividing the KV-head count")
    if lay.cp > 1 and lay.seq_len % (2 * lay.cp):
        raise BenchError(f"SEQ_LEN={lay.seq_len} is not divisible by 2*CP={2 * lay.cp}", hint="context parallelism splits each sequence into 2*CP chunks")
    if lay.tp > 1 and lay.seq_len % lay.tp:
        raise BenchError(f"SEQ_LEN={lay.seq_len} is not divisible by TP={lay.tp} (sequence parallel)")
    if lay.pp_layout:
        _check_pp_layout(lay, arch)
    elif lay.pp == 1 and (lay.pp_first or lay.pp_last):
        raise BenchError("PP_FIRST/PP_LAST are set but PP=1", hint="set PP_FIRST=0 PP_LAST=0, or PP>1")
    elif lay.pp == 1 and lay.vpp > 1:
        raise BenchError(f"VPP={lay.vpp} needs PP>1", hint="set VPP=1 or raise PP")
    elif lay.pp > 1 and lay.pp_first == 0 and lay.pp_last == 0 and lay.num_layers % lay.pp:
        raise BenchError(
            f"NUM_LAYERS={lay.num_layers} does not split evenly over PP={lay.pp} stages",
            hint="set PP_FIRST/PP_LAST for uneven first/last stages, or choose PP dividing NUM_LAYERS",
        )
    counts = stage_layer_counts(lay)
    if lay.vpp > 1 and not lay.pp_layout:
        bad = [c for c in counts if c % lay.vpp]
        if bad:
            raise BenchError(
                f"with VPP={lay.vpp}, every pipeline stage's layer count must divide by VPP; stages have {counts}",
                hint="adjust VPP, PP_FIRST or PP_LAST",
            )
    dp = lay.dp
    if lay.gbs % (lay.mbs * dp):
        raise BenchError(
            f"GBS={lay.gbs} is not divisible by MBS*DP = {lay.mbs}*{dp} = {lay.mbs * dp}",
            hint=f"use a GBS that is a multiple of {lay.mbs * dp}",
        )


def _check_pp_layout(lay: Layout, arch: dict[str, Any]) -> None:
    """PP_LAYOUT as Megatron-Core 0.19.2 checks it (benchlib.config.pp_layout), in knob names."""
    if lay.pp_first or lay.pp_last:
        raise BenchError(
            f"PP_LAYOUT is set together with PP_FIRST={lay.pp_first} / PP_LAST={lay.pp_last}",
            hint="the layout places every layer itself: set PP_FIRST=0 PP_LAST=0",
        )
    if any(arch.get(k) for k in ("account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split")):
        raise BenchError("PP_LAYOUT cannot be combined with --account-for-embedding/loss-in-pipeline-split",
                         hint="the layout's E and L already say where embedding and loss go")
    parsed = ppl.parse(lay.pp_layout, lay.pp)
    if lay.vpp > 1 and lay.vpp != parsed.vpp:
        raise BenchError(
            f"VPP={lay.vpp} conflicts with PP_LAYOUT={lay.pp_layout!r}, which has {len(parsed.stages)} stages "
            f"= PP {lay.pp} x VPP {parsed.vpp}",
            hint=f"set VPP={parsed.vpp} or VPP=1 (the layout decides it)",
        )
    mtp = arch.get("mtp_num_layers") or 0
    ppl.validate(parsed, lay.num_layers, int(mtp))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
