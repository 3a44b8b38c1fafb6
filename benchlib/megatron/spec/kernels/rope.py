"""Rotary position embedding in one pass per direction (Megatron's unfused RoPE takes about ten).

Megatron's `_apply_rotary_pos_emb_bshd` without Transformer Engine splits, negates, concatenates
and multiplies the query and key tensors in separate kernels, forward and backward. Here one
kernel reads each row of `t` ([seq, batch, heads, dim], any strides with a contiguous last dim)
and the position's angles, and writes the rotated row:
y[i] = x'[i] cos(f[i]) + r[i] sin(f[i]), with r = (-x'[half:], x'[:half]) (rotate-half), both
scaled by mscale; x' is x, or for MLA x with its even then odd features (`mla_rotary_interleaved`).
Features past the rotary dim pass through. The backward is the transposed map, in one kernel too.
Arithmetic in fp32, one rounding (Megatron rounds cos/sin and each product to the input dtype).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchlib.megatron.spec.kernels import use_triton

ROWS = 8


@triton.jit
def _rope_kernel(src_ptr, freqs_ptr, out_ptr, n_rows, batch, heads, stride_s, stride_b, stride_h,
                 dim, rot_dim, mscale, MLA: tl.constexpr, BACKWARD: tl.constexpr, ROWS: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    rows64 = rows.to(tl.int64)
    h = rows64 % heads
    b = (rows64 // heads) % batch
    s = rows64 // (heads * batch)
    src_base = s * stride_s + b * stride_b + h * stride_h          # strided input rows
    out_base = rows64 * dim                                         # contiguous output rows
    i = tl.arange(0, BLOCK_D)
    half = rot_dim // 2
    in_rot = i < rot_dim
    partner = tl.where(i < half, i + half, i - half)
    sign = tl.where(i < half, -1.0, 1.0)
    if MLA:  # position i of the rotated layout holds feature 2i (first half) or 2(i-half)+1
        feat = tl.where(i < half, 2 * i, 2 * (i - half) + 1)
        feat_partner = tl.where(partner < half, 2 * partner, 2 * (partner - half) + 1)
    else:
        feat = i
        feat_partner = partner
    mask2 = row_mask[:, None] & (i < dim)[None, :]
    rot2 = row_mask[:, None] & in_rot[None, :]
    f = tl.load(freqs_ptr + s[:, None] * rot_dim + i[None, :], mask=rot2, other=0.0).to(tl.float32)
    cos = tl.cos(f) * mscale
    sin = tl.sin(f) * mscale
    if not BACKWARD:
        x = tl.load(src_ptr + src_base[:, None] + tl.where(in_rot, feat, i)[None, :], mask=mask2, other=0.0).to(tl.float32)
        xp = tl.load(src_ptr + src_base[:, None] + feat_partner[None, :], mask=rot2, other=0.0).to(tl.float32)
        y = tl.where(in_rot[None, :], x * cos + sign[None, :] * xp * sin, x)
        tl.store(out_ptr + out_base[:, None] + i[None, :], y.to(out_ptr.dtype.element_ty), mask=mask2)
    else:
        # dx'[j] = dy[j] cos(f[j]) - sign(j) dy[p(j)] sin(f[p(j)]); dx[feat(j)] = dx'[j]
        g = tl.load(src_ptr + src_base[:, None] + i[None, :], mask=mask2, other=0.0).to(tl.float32)
        gp = tl.load(src_ptr + src_base[:, None] + partner[None, :], mask=rot2, other=0.0).to(tl.float32)
        fp = tl.load(freqs_ptr + s[:, None] * rot_dim + partner[None, :], mask=rot2, other=0.0).to(tl.float32)
        dx = tl.where(in_rot[None, :], g * cos - sign[None, :] * gp * (tl.sin(fp) * mscale), g)
        tl.store(out_ptr + out_base[:, None] + tl.where(in_rot, feat, i)[None, :], dx.to(out_ptr.dtype.element_ty), mask=mask2)


def _launch(src: torch.Tensor, freqs2d: torch.Tensor, mscale: float, mla: bool, backward: bool) -> torch.Tensor:
    if src.stride(-1) != 1:
        src = src.contiguous()
    seq, batch, heads, dim = src.shape
    out = torch.empty(seq, batch, heads, dim, dtype=src.dtype, device=src.device)
    n_rows = seq * batch * heads
    if n_rows:
        _rope_kernel[(triton.cdiv(n_rows, ROWS),)](
            src, freqs2d, out, n_rows, batch, heads, src.stride(0), src.stride(1), src.stride(2),
            dim, freqs2d.shape[1], float(mscale), MLA=mla, BACKWARD=backward, ROWS=ROWS,
            BLOCK_D=triton.next_power_of_2(dim),
        )
    return out


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, freqs2d: torch.Tensor, mscale: float, mla: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(freqs2d)
        ctx.mscale, ctx.mla = mscale, mla
        return _launch(t, freqs2d, mscale, mla, backward=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (freqs2d,) = ctx.saved_tensors
        return _launch(grad, freqs2d, ctx.mscale, ctx.mla, backward=True), None, None, None


def covers(t: torch.Tensor, freqs: torch.Tensor, rotary_interleaved: bool) -> bool:
    """What the kernel handles: [s, b, h, d] input, [s, 1, 1, rot] angles, rotate-half layout."""
    return (
        not rotary_interleaved and t.dim() == 4 and freqs.dim() == 4 and freqs.shape[0] == t.shape[0]
        and freqs.shape[1] == 1 and freqs.shape[2] == 1 and freqs.shape[3] % 2 == 0
        and freqs.shape[3] <= t.shape[3] and use_triton(t, freqs)
    )


def apply_rope(t: torch.Tensor, freqs: torch.Tensor, mscale: float = 1.0, mla_interleaved: bool = False) -> torch.Tensor:
    """Rotate t [s, b, h, d] by the angles freqs [s, 1, 1, rot] (rot <= d; the rest passes)."""
    freqs2d = freqs.reshape(freqs.shape[0], freqs.shape[3]).float().contiguous()
    return _Rope.apply(t, freqs2d, float(mscale), bool(mla_interleaved))
