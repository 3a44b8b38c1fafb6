"""AdamW as one multi-tensor Triton kernel that also writes the bf16 model parameters.

torch's fused AdamW (what FAST_OPTIMIZER used before) moves 28 bytes per parameter (fp32 param,
grad, exp_avg and exp_avg_sq read; param, exp_avg and exp_avg_sq written) at about 2.8 TB/s on an
H200, and Megatron's distributed optimizer then reads the fp32 main params again to write the
bf16 parameter buffer (6 bytes per parameter more). Here one pass does both: 30 bytes per
parameter, close to the HBM bandwidth.

Layout: every tensor keeps its own storage (Megatron's optimizer state and checkpoints see
torch's AdamW: the same class underneath, `state[p]` with `step` a CPU scalar, `exp_avg`,
`exp_avg_sq`). A launch gets tables of pointers (int64 data_ptr per tensor) and a chunk table
(tensor index, start) built once per set of tensors and cached; each program updates CHUNK
elements of one tensor. One launch per parameter group (its lr and weight decay), step count and
kind of output.

Arithmetic (fp32) is torch's foreach AdamW, Megatron's own optimizer without TE/Apex, operation
by operation in its order (torch/optim/adam.py, _multi_tensor_adam): grad *= clip coefficient;
param *= 1 - lr*wd; m += (1-b1)*(g - m) (lerp); v = v*b2 + (1-b2)*g*g; param += -lr/(1-b1^t) *
m / (sqrt(v)/sqrt(1-b2^t) + eps), with correctly rounded sqrt and division and the scalars
computed on the host in double as torch does. Results agree with torch's to fp32 rounding (about
1e-7 relative on the tests' model, where an fma or vector path rounds differently), so the bf16
params and the losses of the CPU tests come out the same.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import triton
import triton.language as tl

from benchlib.megatron.spec.kernels import use_triton

# One block of 1024 elements per program, 4 warps: 23.3 ms for the proxy's 3.1 B parameters on an
# H200 (4.0 TB/s), the best of a sweep over 1024-4096 elements, 1-16 blocks per program and 4-16
# warps (2026-12-01; larger programs reached 24-28 ms, 4096 elements with 4 warps 63-71 ms).
BLOCK = 1024  # elements per inner iteration
CHUNK = BLOCK  # elements per program


@triton.jit
def _adamw_kernel(p_ptrs, g_ptrs, m_ptrs, v_ptrs, out_ptrs, numels, chunk_tensor, chunk_start,
                  grad_multiplier, decay, lerp_weight, beta2, one_minus_beta2, bias_correction2_sqrt, eps,
                  neg_step_size, HAS_MULTIPLIER: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_OUT: tl.constexpr,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor + pid)
    start = tl.load(chunk_start + pid)
    n = tl.load(numels + t)
    p_base = tl.load(p_ptrs + t).to(tl.pointer_type(tl.float32))
    g_base = tl.load(g_ptrs + t).to(tl.pointer_type(tl.float32))
    m_base = tl.load(m_ptrs + t).to(tl.pointer_type(tl.float32))
    v_base = tl.load(v_ptrs + t).to(tl.pointer_type(tl.float32))
    for i in range(CHUNK // BLOCK):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(p_base + offs, mask=mask, other=0.0)
        g = tl.load(g_base + offs, mask=mask, other=0.0)
        m = tl.load(m_base + offs, mask=mask, other=0.0)
        v = tl.load(v_base + offs, mask=mask, other=0.0)
        # the order of torch's foreach AdamW (Megatron's own without TE/Apex), op by op
        if HAS_MULTIPLIER:  # the clip coefficient (Megatron: multi_tensor_scale of the grads)
            g = g * grad_multiplier
        if HAS_DECAY:  # _foreach_mul_(params, 1 - lr * weight_decay)
            p = p * decay
        m = m + lerp_weight * (g - m)  # _foreach_lerp_(exp_avgs, grads, 1 - beta1), weight < 0.5
        v = v * beta2  # _foreach_mul_(exp_avg_sqs, beta2)
        v = v + one_minus_beta2 * g * g  # _foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
        p = p + neg_step_size * tl.div_rn(m, denom)  # _foreach_addcdiv_(params, exp_avgs, denom, -step_size)
        tl.store(p_base + offs, p, mask=mask)
        tl.store(m_base + offs, m, mask=mask)
        tl.store(v_base + offs, v, mask=mask)
        if HAS_OUT:
            out_base = tl.load(out_ptrs + t).to(tl.pointer_type(tl.uint16))
            tl.store(out_base + offs, _bf16_bits_rtne(p), mask=mask)


@triton.jit
def _bf16_bits_rtne(x):
    """fp32 -> bf16 bits, round to nearest even (as torch's copy_). Spelled out because Triton's CPU
    interpreter, which the tests run, truncates in `.to(tl.bfloat16)`; NaN stays a quiet NaN."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, rounded).to(tl.uint16)


class _Launch:
    """The device tables for one list of tensors (pointers do not change between steps: Megatron's
    grads are views of its gradient buffer, its main params and torch's state are allocated once).
    A program's chunk is (tensor index, start element); built on the device, once."""

    def __init__(self, tensors: list[list[torch.Tensor]], numels: list[int], device: torch.device) -> None:
        def table(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64).to(device)

        self.pointers = [table([x.data_ptr() for x in column]) for column in tensors]
        chunks = table([math.ceil(n / CHUNK) for n in numels])
        self.numels = table(numels)
        self.programs = int(chunks.sum())
        self.chunk_tensor = torch.repeat_interleave(torch.arange(len(numels), device=device), chunks,
                                                    output_size=self.programs)
        first_chunk = torch.cumsum(chunks, 0) - chunks
        self.chunk_start = (torch.arange(self.programs, device=device) - first_chunk[self.chunk_tensor]) * CHUNK


class TritonAdamW(torch.optim.AdamW):
    """torch.optim.AdamW (its default, non-fused state layout: `step` a CPU scalar per parameter)
    whose step is the kernel above for CUDA fp32 parameters, and torch's own foreach step for
    anything else (other dtypes, amsgrad, maximize, CPU tensors outside the tests' interpreter).

    `clip_coeff` (a float, for one step) multiplies the grads as they are read: Megatron's clip by
    total norm, without a pass of its own. `write_through(params, destinations)` names a bf16
    tensor per parameter that each step writes with the updated parameter (Megatron's main ->
    model copy); `take_written(params, destinations)` tells the copy whether the last step
    already wrote exactly those."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        kwargs["fused"] = False
        kwargs.setdefault("foreach", True)
        super().__init__(params, **kwargs)
        self.clip_coeff: Optional[float] = None
        self._destinations: dict[int, torch.Tensor] = {}
        self._written: set[int] = set()
        self._launches: dict[tuple, _Launch] = {}

    # --- Megatron's main -> model copy ----------------------------------------------------------

    def write_through(self, params: list[torch.Tensor], destinations: list[torch.Tensor]) -> None:
        for p, d in zip(params, destinations):
            if d.dtype == torch.bfloat16 and d.is_contiguous() and d.numel() == p.numel():
                self._destinations[id(p)] = d

    def take_written(self, params: list[torch.Tensor], destinations: list[torch.Tensor]) -> bool:
        """True when the last step wrote every one of `params` into `destinations` (and forget it:
        one step's write answers one copy)."""
        written, self._written = self._written, set()
        return bool(params) and all(
            id(p) in written and _same_view(self._destinations.get(id(p)), d) for p, d in zip(params, destinations)
        )

    # --- the step -------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._written = set()
        clip, self.clip_coeff = self.clip_coeff, None  # one clip coefficient applies to one step
        leftover = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if self._kernel_applies(group, params):
                self._kernel_step(group, params, clip)
            else:
                leftover.append(group)
        if leftover:  # torch's own step for the groups the kernel does not take
            if clip is not None:
                torch._foreach_mul_([p.grad for g in leftover for p in g["params"] if p.grad is not None], clip)
            kept = self.param_groups
            self.param_groups = leftover
            try:
                super().step()
            finally:
                self.param_groups = kept
        return loss

    def _kernel_applies(self, group: dict, params: list[torch.Tensor]) -> bool:
        if group["amsgrad"] or group["maximize"] or group.get("differentiable") or group.get("capturable"):
            return False
        if not use_triton(*params) or 1 - group["betas"][0] >= 0.5:  # torch's lerp takes the other branch
            return False
        device = params[0].device
        return all(
            p.dtype == torch.float32 and p.grad.dtype == torch.float32 and p.is_contiguous()
            and p.grad.is_contiguous() and p.device == device and p.grad.device == device
            and (not self.state[p] or self.state[p]["step"].device.type == "cpu")
            for p in params
        )

    def _kernel_step(self, group: dict, params: list[torch.Tensor], clip: Optional[float]) -> None:
        by_step: dict[float, list[torch.Tensor]] = {}
        for p in params:
            state = self.state[p]
            if not state:  # torch's foreach layout
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1  # a CPU scalar: no device work, no sync
            by_step.setdefault(float(state["step"]), []).append(p)
        beta1, beta2 = group["betas"]
        lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
        for step, same_step in by_step.items():
            # the scalars as torch's foreach AdamW computes them (Python floats, rounded to fp32 by the kernel)
            bias_correction1 = 1 - beta1**step
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            scalars = dict(
                grad_multiplier=clip if clip is not None else 1.0, decay=1 - lr * weight_decay,
                lerp_weight=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                bias_correction2_sqrt=bias_correction2_sqrt, eps=float(group["eps"]),
                neg_step_size=(lr / bias_correction1) * -1,
            )
            with_out = [p for p in same_step if id(p) in self._destinations]
            without = [p for p in same_step if id(p) not in self._destinations]
            for subset, has_out in ((with_out, True), (without, False)):
                if subset:
                    self._launch(subset, has_out, scalars, clip is not None, weight_decay != 0)

    def _launch(self, params: list[torch.Tensor], has_out: bool, scalars: dict, has_multiplier: bool,
                has_decay: bool) -> None:
        columns = [params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                   [self.state[p]["exp_avg_sq"] for p in params]]
        if has_out:
            columns.append([self._destinations[id(p)] for p in params])
        key = tuple((x.data_ptr(), x.numel()) for column in columns for x in column)
        launch = self._launches.get(key)
        if launch is None:
            if len(self._launches) > 16:  # tensors re-allocated (a reload): drop the stale tables
                self._launches.clear()
            launch = self._launches[key] = _Launch(columns, [p.numel() for p in params], params[0].device)
        out_table = launch.pointers[4] if has_out else launch.pointers[0]  # not read without HAS_OUT
        _adamw_kernel[(launch.programs,)](
            *launch.pointers[:4], out_table, launch.numels, launch.chunk_tensor, launch.chunk_start, **scalars,
            HAS_MULTIPLIER=has_multiplier, HAS_DECAY=has_decay, HAS_OUT=has_out, CHUNK=CHUNK, BLOCK=BLOCK,
        )
        if has_out:
            self._written.update(id(p) for p in params)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._launches.clear()  # the state tensors are new


def _same_view(a: Optional[torch.Tensor], b: torch.Tensor) -> bool:
    return a is not None and a.data_ptr() == b.data_ptr() and a.numel() == b.numel() and a.dtype == b.dtype
