"""Real training runs on a GPU machine, several in sequence, each log under $OUT, a table last.

    python bench/gpu_runs.py --out "$OUT" --budget 540 RUN [RUN ...]

Each RUN is a name from RUNS below: a model config, a GPU count, knobs and a backend
(native = benchlib's torch-native spec, local = Megatron's local spec). The Megatron argument
list comes from `benchlib.config.resolve.resolve_run` (the suite's own resolution) when the runtime
configs resolve, else from the model YAML plus the derived flags written out here (the record
says which: key `argv_source`). Training goes through `torchrun -m benchlib.megatron.driver`.
Figures are computed from Megatron's own log lines (iteration time, TFLOP/s/GPU, memory).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAFE_ENV = {  # KINDS.md: keep NVLink multicast off on shared hosts
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclasses.dataclass
class Run:
    model: str
    gpus: int
    knobs: dict[str, Any]
    backend: str = "native"
    iters: int = 20
    extra: list[str] = dataclasses.field(default_factory=list)
    timeout: int = 240
    entry: str = ""  # a script run instead of `-m benchlib.megatron.driver` (bench/profile_driver.py)
    env: dict[str, str] = dataclasses.field(default_factory=dict)


Q = "Qwen3-30B-A3B-Proxy"
LC_EXTRA = ["--lr", "5e-5", "--min-lr", "5e-6", "--seed", "1234"]
D = "DeepSeek-V2-Lite-Proxy"
M = "Mixtral-8x2B"
RUNS: dict[str, Run] = {
    # Qwen3-30B-A3B-Proxy, 1 GPU: native vs local, 50 iterations each (loss-curve comparison too)
    "qwen_1gpu_native": Run(Q, 1, dict(NUM_LAYERS=4, MBS=2, GBS=16), "native", 50),
    "qwen_1gpu_local": Run(Q, 1, dict(NUM_LAYERS=4, MBS=2, GBS=16), "local", 50, timeout=300),
    "qwen_1gpu_native_mbs4": Run(Q, 1, dict(NUM_LAYERS=4, MBS=4, GBS=32), "native", 15),
    # 4 GPUs, EP=4 (8 layers: first measurement; 4 layers = the proxy's own depth)
    "qwen_4gpu_native": Run(Q, 4, dict(NUM_LAYERS=8, EP=4, MBS=2, GBS=64), "native", 20),
    "qwen_4gpu_local": Run(Q, 4, dict(NUM_LAYERS=8, EP=4, MBS=2, GBS=64), "local", 12, timeout=300),
    "qwen_4gpu_l4_native": Run(Q, 4, dict(NUM_LAYERS=4, EP=4, MBS=2, GBS=64), "native", 15),
    "qwen_4gpu_l4_native_mbs4": Run(Q, 4, dict(NUM_LAYERS=4, EP=4, MBS=4, GBS=64), "native", 15),
    "qwen_4gpu_l4_local": Run(Q, 4, dict(NUM_LAYERS=4, EP=4, MBS=2, GBS=64), "local", 10),
    "qwen_4gpu_l4_local_mbs4": Run(Q, 4, dict(NUM_LAYERS=4, EP=4, MBS=4, GBS=64), "local", 10),
    "qwen_4gpu_l4_native_mbs4_gc": Run(Q, 4, dict(NUM_LAYERS=4, EP=4, MBS=4, GBS=64), "native", 15,
                                       extra=["--manual-gc", "--manual-gc-interval", "10"]),
    # Mixtral family: Mixtral-8x2B with 8 layers
    "mixtral_1gpu_native": Run(M, 1, dict(NUM_LAYERS=8, MBS=2, GBS=16), "native", 15),
    "mixtral_1gpu_local": Run(M, 1, dict(NUM_LAYERS=8, MBS=2, GBS=16), "local", 10),
    "mixtral_4gpu_native": Run(M, 4, dict(NUM_LAYERS=8, EP=4, MBS=2, GBS=64), "native", 15),
    "mixtral_4gpu_local": Run(M, 4, dict(NUM_LAYERS=8, EP=4, MBS=2, GBS=64), "local", 10),
    # MLA: DeepSeek-V2-Lite-Proxy on 1 GPU (native only: the local spec cannot build MLA)
    "dsv2lite_proxy_1gpu_native": Run(D, 1, dict(NUM_LAYERS=4, MBS=2, GBS=16), "native", 15),
    # issue 9 on 4 GPUs: DeepSeek-V2-Lite (27 layers published) with fewer layers, EP=4
    # (its YAML spells the dense/MoE pattern for 27 layers: first layer dense, the rest MoE)
    "dsv2lite_8l_4gpu_native": Run("DeepSeek-V2-Lite", 4, dict(NUM_LAYERS=8, EP=4, MBS=2, GBS=64), "native", 15,
                                   extra=["--moe-layer-freq", "([0]*1+[1]*7)"]),
    # session 2: where the 1-GPU step goes (torch profiler, steps 6-7), then candidate speed-ups
    "qwen_1gpu_native_mbs4_prof": Run(Q, 1, dict(MBS=4, GBS=32), "native", 9,
                                      entry="bench/profile_driver.py", env={"BENCH_PROFILE": "6:8"}),
    "qwen_1gpu_native_mbs4_cef": Run(Q, 1, dict(MBS=4, GBS=32), "native", 12, extra=["--cross-entropy-loss-fusion"]),
    # loss curves, native vs local, 50 iterations at a gentle learning rate (no loss spikes)
    "qwen_1gpu_native_lc": Run(Q, 1, dict(MBS=2, GBS=8), "native", 50, extra=LC_EXTRA),
    "qwen_1gpu_local_lc": Run(Q, 1, dict(MBS=2, GBS=8), "local", 50, extra=LC_EXTRA, timeout=300),
    # with the fast ops (benchlib/spec/fast_ops.py): 1 GPU (profiled again), 2 GPUs EP=2
    "qwen_1gpu_fast_prof": Run(Q, 1, dict(MBS=4, GBS=32), "native", 12,
                               entry="bench/profile_driver.py", env={"BENCH_PROFILE": "6:8"}),
    "qwen_2gpu_ep2_native": Run(Q, 2, dict(EP=2, MBS=4, GBS=64), "native", 12),
    "qwen_2gpu_ep2_native_a2a": Run(Q, 2, dict(EP=2, MBS=4, GBS=64, A2A_OVERLAP=1), "native", 12),
    "qwen_2gpu_ep2_native_nofast": Run(Q, 2, dict(EP=2, MBS=4, GBS=64), "native", 12, env={"BENCH_NATIVE_FAST_OPS": "0"}),
    "qwen_2gpu_ep2_local": Run(Q, 2, dict(EP=2, MBS=4, GBS=64), "local", 10),
    "qwen_2gpu_ep2_native_a2a_prof": Run(Q, 2, dict(EP=2, MBS=4, GBS=64, A2A_OVERLAP=1), "native", 12,
                                         entry="bench/profile_driver.py", env={"BENCH_PROFILE": "6:8"}),
}


def build_argv(run: Run) -> tuple[list[str], dict[str, str], str]:
    """Megatron args + model env for a run: the suite's resolver first, else the YAML by hand."""
    knobs = {"MODEL": run.model, "TRAIN_ITERS": run.iters, "BACKEND": run.backend, "DATA": "mock", **run.knobs}
    try:
        from benchlib.config.resolve import resolve_run

        env = dict(os.environ, **{k: str(v) for k, v in knobs.items()})
        resolved = resolve_run([f"{k}={v}" for k, v in knobs.items()], env, mode="interactive", local_gpus=run.gpus)
        return list(resolved.megatron_args) + list(run.extra), dict(resolved.env), "benchlib.config.resolve"
    except Exception as err:  # runtime configs not there yet / a knob they do not know
        print(f"[gpu_runs] resolve_run failed ({type(err).__name__}: {str(err).splitlines()[0]}); building argv from the YAML", flush=True)
    from benchlib.config.model_config import load_model, substitute

    model = load_model(run.model)
    values = {"TP": 1, "PP": 1, "EP": 1, "ETP": 1, "CP": 1, "MBS": 1, "GBS": 8, "SEQ_LEN": 4096, "NUM_LAYERS": 4}
    values.update(run.knobs)
    flags = {f: substitute(v, values) for f, v in model.model_args.items()}
    if int(flags.get("--max-position-embeddings", 0)) < int(values["SEQ_LEN"]):
        flags["--max-position-embeddings"] = values["SEQ_LEN"]
    argv: list[str] = []
    for f, v in flags.items():
        if v is None or v is False:
            continue
        argv.append(f)
        if v is not True:
            argv.append(str(v))
    argv += ["--bf16", "--moe-token-dispatcher-type", "alltoall", "--moe-grouped-gemm", "--mock-data",
             "--tokenizer-type", "NullTokenizer", "--train-iters", str(run.iters), "--log-interval", "1",
             "--log-throughput", "--eval-iters", "0", "--seed", "1234"]
    return argv + list(run.extra), dict(model.env_vars), "model yaml + bench/gpu_runs.py flags"


