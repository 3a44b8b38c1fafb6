"""Megatron DDP's gradient buffer, handled in fewer passes (part of FAST_OPTIMIZER).

Megatron-Core 0.19.2 without Transformer Engine, per iteration, for an fp32 gradient buffer:
zeroes the whole buffer (`_ParamAndGradBuffer.reset`, at every `zero_grad_buffer`), adds each
bf16 weight gradient into it with torch's unvectorised mixed-dtype `add_`, then, before the
data-parallel collective, reads every bucket again for its 2-norm and syncs the host twice per
bucket (`check_grads`: NaN, then Inf). For the Qwen3-30B-A3B proxy at GBS 4 on an H200 that is
2.7 ms of zeroing, 7.3 ms of adding (after grad_accumulate's kernel) and 3.1 ms of norms.

Here:
- **No zeroing; the first write copies.** `reset` marks the buffer's parameters unwritten
  instead of zeroing it. The first gradient a parameter gets in the iteration is copied into its
  `main_grad` (exact: the same value as 0 + grad), later ones added. A parameter that got no
  gradient is zeroed just before its bucket group's grad sync, so every reader (the NaN check,
  the collective, `finalize_model_grads`, the optimizer) sees what Megatron's zeroed buffer
  would hold. Padding between parameters is never written and stays zero from allocation.
  Off (Megatron's zeroing) where something else writes `main_grad` during the backward: fused
  wgrad accumulation (TE), CUDA graphs, params with separate main grads, MXFP8 param gathers
  through the grad buffer.
- **The NaN/Inf norms come from the last micro-batch's writes.** The kernel that writes a
  parameter's final gradient also adds its squares to its bucket's accumulators; the bucket's
  norm is their sum's square root. A bucket with a parameter written another way, not written
  in the last micro-batch, or written twice in it gets Megatron's own `grad_data.norm()`.
- **One host sync for all the checks.** The norms are judged when the DDP's grad sync finishes
  (still inside the forward-backward pass): one device-to-host read of every bucket's NaN/Inf
  flags, then Megatron's `validate_result` per bucket and check, in Megatron's order, with its
  messages (the rerun state machine sees the same calls; only the test is precomputed).

Numerics: gradients are bit-identical to Megatron's (copy = 0 + grad; adds unchanged). The norms
are sums of the same squares in another order: NaN and Inf are found exactly as before.
"""
from __future__ import annotations

from typing import Any

from benchlib.megatron.fast_optimizer import _original

_DDP = "megatron.core.distributed.distributed_data_parallel.DistributedDataParallel"
_BUFFER = "megatron.core.distributed.param_and_grad_buffer._ParamAndGradBuffer"
_BUCKET_GROUP = "megatron.core.distributed.param_and_grad_buffer._ParamAndGradBucketGroup"


def install(patch: Any) -> None:
    """Patch Megatron's DDP classes with `patch(owner, name, replacement)` (fast_optimizer's)."""
    from megatron.core.distributed import param_and_grad_buffer
    from megatron.core.distributed.distributed_data_parallel import DistributedDataParallel

    patch(DistributedDataParallel, "__init__", ddp_init)
    patch(DistributedDataParallel, "_make_backward_post_hook", make_backward_post_hook)
    patch(DistributedDataParallel, "finish_grad_sync", ddp_finish_grad_sync)
    patch(param_and_grad_buffer._ParamAndGradBuffer, "reset", buffer_reset)
    bucket_group = param_and_grad_buffer._ParamAndGradBucketGroup
    patch(bucket_group, "reset", bucket_group_reset)
    patch(bucket_group, "start_grad_sync", start_grad_sync)
    patch(bucket_group, "check_grads", check_grads)


class _BufferState:
    """Per gradient buffer: whether it skips zeroing, and which parameters' main_grad still
    holds the previous iteration's values."""

    def __init__(self, copy_first: bool) -> None:
        self.copy_first = copy_first
        self.unwritten: set = set()
        self.zeroed_storage: int | None = None  # the grad buffer's data_ptr when last zeroed whole


class _NormState:
    """Per bucket group: the squares the last micro-batch's writes added, per bucket."""

    def __init__(self, group: Any) -> None:
        self.row_of = {p: i for i, bucket in enumerate(group.buckets) for p in bucket.params_list}
        self.sumsq = None  # (buckets, SLOTS) fp32 on the grads' device, made on first use
        self.counted: set = set()
        self.exact = [True] * len(group.buckets)
        self.fused_checks = 0  # bucket norms taken from the squares (observability, tests)

    def reset(self) -> None:
        if self.sumsq is not None:
            self.sumsq.zero_()
        self.counted.clear()
        self.exact = [True] * len(self.exact)


