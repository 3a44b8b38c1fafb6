"""Write bench/results/<name>.json GPU records from what bench/gpu_runs.py brought back.

    python bench/gpu_records.py CALL_DIR [CALL_DIR ...]

A CALL_DIR holds summary.json and the runs' logs (<run>.log) of one device call. Each record pairs
a native-spec run with the local-spec baseline measured in the SAME call (same machine) on the same
model, layout and batch, and stores the ratio. Figures come from `benchlib.metrics` (parse_log +
summarize: the suite's own steady window and FLOPs model) with Megatron's own log figures beside.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# record name -> (run, baseline run or None, note)
PAIRS: dict[str, tuple[str, str | None, str]] = {
    "h200x1_qwen3-30b-a3b-proxy_native_mbs2": ("qwen_1gpu_native", "qwen_1gpu_local", "50 iterations each; loss curves compared in loss_curve"),
    "h200x1_qwen3-30b-a3b-proxy_native_mbs4": ("qwen_1gpu_native_mbs4", None, "no same-call local baseline at MBS 4 on 1 GPU; see the MBS 2 record's ratio"),
    "h200x4_ep4_qwen3-30b-a3b-proxy-8l_native_mbs2": ("qwen_4gpu_native", "qwen_4gpu_local", "8 layers"),
    "h200x4_ep4_qwen3-30b-a3b-proxy_native_mbs2": ("qwen_4gpu_l4_native", "qwen_4gpu_l4_local", "the proxy's own 4 layers"),
    "h200x4_ep4_qwen3-30b-a3b-proxy_native_mbs4": ("qwen_4gpu_l4_native_mbs4_gc", "qwen_4gpu_l4_local_mbs4", "the proxy's own 4 layers; --manual-gc (no measurable effect vs without: 244.4 vs 246.2 in another call)"),
    "h200x1_mixtral-8x2b-8l_native_mbs2": ("mixtral_1gpu_native", "mixtral_1gpu_local", "Mixtral-8x2B with 8 layers"),
    "h200x4_ep4_mixtral-8x2b-8l_native_mbs2": ("mixtral_4gpu_native", "mixtral_4gpu_local", "Mixtral-8x2B with 8 layers"),
    "h200x1_deepseek-v2-lite-proxy_native_mbs2": ("dsv2lite_proxy_1gpu_native", None, "MLA: Megatron's local spec cannot build it (no baseline possible); measured with the final native spec (plain linear_q_proj); an earlier variant with a norm on the query path gave 298.2 TFLOP/s/GPU"),
    # session 2: with the fast ops (benchlib/spec/fast_ops.py)
    "h200x2_ep2_qwen3-30b-a3b-proxy_fastops_mbs4": ("qwen_2gpu_ep2_native", "qwen_2gpu_ep2_local", "2 x H200, EP=2, the proxy's 4 layers, fast ops on"),
    "h200x2_ep2_qwen3-30b-a3b-proxy_fastops_a2a_mbs4": ("qwen_2gpu_ep2_native_a2a", "qwen_2gpu_ep2_local", "2 x H200, EP=2, fast ops on, A2A_OVERLAP=1 (Megatron's combined 1F1B schedule, no delayed wgrad)"),
    "h200x2_ep2_qwen3-30b-a3b-proxy_nofastops_mbs4": ("qwen_2gpu_ep2_native_nofast", "qwen_2gpu_ep2_local", "2 x H200, EP=2, BENCH_NATIVE_FAST_OPS=0: the native spec without the fast ops, for their share"),
    "h200x1_qwen3-30b-a3b-proxy_loss_curve_lr5e-5": ("qwen_1gpu_native_lc", "qwen_1gpu_local_lc", "correctness: 50 iterations each, same seed and mock data, --lr 5e-5 (no loss spikes), MBS 2 / GBS 8; native spec with the fast ops vs Megatron's local spec; loss curves in loss_curve"),
    "h200x4_ep4_deepseek-v2-lite-8l_native_mbs2": ("dsv2lite_8l_4gpu_native", None, "issue 9 on 4 GPUs: DeepSeek-V2-Lite with 8 of its 27 layers (--moe-layer-freq '([0]*1+[1]*7)'); MLA, no local baseline possible; measured with the native spec variant that had an RMSNorm on the query path (since replaced by a plain linear_q_proj: about 1% less work per layer)"),
}


def figures(run: dict[str, Any], log: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "steady_iteration_time_s": run.get("iter_time_s"),
        "tokens_per_s_per_gpu": run.get("tokens_per_s_per_gpu"),
        "tflops_per_gpu_megatron": run.get("tflops_per_gpu"),
        "mfu": run.get("mfu"),
        "max_allocated_mb": run.get("max_allocated_mb"),
        "figures_from": "bench/gpu_runs.py (median over iterations >= 3 of Megatron's log lines)",
    }
    try:
        from benchlib.metrics.logparse import parse_log
        from benchlib.metrics.result import summarize

        res = summarize(parse_log([log]), "H200", world_size=run["gpus"]).to_json()
        it = res.get("iteration_time_ms") or {}
        out.update(
            steady_iteration_time_s=(it.get("median") / 1000.0) if it.get("median") else out["steady_iteration_time_s"],
            tokens_per_s_per_gpu=res.get("tokens_per_s_per_gpu") or out["tokens_per_s_per_gpu"],
            tflops_per_gpu_megatron=res.get("tflops_per_gpu_reported") or out["tflops_per_gpu_megatron"],
            tflops_per_gpu_benchlib=res.get("tflops_per_gpu_recomputed"),
            mfu=res.get("mfu") if res.get("mfu") is not None else out["mfu"],
            steady_window=res.get("steady_window"),
            status=res.get("status"),
            figures_from="benchlib.metrics (parse_log + summarize, peak 989.4 bf16)",
        )
    except Exception as err:  # keep the log-line figures
        out["metrics_error"] = f"{type(err).__name__}: {err}"
    return out


def main(dirs: list[str]) -> int:
    runs: dict[str, tuple[dict, dict, Path]] = {}
    for d in map(Path, dirs):
        summary = json.loads((d / "summary.json").read_text())
        for r in summary["runs"]:
            if r.get("iterations"):
                runs[r["name"]] = (r, summary, d / f"{r['name']}.log")
    written = []
    for name, (run_name, base_name, note) in PAIRS.items():
        if run_name not in runs:
            continue
        run, summary, log = runs[run_name]
        v = summary["versions"]
        rec: dict[str, Any] = {
            "name": name,
            "gpu_type": v.get("gpu"), "gpu_count": run["gpus"],
            "versions": {"torch": v.get("torch"), "megatron_core": v.get("megatron_core"), "cuda": v.get("cuda"), "driver": v.get("driver")},
            "date": summary["date"],
            "model": run["model"], "backend": run["backend"], "knobs": run["knobs"],
            "command": run["command"], "env": run.get("env"), "megatron_args": run["megatron_args"],
            "argv_source": run.get("argv_source"), "note": note,
            "log_fixture": f"tests/fixtures/logs/{name}.log",
            # the native spec's fast ops (benchlib/spec/fast_ops.py) were on unless turned off
            "fast_ops": run["backend"] == "native" and (run.get("env") or {}).get("BENCH_NATIVE_FAST_OPS", "1") != "0",
            **figures(run, log),
        }
        if base_name and base_name in runs and runs[base_name][1] is summary:
            b, _, blog = runs[base_name]
            base = figures(b, blog)
            rec["baseline"] = {"backend": b["backend"], "command": b["command"], "megatron_args": b["megatron_args"], **base}
            if base.get("tflops_per_gpu_megatron") and rec.get("tflops_per_gpu_megatron"):
                rec["ratio_vs_baseline"] = rec["tflops_per_gpu_megatron"] / base["tflops_per_gpu_megatron"]
            if run_name in ("qwen_1gpu_native", "qwen_1gpu_native_lc"):
                a, c = run["losses"], b["losses"]
                n = min(len(a), len(c))
                rec["loss_curve"] = {"native": a[:n], "local": c[:n],
                                     "max_rel_diff_first_10": max(abs(x - y) / abs(y) for x, y in zip(a[:10], c[:10])),
                                     "max_rel_diff_all": max(abs(x - y) / abs(y) for x, y in zip(a[:n], c[:n]))}
        out = ROOT / "bench" / "results" / f"{name}.json"
        out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
        written.append(out.name)
        print(f"{name}: {rec.get('tflops_per_gpu_megatron')} TFLOP/s/GPU, ratio {rec.get('ratio_vs_baseline')}")
    print("wrote", ", ".join(written))
    return 0




def interactive_figures(run_dir: Path) -> dict[str, Any]:
    """Figures of a run made through the suite's own path, from its run directory (benchlib parse)."""
    res = json.loads((run_dir / "result.json").read_text())
    return {
        "steady_iteration_time_s": res["iteration_time_ms"]["median"] / 1000.0,
        "tokens_per_s_per_gpu": res.get("tokens_per_s_per_gpu"),
        "tflops_per_gpu_megatron": res.get("tflops_per_gpu_reported"),
        "tflops_per_gpu_benchlib": res.get("tflops_per_gpu_recomputed"),
        "mfu": res.get("mfu"), "steady_window": res.get("steady_window"), "status": res.get("status"),
        "max_allocated_mb": {r: m["max_allocated"] for r, m in res["peak_memory_mb"].get("per_rank", {}).items()},
        "theoretical_memory_mb": res.get("theoretical_memory_mb"),
        "figures_from": "benchlib.metrics via the run directory's result.json",
    }


