"""result.json and `benchlib status` agree with Slurm's final state, on the test Slurm.

Submitted as users do (`bash sbatch_benchmarking.sh`, CONTAINER_RUNTIME=none, 2 tasks standing in
for 2 GPUs); Slurm's word is read straight from `sacct -c` by the harness. The failing rank is
tests/rank_standin.py (Megatron's own exit-signal handler, a non-daemon thread, a real gloo group,
the driver's ending guard), launched by srun --kill-on-bad-exit as training is.

Not real here: GPUs, the CUDA OOM itself (the stand-in raises torch.OutOfMemoryError with the
message a CUDA OOM prints), and a node failure (it cannot be caused on one machine; covered by
tests/test_metrics_ending.py from sacct's NODE_FAIL).
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest

from slurm_harness import SlurmCluster, slurm_cluster  # noqa: F401  (session fixture)
from test_slurm_jobs import SIGTERM_AWARE, bench, launch, log_text

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "rank_standin.py"
pytestmark = [pytest.mark.slurm]


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _status_json(cluster: SlurmCluster, run_dir: Path) -> dict:
    res = bench(cluster, "status", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _agrees(cluster: SlurmCluster, run_dir: Path, row: dict[str, str], status: str) -> None:
    """`benchlib status` shows sacct's state and exit code, and the result says `status`."""
    data = _status_json(cluster, run_dir)
    assert [(j["state"], j["exit_code"]) for j in data["jobs"]] == [(row["State"], row["ExitCode"])], data
    assert data["status"] == status
    assert _result(run_dir)["status"] == status


@pytest.fixture(scope="module")
def time_limit_job(slurm_cluster: SlurmCluster) -> tuple[str, Path]:
    """Submitted first: it takes the whole minute of its RUN_TIME."""
    return launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=SIGTERM_AWARE, RUN_TIME="00:01:00", COMMENT="st-timelimit")


@pytest.fixture(scope="module", autouse=True)
def _start_time_limit_job_early(time_limit_job):
    yield


def test_command_step_that_succeeds_is_completed(slurm_cluster: SlurmCluster) -> None:
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND="bash -c 'echo step ran'", COMMENT="st-ok")
    row = slurm_cluster.wait_finished(job_id, timeout=90)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0")
    result = _result(run_dir)
    assert (result["status"], result["exit_code"]) == ("completed", 0), result
    _agrees(slurm_cluster, run_dir, row, "completed")


@pytest.mark.megatron
@pytest.mark.parametrize(("mode", "status"), [("crash", "crashed"), ("oom", "oom")])
def test_failed_rank_ends_the_job_failed(slurm_cluster: SlurmCluster, mode: str, status: str) -> None:
    tag = f"standin-{uuid.uuid4().hex}"
    cmd = f"env GLOO_SOCKET_IFNAME=lo {sys.executable} {STANDIN} {mode} {tag}"
    t0 = time.monotonic()
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, RUN_TIME="00:10:00", COMMENT=f"st-{mode}")
    row = slurm_cluster.wait_finished(job_id, timeout=150)
    took = time.monotonic() - t0
    log = log_text(run_dir)
    assert row["State"] == "FAILED" and row["ExitCode"] != "0:0", (row, log[-3000:])
    assert took < 120, f"the job took {took:.0f} s (imports included); a lingering rank would hold it for 10 min"
    assert "Traceback (most recent call last)" in log and "exiting with code" in log
    assert (run_dir / "INCOMPLETE").exists()
    result = _result(run_dir)
    assert result["status"] == status, (result["status"], result["status_evidence"], result["status_detail"])
    _agrees(slurm_cluster, run_dir, row, status)
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, tag)]
    assert alive == [], "a rank outlived its job"


def _cmdline_has(proc: Path, tag: str) -> bool:
    try:
        return tag.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.megatron
def test_two_rank_flag_error_is_crashed_not_cancelled(slurm_cluster: SlurmCluster) -> None:
    """Both ranks refuse the flags; srun's --kill-on-bad-exit cancel line follows: the crash wins.
    `--fp16` beside the rendered `--bf16` is known to Megatron's parser (an unknown flag is now refused
    at launch, before any job) and refused by its validate_args on every rank."""
    job_id, run_dir = launch(slurm_cluster, "--fp16", ENTRY="validate", COMMENT="st-badflag")
    row = slurm_cluster.wait_finished(job_id, timeout=150)
    assert row["State"] == "FAILED" and row["ExitCode"] != "0:0", row
    result = _result(run_dir)
    assert result["status"] == "crashed", (result["status"], result["status_evidence"])
    _agrees(slurm_cluster, run_dir, row, "crashed")


def test_cancelled_job_is_cancelled(slurm_cluster: SlurmCluster) -> None:
    cmd = "bash -c 'echo \" [2026-11-21 10:00:01] iteration        1/      10 | consumed samples: 1 |\"; exec sleep 600'"
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, COMMENT="st-cancel")
    slurm_cluster.wait_state(job_id, {"RUNNING"}, timeout=60)
    deadline = time.monotonic() + 30
    while "iteration        1/" not in log_text(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert bench(slurm_cluster, "stop", job_id).returncode == 0
    row = slurm_cluster.wait_finished(job_id, timeout=60)
    assert row["State"] == "CANCELLED", row
    # The job itself collects nothing when cancelled: `benchlib status` reconciles once Slurm decided.
    _agrees(slurm_cluster, run_dir, row, "cancelled")
    res = bench(slurm_cluster, "status", str(run_dir))
    assert "status cancelled" in res.stdout and f"CANCELLED exit {row['ExitCode']}" in res.stdout, res.stdout


def test_time_limit_is_timeout(slurm_cluster: SlurmCluster, time_limit_job) -> None:
    job_id, run_dir = time_limit_job
    row = slurm_cluster.wait_finished(job_id, timeout=200)
    assert row["State"] == "TIMEOUT", row
    # Collected by the job before Slurm wrote its time-limit line: the result still says timeout.
    result = _result(run_dir)
    assert result["status"] == "timeout", (result["status"], result["status_evidence"])
    _agrees(slurm_cluster, run_dir, row, "timeout")