def copy_first_applies(ddp: Any) -> bool:
    """Nothing but the backward hook writes `main_grad` during the backward, so a first write
    may overwrite what the previous iteration left."""
    config, ddp_config = ddp.config, ddp.ddp_config
    return not (
        getattr(config, "gradient_accumulation_fusion", False)
        or getattr(config, "cuda_graph_impl", "none") not in ("none", None)
        or getattr(config, "enable_cuda_graph", False)
        or getattr(config, "external_cuda_graph", False)
        or getattr(ddp_config, "reuse_grad_buf_for_mxfp8_param_ag", False)
        or getattr(ddp_config, "use_megatron_fsdp", False)
    )


def ddp_init(self: Any, *args: Any, **kwargs: Any) -> None:
    """Megatron's DDP constructor, then each buffer's and bucket group's state."""
    _original(_DDP, "__init__")(self, *args, **kwargs)
    copy_first = copy_first_applies(self)
    state_of: dict = {}
    for buffer in list(getattr(self, "buffers", [])) + list(getattr(self, "expert_parallel_buffers", [])):
        extra = any(bucket.params_with_extra_main_grads for bucket in buffer.buckets)
        buffer._benchlib_state = _BufferState(copy_first and not extra)
        state_of.update((param, buffer._benchlib_state) for param in buffer.params)
    self._benchlib_state_of = state_of
    for group in _bucket_groups(self):
        group._benchlib_norms = _NormState(group)
        group._benchlib_pending = None
        group._benchlib_state_of = {p: state_of[p] for b in group.buckets for p in b.params_list if p in state_of}


def _bucket_groups(ddp: Any) -> list:
    return list(getattr(ddp, "bucket_groups", [])) + list(getattr(ddp, "expert_parallel_bucket_groups", []))


def buffer_reset(self: Any) -> None:
    """Megatron's reset zeroes the whole buffer; a copy-first buffer instead marks its params
    unwritten (separate main grads, if any, are zeroed as Megatron does)."""
    state = getattr(self, "_benchlib_state", None)
    storage = self.grad_data.data_ptr() if getattr(self, "grad_data", None) is not None else None
    if state is None or not state.copy_first or storage != state.zeroed_storage:
        # the first reset of this storage (new, or reallocated by an offload and reload) zeroes it
        # whole: the padding between parameters is never written and must read zero
        out = _original(_BUFFER, "reset")(self)
        if state is not None:
            state.zeroed_storage, state.unwritten = storage, set()
        return out
    for grad in getattr(self, "extra_main_grads", []):
        grad.zero_()
    state.unwritten = set(self.params)
    return None


def bucket_group_reset(self: Any) -> None:
    _original(_BUCKET_GROUP, "reset")(self)
    norms = getattr(self, "_benchlib_norms", None)
    if norms is not None:
        norms.reset()


def make_backward_post_hook(self: Any, param: Any) -> Any:
    """Megatron's DDP backward hook, with `main_grad = grad` (first write of the iteration) or
    `main_grad += grad` done by grad_accumulate's kernel, which also adds the squares for the NaN
    check in the last micro-batch. Megatron's own hook then runs as always (bucket bookkeeping,
    `param.grad = None`), told the grad is already added."""
    from megatron.core.transformer.cuda_graphs import is_graph_capturing

    from benchlib.megatron.grad_accumulate import accumulate_, kernel_applies, new_sumsq

    megatron_hook = _original(_DDP, "_make_backward_post_hook")(self, param)
    ddp = self

    def hook(*unused: Any) -> None:
        state = getattr(ddp, "_benchlib_state_of", {}).get(param)  # set after the hooks are made
        unwritten = state is not None and param in state.unwritten
        grad = param.grad
        main_grad = getattr(param, "main_grad", None)
        added_before = getattr(param, "grad_added_to_main_grad", False)
        if grad is None or main_grad is None or param not in ddp.param_to_bucket_group or is_graph_capturing():
            return megatron_hook(*unused)
        if added_before and not getattr(param, "zero_out_wgrad", False):
            if unwritten:
                raise RuntimeError(
                    "benchlib FAST_OPTIMIZER: a gradient was added to main_grad during the backward onto a buffer "
                    "that was not zeroed; rerun with FAST_OPTIMIZER=0 and report the configuration")
            return megatron_hook(*unused)
        if not kernel_applies(main_grad, grad.data):
            if unwritten:
                main_grad.zero_()
                state.unwritten.discard(param)
            return megatron_hook(*unused)
        group = ddp.param_to_bucket_group[param]
        norms = getattr(group, "_benchlib_norms", None)
        sumsq = None
        if norms is not None and group.is_last_microbatch and (
                ddp.ddp_config.check_for_nan_in_grad or ddp.ddp_config.check_for_large_grads):
            row = norms.row_of[param]
            if param in norms.counted:  # a second write in the last micro-batch: squares counted twice
                norms.exact[row] = False
            else:
                if norms.sumsq is None:
                    norms.sumsq = new_sumsq(main_grad.device, len(group.buckets))
                sumsq = norms.sumsq[row]
                norms.counted.add(param)
        accumulate_(main_grad, grad.data, overwrite=unwritten, sumsq=sumsq)
        if unwritten:
            state.unwritten.discard(param)
        zero_out = getattr(param, "zero_out_wgrad", None)
        param.grad_added_to_main_grad = True
        if zero_out is not None:
            param.zero_out_wgrad = False
        try:
            megatron_hook(*unused)
        finally:
            param.grad_added_to_main_grad = added_before
            if zero_out is not None:
                param.zero_out_wgrad = zero_out
        return None

    return hook