def interactive_record(run_dir: str, name: str, command: str, *, summary_json: str | None = None,
                       baseline_run: str | None = None, baseline_dir: str | None = None,
                       baseline_command: str | None = None, note: str | None = None) -> Path:
    """Record of a run launched through the suite's own path (interactive_benchmarking.sh): its
    run directory's result.json and resolved.json, plus a same-call baseline, either a run of
    bench/gpu_runs.py (summary_json + baseline_run) or another interactive run (baseline_dir)."""
    rd = Path(run_dir)
    res = json.loads((rd / "result.json").read_text())
    resolved = json.loads((rd / "resolved.json").read_text())
    manifest = json.loads((rd / "manifest.json").read_text())
    summary = json.loads(Path(summary_json).read_text()) if summary_json else None
    if summary:
        v = summary["versions"]
        versions = {"torch": v.get("torch"), "megatron_core": v.get("megatron_core"), "cuda": v.get("cuda"), "driver": v.get("driver")}
        gpu, date = v.get("gpu"), summary["date"]
    else:
        v = manifest.get("versions_at_submit", {})
        versions = {"torch": v.get("torch"), "megatron_core": v.get("megatron-core"), "python": v.get("python"),
                    "triton": "3.6.0 (the GPU machine's)", "driver": "580.159.04 (the GPU machine's)"}
        gpu, date = f"NVIDIA {manifest.get('gpu_type')}", manifest.get("created")
    rec: dict[str, Any] = {
        "name": name, "gpu_type": gpu, "gpu_count": res.get("num_gpus"), "versions": versions,
        "date": date, "model": res.get("model"), "backend": resolved.get("backend"),
        "knobs": resolved.get("knobs"), "command": command, "env": resolved.get("env"),
        "megatron_args": resolved.get("megatron_args"),
        "argv_source": "interactive_benchmarking.sh -> benchlib launch (resolved.json)",
        "log_fixture": f"tests/fixtures/logs/{name}.log",
        "fast_ops": (resolved.get("backend") or {}).get("name") == "native"
        and (resolved.get("env") or {}).get("BENCH_NATIVE_FAST_OPS", "1") != "0",
        **interactive_figures(rd),
    }
    if note:
        rec["note"] = note
    if summary and baseline_run:
        base = next(r for r in summary["runs"] if r["name"] == baseline_run)
        b = figures(base, Path(summary_json).parent / f"{baseline_run}.log")
        rec["baseline"] = {"backend": base["backend"], "command": base["command"], "megatron_args": base["megatron_args"],
                           "note": "same call, same machine, same model/layout/batch, launched by bench/gpu_runs.py", **b}
    elif baseline_dir:
        bdir = Path(baseline_dir)
        bres = json.loads((bdir / "resolved.json").read_text())
        rec["baseline"] = {"backend": bres.get("backend"), "command": baseline_command, "megatron_args": bres.get("megatron_args"),
                           "note": "same call, same machine, same model/layout/batch, through interactive_benchmarking.sh",
                           **interactive_figures(bdir)}
    if "baseline" in rec:
        rec["ratio_vs_baseline"] = rec["tflops_per_gpu_megatron"] / rec["baseline"]["tflops_per_gpu_megatron"]
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    print(f"{name}: {rec['tflops_per_gpu_megatron']} TFLOP/s/GPU, ratio {rec.get('ratio_vs_baseline')}")
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--interactive"]:
        import argparse

        p = argparse.ArgumentParser(prog="gpu_records.py --interactive")
        p.add_argument("run_dir")
        p.add_argument("name")
        p.add_argument("command")
        p.add_argument("--summary")
        p.add_argument("--baseline-run")
        p.add_argument("--baseline-dir")
        p.add_argument("--baseline-command")
        p.add_argument("--note")
        a = p.parse_args(sys.argv[2:])
        interactive_record(a.run_dir, a.name, a.command, summary_json=a.summary, baseline_run=a.baseline_run,
                           baseline_dir=a.baseline_dir, baseline_command=a.baseline_command, note=a.note)
        raise SystemExit(0)
    raise SystemExit(main(sys.argv[1:]))
