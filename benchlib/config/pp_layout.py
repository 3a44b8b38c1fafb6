"""Megatron's `--pipeline-model-parallel-layout` mini-language, read in pure Python.

The syntax and every rule below follow Megatron-Core 0.19.2
(`megatron/core/transformer/pipeline_parallel_layer_layout.py` and the checks in
`megatron/training/arguments.py` / `TransformerConfig.__post_init__`), so that a layout this
module accepts is one Megatron accepts, and one it refuses Megatron would refuse too:

- stages are separated by `|`; `E` embedding, `t` transformer (decoder) layer, `m` MTP layer,
  `L` loss; commas are cosmetic;
- `(...)*N` repeats a group (one pass, innermost-free groups only, as Megatron's regex), then
  `x*N` repeats the single character before it;
- the number of stages is PP x VPP: stage i runs on pipeline rank i % PP as virtual chunk i // PP;
- E exactly once and first, L exactly once and last, NUM_LAYERS `t`, `m` = MTP layers, all `m`
  after every `t`, MTP only in a rank's last virtual chunk, all MTP layers in one chunk, and not
  on the first rank unless it is in its last chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from benchlib.core.errors import BenchError

LAYER_CHARS = {"E": "embedding", "L": "loss", "t": "decoder", "m": "mtp"}
_SYNTAX_HINT = ("use Megatron's --pipeline-model-parallel-layout syntax: stages split by |, E (embedding), "
                "t (transformer layer), m (MTP layer), L (loss), repetition x*N or (group)*N, "
                "e.g. PP_LAYOUT='Et|(tt|)*30mL'")


def expand(text: str) -> list[str]:
    """'Ett|(ttt|)*2ttL' -> ['Ett', 'ttt', 'ttt', 'ttL'], as Megatron's parse_str_to_list unrolls it."""
    s = text.replace(",", "")
    s = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    s = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    stages = s.split("|")
    for stage in stages:
        for ch in stage:
            if ch not in LAYER_CHARS:
                raise BenchError(f"PP_LAYOUT={text!r}: invalid layer character {ch!r} in stage {stage!r} "
                                 f"(known: {', '.join(LAYER_CHARS)})", hint=_SYNTAX_HINT)
    return stages


@dataclass(frozen=True)
class PipelineLayout:
    """A parsed layout: `stages[i]` is the i-th stage string (rank i % PP, chunk i // PP)."""

    text: str
    pp: int
    stages: tuple[str, ...]

    @property
    def vpp(self) -> int:
        return len(self.stages) // self.pp

    def chunk(self, rank: int, virtual: int) -> str:
        return self.stages[virtual * self.pp + rank]

    def rank_chunks(self, rank: int) -> list[str]:
        return [self.chunk(rank, v) for v in range(self.vpp)]

    def count(self, ch: str) -> int:
        return sum(s.count(ch) for s in self.stages)


def parse(text: str, pp: int) -> PipelineLayout:
    """Parse and check the stage count against PP; VPP is what the stage count implies."""
    if not text.strip():
        raise BenchError("PP_LAYOUT is empty", hint=_SYNTAX_HINT)
    stages = expand(text)
    if len(stages) % pp:
        raise BenchError(
            f"PP_LAYOUT={text!r} has {len(stages)} stages, which PP={pp} does not divide",
            hint="write PP x VPP stages separated by | (Megatron derives VPP = stages / PP)",
        )
    return PipelineLayout(text, pp, tuple(stages))


