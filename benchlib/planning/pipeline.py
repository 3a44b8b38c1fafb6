"""Which layers each pipeline rank holds, and how many micro-batches it keeps in flight.

Layer placement follows Megatron-Core 0.19: `--pipeline-model-parallel-layout` when given
(stages separated by `|`, `E` embedding, `t` transformer layer, `m` MTP layer, `L` loss;
stage i belongs to rank i % PP, virtual chunk i // PP), else uneven first/last stages
(`--decoder-first/last-pipeline-num-layers`) with the rest split evenly, each rank's layers
split evenly over its VPP chunks, chunks ordered chunk-major (all ranks' chunk 0 first).
Embedding sits on rank 0; final norm, output layer, loss and MTP on the last rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from benchlib.config import pp_layout as ppl
from benchlib.config.layout import Layout, stage_layer_counts
from benchlib.planning.arch import ModelShape, get


@dataclass
class RankStage:
    rank: int
    layers: list[int] = field(default_factory=list)  # global indices; >= num_layers are MTP layers
    embedding: bool = False
    loss: bool = False


def expand_layout(text: str) -> list[str]:
    """'Et*3|(tt|)*2L' -> ['Ettt', 'tt', 'ttL']: Megatron's pipeline layout mini-language."""
    return ppl.expand(text)


def rank_stages(shape: ModelShape, lay: Layout, args: Mapping[str, Any] | None = None) -> list[RankStage]:
    """Per pipeline rank: the layers it holds (all virtual chunks), and embedding / loss duties."""
    args = args or {}
    stages = [RankStage(rank=r) for r in range(lay.pp)]
    text = lay.pp_layout or get(args, "pipeline_model_parallel_layout", None)
    if text:
        parsed = ppl.parse(str(text), lay.pp)
        ppl.validate(parsed, shape.num_layers, shape.mtp_layers)
        for st, placed in zip(stages, ppl.rank_layers(parsed, shape.num_layers)):
            st.layers, st.embedding, st.loss = placed["layers"], placed["embedding"], placed["loss"]
        return stages
    counts = stage_layer_counts(lay)
    v = max(1, lay.vpp)
    index = 0
    for _chunk in range(v):
        for r in range(lay.pp):
            n = counts[r] // v if v > 1 else counts[r]
            stages[r].layers.extend(range(index, index + n))
            index += n
    stages[0].embedding = True
    stages[-1].loss = True
    stages[-1].layers.extend(range(shape.num_layers, shape.num_layers + shape.mtp_layers))
    return stages


def in_flight(rank: int, pp: int, vpp: int, microbatches: int) -> float:
    """Micro-batches of activations rank `rank` holds at its peak, in units of its whole stage.

    1F1B: rank r runs PP - r warm-up forwards before its first backward, so it holds
    min(PP - r, M) micro-batches. Interleaved (VPP = v > 1): Megatron's warm-up is
    (PP - r - 1) * 2 + (v - 1) * PP chunk-forwards, plus one in the steady state; each chunk is
    1/v of the rank's layers (capped at all M * v chunks).
    """
    if pp == 1:
        return 1.0
    if vpp <= 1:
        return float(min(pp - rank, microbatches))
    chunks = min(microbatches * vpp, (pp - rank - 1) * 2 + (vpp - 1) * pp + 1)
    return chunks / vpp
