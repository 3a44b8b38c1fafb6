"""torchtitan as a peer on the suite's shapes: run /work/shared/peers/torchtitan/run_peer.sh and read
its logs into plain dicts (for the bench tool to record beside the suite's own run).

run_peer.sh runs variant A (eager) into $OUT/peer_A.log and variant B (torch.compile of model
and loss) into $OUT/peer_B.log; PEER_EXTRA adds torchtitan arguments to both (e.g.
`--training.global_batch_size 32` for 8 accumulation steps at local batch 4).

torchtitan's step line (0.2.2; colour codes optional):
  `[rank0]:[titan] <date> - root - INFO - step:  7  loss:  9.1234  grad_norm:  1.2345  memory: 61.30GiB(43.86%)  tps: 77,803  tflops: 314.56  mfu: 31.80%`
`memory` is torch's max reserved (GiB) of the step, `tps` tokens/s per GPU; torchtitan's FLOP
count does not halve causal attention, so compare tokens/s, not its tflops.

    python bench/peers/torchtitan.py run --out /tmp/peer [--gbs 32] [--steps 30]
    python bench/peers/torchtitan.py parse /tmp/peer/peer_B.log
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

PEER_DIR = Path(os.environ.get("PEER_DIR", Path(__file__).resolve().parents[3] / "shared" / "peers" / "torchtitan"))  # ../shared beside the checkout
# the flavors peer_flavors.py registers (it imports torchtitan, so it is not imported here)
LAYER_COUNTS = (1, 2, 8, 12, 16)
FIRST_MEASURED_STEP = 6  # as run_peer.sh: steps before it include compilation and warm-up
LOCAL_BATCH = 4  # tt022/peer.toml

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEP = re.compile(
    r"step:\s*(?P<step>\d+)\s+loss:\s*(?P<loss>[-+\d.eE]+|nan|inf)"
    r"(?:\s+grad_norm:\s*(?P<grad_norm>[-+\d.eE]+|nan|inf))?"
    r"\s+memory:\s*(?P<mem>[\d.]+)GiB\((?P<mem_pct>[\d.]+)%\)"
    r"\s+tps:\s*(?P<tps>[\d,]+)"
    r"(?:\s+tflops:\s*(?P<tflops>[\d,.]+))?"
    r"(?:\s+mfu:\s*(?P<mfu>[\d.]+)%)?"
)


def parse_log(text: str, first_step: int = FIRST_MEASURED_STEP) -> dict[str, Any]:
    """Step lines of one torchtitan log -> tokens/s/GPU (mean over steps >= first_step), peak
    memory (max reserved, GiB), the last loss, and every step."""
    steps = []
    for line in _ANSI.sub("", text).splitlines():
        m = _STEP.search(line)
        if not m:
            continue
        steps.append({
            "step": int(m["step"]),
            "loss": float(m["loss"]),
            "grad_norm": float(m["grad_norm"]) if m["grad_norm"] else None,
            "memory_gib": float(m["mem"]),
            "memory_pct": float(m["mem_pct"]),
            "tokens_per_s_per_gpu": float(m["tps"].replace(",", "")),
            "tflops_torchtitan": float(m["tflops"].replace(",", "")) if m["tflops"] else None,
        })
    measured = [s for s in steps if s["step"] >= first_step]
    compiled = bool(re.search(r"Compiling .*torch\.compile", text))  # torchtitan announces each compiled part
    return {
        "steps": len(steps),
        "measured_steps": len(measured),
        "tokens_per_s_per_gpu": statistics.fmean(s["tokens_per_s_per_gpu"] for s in measured) if measured else None,
        "max_reserved_gib": max((s["memory_gib"] for s in steps), default=None),
        "last_step": steps[-1]["step"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "compiled": compiled,
        "per_step": steps,
    }


HARNESS_LAYERS = 4  # the harness's own flavor, peer_30b_a3b_4l


VARIANTS = {"eager": ("A", ()), "compiled": ("B", ("--compile.enable", "--compile.components", "model,loss"))}


def run(out: Path, *, gbs: int | None = None, steps: int = 30, timeout_s: int = 300, layers: int = HARNESS_LAYERS,
        variants: tuple[str, ...] = ("eager", "compiled"), peer_dir: Path | None = None,
        python: str | None = None) -> dict[str, Any]:
    """Run torchtitan's variants (eager, compiled) and parse their logs (peer_dir: PEER_DIR): both
    through the harness's run_peer.sh, one of them the way run_peer.sh runs it (_run_one).
    `layers` other than the harness's 4 uses peer_flavors.py's flavor of that depth."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"peer variants {list(variants)}: choose from {list(VARIANTS)}")
    peer_dir = Path(peer_dir or PEER_DIR)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OUT=str(out), PEER_STEPS=str(steps), PEER_TIMEOUT=str(timeout_s))
    extra = env.get("PEER_EXTRA", "")
    if gbs is not None:
        extra = f"{extra} --training.global_batch_size {gbs}".strip()
    if layers != HARNESS_LAYERS:
        if layers not in LAYER_COUNTS:
            raise ValueError(f"no torchtitan flavor with {layers} layers: bench/peers/peer_flavors.py has "
                             f"{(HARNESS_LAYERS, *LAYER_COUNTS)}; add the count to its LAYER_COUNTS")
        extra = f"{extra} --experimental.custom_import peer_flavors --model.flavor peer_30b_a3b_{layers}l".strip()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), env.get("PYTHONPATH")) if p)
    env["PEER_EXTRA"] = extra
    if python:
        env["PY"] = python
    if set(variants) == set(VARIANTS):
        proc = subprocess.run(["bash", str(peer_dir / "run_peer.sh")], env=env, capture_output=True, text=True,
                              timeout=2 * timeout_s + 600)
        (out / "run_peer.out").write_text(proc.stdout + proc.stderr)
        returncode = proc.returncode
    else:
        returncode = max(_run_one(v, out, env, peer_dir, steps, timeout_s) for v in variants)
    result: dict[str, Any] = {"peer": "torchtitan", "returncode": returncode, "extra_args": extra,
                              "global_batch": gbs or LOCAL_BATCH, "local_batch": LOCAL_BATCH, "layers": layers,
                              "variants": {}}
    for variant in variants:
        log_name = f"peer_{VARIANTS[variant][0]}.log"
        log = out / log_name
        if not log.exists():
            result["variants"][variant] = {"error": f"{log} was not written (see {out / 'run_peer.out'})"}
            continue
        parsed = parse_log(log.read_text(errors="replace"))
        parsed.pop("per_step")
        parsed["log"] = str(log)
        result["variants"][variant] = parsed
    return result


