"""The GPU calibration: the per-rank module (benchlib.megatron.calibrate) and the parser that judges it
(benchlib.metrics.calibration) against the GPU table.

No GPU here: the module runs for real on CPU (its CUDA parts record themselves as skipped, and a
test of the CUDA measurements skips with that reason); the nvidia-smi rows are in the exact format
`nvidia-smi --query-gpu=... --format=csv,noheader,nounits` prints on an H200 node (driver 570),
written out by hand because no GPU machine can be reached from here. Slow-GPU records are
constructed: that is the case the warning exists for.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib.core.gpus import CALIBRATION_MARGIN, GPU_TABLE
from benchlib.megatron import calibrate as C
from benchlib.metrics.calibration import judge

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent

# Two GPUs of an H200 node: the second has one uncorrected ECC error; H200s report retired pages as
# [N/A] (they remap rows instead).
SMI_H200 = """\
0, GPU-5a1b2c3d-0e0f-1111-2222-333344445555, NVIDIA H200, 00000000:19:00.0, 1980, 1980, 3201, 3201, 700.00, 700.00, 74.28, 31, 0, [N/A]
1, GPU-6b2c3d4e-1f10-2222-3333-444455556666, NVIDIA H200, 00000000:3B:00.0, 345, 1980, 3201, 3201, 700.00, 700.00, 118.51, 29, 1, [N/A]
"""


def test_smi_rows_parse_to_typed_values():
    rows = C.parse_smi_csv(SMI_H200)
    assert len(rows) == 2
    first = rows[0]
    assert first["name"] == "NVIDIA H200" and first["pci_bus_id"] == "00000000:19:00.0"
    assert first["sm_clock_mhz"] == 1980 and first["mem_clock_max_mhz"] == 3201
    assert first["power_limit_w"] == 700.0 and first["temperature_c"] == 31
    assert first["retired_pages_pending"] is None  # [N/A]
    assert rows[1]["ecc_uncorrected_volatile"] == 1


def test_smi_row_of_the_rank_is_found_by_uuid_then_index():
    rows = C.parse_smi_csv(SMI_H200)
    # torch prints the UUID without the GPU- prefix
    assert C.smi_for(rows, "6b2c3d4e-1f10-2222-3333-444455556666", 0)["index"] == 1
    assert C.smi_for(rows, None, 1)["index"] == 1
    assert C.smi_for(rows, "no-such", 7) is None


def test_smi_row_with_other_fields_is_refused():
    with pytest.raises(ValueError, match="fields"):
        C.parse_smi_csv("0, NVIDIA H200, 1980\n")


def test_bus_bandwidth_follows_nccl_tests():
    # 1 GB in 10 ms on 8 ranks: algbw 100 GB/s; all-reduce x 2*7/8, all-to-all x 7/8
    assert C.bus_bandwidth_gbps("all_reduce", 10**9, 0.01, 8) == pytest.approx(175.0)
    assert C.bus_bandwidth_gbps("all_to_all", 10**9, 0.01, 8) == pytest.approx(87.5)


def test_module_runs_on_cpu_and_records_why_it_skipped(tmp_path):
    """The real module, as the rendered script starts it; here there is no CUDA and no nvidia-smi."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "benchlib.megatron.calibrate", "--out-dir", str(tmp_path)], env=env, check=True, timeout=300)
    record = json.loads((tmp_path / "rank0.json").read_text())
    assert record["rank"] == 0 and record["world_size"] == 1 and record["skipped"]["collectives"] == "one rank"
    import torch

    if not torch.cuda.is_available():
        assert record["skipped"]["gemm"] == "no CUDA device" and "gemm" not in record
    if shutil.which("nvidia-smi") is None:
        assert record["skipped"]["nvidia_smi"] == "nvidia-smi not found"
    summary, warnings = judge([record], "H200")
    assert warnings == [] and summary["checks"] == []


