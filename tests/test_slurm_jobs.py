"""The suite's rendered jobs on a real one-node Slurm (tests/slurm_harness.py).

Submitted the way users do (`bash sbatch_benchmarking.sh` with CONTAINER_RUNTIME=none); each
job's step is a short CPU command in place of training (ENTRY=command), or Megatron-Core's own
argument validation of the run's flags (ENTRY=validate). States and exit codes are read with
`sacct -c` / `scontrol`, straight from Slurm, not through benchlib.

Not real here: GPUs (the test node declares none; tasks stand in for GPUs), more than one node,
enroot/pyxis (absent, so the pyxis path is checked as a refusal and as rendered text elsewhere),
and the training itself (a signal-handling Python one-liner plays Megatron's --exit-signal-handler).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_harness import SlurmCluster, slurm_cluster  # noqa: F401  (session fixture)

ROOT = Path(__file__).resolve().parent.parent
MODEL = "Qwen3-30B-A3B-Proxy"
pytestmark = [pytest.mark.slurm]

# A stand-in for Megatron under --exit-signal-handler: on SIGTERM it says so and exits 0.
SIGTERM_AWARE = (
    f"{sys.executable} -c \"import os, signal, sys, time; "
    "signal.signal(signal.SIGTERM, lambda *a: (print('rank', os.environ['RANK'], 'got SIGTERM, stopping cleanly', flush=True), sys.exit(0))); "
    "print('rank', os.environ['RANK'], 'training', flush=True); time.sleep(600)\""
)


def base_env(cluster: SlurmCluster) -> dict[str, str]:
    from benchlib.config.cluster import CLUSTER_KEYS
    from benchlib.config.knobs import KNOB_NAMES
    from benchlib.core.secrets import is_secret_name

    drop = set(KNOB_NAMES) | set(CLUSTER_KEYS) | {"DRY_RUN"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not is_secret_name(k)}
    env.update(cluster.env)
    env.update({"CLUSTER": str(cluster.bench_cluster_conf), "MODEL": MODEL, "BENCH_PYTHON": sys.executable})
    return env


def launch(cluster: SlurmCluster, *args: str, env: dict[str, str] | None = None, **knobs: str) -> tuple[str, Path]:
    """Submit like a user: `KEY=VALUE bash sbatch_benchmarking.sh`; return (job id, run dir)."""
    full_env = {**base_env(cluster), **(env or {}), **knobs}
    res = subprocess.run(["bash", str(ROOT / "sbatch_benchmarking.sh"), *args], env=full_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"launch failed:\n{res.stdout}\n{res.stderr}"
    m = re.search(r"^run directory (.+)$", res.stdout, re.M)
    assert m, res.stdout
    run_dir = Path(m.group(1))
    record = json.loads((run_dir / "slurm_job.json").read_text())
    job_id = record["job_id"]
    assert re.search(rf"\b{job_id}\b", res.stdout), "the job id is printed"
    return job_id, run_dir


def bench(cluster: SlurmCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchlib", *args], env=base_env(cluster), capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def log_text(run_dir: Path) -> str:
    """The run's log so far ('' until the job's tee has created it: a running job may not have yet)."""
    log = run_dir / "logs" / "train.log"
    return log.read_text(errors="replace") if log.exists() else ""


# The time-limit job takes a minute or more of Slurm time: submit it first, check it last.
@pytest.fixture(scope="module")
def timeout_job(slurm_cluster: SlurmCluster) -> tuple[str, Path, float]:
    t0 = time.monotonic()
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=SIGTERM_AWARE, RUN_TIME="00:01:00", COMMENT="timelimit")
    return job_id, run_dir, t0


@pytest.fixture(scope="module")
def megatron_timeout_job(slurm_cluster: SlurmCluster) -> tuple[str, Path]:
    from conftest import HAS_MEGATRON

    if not HAS_MEGATRON:
        return "", Path()
    script = ROOT / "tests" / "fixtures" / "slurm" / "megatron_signal_step.py"
    cmd = f"env GLOO_SOCKET_IFNAME=lo {sys.executable} {script}"
    return launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, RUN_TIME="00:01:00", COMMENT="mcore-timelimit")


@pytest.fixture(scope="module", autouse=True)
def _start_timeout_jobs_early(timeout_job, megatron_timeout_job):
    yield


def test_success_ranks_and_rendezvous_from_slurm(slurm_cluster: SlurmCluster) -> None:
    cmd = "bash -c 'echo \"env RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE MASTER=$MASTER_ADDR:$MASTER_PORT\"'"
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, COMMENT="ok")
    row = slurm_cluster.wait_finished(job_id, timeout=60)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0")
    log = log_text(run_dir)
    port = re.search(r"^MASTER_PORT=(\d+)", slurm_cluster.bench_cluster_conf.read_text(), re.M).group(1)
    # One task per "GPU" (GPUS_PER_NODE=2), labelled, each with its rank from Slurm.
    for rank in (0, 1):
        assert f"{rank}: env RANK={rank} LOCAL_RANK={rank} WORLD_SIZE=2 MASTER={slurm_cluster.nodes[0]}:{port}" in log
    assert not (run_dir / "INCOMPLETE").exists()
    # Per-job output inside the run directory (%j expanded), not one shared log.
    assert (run_dir / "logs" / f"slurm-{job_id}.out").is_file()
    info = slurm_cluster.scontrol_job(job_id)
    job_name = json.loads((run_dir / "resolved.json").read_text())["job_name"]
    assert info["JobName"] == job_name and job_name.startswith(f"{MODEL}-TP") and job_name.endswith("-ok")
    assert info["StdOut"] == str(run_dir / "logs" / f"slurm-{job_id}.out")


@pytest.mark.megatron
@pytest.mark.slow
def test_validate_step_is_real_megatron_work(slurm_cluster: SlurmCluster) -> None:
    """ENTRY=validate: each task runs Megatron-Core's parse_args + validate_args on the run's own flags."""
    job_id, run_dir = launch(slurm_cluster, ENTRY="validate", COMMENT="validate")
    row = slurm_cluster.wait_finished(job_id, timeout=150)
    log = log_text(run_dir)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert re.search(r"^0: .*Megatron-Core accepts", log, re.M) and re.search(r"^1: .*Megatron-Core accepts", log, re.M)
    assert not (run_dir / "INCOMPLETE").exists()


@pytest.mark.megatron
@pytest.mark.slow
def test_validate_step_failure_fails_the_job(slurm_cluster: SlurmCluster) -> None:
    """An argument Megatron refuses (extra args pass through last) makes the job FAILED, non-zero.

    `--fp16` is a flag Megatron knows (so the launch's flag check lets it through: an unknown flag
    is refused before submission, tests/test_launch_refusals.py); Megatron's validate_args refuses
    it beside the derived `--bf16`."""
    job_id, run_dir = launch(slurm_cluster, "--fp16", ENTRY="validate", COMMENT="badflag")
    row = slurm_cluster.wait_finished(job_id, timeout=150)
    assert row["State"] == "FAILED" and row["ExitCode"] != "0:0", row
    assert (run_dir / "INCOMPLETE").exists()


def test_failing_step_ends_failed_with_its_exit_code(slurm_cluster: SlurmCluster) -> None:
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND="bash -c 'echo about to fail; exit 3'", COMMENT="fail")
    row = slurm_cluster.wait_finished(job_id, timeout=60)
    assert (row["State"], row["ExitCode"]) == ("FAILED", "3:0")
    marker = (run_dir / "INCOMPLETE").read_text()
    assert "exit status 3" in marker
    assert "0: about to fail" in log_text(run_dir)
    res = bench(slurm_cluster, "status", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert "FAILED exit 3:0" in res.stdout and "INCOMPLETE" in res.stdout
    # Without a target: the runs under the cluster's OUTPUT_ROOT, this one among them.
    res = bench(slurm_cluster, "status", "--limit", "100")
    line = next(ln for ln in res.stdout.splitlines() if ln.endswith(str(run_dir)))
    assert line.split()[0] == job_id and "FAILED exit 3:0" in line
    res = bench(slurm_cluster, "status", job_id, "--json")
    data = json.loads(res.stdout)
    assert data["run_dir"] == str(run_dir) and data["incomplete"] is True
    assert [(j["state"], j["exit_code"]) for j in data["jobs"]] == [("FAILED", "3:0")]
    # Stopping a job that already ended is not an error: it says how the job ended.
    res = bench(slurm_cluster, "stop", str(run_dir))
    assert res.returncode == 0 and f"job {job_id} already ended: FAILED exit 3:0" in res.stdout, res.stdout + res.stderr


def test_completed_log_gets_result_json(slurm_cluster: SlurmCluster) -> None:
    """A step that prints a whole Megatron training log: the job collects result.json and drops the marker."""
    fixture = ROOT / "tests" / "fixtures" / "metrics" / "completed_srun.log"
    iterations = [int(m.group(1)) for m in re.finditer(r"iteration\s+(\d+)/\s*(\d+)", fixture.read_text())]
    cmd = f"bash -c '[ \"$RANK\" = 0 ] && sed -e \"s/^[0-9]*: //\" {fixture} || true'"
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, COMMENT="result")
    row = slurm_cluster.wait_finished(job_id, timeout=90)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0")
    assert not (run_dir / "INCOMPLETE").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed", result.get("status")
    res = bench(slurm_cluster, "status", job_id)
    assert f"iteration {max(iterations)}/{max(iterations)}" in res.stdout, res.stdout
    assert "result.json" in res.stdout


def test_repeats_run_the_step_again_each_with_its_own_log(slurm_cluster: SlurmCluster) -> None:
    """REPEATS=2: the job runs the step twice in its allocation; each launch has its own log, train.log
    both, and result.json the across-run statistics."""
    fixture = ROOT / "tests" / "fixtures" / "metrics" / "completed_srun.log"
    cmd = f"bash -c '[ \"$RANK\" = 0 ] && sed -e \"s/^[0-9]*: //\" {fixture} || true'"
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, REPEATS="2", COMMENT="repeats")
    row = slurm_cluster.wait_finished(job_id, timeout=120)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0")
    logs = run_dir / "logs"
    assert (logs / "repeat-1.log").read_text() == (logs / "repeat-2.log").read_text() != ""
    assert (logs / "train.log").read_text().count("[after training is done]") == 2
    result = json.loads((run_dir / "result.json").read_text())
    assert result["segments"] == 2 and result["repeats"]["n"] == 2 and result["repeats"]["completed"] == 2
    assert "launch 2 of 2 (REPEATS)" in (logs / f"slurm-{job_id}.out").read_text()


def test_megatron_early_exit_is_not_a_finished_run(slurm_cluster: SlurmCluster) -> None:
    """Megatron exits 0 when --exit-duration-in-mins stops it: the job must not look finished."""
    fixture = ROOT / "tests" / "fixtures" / "metrics" / "exit_duration.log"
    assert "exiting program after" in fixture.read_text()
    cmd = f"bash -c '[ \"$RANK\" = 0 ] && sed -e \"s/^[0-9]*: //\" {fixture} || true'"
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, COMMENT="early")
    row = slurm_cluster.wait_finished(job_id, timeout=90)
    assert row["State"] == "FAILED" and row["ExitCode"] == "1:0", row
    assert "before its last iteration" in (run_dir / "INCOMPLETE").read_text()


def test_status_shows_progress_and_stop_cancels(slurm_cluster: SlurmCluster) -> None:
    lines = "; ".join(f"echo \" [2026-11-21 10:00:0{i}] iteration        {i}/      10 | consumed samples: {i} |\"" for i in (1, 2, 3))
    cmd = f"bash -c 'if [ \"$RANK\" = 0 ]; then {lines}; fi; exec sleep 600'"
    job_id, run_dir = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND=cmd, COMMENT="progress")
    slurm_cluster.wait_state(job_id, {"RUNNING"}, timeout=60)
    deadline = time.monotonic() + 30
    while "iteration        3/" not in log_text(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    res = bench(slurm_cluster, "status", job_id)
    assert res.returncode == 0, res.stderr
    assert "RUNNING" in res.stdout and "iteration 3/10" in res.stdout and str(run_dir) in res.stdout, res.stdout
    res = bench(slurm_cluster, "stop", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert f"cancelled job {job_id}" in res.stdout
    row = slurm_cluster.wait_finished(job_id, timeout=60)
    assert row["State"] == "CANCELLED", row
    assert (run_dir / "INCOMPLETE").exists()


def test_stop_by_job_id_and_by_model(slurm_cluster: SlurmCluster) -> None:
    other = "DeepSeek-V2-Lite-Proxy"
    a, _ = launch(slurm_cluster, env={"MODEL": other}, ENTRY="command", ENTRY_COMMAND="sleep 600", COMMENT="a")
    b, _ = launch(slurm_cluster, env={"MODEL": other}, ENTRY="command", ENTRY_COMMAND="sleep 600", COMMENT="b")
    c, _ = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND="sleep 600", COMMENT="bystander")
    res = bench(slurm_cluster, "stop", "--model", other)
    assert res.returncode == 0, res.stderr
    cancelled = set(re.findall(r"cancelled job (\d+)", res.stdout))
    assert {a, b} <= cancelled and c not in cancelled, res.stdout
    assert slurm_cluster.wait_finished(a)["State"] == "CANCELLED"
    assert slurm_cluster.wait_finished(b)["State"] == "CANCELLED"
    assert slurm_cluster.scontrol_job(c)["JobState"] in ("PENDING", "RUNNING"), "another model's job is left alone"
    res = bench(slurm_cluster, "stop", c)
    assert res.returncode == 0, res.stderr
    assert slurm_cluster.wait_finished(c)["State"] == "CANCELLED"


def test_singleton_holds_the_second_job(slurm_cluster: SlurmCluster) -> None:
    first, _ = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND="sleep 600", SINGLETON="1", COMMENT="single")
    time.sleep(1.1)  # run directories are stamped to the second
    second, _ = launch(slurm_cluster, ENTRY="command", ENTRY_COMMAND="sleep 600", SINGLETON="1", COMMENT="single")
    slurm_cluster.wait_state(first, {"RUNNING"})
    deadline = time.monotonic() + 30
    info = slurm_cluster.scontrol_job(second)
    while info.get("Reason") != "Dependency" and time.monotonic() < deadline:
        time.sleep(0.5)
        info = slurm_cluster.scontrol_job(second)
    assert (info["JobState"], info["Reason"]) == ("PENDING", "Dependency"), info
    assert info["JobName"] == slurm_cluster.scontrol_job(first)["JobName"]
    res = bench(slurm_cluster, "status", second)
    assert "PENDING (Dependency)" in res.stdout, res.stdout
    # Once the first ends, the second runs.
    assert bench(slurm_cluster, "stop", first).returncode == 0
    slurm_cluster.wait_state(second, {"RUNNING"}, timeout=60)
    assert bench(slurm_cluster, "stop", second).returncode == 0
    assert slurm_cluster.wait_finished(second)["State"] == "CANCELLED"


def test_job_array_runs_each_run(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """What `benchlib sweep` builds on: an array whose task i runs run i's own script."""
    from benchlib.launch.run import prepare, write_run_dir
    from benchlib.launch.slurm.queue import job_infos
    from benchlib.launch.slurm.submit import array_script, submit_array

    env = base_env(slurm_cluster)
    run_dirs, scripts = [], []
    for i in range(2):
        argv = ["ENTRY=command", f"ENTRY_COMMAND=bash -c 'echo array run {i} task $SLURM_ARRAY_TASK_ID rank $RANK'", f"COMMENT=array{i}"]
        run, script = prepare("sbatch", argv, env)
        scripts.append(write_run_dir(run, script, argv, "sbatch"))
        run_dirs.append(run.run_dir)
    sweep = tmp_path / "sweep.sh"
    sweep.write_text(array_script(scripts, job_name="bench-sweep-test", output_dir=tmp_path))
    result = submit_array(sweep, run_dirs=run_dirs)
    assert result.task_ids == [f"{result.job_id}_0", f"{result.job_id}_1"]
    for i, run_dir in enumerate(run_dirs):
        row = slurm_cluster.wait_finished(f"{result.job_id}_{i}", timeout=60)
        assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), row
        assert f"0: array run {i} task {i} rank 0" in log_text(run_dir)
        assert f"1: array run {i} task {i} rank 1" in log_text(run_dir)
        assert not (run_dir / "INCOMPLETE").exists()
        assert json.loads((run_dir / "slurm_job.json").read_text())["job_id"] == f"{result.job_id}_{i}"
        assert (tmp_path / f"slurm-{result.job_id}_{i}.out").is_file()
    states = {j.job_id: j.state for j in job_infos(result.job_id)}
    assert states == {f"{result.job_id}_0": "COMPLETED", f"{result.job_id}_1": "COMPLETED"}