def _run_one(variant: str, out: Path, env: dict[str, str], peer_dir: Path, steps: int, timeout_s: int) -> int:
    """One variant as run_peer.sh runs it: the harness's wheels installed into a private folder,
    its module (and the `datasets` import shim where `datasets` is missing) on PYTHONPATH, one
    rank of torchtitan.train with the harness's peer.toml, the log in $OUT/peer_<A|B>.log."""
    letter, variant_args = VARIANTS[variant]
    python = env.get("PY") or ("/opt/torch/.venv/bin/python3" if Path("/opt/torch/.venv/bin/python3").exists()
                               else sys.executable)
    site = out / "peersite"
    said = out / "run_peer.out"
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                              *map(str, sorted((peer_dir / "whl").glob("*.whl")))], capture_output=True, text=True)
    with said.open("a") as log:
        log.write(install.stdout + install.stderr)
    if install.returncode:
        return install.returncode
    paths = [str(site), str(peer_dir / "tt022")]
    has_datasets = subprocess.run([python, "-c", "import datasets"], env={**env, "PYTHONPATH": os.pathsep.join(paths)},
                                  capture_output=True).returncode == 0
    if not has_datasets:
        paths.append(str(peer_dir / "shim"))
    run_env = {**env, "PYTHONPATH": os.pathsep.join([*paths, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]),
               "PYTORCH_ALLOC_CONF": "expandable_segments:True", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
               "TORCHINDUCTOR_CACHE_DIR": env.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/peer_inductor_cache")}
    command = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "--local-ranks-filter", "0",
               "--role", "rank", "--tee", "3", "-m", "torchtitan.train", "--job.config_file",
               str(peer_dir / "tt022" / "peer.toml"), "--training.steps", str(steps), "--job.dump_folder",
               f"/tmp/peer_outputs_{letter}", *variant_args, *env.get("PEER_EXTRA", "").split()]
    with (out / f"peer_{letter}.log").open("w") as log:
        proc = subprocess.Popen(command, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # as run_peer.sh's `timeout -k 10`: the whole group, workers included
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=grace)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            return 124


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run eager and compiled torchtitan, print a JSON summary")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--gbs", type=int, default=None, help="global batch (local batch is 4)")
    r.add_argument("--steps", type=int, default=30)
    r.add_argument("--layers", type=int, default=HARNESS_LAYERS, help="transformer layers (the harness has 4)")
    r.add_argument("--variants", default="eager,compiled", help="comma-separated: eager, compiled")
    r.add_argument("--timeout", type=int, default=300, help="seconds per variant")
    p = sub.add_parser("parse", help="parse one torchtitan log")
    p.add_argument("log", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        summary = run(args.out, gbs=args.gbs, steps=args.steps, timeout_s=args.timeout, layers=args.layers,
                      variants=tuple(args.variants.split(",")))
    else:
        summary = parse_log(args.log.read_text(errors="replace"))
        summary.pop("per_step")
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