def test_a_failing_calibration_is_recorded_and_does_not_fail(tmp_path):
    """Rank 3 of 4 with no rendezvous address: the collectives cannot start; the record says why, exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(RANK="3", LOCAL_RANK="3", WORLD_SIZE="4", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "benchlib.megatron.calibrate", "--out-dir", str(tmp_path)], env=env, check=True, timeout=300)
    record = json.loads((tmp_path / "rank3.json").read_text())
    assert record["rank"] == 3 and "MASTER_ADDR" in record["error"]
    _, warnings = judge([record], "H200")
    assert warnings and warnings[0].startswith("calibration of rank 3") and "MASTER_ADDR" in warnings[0]


def test_cuda_measurements():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the GEMM and copy rates are measured on the GPU machine (see the report's commands)")
    gemm = C.gemm_tflops(torch, n=2048, reps=3)
    copy = C.copy_gbps(torch, nbytes=64 * 1024**2, reps=3)
    assert gemm["tflops"] > 0 and copy["gbps"] > 0


def _record(rank: int, gemm: float, copy: float, smi_row: dict | None = None) -> dict:
    return {"rank": rank, "local_rank": rank, "world_size": 2, "host": "gpu-node-07", "device": "NVIDIA H200",
            "uuid": f"uuid-{rank}", "gemm": {"tflops": gemm}, "copy": {"gbps": copy}, "nvidia_smi": smi_row, "skipped": {}}


def test_slow_gpu_gets_a_warning_naming_it():
    rows = C.parse_smi_csv(SMI_H200)
    healthy_gemm = GPU_TABLE["H200"].expected_gemm_tflops[0]
    healthy_copy = GPU_TABLE["H200"].expected_copy_gbps[0]
    slow_gemm = healthy_gemm * (CALIBRATION_MARGIN - 0.1)
    records = [_record(0, healthy_gemm * 1.01, healthy_copy * 1.05, rows[0]),
               _record(1, slow_gemm, healthy_copy, {**rows[1], "ecc_uncorrected_volatile": 0})]
    summary, warnings = judge(records, "H200")
    assert len(warnings) == 1
    assert "slow GPU: rank 1 (gpu-node-07, 00000000:3B:00.0, NVIDIA H200): bf16 GEMM" in warnings[0]
    assert f"80% of the {healthy_gemm:.0f} TFLOP/s" in warnings[0]
    gemm_checks = [c for c in summary["checks"] if c["metric"] == "bf16 GEMM"]
    assert [c["ok"] for c in gemm_checks] == [True, False]
    assert summary["slowest"]["bf16 GEMM"]["rank"] == 1


def test_memory_errors_are_warnings():
    rows = C.parse_smi_csv(SMI_H200)
    _, warnings = judge([_record(1, 800, 4200, rows[1])], "H200")
    assert warnings == ["GPU with memory errors: rank 1 (gpu-node-07, 00000000:3B:00.0, NVIDIA H200): "
                        "1 uncorrected ECC error(s) since the driver loaded"]


def test_gpu_without_a_measured_reference_is_recorded_not_judged():
    record = {**_record(0, 10.0, 10.0), "device": "NVIDIA B200"}
    summary, warnings = judge([record], None)
    assert warnings == []
    assert summary["checks"][0]["gpu_type"] == "B200" and summary["checks"][0]["ok"] is None


def test_collect_puts_the_calibration_in_the_result(tmp_path):
    """A run directory as the rendered script leaves it: a real log, and the ranks' calibration files."""
    from benchlib.metrics.collect import result_for
    from benchlib.metrics.summary_text import format_summary

    (tmp_path / "logs").mkdir()
    shutil.copy(FIXTURES / "logs" / "h200x1_qwen3-30b-a3b-proxy_native_mbs2.log", tmp_path / "logs" / "train.log")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "rank0.json").write_text(json.dumps(_record(0, 500.0, 4100.0)))
    (tmp_path / "calibration" / "rank1.json").write_text("{ half a file")
    result, _ = result_for(str(tmp_path), gpu="H200")
    assert result.calibration["checks"][0]["measured"] == 500.0
    assert any(w.startswith("slow GPU: rank 0 (gpu-node-07") for w in result.warnings)
    assert any("calibration of rank 1" in w and "unreadable rank1.json" in w for w in result.warnings)
    text = format_summary(result)
    share = 500.0 / GPU_TABLE["H200"].expected_gemm_tflops[0]
    assert f"bf16 GEMM slowest rank 0: 500 TFLOP/s ({share:.0%} of expected)" in text


def test_collectives_of_several_ranks_under_torchrun(tmp_path):
    """Two real ranks (torch.distributed.run, gloo on CPU: no GPU here) run the all-reduce and all-to-all,
    each writes its record, and the parser gathers both with their bus bandwidths."""
    from benchlib.metrics.calibration import calibration_for

    out = tmp_path / "calibration"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                    f"--master-port={_free_port()}", "-m", "benchlib.megatron.calibrate", "--out-dir", str(out)],
                   env=env, check=True, timeout=300, capture_output=True)
    summary, warnings = calibration_for(tmp_path, "H200")
    assert [r["rank"] for r in summary["ranks"]] == [0, 1] and warnings == []
    for coll in summary["collectives"]:
        assert coll["world_size"] == 2 and coll["backend"] in ("gloo", "nccl")
        assert coll["all_reduce_busbw_gbps"] > 0 and coll["all_to_all_busbw_gbps"] > 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
