"""Run a scenario through the suite's own entry point and turn what it left into a record.

Training: `bash interactive_benchmarking.sh KEY=VALUE ... [extra Megatron args]` with MODEL and
GPUS_PER_NODE in its environment; the launch names its run directory, whose result.json (written
by `benchlib collect`, the run's last step), resolved.json and manifest.json make the record.
Nothing here parses a log or computes a figure: every figure is the suite's own.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from benchlib.core.errors import BenchError
from benchlib.core.rundir import MANIFEST_FILE, RESOLVED_FILE, RESULT_FILE, atomic_write_json

from bench.scenarios import OUT_DIR, PYTHON, Scenario

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
ENTRY_SCRIPT = "interactive_benchmarking.sh"
RUN_DIR_LINE = re.compile(r"\[benchlib\] run directory (\S.*)$")
# NVLink multicast off: shared GPU hosts ask for it, and it changes no figure (set unless given).
SHARED_HOST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TAIL_LINES = 40


@dataclass
class Launched:
    """One launch of the entry script: its command as a user would type it, exit status, run directory."""

    command: str
    returncode: int
    run_dir: Path | None
    tail: list[str] = field(default_factory=list)
    timed_out: bool = False


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _process_tree(root: int) -> set[int]:
    children, found, todo = _children_map(), set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_process_tree(root: int, grace_s: float = 20.0) -> None:
    """SIGTERM the launch and every process under it, SIGKILL what is left after grace_s.
    By process tree, not only process group: torchrun starts its ranks in sessions of their own."""
    pids = _process_tree(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    while time.time() < deadline:
        pids |= {p for p in _process_tree(root)}  # children started while stopping
        if not any(_alive(pid) for pid in pids):
            return
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def training_knobs(scenario: Scenario, overrides: Mapping[str, str], *, baseline: bool) -> dict[str, str]:
    """The run's knobs: the scenario's, the user's overrides; for the baseline, its own changes and backend last."""
    knobs = {**scenario.knobs, **overrides}
    if baseline:
        knobs.update(scenario.baseline_knobs)
        knobs["BACKEND"] = str(scenario.baseline)
    return knobs


def launch_entry(model: str, gpus: int, knobs: Mapping[str, str], extra_args: list[str],
                 environ: Mapping[str, str], timeout_s: int) -> Launched:
    """Run interactive_benchmarking.sh, echoing its output; the run directory from its own line."""
    head = {"MODEL": model, "GPUS_PER_NODE": str(gpus)}
    words = ["bash", ENTRY_SCRIPT, *[f"{k}={v}" for k, v in knobs.items()], *extra_args]
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in head.items()), *map(shlex.quote, words)])
    env = {**SHARED_HOST_ENV, **environ, **head}
    print(f"[bench] {command}", flush=True)
    proc = subprocess.Popen(words, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        stop_process_tree(proc.pid)

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    run_dir = None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
            found = RUN_DIR_LINE.search(line.rstrip("\n"))
            if found and run_dir is None:
                run_dir = Path(found.group(1).strip())
        returncode = proc.wait()
    finally:
        timer.cancel()
        timer.join()  # a stop under way finishes before the outcome is read
    if run_dir is not None and not run_dir.is_absolute():
        run_dir = ROOT / run_dir
    return Launched(command, returncode, run_dir, list(tail), timed_out.is_set())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"cannot read {path}: {err}", hint="the run directory is incomplete; see its logs/") from None


def finished_run(launched: Launched, timeout_s: int) -> dict[str, dict[str, Any]]:
    """result/resolved/manifest of a launch that completed; a clear error for one that did not."""
    tail = "\n".join(launched.tail[-15:])
    if launched.timed_out:
        raise BenchError(f"stopped after {timeout_s} s: {launched.run_dir or 'no run directory yet'}",
                         hint="give more time with --timeout, or fewer TRAIN_ITERS")
    if launched.run_dir is None:
        raise BenchError(f"the launch stopped before creating a run directory (exit {launched.returncode}):\n{tail}",
                         hint="run the printed command by hand to see the whole error")
    result_path = launched.run_dir / RESULT_FILE
    if not result_path.is_file():
        raise BenchError(f"no {RESULT_FILE} in {launched.run_dir} (exit {launched.returncode}):\n{tail}",
                         hint="the run's last step `benchlib collect RUN_DIR` writes it; run it by hand to see why")
    result = _read_json(result_path)
    if launched.returncode != 0 or result.get("status") != "completed":
        raise BenchError(f"the run did not complete: status {result.get('status')}, exit {launched.returncode}: "
                         f"{result.get('status_detail')}\n  run directory: {launched.run_dir}",
                         hint="no record is written for a run that did not complete; see logs/ in the run directory")
    return {"result": result, "resolved": _read_json(launched.run_dir / RESOLVED_FILE),
            "manifest": _read_json(launched.run_dir / MANIFEST_FILE)}


