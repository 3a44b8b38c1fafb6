"""Fused and multi-tensor stand-ins for the pieces of Megatron-Core's optimizer step that fall
back to slow code when neither Transformer Engine nor Apex is installed (the native backend).

Without TE/Apex, Megatron-Core 0.19.2 builds `torch.optim.AdamW` with torch's default
(`foreach`: about ten passes over the fp32 state, and an fp32 temporary the size of the
shard) and uses `megatron.core.utils.local_multi_tensor_*`: a per-tensor Python loop for the
gradient norm that also syncs the host once per tensor (`torch.tensor(list_of_cuda_scalars)`),
and a per-tensor `copy_(src * scale)` for clipping and main->model copies. The distributed
optimizer copies its fp32 main shards into the bf16 parameter buffer one `copy_` per tensor.

| replaced (module.name) | with | falls back for |
| --- | --- | --- |
| optimizer.Adam, optimizer.USING_PYTORCH_OPTIMIZER | AdamW: one multi-tensor Triton kernel that also writes the bf16 params (fast_adam.py); Adam (L2 decay): torch's with `fused=True` | torch's own (foreach) AdamW step for non-fp32 or non-CUDA tensors, amsgrad, maximize |
| clip_grads.l2_norm_impl | `torch._foreach_norm` + one norm of the norms, no host sync | - |
| optimizer.clip_grad_by_total_norm_fp32 | no pass of its own: TritonAdamW multiplies each gradient by the clip coefficient as it reads it (torch's fused Adam: divides by `grad_scale`) | decoupled grads, tensor norms, parameters of an optimizer it did not build or only partly given |
| clip_grads.multi_tensor_scale_impl, optimizer.multi_tensor_scale_impl | `torch._foreach_mul_` / `_foreach_copy_` | - |
| optimizer._multi_tensor_copy_this_to_that | `torch._foreach_copy_` (casts fp32 -> bf16 as `copy_` does) | - |
| DistributedOptimizer._copy_main_params_to_model_params | nothing when the step just wrote those bf16 params; else one `torch._foreach_copy_` into the parameter buffer (and the step writes them from then on) | Megatron-FSDP, precision-aware optimizer, fp8/fp4 param gather, stub optimizers |
| megatron.training.training: logical_and_ / reduce_max_stat_across_model_parallel_group; RerunStateMachine._reduce_any | step_stats.py: the value itself, on the host, over a group of one rank (no device round trip per step) | groups of more ranks |
| DistributedDataParallel (constructor, backward hook, finish_grad_sync), _ParamAndGradBuffer.reset, _ParamAndGradBucketGroup (reset, start_grad_sync, check_grads) | fast_grads.py: no zeroing of the gradient buffer (an iteration's first write copies), `main_grad += grad` as one vectorised kernel (grad_accumulate.py) that also adds the squares for the per-bucket NaN/Inf check, judged with one host sync when the grad sync finishes | grads TE already added, non-contiguous or CPU tensors, CUDA-graph capture; Megatron's zeroing where something else writes main_grad in the backward |

The arithmetic is the same as Megatron's (the norm is the 2-norm of the per-tensor 2-norms in
the gradients' dtype; scaling multiplies in the source dtype; AdamW's update is torch's foreach
AdamW, operation by operation), so results agree to fp32 rounding, and the bf16 params are the
fp32 ones rounded once. Where Megatron found TE or Apex nothing is replaced. The same
code runs at any EP/DP size: the stand-ins act on each rank's local shard and leave Megatron's
all-reduces where they are.

`FAST_OPTIMIZER=0` (the knob, under its own name on every rank) leaves Megatron's functions in place.
"""
from __future__ import annotations

import weakref
from typing import Any

from benchlib.megatron.stand_ins import StandIns

_STAND_INS = StandIns("FAST_OPTIMIZER", "1")
enabled, installed = _STAND_INS.enabled, _STAND_INS.installed
_patch, _original = _STAND_INS.patch, _STAND_INS.original


