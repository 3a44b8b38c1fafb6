"""MoE experts through torch's grouped GEMM: one kernel per projection instead of a loop.

Layout (what a checkpoint sees): Megatron's `TEGroupedMLP` names,
`...mlp.experts.linear_fc1.weight{i}` of shape [2*moe_ffn (GLU) or moe_ffn, hidden] and
`...mlp.experts.linear_fc2.weight{i}` of shape [hidden, moe_ffn], one per local expert `i`
(fc1 rows: gate half first, then the linear half, as in Megatron). In memory the local experts
of one projection live in ONE parameter `weight` of shape [num_local_experts, out, in], so the
grouped GEMM reads it without a copy; `state_dict()` / `load_state_dict()` translate between the
two (hooks below), and `sharded_state_dict()` gives the same per-expert sharded keys as
TEGroupedMLP / SequentialMLP for Megatron's distributed checkpoints.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.moe.experts import GroupedMLPSubmodules, TEGroupedMLP


def grouped_mm(x: torch.Tensor, w_t: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x [T, K] (rows grouped by expert), w_t [E, K, N], offs [E] int32 cumulative ends -> [T, N]."""
    fn = getattr(torch.nn.functional, "grouped_mm", None) or torch._grouped_mm
    return fn(x, w_t, offs=offs)