def test_hostile_values_stay_literal(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Spaces, quotes, `;`, `$(...)`, backticks, `&` and `$HOME` in COMMENT and the output path
    (a line break is refused before rendering: tests/test_slurm_script.py)."""
    canary = tmp_path / "PWNED"
    comment = f"it's a \"test\"; $(touch {canary}) `touch {canary}`; rm -rf {canary}.dir & echo $HOME"
    out_root = tmp_path / f"out dir 'q' ;$(touch {canary})"
    env = {"OUTPUT_ROOT": str(out_root)}
    job_id, run_dir = launch(slurm_cluster, env=env, ENTRY="command", ENTRY_COMMAND="echo hostile-ok", COMMENT=comment)
    assert str(run_dir).startswith(str(out_root))
    row = slurm_cluster.wait_finished(job_id, timeout=60)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0")
    assert "0: hostile-ok" in log_text(run_dir)
    assert not canary.exists()
    # Slurm recorded the comment literally.
    assert slurm_cluster.scontrol_job(job_id)["Comment"] == comment
    assert subprocess.run(["bash", "-n", str(run_dir / "launch.sh")]).returncode == 0


def test_secret_reaches_the_job_but_no_file(slurm_cluster: SlurmCluster) -> None:
    sentinel = "sentinel-wandb-key-5a1f0c"
    # The step proves the key arrived without printing it (or naming it in the rendered script).
    cmd = "bash -c 'echo key-length=${#WANDB_API_KEY}'"
    job_id, run_dir = launch(slurm_cluster, env={"WANDB_API_KEY": sentinel}, ENTRY="command", ENTRY_COMMAND=cmd, COMMENT="secret")
    row = slurm_cluster.wait_finished(job_id, timeout=60)
    assert row["State"] == "COMPLETED"
    assert f"0: key-length={len(sentinel)}" in log_text(run_dir), "Slurm exports the submitter's key to the job"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert sentinel not in path.read_text(errors="replace"), path


def test_pyxis_refused_when_srun_lacks_it(slurm_cluster: SlurmCluster) -> None:
    env = {**base_env(slurm_cluster), "CONTAINER_RUNTIME": "pyxis", "CONTAINER_IMAGE": "/images/x.sqsh", "COMMENT": "pyxis"}
    env.update(ENTRY="command", ENTRY_COMMAND="true")
    res = subprocess.run(["bash", str(ROOT / "sbatch_benchmarking.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "--container-image" in res.stderr and "CONTAINER_RUNTIME=none" in res.stderr, res.stderr
    queued = slurm_cluster.run("squeue", "-h", "-o", "%j").stdout.split()
    assert not [name for name in queued if name.endswith("-pyxis")], queued


def test_sbatch_refusal_is_explained(slurm_cluster: SlurmCluster) -> None:
    env = {**base_env(slurm_cluster), "PARTITION": "no-such-partition", "ENTRY": "command", "ENTRY_COMMAND": "true"}
    res = subprocess.run(["bash", str(ROOT / "sbatch_benchmarking.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "sbatch refused the job" in res.stderr and "invalid partition" in res.stderr.lower(), res.stderr
    assert "PARTITION" in res.stderr and "Traceback" not in res.stderr


def test_time_limit_ends_timeout_with_marker(slurm_cluster: SlurmCluster, timeout_job) -> None:
    job_id, run_dir, t0 = timeout_job
    row = slurm_cluster.wait_finished(job_id, timeout=200)
    assert row["State"] == "TIMEOUT", row
    assert time.monotonic() - t0 < 200
    marker = (run_dir / "INCOMPLETE").read_text()
    assert "time limit" in marker
    log = log_text(run_dir)
    # The warning reached both tasks before the limit: they stopped cleanly, as Megatron would.
    assert "0: rank 0 got SIGTERM, stopping cleanly" in log and "1: rank 1 got SIGTERM, stopping cleanly" in log
    res = bench(slurm_cluster, "status", str(run_dir))
    assert "TIMEOUT" in res.stdout and "INCOMPLETE" in res.stdout, res.stdout


@pytest.mark.slow
def test_two_nodes_rendezvous_on_the_first_node(slurm_cluster: SlurmCluster) -> None:
    """NNODES=2 on a real two-node allocation (two slurmd on this host): ranks and the master address
    come from Slurm, and a torch.distributed (gloo) all-reduce over all four tasks succeeds."""
    if not slurm_cluster.multi_partition:
        pytest.skip("this host's name does not resolve to loopback: the test Slurm has one node only")
    script = ROOT / "tests" / "fixtures" / "slurm" / "rendezvous.py"
    cmd = f"env GLOO_SOCKET_IFNAME=lo {sys.executable} {script}"
    job_id, run_dir = launch(
        slurm_cluster, env={"PARTITION": slurm_cluster.multi_partition}, NNODES="2", ENTRY="command", ENTRY_COMMAND=cmd,
        COMMENT="twonodes",
    )
    row = slurm_cluster.wait_finished(job_id, timeout=150)
    log = log_text(run_dir)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    lines = sorted(re.findall(r"^(\d+): rendezvous (.*)$", log, re.M))
    first, second = slurm_cluster.nodes
    # 2 nodes x GPUS_PER_NODE=2 tasks; ranks fill the first node, then the second; 0+1+2+3 = 6.
    assert lines == [
        ("0", f"rank=0 world=4 local_rank=0 node={first} master={first} sum=6"),
        ("1", f"rank=1 world=4 local_rank=1 node={first} master={first} sum=6"),
        ("2", f"rank=2 world=4 local_rank=0 node={second} master={first} sum=6"),
        ("3", f"rank=3 world=4 local_rank=1 node={second} master={first} sum=6"),
    ], log[-3000:]
    assert slurm_cluster.scontrol_job(job_id)["NodeList"] == f"{first},{second}"


def _listening_addresses(pid: int) -> set[str]:
    """IPv4/IPv6 addresses a process listens on, from /proc (no ss/netstat needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                hex_addr = cols[1].split(":")[0]
                if width == 8:
                    found.add(".".join(str(int(hex_addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add("ipv6:" + hex_addr)
    return found


def test_daemons_listen_on_loopback_only(slurm_cluster: SlurmCluster) -> None:
    for name, pid in slurm_cluster.pids.items():
        addrs = _listening_addresses(pid)
        assert addrs == {"127.0.0.1"}, f"{name} listens on {addrs}"


@pytest.mark.megatron
def test_time_limit_stops_megatron_signal_handler_on_every_rank(slurm_cluster: SlurmCluster, megatron_timeout_job) -> None:
    """The warning's SIGTERM reaches Megatron's DistributedSignalHandler on every rank: they agree on
    one iteration, stop cleanly (exit 0), and the job still ends TIMEOUT with the marker."""
    job_id, run_dir = megatron_timeout_job
    row = slurm_cluster.wait_finished(job_id, timeout=200)
    log = log_text(run_dir)
    assert row["State"] == "TIMEOUT", (row, log[-2000:])
    stops = dict(re.findall(r"^\d+: rank (\d+) stopped at iteration (\d+)$", log, re.M))
    assert set(stops) == {"0", "1"} and len(set(stops.values())) == 1, log[-2000:]
    assert re.search(r"^0: \[exiting program after receiving SIGTERM\.\]", log, re.M)
    assert "time limit" in (run_dir / "INCOMPLETE").read_text()
    # The partial log was collected, and not as a finished run.
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] != "completed"
    last = max(int(n) for n in re.findall(r"iteration\s+(\d+)/", log))
    assert last == int(next(iter(stops.values())))