def install() -> list[str]:
    """Put the stand-ins in place (idempotent); returns what is patched. Nothing is patched
    where Megatron found TE or Apex (their fused optimizer and multi-tensor kernels are used)."""
    if not enabled() or installed():
        return installed()
    import megatron.core.optimizer as optimizer_pkg
    from megatron.core import utils as mcore_utils
    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if not getattr(optimizer_pkg, "USING_PYTORCH_OPTIMIZER", False):
        return installed()
    _patch(optimizer_pkg, "Adam", fused_adam)
    _patch(optimizer_pkg, "USING_PYTORCH_OPTIMIZER", False)
    if getattr(clip_grads, "l2_norm_impl", None) is mcore_utils.local_multi_tensor_l2_norm:
        _patch(clip_grads, "l2_norm_impl", foreach_l2_norm)
    if getattr(clip_grads, "multi_tensor_scale_impl", None) is mcore_utils.local_multi_tensor_scale:
        _patch(clip_grads, "multi_tensor_scale_impl", foreach_scale)
    if getattr(optimizer, "multi_tensor_scale_impl", None) is mcore_utils.local_multi_tensor_scale:
        _patch(optimizer, "multi_tensor_scale_impl", foreach_scale)
    _patch(optimizer, "_multi_tensor_copy_this_to_that", multi_tensor_copy_this_to_that)
    _patch(optimizer, "clip_grad_by_total_norm_fp32", clip_grad_by_total_norm_fp32)
    _patch(DistributedOptimizer, "_copy_main_params_to_model_params", copy_main_params_to_model_params)
    from benchlib.megatron import fast_grads, step_stats

    fast_grads.install(_patch)
    try:
        import megatron.training.training  # noqa: F401  (the driver's loop; absent from bare-core uses)
    except ImportError:
        return installed()
    step_stats.install(_patch)
    return installed()


def uninstall() -> None:
    """Restore Megatron's originals (tests)."""
    _STAND_INS.restore()


_DISTOPT = "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer"


# --- Adam -----------------------------------------------------------------------------------

def fused_adam(params: Any, adam_w_mode: bool = True, **kwargs: Any) -> Any:
    """Takes the place of TE/Apex `FusedAdam(params, ..., adam_w_mode=)` in Megatron's builder:
    AdamW (decoupled weight decay) as fast_adam.TritonAdamW, or torch's Adam, fused.
    Each such optimizer is remembered, so that clipping can be folded into its step."""
    import torch

    if adam_w_mode and kwargs.get("fused", True):
        from benchlib.megatron.fast_adam import TritonAdamW

        kwargs.pop("fused", None)
        opt = TritonAdamW(params, **kwargs)  # takes the clip coefficient itself (clip_coeff)
        _FUSED_OPTIMIZERS.add(opt)
        return opt
    kwargs.setdefault("fused", True)
    opt = (torch.optim.AdamW if adam_w_mode else torch.optim.Adam)(params, **kwargs)
    if opt.defaults.get("fused"):
        _FUSED_OPTIMIZERS.add(opt)
        step = opt.step

        def step_then_forget_the_clip(*args: Any, **kw: Any) -> Any:
            try:
                return step(*args, **kw)
            finally:
                opt.grad_scale = None  # one clip coefficient applies to one step

        opt.step = step_then_forget_the_clip
    return opt


# Every fused optimizer built here. Megatron's distributed optimizer replaces their param groups
# with its fp32 main shards after construction, so the owner of a parameter is looked up when
# clipping, in the groups as they are then.
_FUSED_OPTIMIZERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _owners_of(params: list) -> dict[int, Any]:
    """id(param) -> the fused optimizer holding it now."""
    wanted = {id(p) for p in params}
    found: dict[int, Any] = {}
    for opt in list(_FUSED_OPTIMIZERS):
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in wanted:
                    found[id(p)] = opt
    return found


def clip_grad_by_total_norm_fp32(parameters: Any, max_norm: float, total_norm: Any, use_decoupled_grad: bool = False) -> None:
    """Megatron's clip by total norm, folded into the next optimizer step: TritonAdamW multiplies
    each gradient by `clip_coeff` as it reads it (torch's fused Adam divides by `grad_scale` =
    1/clip_coeff), which saves a read and a write of every fp32 gradient. Same coefficient as
    Megatron (max_norm / (norm + 1e-6), applied only below 1). Anything else goes to Megatron's
    original."""
    import torch

    params = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
    with_grads = [p for p in params if p.grad is not None]
    owner_of = _owners_of(with_grads)
    owners = {id(o): o for o in owner_of.values()}
    covered = (
        not use_decoupled_grad
        and not isinstance(total_norm, torch.Tensor)
        and with_grads
        and len(owner_of) == len({id(p) for p in with_grads})
        and all(_all_grads_given(o, with_grads) for o in owners.values())
    )
    if not covered:
        return _original("megatron.core.optimizer.optimizer", "clip_grad_by_total_norm_fp32")(
            parameters, max_norm, total_norm, use_decoupled_grad=use_decoupled_grad)
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    for opt in owners.values():
        if hasattr(opt, "clip_coeff"):  # TritonAdamW multiplies, as Megatron's clip does
            opt.clip_coeff = clip_coeff if clip_coeff < 1.0 else None
        else:  # torch's fused step divides by grad_scale
            opt.grad_scale = (
                torch.full((), 1.0 / clip_coeff, dtype=torch.float32, device=with_grads[0].device)
                if clip_coeff < 1.0 else None
            )
    return None


