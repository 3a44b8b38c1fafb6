"""GPU checks of the torch-native spec's kernels (bf16, the real CUDA paths), plus timings.

    python bench/gpu_spec_check.py [--out DIR]

1. grouped GEMM (torch grouped_mm) vs a float64 loop of matmuls: forward and both gradients,
   uneven token counts including experts with no token (the shapes MoE routing gives).
2. SDPAttention vs float64 softmax(QK^T*scale + causal)V: GQA (32 q / 4 kv heads, d 128) and
   MLA (16 heads, q/k 192, v 128, DeepSeek-V2's mscale softmax scale), forward and gradients.
3. Timings (median, CUDA events): experts forward+backward grouped vs a per-expert loop at
   Qwen3-30B-A3B shapes.
Prints one line per check and a JSON summary; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_timing import timed  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_grouped(results: dict) -> bool:
    from benchlib.megatron.spec.experts import grouped_mm, reference_grouped_mm

    torch.manual_seed(0)
    ok = True
    for E, K, N, counts in [(8, 2048, 1536, None), (32, 2048, 768, None), (4, 512, 256, [0, 37, 0, 91])]:
        if counts is None:
            c = torch.randint(0, 300, (E,))
            c[1] = 0
            counts = c.tolist()
        T = sum(counts)
        offs = torch.tensor(counts, device=DEV).cumsum(0).to(torch.int32)
        x = torch.randn(T, K, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(E, N, K, device=DEV, dtype=torch.bfloat16) / math.sqrt(K)).requires_grad_()
        y = grouped_mm(x, w.transpose(-2, -1), offs)
        g = torch.randn_like(y)
        y.backward(g)
        xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        yr = reference_grouped_mm(xd, wd.transpose(-2, -1), offs)
        yr.backward(g.double())
        errs = dict(fwd=rel(y, yr), dx=rel(x.grad, xd.grad), dw=rel(w.grad, wd.grad))
        good = all(v < 2e-2 for v in errs.values()) and torch.isfinite(y).all().item()
        ok &= good
        results[f"grouped_E{E}_K{K}_N{N}"] = {**errs, "ok": good, "counts_head": counts[:6]}
        print(f"grouped_mm E={E} K={K} N={N} T={T}: {errs} {'OK' if good else 'FAIL'}", flush=True)
    return ok


def check_attention(results: dict) -> bool:
    from megatron.core.transformer.enums import AttnMaskType
    from types import SimpleNamespace

    from benchlib.megatron.spec.attention import SDPAttention

    ok = True
    for name, nq, ng, dk, dv, scale in [
        ("gqa", 32, 4, 128, 128, None),
        ("mla", 16, 16, 192, 128, (0.1 * 0.707 * math.log(40) + 1.0) ** 2 / math.sqrt(192)),
    ]:
        cfg = SimpleNamespace(context_parallel_size=1, softmax_type="vanilla", window_size=None, window_attn_skip_freq=None,
                              kv_channels=dk, num_attention_heads=nq, num_query_groups=ng, attention_dropout=0.0,
                              sequence_parallel=False)
        tp = SimpleNamespace(size=lambda: 1)
        attn = SDPAttention(cfg, 1, AttnMaskType.causal, "self", softmax_scale=scale, k_channels=dk, v_channels=dv,
                      pg_collection=SimpleNamespace(tp=tp))
        s, b = (2048, 2) if DEV == "cuda" else (64, 2)
        q = torch.randn(s, b, nq, dk, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(s, b, ng, dk, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(s, b, ng, dv, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        out = attn(q, k, v, None)
        g = torch.randn_like(out)
        out.backward(g)
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        sc = scale if scale is not None else 1 / math.sqrt(dk)
        rep = nq // ng
        kk, vv = kd.repeat_interleave(rep, 2), vd.repeat_interleave(rep, 2)
        scores = torch.einsum("sbhd,tbhd->bhst", qd, kk) * sc
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device=DEV), 1)
        p = scores.masked_fill(mask, float("-inf")).softmax(-1)
        ref = torch.einsum("bhst,tbhd->sbhd", p, vv).reshape(s, b, nq * dv)
        ref.backward(g.double())
        errs = dict(fwd=rel(out, ref), dq=rel(q.grad, qd.grad), dk=rel(k.grad, kd.grad), dv=rel(v.grad, vd.grad))
        good = all(e < 2e-2 for e in errs.values())
        ok &= good
        results[f"attention_{name}"] = {**errs, "ok": good}
        print(f"SDPAttention {name} (nq={nq} ng={ng} dk={dk} dv={dv}): {errs} {'OK' if good else 'FAIL'}", flush=True)
    return ok


def time_experts(results: dict) -> None:
    from benchlib.megatron.spec.experts import grouped_mm

    E, H, F, topk = 128, 2048, 768, 8
    for mbs in (1, 2, 4):
        T = mbs * 4096 * topk
        counts = torch.full((E,), T // E)
        offs = counts.cumsum(0).to(torch.int32).to(DEV)
        x = torch.randn(T, H, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        w1 = (torch.randn(E, 2 * F, H, device=DEV, dtype=torch.bfloat16) * 0.02).requires_grad_()
        w2 = (torch.randn(E, H, F, device=DEV, dtype=torch.bfloat16) * 0.02).requires_grad_()
        g = torch.randn(T, H, device=DEV, dtype=torch.bfloat16)

        def grouped():
            h = grouped_mm(x, w1.transpose(-2, -1), offs)
            a, l = h.chunk(2, -1)
            y = grouped_mm(torch.nn.functional.silu(a) * l, w2.transpose(-2, -1), offs)
            y.backward(g)

        def loop():
            outs = []
            for xe, a1, a2 in zip(x.split(counts.tolist()), w1, w2):
                h = xe @ a1.t()
                a, l = h.chunk(2, -1)
                outs.append((torch.nn.functional.silu(a) * l) @ a2.t())
            torch.cat(outs).backward(g)

        flops = 3 * 2 * T * H * 3 * F  # fwd+bwd of the three projections
        for label, fn in (("grouped", grouped), ("loop", loop)):
            ms = timed(fn)
            results[f"experts_fwdbwd_mbs{mbs}_{label}_tflops"] = flops / ms / 1e9
            print(f"experts fwd+bwd MBS {mbs} {label}: {ms:.2f} ms, {flops / ms / 1e9:.0f} TFLOP/s (incl. act)", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    a = p.parse_args()
    results: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"}
    ok = check_grouped(results)
    ok &= check_attention(results)
    try:
        if DEV == "cuda":
            time_experts(results)
    except Exception as err:  # timings are informative only
        results["timing_error"] = repr(err)
    results["ok"] = bool(ok)
    text = json.dumps(results, indent=1)
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "spec_check.json").write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