def figures(run: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record's figures, each from the run's result.json (benchlib.metrics)."""
    res = run["result"]
    per_rank = (res.get("peak_memory_mb") or {}).get("per_rank") or {}
    median_ms = (res.get("iteration_time_ms") or {}).get("median")
    return {
        "steady_iteration_time_s": median_ms / 1000.0 if median_ms else None,
        "tokens_per_s_per_gpu": res.get("tokens_per_s_per_gpu"),
        "tflops_per_gpu_megatron": res.get("tflops_per_gpu_reported"),
        "tflops_per_gpu_benchlib": res.get("tflops_per_gpu_recomputed"),
        "mfu": res.get("mfu"),
        "peak": res.get("peak"),
        "steady_window": (res.get("steady_window") or {}).get("description"),
        "status": res.get("status"),
        "max_allocated_mb": {rank: m.get("max_allocated") for rank, m in per_rank.items()},
        "theoretical_memory_mb": res.get("theoretical_memory_mb"),
        "losses": [p.get("lm_loss") for p in res.get("series") or []],
        "figures_from": "benchlib.metrics, the run directory's result.json",
        **({"profile": res["profile"]} if res.get("profile") else {}),  # PROFILE=torch: where a step's GPU time goes
    }


def run_facts(run: dict[str, dict[str, Any]], command: str) -> dict[str, Any]:
    resolved = run["resolved"]
    backend = (resolved.get("backend") or {}).get("name")
    knobs = resolved.get("knobs") or {}
    return {
        "command": command,
        "backend": backend,
        "fast_ops": backend == "native" and bool(knobs.get("FAST_OPS")),
        "knobs": knobs,
        "env": resolved.get("env"),
        "megatron_args": resolved.get("megatron_args"),
        "run_dir": resolved.get("run_dir"),
        **figures(run),
    }


def memory_estimate(record: Mapping[str, Any]) -> dict[str, Any]:
    """The planner's estimate of the most loaded rank beside the measured peak."""
    from benchlib.planning.memory import args_from_record, estimate_from_args

    measured = [v for v in (record.get("max_allocated_mb") or {}).values() if v]
    try:
        args, backend = args_from_record(record)
        est_mb = estimate_from_args(args, backend=backend).peak_allocated / 2**20
    except BenchError as err:
        return {"error": err.message}
    out: dict[str, Any] = {"estimated_mb": round(est_mb, 1)}
    if measured:
        out["measured_mb"] = max(measured)
        out["error"] = round(est_mb / max(measured) - 1, 4)
    return out


def loss_curve(native: list[float | None], baseline: list[float | None]) -> dict[str, Any] | None:
    pairs = [(a, b) for a, b in zip(native, baseline) if a is not None and b is not None and b != 0]
    if not pairs:
        return None
    rel = [abs(a - b) / abs(b) for a, b in pairs]
    return {"iterations": len(pairs), "max_rel_diff_first_10": max(rel[:10]), "max_rel_diff_all": max(rel),
            "mean_rel_diff": sum(rel) / len(rel), "last_rel_diff": rel[-1],
            "last_losses": [pairs[-1][0], pairs[-1][1]]}


def versions(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Versions the run used: the manifest's, plus triton and the GPU driver."""
    from importlib import metadata

    from benchlib.launch.rundir import known_versions

    out = dict(manifest.get("versions_at_submit") or known_versions())
    try:
        out["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        pass
    out["gpu_driver"] = _nvidia_smi("driver_version")
    out["gpu_device"] = _nvidia_smi("name")
    return out


def _nvidia_smi(field_name: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split("\n")[0].strip() or None


def run_training(scenario: Scenario, overrides: Mapping[str, str], extra_args: list[str], *,
                 environ: Mapping[str, str], timeout_s: int, name: str | None = None,
                 results_dir: Path = RESULTS_DIR, peer_variants: tuple[str, ...] = ("eager", "compiled")) -> Path:
    """Run a training scenario (and its same-call baseline) and write its record; returns the path."""
    main = launch_entry(scenario.model, scenario.gpus, training_knobs(scenario, overrides, baseline=False),
                        [*scenario.extra_args, *extra_args], environ, timeout_s)
    run = finished_run(main, timeout_s)
    gpu_type = run["resolved"]["cluster_config"].get("GPU_TYPE") or "gpu"
    # the run's own calibration (benchlib.megatron.calibrate, before training), judged by collect
    calibration = run["result"].get("calibration") or {"skipped": "the run measured none (CALIBRATE=0 or no training step)"}
    record: dict[str, Any] = {
        "name": name or scenario.record_name(gpu_type),
        "scenario": scenario.name,
        "scenario_doc": scenario.doc,
        "reproduce": f"python -m bench run {scenario.name}" + "".join(f" {k}={v}" for k, v in overrides.items()),
        "date": run["manifest"].get("created"),
        "model": scenario.model,
        "gpu_type": gpu_type,
        "gpu_count": run["result"].get("num_gpus"),
        "suite_commit": run["manifest"].get("suite_commit"),
        "versions": versions(run["manifest"]),
        "calibration": calibration,
        **run_facts(run, main.command),
    }
    record["memory_estimate"] = memory_estimate(record)
    if scenario.baseline:
        base_launch = launch_entry(scenario.model, scenario.gpus, training_knobs(scenario, overrides, baseline=True),
                                   [*scenario.extra_args, *extra_args], environ, timeout_s)
        base = run_facts(finished_run(base_launch, timeout_s), base_launch.command)
        record["baseline"] = base
        if base.get("tflops_per_gpu_megatron") and record.get("tflops_per_gpu_megatron"):
            record["ratio_vs_baseline"] = record["tflops_per_gpu_megatron"] / base["tflops_per_gpu_megatron"]
        curve = loss_curve(record["losses"], base["losses"])
        if curve:
            record["loss_curve"] = curve
    if scenario.peer_gbs:
        record["peer"] = run_peer(scenario, record, timeout_s, keep_logs_in=main.run_dir, variants=peer_variants)
    path = results_dir / f"{record['name']}.json"
    atomic_write_json(path, record)
    return path


def run_peer(scenario: Scenario, record: Mapping[str, Any], timeout_s: int,
             keep_logs_in: Path | None = None, variants: tuple[str, ...] = ("eager", "compiled")) -> dict[str, Any]:
    """torchtitan on the same shapes right after the suite's run (same machine, same sitting), and the
    suite's tokens/s/GPU as a ratio of each of its variants (torchtitan counts FLOPs otherwise).
    torchtitan's logs go to `<suite run dir>/peer/` (a temporary folder without one)."""
    from bench.peers import torchtitan

    knobs = record.get("knobs") or {}
    steps = int(knobs.get("TRAIN_ITERS") or scenario.knobs.get("TRAIN_ITERS", "30"))  # as many as the suite ran
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        out = Path(keep_logs_in) / "peer" if keep_logs_in is not None else Path(tmp)
        layers = int(knobs.get("NUM_LAYERS") or torchtitan.HARNESS_LAYERS)
        peer = torchtitan.run(out, gbs=scenario.peer_gbs, steps=steps, timeout_s=min(timeout_s, 400), layers=layers,
                              variants=variants)
    suite = record.get("tokens_per_s_per_gpu")
    for name, variant in peer["variants"].items():
        theirs = variant.get("tokens_per_s_per_gpu")
        if suite and theirs:
            peer[f"suite_ratio_vs_{name}"] = suite / theirs
    losses = [x for x in record.get("losses") or [] if x is not None]
    peer["suite_last_loss"] = losses[-1] if losses else None
    peer.update(loss_comparison(str(knobs.get("DATA") or scenario.knobs.get("DATA", "mock"))))
    return peer


# torchtitan's harness trains on uniform random ids over the vocabulary (SyntheticTokens in
# /work/shared/peers/torchtitan/tt022/peer_qwen3moe.py): the suite's DATA=random is that distribution
PEER_DATA = "uniform random token ids over the vocabulary"


def loss_comparison(suite_data: str) -> dict[str, Any]:
    """Whether the suite's last loss and the peer's compare: only when both trained on the same data."""
    if suite_data == "random":
        why = f"same data distribution: the suite (DATA=random) and torchtitan both train on {PEER_DATA}"
    else:
        what = "Megatron's mock documents 1, 2, 3, ..., which the model learns" if suite_data == "mock" else "its data"
        why = (f"not comparable: the suite trained on DATA={suite_data} ({what}), torchtitan on {PEER_DATA}; "
               "run with DATA=random to compare losses")
    return {"suite_data": suite_data, "peer_data": PEER_DATA, "losses_comparable": suite_data == "random",
            "losses_note": why}


def run_check(scenario: Scenario, *, environ: Mapping[str, str], timeout_s: int,
              results_dir: Path = RESULTS_DIR) -> Path:
    """Run a check script into a temporary folder and write its JSON, wrapped, as the record
    (`check_passed` holds the check's own verdict)."""
    from benchlib.config.resolve import detect_local_gpu_type

    gpu_type = detect_local_gpu_type() if scenario.gpus else ""
    if scenario.gpus and not gpu_type:
        raise BenchError(f"{scenario.name} is a GPU check and this machine has no recognised NVIDIA GPU",
                         hint="run it on the GPU machine")
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        words = [w.replace(PYTHON, sys.executable).replace(OUT_DIR, tmp) for w in scenario.check_command]
        print(f"[bench] {shlex.join(words)}", flush=True)
        started = time.time()
        try:
            proc = subprocess.run(words, cwd=ROOT, env={**SHARED_HOST_ENV, **environ}, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{scenario.name} did not finish in {timeout_s} s", hint="give more time with --timeout") from None
        output = Path(tmp) / scenario.check_output
        if not output.is_file():  # a check that fails still writes its JSON: that is recorded
            raise BenchError(f"{scenario.name} wrote no {scenario.check_output} (exit {proc.returncode}); no record written",
                             hint=f"run {shlex.join(words)} by hand to see why")
        check = _read_json(output)
    calibration = calibrate_here(gpu_type, environ) if scenario.gpus else {"skipped": "a CPU check"}
    record = {
        "name": scenario.record_name(gpu_type),
        "scenario": scenario.name,
        "scenario_doc": scenario.doc,
        "reproduce": f"python -m bench run {scenario.name}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "gpu_type": gpu_type or None,
        "versions": versions({}),
        "calibration": calibration,
        "seconds": round(time.time() - started, 1),
        "check_passed": proc.returncode == 0,  # the check's own verdict (its exit status)
        "result": check,
    }
    path = results_dir / f"{record['name']}.json"
    atomic_write_json(path, record)
    return path


def calibrate_here(gpu_type: str, environ: Mapping[str, str], timeout_s: int = 180) -> dict[str, Any]:
    """A check's calibration: the suite's own (benchlib.megatron.calibrate, one rank on GPU 0, in a
    child process so no CUDA context stays behind), judged as collect judges a run's."""
    from benchlib.core.rundir import CALIBRATION_DIR
    from benchlib.metrics.calibration import calibration_for

    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        cmd = [sys.executable, "-m", "benchlib.megatron.calibrate", "--out-dir", str(Path(tmp) / CALIBRATION_DIR)]
        try:
            subprocess.run(cmd, cwd=ROOT, env={**SHARED_HOST_ENV, **environ}, timeout=timeout_s, capture_output=True)
        except subprocess.TimeoutExpired:
            return {"error": f"calibration gave no answer in {timeout_s} s"}
        calibration, warnings = calibration_for(Path(tmp), gpu_type)
    for warning in warnings:
        print(f"[bench] warning: {warning}", flush=True)
    return calibration or {"error": "calibration wrote no record"}