def _all_grads_given(opt: Any, given: list) -> bool:
    """The optimizer's grad_scale applies to all its parameters: all must be clipped together."""
    ids = {id(p) for p in given}
    return all(id(p) in ids for group in opt.param_groups for p in group["params"] if p.grad is not None)


# --- multi-tensor ops (the `multi_tensor_applier(op, noop_flag, tensor_lists, *args)` contract) ----

def foreach_l2_norm(chunk_size: int, noop_flag: Any, tensor_lists: list, per_tensor: bool, *args: Any) -> tuple:
    """2-norm over every tensor of `tensor_lists`: a 1-element fp32 tensor on the tensors' device.
    (Megatron's local version computes the same norms, then syncs the host once per tensor.)"""
    import torch

    tensors = [t for tensor_list in tensor_lists for t in tensor_list]
    if not tensors:
        device = noop_flag.device if isinstance(noop_flag, torch.Tensor) else "cpu"
        return torch.zeros(1, dtype=torch.float, device=device), None
    norms = torch._foreach_norm(tensors)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    return total.reshape(1), None


def foreach_scale(chunk_size: int, noop_flag: Any, tensor_lists: list, scale: float) -> None:
    """dst = src * scale for each pair; in place (no temporary) for the fp32 gradients that
    clipping scales. (torch's in-place bf16 foreach multiply can round differently from
    `src * scale`, so other dtypes take the out-of-place route, as Megatron's loop does.)"""
    import torch

    sources, destinations = tensor_lists[0], tensor_lists[1]
    if not sources:
        return
    if all(s is d and s.dtype == torch.float32 for s, d in zip(sources, destinations)):
        torch._foreach_mul_(destinations, scale)
    elif scale == 1.0:
        torch._foreach_copy_(destinations, sources)
    else:
        torch._foreach_copy_(destinations, torch._foreach_mul(sources, scale))


def multi_tensor_copy_this_to_that(this: list, that: list, overflow_buf: Any = None) -> None:
    """Megatron's `_multi_tensor_copy_this_to_that`, one multi-tensor copy for the whole list."""
    import torch

    if overflow_buf is not None:
        overflow_buf.fill_(0)
    if this:
        torch._foreach_copy_(that, this)


# --- distributed optimizer ------------------------------------------------------------------

def _plain_distopt(opt: Any) -> bool:
    ddp = opt.ddp_config
    cfg = opt.config
    return not (
        opt.is_stub_optimizer
        or getattr(ddp, "use_megatron_fsdp", False)
        or getattr(cfg, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False)
        or getattr(ddp, "fp8_param_gather", False)
        or getattr(ddp, "fp4_param_gather", False)
    )


def copy_main_params_to_model_params(self: Any) -> None:
    """DistributedOptimizer's main (fp32 shard) -> model (bf16 param buffer) copy as one
    multi-tensor copy; the same ranges as Megatron's per-tensor loop."""
    import torch

    if not _plain_distopt(self):
        return _original(_DISTOPT, "_copy_main_params_to_model_params")(self)
    sources: list = []
    destinations: list = []
    mains: list = []  # the main params themselves (sources are flat views of them)
    for shard_main_groups, model_groups in (
        (self.shard_fp32_from_float16_groups, self.model_float16_groups),
        (self.shard_fp32_groups, self.model_fp32_groups),
    ):
        for shard_main_group, model_group in zip(shard_main_groups, model_groups):
            for shard_main_param, model_param in zip(shard_main_group, model_group):
                world_range = self._get_model_param_range_map(model_param)["gbuf_world_in_bucket"]
                assert world_range.size == shard_main_param.nelement()
                gbuf_index, _, bucket_id = self.model_param_gbuf_map[model_param]
                buffer = self.buffers[gbuf_index].buckets[bucket_id].param_data
                destinations.append(buffer.view(-1)[world_range.start : world_range.end])
                sources.append(shard_main_param.view(-1))
                mains.append(shard_main_param)
    inner = self.optimizer
    if hasattr(inner, "take_written"):  # TritonAdamW: the step writes the bf16 params itself
        if inner.take_written(mains, destinations):
            return None
        inner.write_through(mains, destinations)  # from the next step on
    if sources:
        with torch.no_grad():
            torch._foreach_copy_(destinations, sources)
    return None
