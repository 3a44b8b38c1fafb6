"""Token permutation for MoE dispatch without atomics: a gather one way, a segment sum the other.

Megatron's unfused path moves tokens to expert order with `index_select` (backward: `index_add`
with bf16 atomics) and back with `scatter_add` (bf16 atomics again). Both directions touch
every routed copy of every token; on one H200 with Qwen3-30B-A3B's shapes the two atomic
kernels took about 7% of a step. Here "sum the routed copies of each token" is a segment sum:
the permuted positions sorted by token (a stable argsort of the permutation's indices) and each
token's segment in that order (a binary search, no host sync) let one program per token gather
its copies and add them in fp32, rounding once. Any number of copies per token is fine (token
dropping, or an all-gather dispatcher that sees only its local experts).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchlib.megatron.spec.kernels import use_triton

BLOCK_H = 1024


@triton.jit
def _segment_sum_kernel(src_ptr, order_ptr, offsets_ptr, out_ptr, hidden, BLOCK_H: tl.constexpr):
    """out[t, :] = sum of src[order[j], :] for j in [offsets[t], offsets[t + 1]); fp32 accumulation."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < hidden
    start = tl.load(offsets_ptr + token)
    end = tl.load(offsets_ptr + token + 1)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j in range(start, end):
        row = tl.load(order_ptr + j).to(tl.int64)
        acc += tl.load(src_ptr + row * hidden + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * hidden + cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


def token_segments(sorted_indices: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, offsets): permuted positions grouped by token, and token t's slice of them."""
    order = torch.argsort(sorted_indices, stable=True)
    tokens_in_order = sorted_indices.index_select(0, order)
    bounds = torch.arange(num_tokens + 1, device=sorted_indices.device, dtype=tokens_in_order.dtype)
    offsets = torch.searchsorted(tokens_in_order, bounds)
    return order, offsets


def segment_sum(src: torch.Tensor, sorted_indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[num_tokens, hidden]: row t is the sum of the rows j of `src` with sorted_indices[j] == t."""
    hidden = src.shape[-1]
    if not use_triton(src, sorted_indices):
        return reference_segment_sum(src, sorted_indices, num_tokens)
    src = src.contiguous()
    order, offsets = token_segments(sorted_indices, num_tokens)
    out = torch.empty(num_tokens, hidden, dtype=src.dtype, device=src.device)
    if num_tokens and hidden:
        _segment_sum_kernel[(num_tokens, triton.cdiv(hidden, BLOCK_H))](src, order, offsets, out, hidden, BLOCK_H=BLOCK_H)
    return out


def reference_segment_sum(src: torch.Tensor, sorted_indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
    out = torch.zeros(num_tokens, src.shape[-1], dtype=torch.float32, device=src.device)
    return out.index_add_(0, sorted_indices, src.float()).to(src.dtype)


class _PermuteTokens(torch.autograd.Function):
    """out = tokens[sorted_indices]; backward sums each token's copies (segment sum)."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, sorted_indices: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(sorted_indices)
        ctx.num_tokens = tokens.shape[0]
        return tokens.index_select(0, sorted_indices)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (sorted_indices,) = ctx.saved_tensors
        return segment_sum(grad, sorted_indices, ctx.num_tokens), None


class _UnpermuteTokens(torch.autograd.Function):
    """out[t] = sum of token t's expert outputs (segment sum); backward is a gather."""

    @staticmethod
    def forward(ctx, permuted: torch.Tensor, sorted_indices: torch.Tensor, num_tokens: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(sorted_indices)
        return segment_sum(permuted, sorted_indices, num_tokens)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (sorted_indices,) = ctx.saved_tensors
        return grad.index_select(0, sorted_indices), None, None


def permute_tokens(tokens: torch.Tensor, sorted_indices: torch.Tensor) -> torch.Tensor:
    """Rows of `tokens` in the order of `sorted_indices` (a token may appear any number of times)."""
    return _PermuteTokens.apply(tokens, sorted_indices)


def unpermute_tokens(permuted: torch.Tensor, sorted_indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Inverse of `permute_tokens`, summing the copies of each token (zero for a token with none)."""
    return _UnpermuteTokens.apply(permuted, sorted_indices, num_tokens)