def start_grad_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
    """Zero the main_grad of this group's parameters that got no gradient this iteration, then
    Megatron's grad sync (whose NaN check and collective then read what a zeroed buffer holds)."""
    norms = getattr(self, "_benchlib_norms", None)
    for param, state in getattr(self, "_benchlib_state_of", {}).items():
        if param in state.unwritten:
            param.main_grad.zero_()
            state.unwritten.discard(param)
            if norms is not None:
                norms.counted.add(param)  # contributes 0 to its bucket's norm
    return _original(_BUCKET_GROUP, "start_grad_sync")(self, *args, **kwargs)


def check_grads(self: Any, check_for_nan_or_inf: bool, check_for_large: bool) -> None:
    """Megatron checks each bucket's local grad norm for NaN/Inf before its collective, reading
    the norm on the host twice per bucket in the middle of the backward. Here the norms (from the
    last micro-batch's squares where every parameter of the bucket was counted once, else
    Megatron's `grad_data.norm()`) are taken at the same point and judged when the DDP's grad
    sync finishes."""
    norms_state = getattr(self, "_benchlib_norms", None)
    fused = None
    if norms_state is not None and norms_state.sumsq is not None:
        fused = norms_state.sumsq.sum(dim=1).sqrt()
    norms = []
    for i, bucket in enumerate(self.buckets):
        whole = (fused is not None and norms_state.exact[i]
                 and all(p in norms_state.counted for p in bucket.params_list))
        norms.append(fused[i] if whole else bucket.grad_data.norm(p=2))
        norms_state.fused_checks += bool(whole) if norms_state is not None else 0
    previous = getattr(self, "_benchlib_pending", None)
    if previous is not None:  # not judged by a DDP grad sync since: judge it now
        _validate_bucket_norms(*previous)
    self._benchlib_pending = (norms, check_for_nan_or_inf, check_for_large)


def ddp_finish_grad_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
    """Megatron's finish_grad_sync, then every bucket group's pending checks with one host sync."""
    out = _original(_DDP, "finish_grad_sync")(self, *args, **kwargs)
    pending = []
    for group in _bucket_groups(self):
        if getattr(group, "_benchlib_pending", None) is not None:
            pending.append(group._benchlib_pending)
            group._benchlib_pending = None
    if pending:
        _validate_all(pending)
    return out


def _validate_all(pending: list) -> None:
    import torch

    flat = [norm.reshape(()).float() for norms, nan_inf, _ in pending if nan_inf for norm in norms]
    flags: Any = iter(())
    if flat:
        norms = torch.stack(flat)
        flags = iter(torch.stack([norms.isnan(), norms.isinf()]).t().tolist())  # the one host sync
    for norms, check_for_nan_or_inf, check_for_large in pending:
        known = [next(flags) for _ in norms] if check_for_nan_or_inf else None
        _validate_bucket_norms(norms, check_for_nan_or_inf, check_for_large, known)


def _validate_bucket_norms(norms: list, check_for_nan_or_inf: bool, check_for_large: bool,
                           known: list | None = None) -> None:
    """Megatron's check_grads validation (megatron/core/distributed/param_and_grad_buffer.py,
    0.19.2), on norms computed earlier; `known` holds each norm's (is NaN, is Inf) read already."""
    from functools import partial

    import torch
    from megatron.core.rerun_state_machine import get_rerun_state_machine

    rerun_state_machine = get_rerun_state_machine()
    where = "in backward pass before data-parallel communication collective"
    for i, grad_norm in enumerate(norms):
        if check_for_nan_or_inf:
            is_nan, is_inf = known[i] if known is not None else (None, None)
            rerun_state_machine.validate_result(
                result=grad_norm, rejection_func=torch.isnan if is_nan is None else (lambda _, v=is_nan: v),
                message=f"found NaN in local grad norm for bucket #{i} {where}", tolerance=0.001, fatal=True)
            rerun_state_machine.validate_result(
                result=grad_norm, rejection_func=torch.isinf if is_inf is None else (lambda _, v=is_inf: v),
                message=f"found Inf in local grad norm for bucket #{i} {where}", tolerance=0.001, fatal=True)
        if check_for_large:
            rerun_state_machine.validate_result(
                result=grad_norm,
                rejection_func=partial(rerun_state_machine.is_unexpectedly_large, threshold=10, context="grads"),
                message=f"found unexpected large grads in bucket #{i} {where}", tolerance=0.001, fatal=False)
