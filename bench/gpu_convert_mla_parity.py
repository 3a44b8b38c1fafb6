"""MLA checkpoint-conversion logit parity on a GPU (issue 7, item 4).

    python3 bench/gpu_convert_mla_parity.py [OUT_DIR]      # OUT_DIR defaults to $OUT, else bench/results

For DeepSeek-V2-Lite (no q LoRA), DeepSeek-V2 and DeepSeek-V3 (q LoRA, sigmoid router with
e_score_correction_bias, group-limited routing, MTP layer): a tiny random model is built with
transformers' own classes (no download), saved in many safetensors shards, converted with
`benchlib.convert.hf_to_mcore` (torch_dist, fp32), loaded into a Megatron-Core GPTModel on the GPU
through Megatron's `dist_checkpointing.load`, and its logits are compared with Hugging Face's
(fp32 on CPU, the reference) on the same tokens. Two specs per family:
  native     benchlib.megatron.spec (the suite's torch-native spec: SDPA attention, grouped-GEMM experts)
  local+sdpa Megatron's local spec with the native spec's SDPA core attention (benchlib.megatron.sdpa_attention)
             (Megatron's local DotProductAttention refuses MLA's k_channels)
Pass: max |logit difference| < 1e-4 for every family on at least one spec, and on the native spec
wherever it builds. Prints one verdict line and writes convert_mla_parity.json in OUT_DIR.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "convert"))

TOL = 1e-4
FAMILIES = ("DeepSeek-V2-Lite", "DeepSeek-V2", "DeepSeek-V3")
SPECS = {"native": "benchlib.megatron.spec.layer_spec:build_native_spec", "local+sdpa": None}


def megatron_logits_on(device: str, ckpt: Path, tokens, spec: str | None):  # noqa: ANN001, ANN201
    import torch
    from megatron.core import dist_checkpointing

    from benchlib.convert.families import shape_from_config
    from benchlib.megatron.build import build_gpt_model, cpu_current_device
    from benchlib.megatron.model import build_flags, resolve_spec

    shape = shape_from_config(json.loads((ckpt / "hf_config.json").read_text()))
    model = build_gpt_model(build_flags(shape, "fp32", 128), spec=resolve_spec(spec, shape))
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(ckpt / "iter_0000001"))
    model.load_state_dict(state["model"], strict=True)
    model = model.to(device).eval()
    t = tokens.to(device)
    pos = torch.arange(t.shape[1], device=device)[None].expand_as(t)
    mask = torch.triu(torch.ones(t.shape[1], t.shape[1], device=device), diagonal=1).bool()[None, None]
    ctx = cpu_current_device() if device == "cpu" else torch.no_grad()
    with torch.no_grad(), ctx:
        out = model(t, pos, mask)
    return out[..., : shape.vocab].float().cpu()


def main() -> int:
    import torch

    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparison: no TF32 matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.set_device(0)
    import tiny_hf

    from benchlib.convert.convert import hf_to_mcore
    from benchlib.megatron.build import init_single_process

    init_single_process()
    t0 = time.time()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in FAMILIES:
            d = Path(tmp) / fam
            hf_dir, model = tiny_hf.build(fam, d / "hf")
            rep = hf_to_mcore(hf_dir, d / "mc", dtype="fp32")
            tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
            ref = tiny_hf.hf_logits(model, tokens)
            for spec_name, spec in SPECS.items():
                row = {"family": fam, "spec": spec_name, "device": device, "shards": len(list(hf_dir.glob("*.safetensors"))),
                       "convert_peak_rss_mib": round(rep.peak_rss / 2**20, 1)}
                try:
                    got = megatron_logits_on(device, d / "mc", tokens, spec)
                    diff = float((ref - got).abs().max())
                    row.update(max_abs_diff=diff, ref_max_abs=float(ref.abs().max()), ok=diff < TOL)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as err:  # noqa: BLE001 (DCP's CheckpointException is a BaseException); recorded in the verdict
                    row.update(ok=False, error=f"{type(err).__name__}: {str(err)[:400]}", trace=traceback.format_exc()[-1500:])
                results.append(row)
                print(f"{fam:17s} {spec_name:10s} " + (f"max|diff| {row['max_abs_diff']:.2e}" if "max_abs_diff" in row else row["error"][:160]), flush=True)

    by_fam = {f: [r for r in results if r["family"] == f] for f in FAMILIES}
    every_family = all(any(r["ok"] for r in rows) for rows in by_fam.values())
    native_built = [r for r in results if r["spec"] == "native" and "max_abs_diff" in r]
    native_ok = all(r["ok"] for r in native_built)
    passed = every_family and native_ok
    summary = {
        "check": "MLA HF->Megatron conversion logit parity (fp32)", "tolerance": TOL, "passed": passed,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "megatron_core": __import__("megatron.core", fromlist=["__version__"]).__version__,
        "transformers": __import__("transformers").__version__, "seconds": round(time.time() - t0, 1), "results": results,
    }
    (out_dir / "convert_mla_parity.json").write_text(json.dumps(summary, indent=2) + "\n")
    worst = max((r.get("max_abs_diff", float("inf")) for r in results if r["ok"]), default=float("nan"))
    failed = [f"{r['family']}/{r['spec']}" for r in results if not r["ok"]]
    print(f"VERDICT: MLA conversion parity {'PASS' if passed else 'FAIL'} on {summary['device']}: "
          f"worst passing max|diff| {worst:.1e} (tol {TOL:g}); not passing: {', '.join(failed) or 'none'} "
          f"-> {out_dir / 'convert_mla_parity.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
