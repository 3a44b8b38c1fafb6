"""`benchlib sweep` on the test suite's real one-node Slurm: one job array, ranked by `--results`.

Real here: Slurm (slurmctld + slurmd from tests/slurm_harness.py), sbatch --array with a %M
concurrency limit, each task's rendered launch.sh, srun, benchlib's log parser and compare.
Not real: training. Each task runs ENTRY=command with tests/fixtures/planning/layout_iterations.py,
a CPU script that times a pure-Python workload sized by the task's TP and EP (more work for
larger TP, less for larger EP; an arbitrary rule, 2x apart between these layouts) and prints
the measured times as Megatron iteration lines. So the expected ranking EP=2 > TP=1,EP=1 > TP=2
follows from that rule, and the test checks that the sweep runs the three layouts as one
array and that the ranking read back from their logs puts them in that order.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from benchlib.cli import main
from benchlib.core.errors import BenchError
from benchlib.launch.sweep import load_grid

sys.path.insert(0, str(Path(__file__).parent))
from slurm_harness import TERMINAL_STATES, slurm_cluster  # noqa: E402,F401

SCRIPT = Path(__file__).parent / "fixtures" / "planning" / "layout_iterations.py"


def _grid(tmp_path: Path) -> Path:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "model: Qwen3-30B-A3B-Proxy\n"
        "base: {NNODES: 1, GBS: 8, ENTRY: command, RUN_TIME: '00:05:00', BACKEND: te,\n"
        f"       ENTRY_COMMAND: '{sys.executable} {SCRIPT} --tp {{TP}} --ep {{EP}} --gbs {{GBS}}'}}\n"
        "layouts:\n"
        "  - {TP: 1, EP: 1}\n"
        "  - {TP: 1, EP: 2}\n"
        "  - {TP: 2, EP: 1, ETP: 1}\n"
    )
    return grid


def _wait_done(cluster, task_id: str, timeout: float = 180.0) -> dict:
    """Slurm's own view of an array task (scontrol keeps finished jobs for MinJobAge=3600 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = cluster.scontrol_job(task_id)
        if info.get("JobState") in TERMINAL_STATES:
            return info
        time.sleep(1)
    raise AssertionError(f"array task {task_id} did not finish in {timeout:.0f} s: {cluster.scontrol_job(task_id)}")


@pytest.mark.slurm
@pytest.mark.slow
def test_three_layouts_run_as_one_array_and_are_ranked(slurm_cluster, tmp_path, capsys):  # noqa: F811
    grid = _grid(tmp_path)
    rc = main(["sweep", "--grid", str(grid), "--concurrency", "2", f"CLUSTER={slurm_cluster.bench_cluster_conf}"])
    assert rc == 0
    out = capsys.readouterr().out
    sweep_dir = Path(out.split("sweep directory ", 1)[1].split(" ", 1)[0])
    index = json.loads((sweep_dir / "index.json").read_text())
    assert [t["knobs"]["EP"] for t in index["tasks"]] == [1, 2, 1]
    assert index["array"] == "0-2%2"
    job = index["array_job_id"]
    task_ids = [t["job_id"] for t in index["tasks"]]
    assert task_ids == [f"{job}_{i}" for i in range(3)]
    infos = [_wait_done(slurm_cluster, tid) for tid in task_ids]
    assert [i["JobState"] for i in infos] == ["COMPLETED"] * 3, infos
    # the %2 limit: the third task started only after one of the first two had ended
    assert infos[2]["StartTime"] >= min(infos[0]["EndTime"], infos[1]["EndTime"])
    # each task wrote its own run directory and log
    for t in index["tasks"]:
        logs = list((Path(t["run_dir"]) / "logs").glob("*"))
        assert logs and "iteration" in logs[0].read_text()
    assert main(["sweep", "--results", str(sweep_dir)]) == 0
    ranking = [line for line in capsys.readouterr().out.splitlines() if ". task " in line]
    assert [line.split("task ")[1].split()[0] for line in ranking] == ["1", "0", "2"]


def test_grid_file_errors_are_explained(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layouts:\n  - {TPP: 2}\n")
    with pytest.raises(BenchError) as err:
        load_grid(bad)
    assert "TPP" in str(err.value) and "TP" in str(err.value)
    cross = tmp_path / "cross.yaml"
    cross.write_text("model: X\ngrid: {EP: [1, 2], MBS: [1, 2]}\n")
    _, _, layouts = load_grid(cross)
    assert len(layouts) == 4 and {"EP": 2, "MBS": 1} in layouts


def test_from_plan_dry_run_writes_one_array_of_the_plans_top_layouts(tmp_path, capsys):
    """No Slurm needed: --dry-run writes the run directories, the array script and the index."""
    rc = main(["sweep", "Qwen3-30B-A3B-Proxy", "--from-plan", "--top", "3", "--dry-run", "--concurrency", "1",
               "CLUSTER=template", f"OUTPUT_ROOT={tmp_path}"])
    assert rc == 0
    out = capsys.readouterr().out
    sweep_dir = Path(out.split("sweep directory ", 1)[1].split(" ", 1)[0])
    index = json.loads((sweep_dir / "index.json").read_text())
    assert len(index["tasks"]) == 3
    script = (sweep_dir / "array.sh").read_text()
    for t in index["tasks"]:
        run_dir = Path(t["run_dir"])
        assert (run_dir / "launch.sh").is_file() and (run_dir / "resolved.json").is_file()
        assert str(run_dir / "launch.sh") in script
        resolved = json.loads((run_dir / "resolved.json").read_text())
        for knob in ("TP", "EP", "MBS"):
            assert str(resolved["knobs"][knob]) == str(t["knobs"][knob])
    assert "not submitted" in out and "--array=0-2" in out
