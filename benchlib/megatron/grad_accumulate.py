"""main_grad += grad (fp32 += bf16), or main_grad = grad for an iteration's first write, in one
vectorised pass, optionally adding the squares of what it writes to a norm accumulator.

Without Transformer Engine's fused wgrad accumulation, Megatron's DDP adds every bf16 weight
gradient into its fp32 `main_grad` with `main_grad.add_(grad)`. The mixed dtypes send torch to
its unvectorised elementwise path: 11.7 ms per micro-batch for the Qwen3-30B-A3B proxy's 3.1 B
parameters on an H200 (2.65 TB/s; profile of 2026-12-01). The same 10 bytes per element read
and written with 16-byte loads take about 7.3 ms; the first write of an iteration needs no read
of the buffer (6 bytes per element), and then the buffer needs no zeroing before it
(fast_grads.py). The sum is the same fp32 addition, rounded once; the first write is exact.

The squares (`sumsq`) are what Megatron's per-bucket NaN/Inf check would read the whole bucket
again for (a 2-norm): each program adds its block's sum of squares to one of `SLOTS` fp32
accumulators (spread so that the atomics do not queue on one address); the norm is the square
root of their sum.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from benchlib.megatron.spec.kernels import use_triton

BLOCK = 2048
SLOTS = 256  # accumulators per norm: atomics on one address from ~10^5 programs would serialise


@triton.jit
def _accumulate_kernel(acc_ptr, grad_ptr, n, sumsq_ptr, OVERWRITE: tl.constexpr, SUMSQ: tl.constexpr,
                       SLOTS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if OVERWRITE:
        out = grad
    else:
        out = tl.load(acc_ptr + offs, mask=mask, other=0.0) + grad
    tl.store(acc_ptr + offs, out, mask=mask)
    if SUMSQ:
        tl.atomic_add(sumsq_ptr + pid % SLOTS, tl.sum(out * out, axis=0))


def kernel_applies(acc: torch.Tensor, grad: torch.Tensor) -> bool:
    return (
        acc.dtype == torch.float32 and grad.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and acc.is_contiguous() and grad.is_contiguous() and acc.numel() == grad.numel()
        and acc.device == grad.device and use_triton(acc, grad)
    )


def new_sumsq(device: torch.device, rows: int = 1) -> torch.Tensor:
    """Zeroed accumulators for `rows` norms (one row of SLOTS per norm)."""
    return torch.zeros(rows, SLOTS, dtype=torch.float32, device=device)


def accumulate_(acc: torch.Tensor, grad: torch.Tensor, overwrite: bool = False,
                sumsq: Optional[torch.Tensor] = None) -> None:
    """acc += grad (acc = grad with `overwrite`), in place; with `sumsq` (a row of SLOTS fp32
    accumulators) the squares of the new acc are added to it. torch's ops where the kernel does
    not apply."""
    if not kernel_applies(acc, grad):
        if overwrite:
            acc.copy_(grad)
        else:
            acc.add_(grad)
        if sumsq is not None:
            sumsq[0] += acc.float().square().sum()
        return
    n = acc.numel()
    if n:
        _accumulate_kernel[(triton.cdiv(n, BLOCK),)](
            acc, grad, n, sumsq if sumsq is not None else acc,
            OVERWRITE=overwrite, SUMSQ=sumsq is not None, SLOTS=SLOTS, BLOCK=BLOCK)
