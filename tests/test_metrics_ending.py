"""The final status agrees with how the launcher and Slurm say the run ended (metrics.status.reconcile).

Logs are written here line by line in the shapes real runs print (srun labels, Slurm's own
lines); the Slurm states are the strings sacct prints. The same path runs end to end on the test
Slurm in tests/test_slurm_status.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchlib.metrics.collect import collect_run_dir, result_for, write_ending
from benchlib.metrics.logparse import parse_log
from benchlib.metrics.status import Ending, determine_status, reconcile

ITER = " [2026-11-21 10:00:0{i}] iteration        {i}/      10 | consumed samples: {i} | elapsed time per iteration (ms): 1000.0 | lm loss: 5.0E+00 |"
CRASH_THEN_CANCEL = [
    "1: Traceback (most recent call last):",
    "1:   File \"x.py\", line 1, in <module>",
    "1: ValueError: unrecognized arguments: --no-such-flag",
    "srun: error: localhost: task 1: Exited with exit code 2",
    "slurmstepd: error: *** STEP 7.0 ON localhost CANCELLED AT 2026-11-21T10:00:05 ***",
]
CANCEL_THEN_TRACEBACK = [
    ITER.format(i=1),
    "slurmstepd: error: *** JOB 8 ON localhost CANCELLED AT 2026-11-21T10:00:05 ***",
    "0: Traceback (most recent call last):",
    "0: torch.distributed.elastic.multiprocessing.api.SignalException: Process 1 got signal: 15",
]


def _run_dir(tmp_path: Path, lines: list[str]) -> Path:
    (tmp_path / "logs").mkdir(parents=True)
    (tmp_path / "logs" / "train.log").write_text("\n".join(lines) + "\n")
    return tmp_path


def _status(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "x.log"
    path.write_text("\n".join(lines) + "\n")
    return determine_status(parse_log([path]), None, now=path.stat().st_mtime).status


def test_a_cancel_line_after_a_crash_does_not_mask_it(tmp_path: Path) -> None:
    assert _status(tmp_path, CRASH_THEN_CANCEL) == "crashed"


def test_a_cancel_comes_first_when_it_came_first(tmp_path: Path) -> None:
    assert _status(tmp_path, CANCEL_THEN_TRACEBACK) == "cancelled"


@pytest.mark.parametrize(("lines", "ending", "expected"), [
    # ENTRY=command step that printed no Megatron line and exited 0: not "running".
    (["step ran"], Ending(exit_status=0, source="sbatch job"), "completed"),
    (["step ran"], Ending(how="COMPLETED", slurm_exit_code="0:0"), "completed"),
    # Cut by RUN_TIME: the log's last line is the suite's own step cancel, Slurm says TIMEOUT.
    ([ITER.format(i=1), "slurmstepd: error: *** STEP 9.0 ON localhost CANCELLED AT 2026-11-21T10:00:05 ***"],
     Ending(how="TIMEOUT", slurm_exit_code="0:15"), "timeout"),
    ([ITER.format(i=1)], Ending(how="timeout", exit_status=0, source="sbatch job"), "timeout"),
    # Failed: the log gives the class; without one, crashed.
    (CRASH_THEN_CANCEL, Ending(how="FAILED", slurm_exit_code="2:0"), "crashed"),
    ([ITER.format(i=1), "0: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"],
     Ending(how="FAILED", slurm_exit_code="6:0"), "oom"),
    ([ITER.format(i=1)], Ending(exit_status=1, source="interactive launch"), "crashed"),
    (CANCEL_THEN_TRACEBACK, Ending(how="CANCELLED", slurm_exit_code="0:15"), "cancelled"),
    ([ITER.format(i=1)], Ending(how="cancelled", exit_status=130), "cancelled"),
    ([ITER.format(i=1)], Ending(how="NODE_FAIL", slurm_exit_code="0:0"), "node_failure"),
])
def test_reconciled_status(tmp_path: Path, lines: list[str], ending: Ending, expected: str) -> None:
    run_dir = _run_dir(tmp_path, lines)
    write_ending(run_dir, ending)
    result, _ = result_for(str(run_dir))
    assert result.status == expected, (result.status, result.status_evidence, result.status_detail)


def test_collect_keeps_the_ending_for_later_parses(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, ["step ran"])
    rc = collect_run_dir(run_dir, Ending(exit_status=0, source="sbatch job"))
    assert rc == 0
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "ended.json").read_text())["exit_status"] == 0
    again, _ = result_for(str(run_dir))  # a later `benchlib parse RUN_DIR` says the same
    assert again.status == "completed"


def test_without_an_ending_the_log_decides() -> None:
    from benchlib.metrics.status import RunStatus

    running = RunStatus("running", "last line")
    assert reconcile(running, None) is running
    assert reconcile(running, Ending()) is running
