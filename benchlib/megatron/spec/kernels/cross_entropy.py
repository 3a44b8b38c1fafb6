"""Cross-entropy over the whole vocabulary in two passes over bf16 logits, no fp32 copy.

Megatron's unfused `vocab_parallel_cross_entropy` converts the logits to fp32 and runs a dozen
elementwise kernels over them: with a 152k vocabulary and 16k tokens per micro-batch that is
10 GB per pass, about a fifth of a Qwen3-30B-A3B proxy step on one H200 (measured, bench/results).
Here the forward reads the logits once (online max and sum of exponentials in fp32, per row) and
keeps only the per-token log-sum-exp; the backward reads them once more and writes the gradient
in place of the logits, which nothing needs after the loss (the output layer's backward uses its
input and weight). Same arithmetic as Megatron's (fp32 from the bf16 logits), for one
tensor-parallel rank; callers fall back to Megatron's function otherwise.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchlib.megatron.spec.kernels import use_triton

BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _ce_forward_kernel(logits_ptr, target_ptr, loss_ptr, lse_ptr, n_cols, row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    m = float("-inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(target_ptr + row).to(tl.int64)
    in_range = (target >= 0) & (target < n_cols)
    # a target outside the vocabulary contributes no predicted logit (Megatron's masking)
    x_target = tl.load(base + tl.where(in_range, target, 0)).to(tl.float32)
    x_target = tl.where(in_range, x_target, 0.0)
    tl.store(loss_ptr + row, lse - x_target)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _ce_backward_kernel(logits_ptr, target_ptr, lse_ptr, grad_ptr, n_cols, row_stride, BLOCK: tl.constexpr):
    """grad_logits = (softmax - onehot(target)) * grad_loss, written over the logits."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    lse = tl.load(lse_ptr + row)
    g = tl.load(grad_ptr + row).to(tl.float32)
    target = tl.load(target_ptr + row).to(tl.int64)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(x - lse)
        p = tl.where(cols == target, p - 1.0, p)
        tl.store(base + cols, (p * g).to(logits_ptr.dtype.element_ty), mask=mask)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        vocab = logits.shape[-1]
        rows = logits.reshape(-1, vocab)
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        flat_target = target.reshape(-1).contiguous()
        n = rows.shape[0]
        loss = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        if n:
            _ce_forward_kernel[(n,)](rows, flat_target, loss, lse, vocab, rows.stride(0), BLOCK=BLOCK, num_warps=NUM_WARPS)
        ctx.save_for_backward(rows, flat_target, lse)
        ctx.logits_shape = logits.shape
        return loss.view(target.shape)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        rows, flat_target, lse = ctx.saved_tensors
        n, vocab = rows.shape
        grad = grad_loss.reshape(-1).contiguous()
        if n:
            _ce_backward_kernel[(n,)](rows, flat_target, lse, grad, vocab, rows.stride(0), BLOCK=BLOCK, num_warps=NUM_WARPS)
        # written in place behind autograd's back: bump the version so that any other saved
        # reference to these logits fails loudly instead of reading gradients
        torch.autograd.graph.increment_version(rows)
        return rows.view(ctx.logits_shape), None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token loss [*target.shape] in fp32 for logits [*target.shape, vocab] (one TP rank)."""
    if use_triton(logits, target):
        return _CrossEntropy.apply(logits, target)
    return reference_cross_entropy(logits, target)


def reference_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain torch, fp32: log-sum-exp minus the target's logit (0 for a target outside the vocabulary)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    in_range = (target >= 0) & (target < x.shape[-1])
    picked = x.gather(-1, torch.where(in_range, target, 0).unsqueeze(-1)).squeeze(-1)
    return lse - torch.where(in_range, picked, torch.zeros_like(picked))
