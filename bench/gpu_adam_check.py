"""The AdamW kernel (benchlib/megatron/fast_adam.py) against torch's AdamW on a GPU, and its speed
on the Qwen3-30B-A3B proxy's parameter shapes (3.1 B fp32 parameters, one GPU, distributed optimizer).

    python bench/gpu_adam_check.py OUT_JSON

Correctness: three steps with clipping (a clip coefficient of 0.37) and weight decay on a few
hundred thousand parameters of uneven sizes, against torch's foreach AdamW (Megatron's own optimizer
without TE/Apex) with the grads multiplied first, as Megatron's clip does; the bf16 params the
kernel writes against the fp32 params rounded with `copy_`.
Speed (CUDA events, median of 10): what one optimizer step costs outside the grad norm:
- `torch_fused_plus_copy`: torch's fused AdamW (grad_scale), then one foreach fp32 -> bf16 copy
  (what FAST_OPTIMIZER did before the kernel);
- `torch_foreach_plus_copy`: Megatron's own path without TE/Apex (scale, foreach AdamW, copy);
- `triton_write_through`: the kernel, writing the bf16 params itself.
Bytes moved per parameter: 28 for AdamW with fp32 state, +6 for a separate copy, +2 written through.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_timing import timed  # noqa: E402

from benchlib.megatron.fast_adam import TritonAdamW  # noqa: E402

# Qwen3-30B-A3B proxy (4 layers): embedding and output layer (151936 x 2048), per layer the
# experts' two grouped weights (128 x 1536 x 2048, 128 x 2048 x 768), attention and norms.
PROXY_SHAPES = [151936 * 2048, 151936 * 2048, 2048] + 4 * [
    128 * 1536 * 2048, 128 * 2048 * 768, 2048 * 5120, 4096 * 2048, 128 * 2048, 2048, 2048, 128, 128]


def correctness() -> dict:
    torch.manual_seed(0)
    sizes = [1, 7, 1000, 4096, 65537, 300000]
    params = [torch.randn(n, device="cuda") * 0.02 for n in sizes]
    mine = [p.clone() for p in params]
    ref = [p.clone() for p in params]
    groups = lambda ps: [{"params": ps[:4], "weight_decay": 0.1}, {"params": ps[4:], "weight_decay": 0.0}]  # noqa: E731
    opt = TritonAdamW(groups(mine), lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    own = torch.optim.AdamW(groups(ref), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    out = [torch.empty(n, device="cuda", dtype=torch.bfloat16) for n in sizes]
    opt.write_through(mine, out)
    clip = 0.37
    worst_param = worst_bf16_ulps = 0.0
    for _ in range(3):
        grads = [torch.randn(n, device="cuda") for n in sizes]
        for a, b, g in zip(mine, ref, grads):
            a.grad, b.grad = g.clone(), g.clone()
        torch._foreach_mul_([b.grad for b in ref], clip)
        opt.clip_coeff = clip
        opt.step()
        own.step()
        assert opt.take_written(mine, out)
        for a, b, o in zip(mine, ref, out):
            worst_param = max(worst_param, float((a - b).abs().max() / b.abs().max()))
            rounded = a.to(torch.bfloat16)
            ulps = (o.view(torch.int16).int() - rounded.view(torch.int16).int()).abs().max()
            worst_bf16_ulps = max(worst_bf16_ulps, float(ulps))
    return {"steps": 3, "max_rel_param_diff_vs_torch_foreach": worst_param,
            "max_bf16_ulps_vs_copy_of_fp32": worst_bf16_ulps,
            "passed": worst_param < 1e-6 and worst_bf16_ulps == 0}


def speed() -> dict:
    numel = sum(PROXY_SHAPES)
    main = [torch.randn(n, device="cuda") * 0.02 for n in PROXY_SHAPES]
    for p in main:
        p.grad = torch.randn_like(p)
    model = [torch.empty(n, device="cuda", dtype=torch.bfloat16) for n in PROXY_SHAPES]
    results = {}

    fused = torch.optim.AdamW(main, lr=3e-4, weight_decay=0.1, fused=True)
    fused.grad_scale = torch.tensor(1 / 0.5, device="cuda")

    def torch_fused_plus_copy():
        fused.step()
        torch._foreach_copy_(model, main)

    results["torch_fused_plus_copy_ms"] = timed(torch_fused_plus_copy)
    del fused
    torch.cuda.empty_cache()

    foreach = torch.optim.AdamW(main, lr=3e-4, weight_decay=0.1, foreach=True)

    def torch_foreach_plus_copy():
        torch._foreach_mul_([p.grad for p in main], 0.5)
        foreach.step()
        torch._foreach_copy_(model, main)

    results["torch_foreach_plus_copy_ms"] = timed(torch_foreach_plus_copy, reps=5)
    del foreach
    torch.cuda.empty_cache()

    triton_opt = TritonAdamW(main, lr=3e-4, weight_decay=0.1)
    triton_opt.write_through(main, model)

    def triton_write_through():
        triton_opt.clip_coeff = 0.5
        triton_opt.step()
        triton_opt.take_written(main, model)

    results["triton_write_through_ms"] = timed(triton_write_through)
    bytes_moved = 30 * numel
    results.update(parameters=numel, triton_bytes_per_parameter=30,
                   triton_achieved_tb_per_s=bytes_moved / (results["triton_write_through_ms"] / 1e3) / 1e12,
                   speedup_vs_torch_fused_plus_copy=results["torch_fused_plus_copy_ms"] / results["triton_write_through_ms"])
    return results


def main() -> int:
    out_path = Path(sys.argv[1])
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "correctness": correctness()}
    result["speed"] = speed()
    result["passed"] = result["correctness"]["passed"] and result["speed"]["speedup_vs_torch_fused_plus_copy"] > 1.0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
