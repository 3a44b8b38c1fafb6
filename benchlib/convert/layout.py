"""Target parallel layout for the legacy per-rank format: which rank holds which slice."""
from __future__ import annotations

import re
from dataclasses import dataclass

from benchlib.core.errors import BenchError

COLUMN = ("linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight", "linear_q_proj.weight", "linear_q_up_proj.weight",
          "linear_kv_up_proj.weight", "word_embeddings.weight", "output_layer.weight", "eh_proj.weight")
ROW = ("linear_proj.weight", "linear_fc2.weight")


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    first: int | None = None  # layers on the first pipeline stage (uneven)
    last: int | None = None  # layers on the last pipeline stage (uneven)
    vocab_multiple: int = 128  # --make-vocab-size-divisible-by

    def stage_layers(self, num_layers: int) -> list[range]:
        """Decoder layers of each pipeline stage; BenchError when the split does not divide."""
        if self.pp == 1:
            if self.first is not None or self.last is not None:
                raise BenchError("--target-first-stage-layers / --target-last-stage-layers need --target-pp > 1")
            return [range(num_layers)]
        first = self.first
        last = self.last
        middle_stages = self.pp - (first is not None) - (last is not None)
        rest = num_layers - (first or 0) - (last or 0)
        if rest < 0 or middle_stages < 0 or (middle_stages == 0 and rest != 0) or (middle_stages and rest % middle_stages):
            raise BenchError(
                f"target layout does not divide the model: {num_layers} layers over --target-pp {self.pp}"
                f" (first stage {first}, last stage {last}) leaves {rest} layers for {middle_stages} stage(s)",
                hint="choose --target-pp (and --target-first-stage-layers / --target-last-stage-layers) so the remaining layers split evenly",
            )
        per = rest // middle_stages if middle_stages else 0
        sizes = [first if first is not None else per] + [per] * (self.pp - 2) + [last if last is not None else per]
        out, start = [], 0
        for n in sizes:
            out.append(range(start, start + n))
            start += n
        return out

    def check(self, *, heads: int, kv_heads: int, num_experts: int, ffn: int, moe_ffn: int, mla: bool) -> None:
        def bad(what: str, n: int, by: str, k: int) -> BenchError:
            return BenchError(f"target layout does not divide the model: {what} {n} is not divisible by {by} {k}",
                              hint=f"pick {by} that divides {n}")

        if heads % self.tp:
            raise bad("attention heads", heads, "--target-tp", self.tp)
        if not mla and kv_heads % self.tp:
            raise bad("query groups (num_key_value_heads)", kv_heads, "--target-tp", self.tp)
        if ffn % self.tp:
            raise bad("ffn size (intermediate_size)", ffn, "--target-tp", self.tp)
        if num_experts and moe_ffn % self.tp:
            raise bad("expert ffn size (moe_intermediate_size)", moe_ffn, "--target-tp", self.tp)
        if self.ep > 1 and (not num_experts or num_experts % self.ep):
            raise bad("experts", num_experts, "--target-ep", self.ep)


def rank_dir(tp: int, pp: int, ep: int, layout: Layout) -> str:
    """Megatron's legacy per-rank folder name (megatron/training/checkpointing.get_checkpoint_name)."""
    name = f"mp_rank_{tp:02d}" if layout.pp == 1 else f"mp_rank_{tp:02d}_{pp:03d}"
    return name + (f"_{ep:03d}" if layout.ep > 1 else "")


def tp_split(name: str, tensor, tp: int) -> list:  # noqa: ANN001
    """The TP shards of one full Megatron tensor, as Megatron's column/row parallel layers hold them."""
    if tp == 1:
        return [tensor]
    if name.endswith(COLUMN) or re.search(r"linear_fc1\.weight\d+$", name):
        if "linear_fc1.weight" in name:  # SwiGLU: gate and up are split separately
            import torch

            gate, up = tensor.chunk(2, dim=0)
            return [torch.cat([g, u], 0).clone() for g, u in zip(gate.chunk(tp, 0), up.chunk(tp, 0))]
        return [t.clone() for t in tensor.chunk(tp, dim=0)]
    if name.endswith(ROW) or re.search(r"linear_fc2\.weight\d+$", name):
        return [t.clone() for t in tensor.chunk(tp, dim=1)]
    return [tensor] * tp


def tp_merge(name: str, shards: list):  # noqa: ANN001
    import torch

    if len(shards) == 1:
        return shards[0]
    if name.endswith(COLUMN) or re.search(r"linear_fc1\.weight\d+$", name):
        if "linear_fc1.weight" in name:
            halves = [s.chunk(2, 0) for s in shards]
            return torch.cat([h[0] for h in halves] + [h[1] for h in halves], 0)
        return torch.cat(shards, 0)
    if name.endswith(ROW) or re.search(r"linear_fc2\.weight\d+$", name):
        return torch.cat(shards, 1)
    return shards[0]
