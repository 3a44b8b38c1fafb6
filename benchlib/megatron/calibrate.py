"""The GPU calibration each rank runs before training: is this machine as fast as its type should be?

Per rank (one process per GPU, launched like the training step: torchrun or srun):
- a dense bf16 GEMM (8192^3 `torch.matmul`, timed with CUDA events) -> TFLOP/s;
- a device-to-device copy of 2 GiB -> GB/s, counting bytes read + written;
- nvidia-smi's view of the rank's GPU: SM/memory clocks (current and max), power limit and draw,
  temperature, uncorrected ECC errors and pending retired pages;
- with more than one rank: NCCL all-reduce and all-to-all bus bandwidth (nccl-tests' definitions);
  without CUDA the same collectives run over gloo on 1 MiB, so the path is exercised on CPU.

It writes `<out dir>/rank<RANK>.json` and judges nothing: `benchlib.metrics.calibration` compares
the records with the GPU table's expected values when the run is collected. Best effort: a part
that cannot run (no CUDA, no nvidia-smi) is recorded as skipped with the reason; the exit status is
0 unless the output cannot be written, so a calibration never stops a benchmark.

    python -m benchlib.megatron.calibrate --out-dir RUN_DIR/calibration
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from typing import Any

from benchlib.core.rundir import atomic_write_json

GEMM_N = 8192
GEMM_REPS = 50
COPY_BYTES = 2 * 1024**3
COPY_REPS = 50
COLLECTIVE_BYTES = 256 * 1024**2
COLLECTIVE_REPS = 10
CPU_COLLECTIVE_BYTES = 1024**2  # no GPU (tests, CPU clusters): the code path runs, on little data
WARMUP_REPS = 3
WARMUP_S = 0.5  # per measurement; a few seconds in all with the GPU's clock ramp from idle

# nvidia-smi --query-gpu fields, in order; the keys they get in the record.
SMI_FIELDS: tuple[tuple[str, str], ...] = (
    ("index", "index"),
    ("uuid", "uuid"),
    ("name", "name"),
    ("pci.bus_id", "pci_bus_id"),
    ("clocks.sm", "sm_clock_mhz"),
    ("clocks.max.sm", "sm_clock_max_mhz"),
    ("clocks.mem", "mem_clock_mhz"),
    ("clocks.max.mem", "mem_clock_max_mhz"),
    ("power.limit", "power_limit_w"),
    ("power.max_limit", "power_max_limit_w"),
    ("power.draw", "power_draw_w"),
    ("temperature.gpu", "temperature_c"),
    ("ecc.errors.uncorrected.volatile.total", "ecc_uncorrected_volatile"),
    ("retired_pages.pending", "retired_pages_pending"),
)
_TEXT_FIELDS = {"uuid", "name", "pci_bus_id", "retired_pages_pending"}


def smi_command() -> list[str]:
    return ["nvidia-smi", "--query-gpu=" + ",".join(f for f, _ in SMI_FIELDS), "--format=csv,noheader,nounits"]


def parse_smi_csv(text: str) -> list[dict[str, Any]]:
    """nvidia-smi's `--format=csv,noheader,nounits` rows -> one dict per GPU.

    Values nvidia-smi cannot give ("[N/A]", "[Not Supported]", "N/A") become None; numbers become
    int or float. A row with another number of fields than asked for is refused (ValueError)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(SMI_FIELDS):
            raise ValueError(f"nvidia-smi row has {len(cells)} fields, expected {len(SMI_FIELDS)}: {line!r}")
        row: dict[str, Any] = {}
        for (_, key), cell in zip(SMI_FIELDS, cells):
            row[key] = _smi_value(cell, text_field=key in _TEXT_FIELDS)
        rows.append(row)
    return rows


def _smi_value(cell: str, *, text_field: bool) -> Any:
    if cell.strip("[]").lower() in ("n/a", "not supported", "unknown error", "insufficient permissions", ""):
        return None
    if text_field:
        return cell
    for cast in (int, float):
        try:
            return cast(cell)
        except ValueError:
            pass
    return cell


def smi_for(rows: list[dict[str, Any]], uuid: str | None, index: int) -> dict[str, Any] | None:
    """The row of this rank's GPU: by UUID (robust under CUDA_VISIBLE_DEVICES), else by index."""
    if uuid:
        for row in rows:
            if row.get("uuid") and row["uuid"].lower().removeprefix("gpu-") == uuid.lower().removeprefix("gpu-"):
                return row
    for row in rows:
        if row.get("index") == index:
            return row
    return None