def reference_grouped_mm(x: torch.Tensor, w_t: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """The same product as a loop of plain matmuls (any dtype, any device): the test reference."""
    out = x.new_zeros(x.shape[0], w_t.shape[-1])
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            out[start:end] = x[start:end] @ w_t[e]
        start = end
    return out


class NativeGroupedLinear(MegatronModule):
    """Grouped linear for the local experts of one projection (fc1 or fc2).

    Called by TEGroupedMLP as `linear(x, tokens_per_expert_list) -> (y, None)`. The weights are
    allocated here but initialised by `NativeGroupedMLP` (in SequentialMLP's order, so a run with
    the same seed starts from the same experts as Megatron's local spec).
    """

    def __init__(
        self,
        num_gemms: int,
        input_size: int,
        output_size: int,
        *,
        config: Any,
        init_method: Any,
        bias: bool,
        skip_bias_add: bool,
        is_expert: bool,
        tp_comm_buffer_name: Optional[str] = None,
        pg_collection: Any = None,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(config=config)
        if bias:
            raise NotImplementedError("benchlib native spec: expert biases (--add-bias-linear) are not supported")
        if pg_collection is not None and pg_collection.expt_tp is not None and pg_collection.expt_tp.size() > 1:
            raise NotImplementedError("benchlib native spec: expert tensor parallelism (ETP>1) is not supported")
        self.num_gemms = num_gemms
        self.input_size = input_size
        self.output_size = output_size
        self.init_method = init_method
        self.is_expert = is_expert
        self._pg_collection = pg_collection
        device = torch.device("cpu") if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(
            torch.empty(num_gemms, output_size, input_size, dtype=config.params_dtype, device=device)
        )
        # Megatron's DDP reduces expert weights over the expert-data-parallel group when EP > 1.
        expert_parallel = config.expert_model_parallel_size > 1
        setattr(self.weight, "allreduce", not (is_expert and expert_parallel))
        self._register_state_dict_hook(_split_state_dict_hook)
        self._register_load_state_dict_pre_hook(_stack_load_pre_hook, with_module=True)

    def forward(self, x: torch.Tensor, m_splits: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, None]:
        return grouped_mm(x, self.weight.transpose(-2, -1), expert_offsets(m_splits, x.device)), None

    def backward_dw(self) -> None:  # no delayed weight-gradient path
        return None

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None) -> dict:
        """Per-expert sharded tensors under `{prefix}weight{i}`, as TE's grouped linear gives."""
        from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
        from megatron.core.utils import get_pg_rank, get_pg_size

        singleton = (metadata or {}).get("singleton_local_shards", False)
        ep = self._pg_collection.ep if self._pg_collection is not None else None
        num_global = get_pg_size(ep) * self.num_gemms
        offset = get_pg_rank(ep) * self.num_gemms
        ep_axis = len(sharded_offsets)
        out: dict = {}
        for i in range(self.num_gemms):
            g = offset + i
            if singleton:
                expert_prefix, offsets = f"{g}.{prefix}", sharded_offsets
            else:
                expert_prefix, offsets = prefix, (*sharded_offsets, (ep_axis, g, num_global))
            sub = make_sharded_tensors_for_checkpoint(
                {f"{i}.weight": self.weight[i]},
                "",
                {f"{i}.weight": 0},
                offsets,
                tp_group=self._pg_collection.expt_tp if self._pg_collection is not None else None,
                dp_cp_group=(metadata or {}).get("dp_cp_group"),
            )
            replace_prefix_for_sharding(sub, f"{i}.", expert_prefix)
            out[f"{prefix}weight{i}"] = sub[f"{i}.weight"]
        return out


def expert_offsets(m_splits: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Cumulative token counts per expert, int32, on `device`, without stalling the GPU queue.

    Megatron hands the experts host values (a list, or a CPU tensor). A plain host -> GPU copy
    from pageable memory waits for the stream to drain (the CUDA runtime's rule for pageable
    transfers), twice per MoE layer (fc1, fc2), after which the GPU idles until the host has
    queued the next kernels; through pinned memory the copy is queued like a kernel."""
    if isinstance(m_splits, torch.Tensor):
        if m_splits.device == device:
            return torch.cumsum(m_splits, 0, dtype=torch.int32)
        m_splits = m_splits.tolist()  # already on the host: no GPU sync
    host = torch.tensor(_cumsum(m_splits), dtype=torch.int32)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _cumsum(values: Sequence[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += int(v)
        out.append(total)
    return out


def _split_state_dict_hook(module: NativeGroupedLinear, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    weight = state_dict.pop(prefix + "weight")
    for i in range(module.num_gemms):
        state_dict[f"{prefix}weight{i}"] = weight[i]


def _stack_load_pre_hook(module: NativeGroupedLinear, state_dict: dict, prefix: str, *args: Any) -> None:
    names = [f"{prefix}weight{i}" for i in range(module.num_gemms)]
    if all(n in state_dict for n in names):
        state_dict[prefix + "weight"] = torch.stack([state_dict.pop(n) for n in names])


class NativeGroupedMLP(TEGroupedMLP):
    """Megatron's TEGroupedMLP (activation, prob weighting, recompute) over NativeGroupedLinear."""

    def __init__(self, num_local_experts: int, config: Any, submodules: Any = None, pg_collection: Any = None, name: Optional[str] = None) -> None:
        if getattr(config, "fp8", None) or getattr(config, "fp4", None):
            raise NotImplementedError("benchlib native spec: fp8/fp4 experts need Transformer Engine")
        submodules = GroupedMLPSubmodules(linear_fc1=NativeGroupedLinear, linear_fc2=NativeGroupedLinear)
        super().__init__(num_local_experts, config, submodules, pg_collection=pg_collection, name=name)
        if config.perform_initialization:
            self._init_like_sequential_mlp()

    def _init_like_sequential_mlp(self) -> None:
        """fc1 of expert 0, fc2 of expert 0, fc1 of expert 1, ... each under the expert RNG fork."""
        from megatron.core.tensor_parallel.random import (
            get_cuda_rng_tracker,
            get_expert_parallel_rng_tracker_name,
        )

        fc1, fc2 = self.linear_fc1.weight, self.linear_fc2.weight
        with torch.no_grad():
            for i in range(self.num_local_experts):
                for lin, w in ((self.linear_fc1, fc1), (self.linear_fc2, fc2)):
                    if self.config.use_cpu_initialization:
                        lin.init_method(w[i])
                        continue
                    tracker = get_cuda_rng_tracker()
                    name = get_expert_parallel_rng_tracker_name()
                    if name in tracker.get_states():
                        with tracker.fork(name):
                            lin.init_method(w[i])
                    else:
                        lin.init_method(w[i])