def validate(layout: PipelineLayout, num_layers: int, mtp_layers: int) -> None:
    """Megatron's validate_layer_layout, with the knob names in the messages."""
    text = layout.text
    flat = "".join(layout.stages)
    if not flat or flat[0] != "E":
        raise BenchError(f"PP_LAYOUT={text!r}: the first layer must be the embedding E", hint="start the layout with E")
    if flat[-1] != "L":
        raise BenchError(f"PP_LAYOUT={text!r}: the last layer must be the loss L", hint="end the layout with L")
    if flat.count("E") != 1 or flat.count("L") != 1:
        raise BenchError(f"PP_LAYOUT={text!r}: E and L must each appear exactly once "
                         f"(found {flat.count('E')} E, {flat.count('L')} L)", hint=_SYNTAX_HINT)
    if flat.count("t") != num_layers:
        raise BenchError(f"PP_LAYOUT={text!r} places {flat.count('t')} transformer layers but NUM_LAYERS={num_layers}",
                         hint="make the number of t in the layout equal NUM_LAYERS")
    if flat.count("m") != mtp_layers:
        raise BenchError(f"PP_LAYOUT={text!r} places {flat.count('m')} MTP layers but the model has "
                         f"--mtp-num-layers {mtp_layers}", hint="one m per MTP layer, none without MTP")
    if "m" in flat and "t" in flat[flat.index("m"):]:
        raise BenchError(f"PP_LAYOUT={text!r}: transformer layers must all come before the MTP layers",
                         hint="put m after the last t")
    for rank in range(layout.pp):
        chunks = layout.rank_chunks(rank)
        if any("m" in c for c in chunks[:-1]):
            raise BenchError(f"PP_LAYOUT={text!r}: MTP layers on pipeline rank {rank} are not in its last virtual "
                             "stage (Megatron-Core 0.19 requires it)", hint="move m into a stage of the last VPP round")
        if "m" in chunks[-1] and chunks[-1].count("m") != mtp_layers:
            raise BenchError(f"PP_LAYOUT={text!r}: all MTP layers must be in one virtual stage", hint="write the m together")


def rank_layers(layout: PipelineLayout, num_layers: int) -> list[dict]:
    """Per pipeline rank: global decoder-layer indices (MTP as num_layers + j), embedding, loss."""
    out = [{"layers": [], "embedding": False, "loss": False} for _ in range(layout.pp)]
    layer_i, mtp_i = 0, num_layers
    for i, stage in enumerate(layout.stages):
        rank = out[i % layout.pp]
        for ch in stage:
            if ch == "t":
                rank["layers"].append(layer_i)
                layer_i += 1
            elif ch == "m":
                rank["layers"].append(mtp_i)
                mtp_i += 1
            elif ch == "E":
                rank["embedding"] = True
            elif ch == "L":
                rank["loss"] = True
    return out


def _stage_text(stage: str) -> str:
    out, i = [], 0
    while i < len(stage):
        j = i
        while j < len(stage) and stage[j] == stage[i]:
            j += 1
        run = j - i
        out.append(stage[i] * run if run <= 3 else f"{stage[i]}*{run}")
        i = j
    return "".join(out)


def compact(stages: list[str]) -> str:
    """Stage strings -> a layout text, repeated middle stages as (stage|)*N: ['Ett','ttt','ttt','ttL'] -> 'Ett|(ttt|)*2ttL'."""
    if len(stages) <= 2:
        return "|".join(_stage_text(s) for s in stages)
    first, middle, last = stages[0], stages[1:-1], stages[-1]
    if len(set(middle)) == 1 and len(middle) > 1:
        return f"{_stage_text(first)}|({_stage_text(middle[0])}|)*{len(middle)}{_stage_text(last)}"
    return "|".join(_stage_text(s) for s in stages)


def balanced_layout(num_layers: int, mtp_layers: int, pp: int, vpp: int) -> str | None:
    """The layout that counts embedding and loss as one layer each and splits all of it evenly over
    PP x VPP stages (what Megatron's --account-for-embedding/loss-in-pipeline-split does), MTP layers
    just before the loss; None when it does not split evenly or breaks Megatron's MTP rules."""
    n = pp * vpp
    symbols = "E" + "t" * num_layers + "m" * mtp_layers + "L"
    if n < 2 or len(symbols) % n:
        return None
    k = len(symbols) // n
    stages = [symbols[i * k:(i + 1) * k] for i in range(n)]
    text = compact(stages)
    try:
        validate(parse(text, pp), num_layers, mtp_layers)
    except BenchError:
        return None
    return text