def query_smi() -> tuple[list[dict[str, Any]] | None, str | None]:
    """(rows, None) or (None, why not)."""
    try:
        done = subprocess.run(smi_command(), capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        return None, "nvidia-smi not found"
    except subprocess.TimeoutExpired:
        return None, "nvidia-smi did not answer within 30 s"
    if done.returncode != 0:
        return None, f"nvidia-smi exited {done.returncode}: {done.stderr.strip()[:200]}"
    try:
        return parse_smi_csv(done.stdout), None
    except ValueError as err:
        return None, str(err)


def bus_bandwidth_gbps(collective: str, nbytes: int, seconds: float, world: int) -> float:
    """nccl-tests' bus bandwidth: algorithm bandwidth times the share each link carries."""
    algbw = nbytes / seconds / 1e9
    factor = {"all_reduce": 2 * (world - 1) / world, "all_to_all": (world - 1) / world}[collective]
    return algbw * factor


def _timed(torch, fn, reps: int, warmup_s: float = WARMUP_S) -> float:
    """Seconds per call of fn on the current CUDA device (CUDA events), or on the CPU, after warm-up:
    at least WARMUP_REPS calls and `warmup_s` seconds, so an idle GPU has raised its clocks.
    Collectives pass warmup_s=0: every rank must make the same number of calls."""
    start_s = time.perf_counter()
    calls = 0
    while calls < WARMUP_REPS or time.perf_counter() - start_s < warmup_s:
        fn()
        calls += 1
        if calls % 8 == 0 and torch.cuda.is_available():
            torch.cuda.synchronize()
    if not torch.cuda.is_available():
        start_s = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start_s) / reps
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0 / reps


def gemm_tflops(torch, n: int = GEMM_N, reps: int = GEMM_REPS) -> dict[str, Any]:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = _timed(torch, lambda: torch.matmul(a, b, out=out), reps)
    del a, b, out
    return {"tflops": 2 * n**3 / seconds / 1e12, "n": n, "reps": reps, "dtype": "bfloat16"}


def copy_gbps(torch, nbytes: int = COPY_BYTES, reps: int = COPY_REPS) -> dict[str, Any]:
    src = torch.empty(nbytes, device="cuda", dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    seconds = _timed(torch, lambda: dst.copy_(src), reps)
    del src, dst
    return {"gbps": 2 * nbytes / seconds / 1e9, "bytes": nbytes, "reps": reps, "counted": "read + write"}


def collectives(torch, dist, world: int, nbytes: int = COLLECTIVE_BYTES, reps: int = COLLECTIVE_REPS,
                device: str = "cuda") -> dict[str, Any]:
    numel = nbytes // 2
    numel -= numel % world
    buf = torch.ones(numel, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(buf)
    dist.barrier()
    reduce_s = _timed(torch, lambda: dist.all_reduce(buf), reps, warmup_s=0.0)
    a2a_s = _timed(torch, lambda: dist.all_to_all_single(out, buf), reps, warmup_s=0.0)
    size = numel * 2
    return {
        "world_size": world, "bytes": size, "reps": reps, "backend": dist.get_backend(),
        "all_reduce_busbw_gbps": bus_bandwidth_gbps("all_reduce", size, reduce_s, world),
        "all_to_all_busbw_gbps": bus_bandwidth_gbps("all_to_all", size, a2a_s, world),
    }


def calibrate() -> dict[str, Any]:
    """Measure this rank. Parts that cannot run say why under `skipped`."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    record: dict[str, Any] = {"rank": rank, "local_rank": local_rank, "world_size": world, "host": socket.gethostname(),
                              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "skipped": {}}
    import torch

    record["torch_version"] = torch.__version__
    uuid = None
    if not torch.cuda.is_available():
        for part in ("gemm", "copy"):
            record["skipped"][part] = "no CUDA device"
        if world > 1:  # the same code over gloo, on small buffers: a CPU run's figures mean nothing
            record["collectives"] = _run_collectives(torch, world, cuda=False)
        else:
            record["skipped"]["collectives"] = "one rank"
    else:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        record["device"] = props.name
        uuid = str(getattr(props, "uuid", "") or "") or None
        record["uuid"] = uuid
        record["gemm"] = gemm_tflops(torch)
        record["copy"] = copy_gbps(torch)
        if world > 1:
            record["collectives"] = _run_collectives(torch, world)
        else:
            record["skipped"]["collectives"] = "one rank"
    rows, why = query_smi()
    if rows is None:
        record["skipped"]["nvidia_smi"] = why
    else:
        row = smi_for(rows, uuid, local_rank)
        if row is None:
            record["skipped"]["nvidia_smi"] = f"no nvidia-smi row for GPU {uuid or local_rank}"
        record["nvidia_smi"] = row
    return record


def _run_collectives(torch, world: int, *, cuda: bool = True) -> dict[str, Any]:
    import datetime

    import torch.distributed as dist

    # A short timeout: a rank that failed before this point must not hold the others for NCCL's default 10 min.
    timeout = datetime.timedelta(seconds=120)
    if cuda:
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        if cuda:
            return collectives(torch, dist, world)
        return collectives(torch, dist, world, nbytes=CPU_COLLECTIVE_BYTES, reps=3, device="cpu")
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchlib.megatron.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="directory for rank<RANK>.json")
    args = parser.parse_args(argv)
    try:
        record = calibrate()
    except Exception as err:  # noqa: BLE001 -- best effort: the reason goes into the record
        record = {"rank": int(os.environ.get("RANK", "0")), "host": socket.gethostname(),
                  "error": f"{type(err).__name__}: {err}"}
    atomic_write_json(os.path.join(args.out_dir, f"rank{record['rank']}.json"), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
