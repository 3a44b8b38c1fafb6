"""The training loop's per-step statistics without a device round trip where the group is one rank
(part of FAST_OPTIMIZER).

After each optimizer step Megatron's `train_step` and `training_log` (megatron.training,
0.19.2) reduce `update_successful`, the grad norm and the learning rate over the model-parallel
group, and after each forward-backward pass the rerun state machine asks the world whether any
rank wants a rerun (`RerunStateMachine._reduce_any`): a host value is copied to the GPU,
all-reduced and read back, a host sync each. Queued behind the backward or the optimizer, each
leaves the GPU idle while the host goes round (0.2-1.3 ms each on an H200 at GBS 4, profile of
2026-12-01). Over a group of one rank the reduction is the value itself; it is computed here on
the host (with the same fp32 rounding for the stats). Groups of more ranks get Megatron's own.
"""
from __future__ import annotations

from typing import Any, Optional

from benchlib.megatron.fast_optimizer import _original

_COMMON = "megatron.training.utils.common_utils"
_RERUN = "megatron.core.rerun_state_machine.RerunStateMachine"


def install(patch: Any) -> None:
    """Patch the names `megatron.training.training` calls (imported there by name)."""
    import megatron.training.training as training

    patch(training, "logical_and_across_model_parallel_group", logical_and_across_model_parallel_group)
    patch(training, "reduce_max_stat_across_model_parallel_group", reduce_max_stat_across_model_parallel_group)
    from megatron.core.rerun_state_machine import RerunStateMachine

    patch(RerunStateMachine, "_reduce_any", reduce_any)


def _group_of_one(group: Any) -> bool:
    if group is None:
        from megatron.core import parallel_state as mpu

        group = mpu.get_model_parallel_group()
    try:
        return group.size() == 1
    except (AttributeError, RuntimeError):
        return False


def reduce_max_stat_across_model_parallel_group(stat: Optional[float], group: Any = None) -> Optional[float]:
    if not _group_of_one(group):
        return _original(_COMMON, "reduce_max_stat_across_model_parallel_group")(stat, group=group)
    import torch

    value = torch.tensor([-1.0 if stat is None else stat], dtype=torch.float32).item()  # Megatron's fp32 rounding
    return None if value == -1.0 else value


def logical_and_across_model_parallel_group(value: bool, group: Any = None) -> bool:
    if not _group_of_one(group):
        return _original(_COMMON, "logical_and_across_model_parallel_group")(value, group=group)
    return value is True


def reduce_any(self: Any, value: Any) -> Any:
    """RerunStateMachine._reduce_any over the world: any rank's True; a tuple for a list."""
    import torch

    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() == 1):
        return _original(_RERUN, "_reduce_any")(self, value)
    if isinstance(value, list):
        return tuple(int(x) > 0 for x in value)  # Megatron's int32 tensor, then x > 0
    return int(value) > 0