ITER_RE = re.compile(
    r"iteration\s+(\d+)/\s*(\d+).*?elapsed time per iteration \(ms\):\s*([\d.]+)"
    r"(?:.*?throughput per GPU \(TFLOP/s/GPU\):\s*([\d.]+))?.*?global batch size:\s*(\d+)"
    r"(?:.*?lm loss:\s*([-\d.Ee+]+))?"
)
MEM_RE = re.compile(r"\[Rank (\d+)\].*memory \(MB\).*?max allocated:\s*([\d.]+)")


def parse(log_text: str, world: int, seq: int) -> dict[str, Any]:
    iters, mem = [], {}
    for line in log_text.splitlines():
        m = ITER_RE.search(line)
        if m:
            iters.append(dict(it=int(m[1]), ms=float(m[3]), tflops=float(m[4]) if m[4] else None,
                              gbs=int(m[5]), loss=float(m[6]) if m[6] else None))
        mm = MEM_RE.search(line)
        if mm:
            r = int(mm[1])
            mem[r] = max(mem.get(r, 0.0), float(mm[2]))
    out: dict[str, Any] = {"iterations": len(iters), "losses": [i["loss"] for i in iters],
                           "max_allocated_mb": {str(k): v for k, v in sorted(mem.items())}}
    steady = [i for i in iters if i["it"] >= max(3, len(iters) // 4 + 1)]
    if steady:
        ms = statistics.median(i["ms"] for i in steady)
        tf = [i["tflops"] for i in steady if i["tflops"] is not None]
        gbs = steady[-1]["gbs"]
        out.update(
            steady_iters=f"{steady[0]['it']}-{steady[-1]['it']}",
            iter_time_s=ms / 1000.0,
            tokens_per_s_per_gpu=gbs * seq / (ms / 1000.0) / world,
            tflops_per_gpu=statistics.median(tf) if tf else None,
        )
        if out["tflops_per_gpu"] is not None:
            out["mfu"] = out["tflops_per_gpu"] / 989.0
    return out


def launch(name: str, run: Run, out_dir: Path, deadline: float) -> dict[str, Any]:
    argv, model_env, source = build_argv(run)
    env = dict(os.environ)
    env.update(model_env)
    env.update(SAFE_ENV)
    env["BENCH_SPEC"] = run.backend
    env["PYTHONPATH"] = f"{ROOT}:{env.get('PYTHONPATH', '')}"
    if run.gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = "0"
    env.update(run.env)
    if run.entry:
        env.setdefault("BENCH_PROFILE_OUT", str(out_dir / name))
    entry = [str(ROOT / run.entry)] if run.entry else ["-m", "benchlib.megatron.driver"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={run.gpus}",
           *entry, *argv]
    log = out_dir / f"{name}.log"
    budget = min(run.timeout, max(10, int(deadline - time.time())))
    t0 = time.time()
    with open(log, "w") as fh:
        fh.write("# command: " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = "timeout"
    seq = int(run.knobs.get("SEQ_LEN", 4096))
    res = parse(log.read_text(errors="replace"), run.gpus, seq)
    res.update(name=name, model=run.model, gpus=run.gpus, backend=run.backend, knobs=run.knobs, rc=rc,
               wall_s=round(time.time() - t0, 1), megatron_args=argv, argv_source=source,
               command="torchrun --standalone --nproc-per-node=%d -m benchlib.megatron.driver %s" % (run.gpus, " ".join(argv)),
               env={k: v for k, v in env.items() if k in {**model_env, **SAFE_ENV, "BENCH_SPEC": 1, "CUDA_VISIBLE_DEVICES": 1, "BENCH_NATIVE_FAST_OPS": 1}})
    if rc not in (0, "timeout") or not res.get("iterations"):
        res["log_tail"] = log.read_text(errors="replace").splitlines()[-25:]
    return res


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        out["gpu_count"] = torch.cuda.device_count()
    except Exception as err:
        out["torch_error"] = str(err)
    try:
        from importlib.metadata import version

        out["megatron_core"] = version("megatron-core")
    except Exception:
        out["megatron_core"] = None
    try:
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.split()[0]
    except Exception:
        out["driver"] = None
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_runs"))
    p.add_argument("--budget", type=int, default=540, help="seconds for all runs together")
    p.add_argument("--bundle", action="store_true", help="pack the logs into logs.tar.gz")
    p.add_argument("runs", nargs="+")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + a.budget
    summary = {"versions": versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": []}
    print(json.dumps(summary["versions"]), flush=True)
    for name in a.runs:
        if time.time() > deadline - 30:
            print(f"[gpu_runs] skipping {name}: out of time", flush=True)
            continue
        print(f"[gpu_runs] {name} ...", flush=True)
        res = launch(name, RUNS[name], out, deadline)
        summary["runs"].append(res)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print(f"[gpu_runs] {name}: rc={res['rc']} iters={res.get('iterations')} wall={res['wall_s']}s "
              f"tflops={res.get('tflops_per_gpu')} iter_s={res.get('iter_time_s')}", flush=True)
        if "log_tail" in res:
            print("\n".join(res["log_tail"][-12:]), flush=True)
    print("\n%-28s %4s %-6s %3s %8s %9s %8s %6s %9s" % ("run", "gpus", "impl", "rc", "iter_s", "tok/s/gpu", "TFLOP/s", "MFU", "maxMB"))
    for r in summary["runs"]:
        mx = max(r["max_allocated_mb"].values()) if r.get("max_allocated_mb") else None
        f = lambda v, s: (s % v) if v is not None else "-"  # noqa: E731
        print("%-28s %4d %-6s %3s %8s %9s %8s %6s %9s" % (r["name"][:28], r["gpus"], r["backend"], r["rc"],
              f(r.get("iter_time_s"), "%.3f"), f(r.get("tokens_per_s_per_gpu"), "%.0f"), f(r.get("tflops_per_gpu"), "%.1f"),
              f(r.get("mfu"), "%.3f"), f(mx, "%.0f")))
    if a.bundle:  # the device tool returns at most 8 files: one archive of all logs
        import tarfile

        logs = sorted(out.glob("*.log"))
        with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
            for log in logs:
                tar.add(log, arcname=log.name)
        for log in logs:
            log.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
