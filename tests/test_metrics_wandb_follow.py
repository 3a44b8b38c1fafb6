"""WANDB=1: one WandB run per benchmark, written by the job's follower; `benchlib push` updates it.

Real: wandb 0.31 offline (runs read back from their `.wandb` files with wandb's protobufs), the
`benchlib wandb-follow` / `collect` / `push` commands as the job script runs them, the rendered
interactive script, torchrun, and real H200 Megatron logs (tests/fixtures/logs). Not real: training
(no GPU here). A stand-in step (tests/fixtures/wandb/replay_log.py) prints a real log line by line,
or the test appends it to logs/train.log itself, as the job's `tee` would.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchlib.cli import main
from benchlib.config.resolve import resolve_run
from benchlib.core.rundir import INCOMPLETE_MARKER, RESULT_FILE, WANDB_RUN_FILE, WANDB_STOP_FILE
from benchlib.launch.run import write_run_dir
from benchlib.metrics.logparse import parse_log
from benchlib.render.scripts import render_interactive

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_harness import slurm_cluster  # noqa: E402,F401  (session fixture: a real one-node Slurm)
from test_metrics_compare_push import _items, read_wandb_records  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "tests" / "fixtures" / "logs"
REPLAY = REPO / "tests" / "fixtures" / "wandb" / "replay_log.py"
# A real 1 x H200 run made through interactive_benchmarking.sh (15 iterations, MBS 4, GBS 32).
FIXTURE = LOGS / "h200x1_qwen3-30b-a3b-proxy_fastops_mbs4.log"
FAILED = LOGS / "h200x1_deepseek-v2-lite-proxy_native_failed-mla-qnorm.log"
PROXY = "Qwen3-30B-A3B-Proxy"
KNOBS = {"GPU_TYPE": "H200", "MBS": "4", "GBS": "32", "TRAIN_ITERS": "15", "BACKEND": "native"}
SENTINEL = "wandb-SENTINEL-3c1e9d-do-not-leak"


# --- helpers -------------------------------------------------------------------------------------

@pytest.fixture
def wandb_env(clean_env, monkeypatch) -> dict[str, str]:
    """Offline WandB, no key, in this process and in the commands the tests start."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    return {**clean_env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}


def make_run_dir(root: Path, env: dict[str, str], **knobs: str) -> Path:
    """A run directory as `launch` writes it (launch.sh, resolved.json, manifest.json, logs/)."""
    run = resolve_run(["CLUSTER=local"], {**env, "MODEL": PROXY, "OUTPUT_ROOT": str(root), **KNOBS, **knobs},
                      mode="interactive", local_gpus=1)
    write_run_dir(run, render_interactive(run), [], "interactive")
    return Path(run.run_dir)


def append_lines(log: Path, lines: list[str]) -> None:
    """As `tee` writes training's output: in pieces, a line sometimes cut in two."""
    with open(log, "a") as fh:
        for line in lines:
            half = len(line) // 2
            fh.write(line[:half])
            fh.flush()
            fh.write(line[half:])
            fh.flush()


def start_follower(run_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchlib", "wandb-follow", str(run_dir), "--interval", "0.2", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(predicate, timeout: float = 90.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def record_of(run_dir: Path) -> dict:
    path = run_dir / WANDB_RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def end_of_job(run_dir: Path, env: dict[str, str], exit_status: int) -> None:
    """What the job script does when training ended: collect, then tell the follower."""
    subprocess.run([sys.executable, "-m", "benchlib", "collect", str(run_dir)], env=env, capture_output=True, timeout=120)
    (run_dir / WANDB_STOP_FILE).write_text(f"{exit_status}\n")


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def read_run(path: Path) -> dict:
    records = read_wandb_records(path)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    summary: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    return {"run": run, "config": _items(run.config.update), "summary": summary, "history": history,
            "iterations": [h for h in history if "train/iteration_time_ms" in h]}


def assert_every_iteration(rows: list[dict], log: Path) -> None:
    """One row per iteration line of the log, with Megatron's figures and tokens/s from them."""
    parsed = parse_log([log])
    seq, world = parsed.config["seq_length"], parsed.config["world_size"]
    assert [r["iteration"] for r in rows] == [rec.iteration for rec in parsed.iterations]
    for row, rec in zip(rows, parsed.iterations):
        assert row["train/iteration_time_ms"] == rec.elapsed_ms
        assert row["train/tflops_per_gpu_megatron"] == rec.tflops_reported
        assert row["train/lm_loss"] == rec.losses["lm loss"]
        assert row["train/load_balancing_loss"] == rec.losses["load_balancing_loss"]
        assert row["train/learning_rate"] == rec.learning_rate and row["train/grad_norm"] == rec.grad_norm
        tokens_per_s = rec.global_batch * seq / (rec.elapsed_ms / 1000.0)
        assert row["train/tokens_per_s"] == pytest.approx(tokens_per_s, rel=1e-12)
        assert row["train/tokens_per_s_per_gpu"] == pytest.approx(tokens_per_s / world, rel=1e-12)


def assert_suite_summary(summary: dict, result: dict) -> None:
    assert summary["status"] == result["status"]
    assert summary["steady/first_iteration"] == result["steady_window"]["first_iteration"]
    assert summary["steady/iteration_time_ms_median"] == result["iteration_time_ms"]["median"]
    assert summary["steady/tokens_per_s_per_gpu"] == pytest.approx(result["tokens_per_s_per_gpu"], rel=1e-12)
    assert summary["steady/tflops_per_gpu_megatron"] == result["tflops_per_gpu_reported"]
    assert summary["steady/mfu"] == pytest.approx(result["mfu"], rel=1e-12) and result["mfu"] > 0
    assert summary["peak_tflops"] == result["peak"]["tflops"] and summary["peak_source"] == result["peak"]["source"]
    assert summary["memory/max_allocated_mb"] == result["peak_memory_mb"]["max_allocated"]


def follow_whole_log(run_dir: Path, env: dict[str, str], log: Path = FIXTURE, exit_status: int = 0) -> None:
    append_lines(run_dir / "logs" / "train.log", log.read_text().splitlines(keepends=True))
    end_of_job(run_dir, env, exit_status)
    proc = start_follower(run_dir, env)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out


def test_rows_do_not_depend_on_how_the_log_is_cut(tmp_path, monkeypatch):
    """The same rows whether the log is read whole, in small chunks, or as it grows (half lines included)."""
    from benchlib.metrics.wandb_push import HistoryFeed, LogTail, feed_rows

    whole = feed_rows(HistoryFeed(), LogTail(FIXTURE).lines(final=True))
    monkeypatch.setattr(LogTail, "CHUNK_BYTES", 997)
    assert feed_rows(HistoryFeed(), LogTail(FIXTURE).lines(final=True)) == whole
    grown, feed, log = [], HistoryFeed(), tmp_path / "train.log"
    tail = LogTail(log)
    data = FIXTURE.read_bytes()
    for start in range(0, len(data), 5000):  # cuts fall inside lines
        with open(log, "ab") as fh:
            fh.write(data[start:start + 5000])
        grown += feed_rows(feed, tail.lines())
    grown += feed_rows(feed, tail.lines(final=True))
    assert grown == whole and tail.offset == len(data)
    assert_every_iteration([r for r in whole if "train/iteration_time_ms" in r], FIXTURE)


# --- the follower ------------------------------------------------------------------------------

def test_follower_logs_each_iteration_as_it_appears_then_the_suite_summary(tmp_path, wandb_env):
    run_dir = make_run_dir(tmp_path / "runs", wandb_env)
    log = run_dir / "logs" / "train.log"
    lines = FIXTURE.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if "iteration        5/" in line) + 1
    proc = start_follower(run_dir, wandb_env)
    try:
        append_lines(log, lines[:cut])
        # Live: iterations 1..5 reach the run while training (the rest of the log) has not happened yet.
        wait_until(lambda: record_of(run_dir).get("live_iteration") == 5, what="the follower to log iteration 5")
        assert proc.poll() is None
        append_lines(log, lines[cut:])
        end_of_job(run_dir, wandb_env, 0)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    files = offline_runs(run_dir)
    assert len(files) == 1, files
    got = read_run(files[0])
    assert got["run"].run_id == record_of(run_dir)["id"]
    assert_every_iteration(got["iterations"], FIXTURE)
    memory = [h for h in got["history"] if "memory/max_allocated_mb" in h]
    assert [m["iteration"] for m in memory] == [1, 2] and memory[1]["memory/max_allocated_mb"] == 66850.55
    result = json.loads((run_dir / RESULT_FILE).read_text())
    assert_suite_summary(got["summary"], result)
    assert got["summary"]["status"] == "completed" and got["summary"]["job/exit_status"] == 0
    assert got["summary"]["job/end"] == "training ended"
    # Dashboard grouping and filtering work without editing: group = model, tags, config.
    run, config = got["run"], got["config"]
    assert run.run_group == PROXY and run.display_name == config["knobs"]["WANDB_RUN_NAME"]
    assert set(run.tags) >= {result["layout_name"], "bf16", "H200", "native", "1gpu"}
    assert config["knobs"]["TRAIN_ITERS"] == 15 and config["layout"]["gbs"] == 32
    assert len(config["suite_commit"]) >= 7 and config["cluster"] == "local"
    assert config["versions"]["wandb"] == "0.31.0" and "python" in config["versions"]
    assert config["megatron"]["num_experts"] == 128
    assert not (run_dir / "logs" / "train.log").read_text().count("wandb-follow")  # its output stays out of the log


def test_a_failed_run_gets_its_status(tmp_path, wandb_env):
    run_dir = make_run_dir(tmp_path / "runs", wandb_env)
    (run_dir / INCOMPLETE_MARKER).write_text("started\n")  # the job script's marker, kept on failure
    follow_whole_log(run_dir, wandb_env, log=FAILED, exit_status=1)
    (path,) = offline_runs(run_dir)
    summary = read_run(path)["summary"]
    assert summary["status"] == "crashed" and summary["failure_class"] == "crashed"
    assert summary["job/exit_status"] == 1 and summary["job/incomplete"] is True
    assert "Error" in summary["status_evidence"] + summary.get("status_detail", "")


def test_follower_finishes_with_a_status_when_the_job_script_is_gone(tmp_path, wandb_env):
    """No wandb_stop (the script was killed): the follower sees its parent gone and computes the result."""
    run_dir = make_run_dir(tmp_path / "runs", wandb_env)
    lines = FIXTURE.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if "iteration        8/" in line) + 1
    append_lines(run_dir / "logs" / "train.log", lines[:cut])
    parent = subprocess.Popen(["sleep", "3"])
    proc = start_follower(run_dir, wandb_env, "--parent-pid", str(parent.pid))
    parent.wait()
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "the job script is gone" in out, out
    (path,) = offline_runs(run_dir)
    got = read_run(path)
    assert [r["iteration"] for r in got["iterations"]] == list(range(1, 9))
    assert got["summary"]["status"] == "running"  # no end marker, log written just now
    assert "job/exit_status" not in got["summary"] and got["summary"]["steady/mfu"] > 0
    assert got["summary"]["job/end"] == "the job script is gone"


def test_follower_finishes_with_a_status_after_sigterm(tmp_path, wandb_env):
    """Slurm cancelling the job sends SIGTERM: the follower follows a little longer, then finishes the run."""
    run_dir = make_run_dir(tmp_path / "runs", wandb_env)
    lines = FIXTURE.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if "iteration        3/" in line) + 1
    append_lines(run_dir / "logs" / "train.log", lines[:cut])
    proc = start_follower(run_dir, wandb_env, "--term-grace", "1")
    wait_until(lambda: record_of(run_dir).get("live_iteration") == 3, what="the follower to log iteration 3")
    proc.send_signal(signal.SIGTERM)
    append_lines(run_dir / "logs" / "train.log", lines[cut:cut + 3])  # still read during the grace time
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGTERM" in out, out
    (path,) = offline_runs(run_dir)
    got = read_run(path)
    assert got["summary"]["job/end"] == "terminated" and got["summary"]["status"]
    assert got["iterations"][-1]["iteration"] >= 3 and record_of(run_dir)["finished"] is True


# --- push: same shape, never a duplicate ---------------------------------------------------------

def test_push_of_a_followed_run_updates_that_run(tmp_path, wandb_env, capsys):
    run_dir = make_run_dir(tmp_path / "runs", wandb_env)
    follow_whole_log(run_dir, wandb_env)
    first = record_of(run_dir)
    for _ in range(2):
        assert main(["push", str(run_dir)]) == 0
    assert "offline WandB run" in capsys.readouterr().out
    files = offline_runs(run_dir)
    assert len(files) == 3  # the job's own chunk and two updates of the same run
    runs = [read_run(f) for f in files]
    assert {r["run"].run_id for r in runs} == {first["id"]}
    assert runs[0]["iterations"] and not runs[1]["history"] and not runs[2]["history"]  # nothing logged twice
    assert record_of(run_dir)["id"] == first["id"] and record_of(run_dir)["writers"] == ["follower", "push"]
    result = json.loads((run_dir / RESULT_FILE).read_text())
    assert_suite_summary(runs[2]["summary"], result)
    # `wandb sync` takes every chunk of the run, in order, into the one run
    dry = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *[str(f.parent) for f in files]],
                         capture_output=True, text=True, env=wandb_env, timeout=120)
    assert dry.returncode == 0 and all(f.name in dry.stdout + dry.stderr for f in files), dry.stdout + dry.stderr


def test_summary_goes_into_an_existing_run_after_the_follower_was_killed(tmp_path, wandb_env):
    """The follower died mid-training (SIGKILL; its offline chunk may be lost): push writes the rows and
    the summary into the same run. A row keeps its step whoever logs it, so WandB holds each once."""
    run_dir = make_run_dir(tmp_path / "runs", wandb_env)
    log = run_dir / "logs" / "train.log"
    lines = FIXTURE.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if "iteration        6/" in line) + 1
    proc = start_follower(run_dir, wandb_env)
    try:
        append_lines(log, lines[:cut])
        wait_until(lambda: record_of(run_dir).get("live_iteration") == 6, what="the follower to log iteration 6")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    run_id = record_of(run_dir)["id"]
    append_lines(log, lines[cut:])
    subprocess.run([sys.executable, "-m", "benchlib", "collect", str(run_dir)], env=wandb_env, capture_output=True, timeout=120)
    assert main(["push", str(run_dir)]) == 0
    pushed = read_run(offline_runs(run_dir)[-1])
    assert pushed["run"].run_id == run_id and record_of(run_dir)["finished"] is True
    assert_every_iteration(pushed["iterations"], FIXTURE)
    assert_suite_summary(pushed["summary"], json.loads((run_dir / RESULT_FILE).read_text()))
    # whatever of the killed chunk reached disk has the same rows at the same steps
    by_step = {r["_step"]: r for r in pushed["history"]}
    for path in offline_runs(run_dir)[:-1]:
        try:
            records = read_wandb_records(path)
        except AssertionError:  # cut mid-record by the kill
            continue
        for r in records:
            if r.WhichOneof("record_type") == "history":
                row = _items(r.history.item)
                assert {k: v for k, v in row.items() if not k.startswith("_")} == \
                    {k: v for k, v in by_step[row["_step"]].items() if not k.startswith("_")}
    # a second push finds nothing left to log
    assert main(["push", str(run_dir)]) == 0
    assert not read_run(offline_runs(run_dir)[-1])["history"]


def test_push_without_wandb_gives_the_same_shape(tmp_path, wandb_env):
    """A run made without WANDB=1, pushed afterwards, looks like a followed one: keys, group, tags, config."""
    followed = make_run_dir(tmp_path / "a", wandb_env)
    follow_whole_log(followed, wandb_env)
    plain = make_run_dir(tmp_path / "b", wandb_env, WANDB="0")
    append_lines(plain / "logs" / "train.log", FIXTURE.read_text().splitlines(keepends=True))
    subprocess.run([sys.executable, "-m", "benchlib", "collect", str(plain)], env=wandb_env, capture_output=True, timeout=120)
    assert main(["push", str(plain)]) == 0
    (a_file,), (b_file,) = offline_runs(followed), offline_runs(plain)
    a, b = read_run(a_file), read_run(b_file)
    assert_every_iteration(b["iterations"], FIXTURE)
    assert [set(r) for r in a["history"]] == [set(r) for r in b["history"]]
    assert set(a["summary"]) - set(b["summary"]) <= {"job/exit_status", "job/end"}
    assert set(a["config"]) == set(b["config"]) and a["run"].run_group == b["run"].run_group
    assert sorted(a["run"].tags) == sorted(b["run"].tags)
    assert record_of(plain)["id"] == b["run"].run_id  # a second push updates this run


def test_push_of_a_bare_log_has_every_iteration(tmp_path, wandb_env):
    log = tmp_path / FIXTURE.name
    log.write_bytes(FIXTURE.read_bytes())
    assert main(["push", str(log), "--gpu", "H200"]) == 0
    (path,) = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    got = read_run(path)
    assert_every_iteration(got["iterations"], FIXTURE)
    assert got["summary"]["steady/mfu"] > 0 and got["run"].display_name == FIXTURE.stem


# --- refused or warned before launch ------------------------------------------------------------

@pytest.fixture(scope="module")
def python_without_wandb(tmp_path_factory) -> Path:
    """A real interpreter that cannot import wandb (a bare venv of this Python)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import wandb"], capture_output=True).returncode != 0
    return python


def _launcher(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    return subprocess.run(["bash", str(REPO / script), *args], env=env, capture_output=True, text=True, timeout=300)


def test_wandb_refused_where_the_jobs_python_lacks_it(tmp_path, clean_env, python_without_wandb):
    base = {**clean_env, "MODEL": PROXY, "OUTPUT_ROOT": str(tmp_path / "runs"), "WANDB": "1", "WANDB_API_KEY": SENTINEL,
            "ENTRY": "command", "ENTRY_COMMAND": "true", "PYTHON": str(python_without_wandb)}
    proc = _launcher("interactive_benchmarking.sh", base)
    assert proc.returncode != 0 and "cannot import wandb" in proc.stderr and "fix:" in proc.stderr, proc.stderr
    assert str(python_without_wandb) in proc.stderr and SENTINEL not in proc.stdout + proc.stderr
    proc = _launcher("sbatch_benchmarking.sh", {**base, "CLUSTER": "template", "CONTAINER_RUNTIME": "none"})
    assert proc.returncode != 0 and "cannot import wandb" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing written, nothing submitted
    # Without WANDB=1 the same launch goes ahead (its bare interpreter then has no torch for torchrun).
    proc = _launcher("interactive_benchmarking.sh", {**base, "WANDB": "0"})
    assert "cannot import wandb" not in proc.stderr and "run directory" in proc.stderr, proc.stderr


def test_wandb_online_without_key_warns_and_goes_offline(tmp_path, clean_env):
    # online: no WANDB_MODE (tests/run.sh exports WANDB_MODE=offline for every other test)
    online = {k: v for k, v in clean_env.items() if k != "WANDB_MODE"}
    base = {**online, "MODEL": PROXY, "WANDB": "1", "DRY_RUN": "1", "ENTRY": "command", "ENTRY_COMMAND": "true"}
    proc = _launcher("interactive_benchmarking.sh", base)
    assert proc.returncode == 0 and "without WANDB_API_KEY" in proc.stderr and "offline" in proc.stderr, proc.stderr
    assert "wandb-follow" in proc.stdout and "--wandb-" not in proc.stdout  # Megatron's own writer stays off
    for quiet in ({"WANDB_MODE": "offline"}, {"WANDB_API_KEY": SENTINEL}):
        proc = _launcher("interactive_benchmarking.sh", {**base, **quiet})
        assert proc.returncode == 0 and "WANDB_API_KEY" not in proc.stderr, proc.stderr
        assert SENTINEL not in proc.stdout + proc.stderr
    from benchlib.metrics.wandb_push import wandb_mode

    assert wandb_mode({"WANDB_MODE": "online"}) == "offline" and wandb_mode({"WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"


@pytest.mark.parametrize("runtime", ["pyxis", "none"])
def test_rendered_sbatch_starts_the_follower_before_training_and_stops_it_after_collect(clean_env, runtime):
    from benchlib.render.scripts import render_sbatch

    env = {**clean_env, "MODEL": PROXY, "WANDB": "1", "CONTAINER_RUNTIME": runtime, "WANDB_API_KEY": SENTINEL}
    text = render_sbatch(resolve_run(["CLUSTER=template"], env, mode="sbatch"))
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    start, train = text.index("-m benchlib wandb-follow"), text.index('srun "${SRUN_ARGS[@]}"')
    collect, stop, limit = text.index("-m benchlib collect"), text.index('> "$WANDB_STOP"'), text.rindex('if [ "$CUT" = "time limit" ]')  # the wait for Slurm's time limit, last
    assert start < train < collect < stop < limit
    line = text[text.rindex("\n", 0, start) + 1:text.index("\n", start)]
    assert ("srun --overlap" in line) == (runtime == "pyxis") and ("--parent-pid" in line) == (runtime == "none")
    assert "logs/wandb.log" in line and SENTINEL not in text and "--wandb-" not in text


# --- the interactive launch -----------------------------------------------------------------------

def test_interactive_launch_with_wandb_makes_exactly_one_run(tmp_path, wandb_env):
    """interactive_benchmarking.sh WANDB=1, a stand-in step printing a real log: one offline run, in full."""
    step = f"{shlex.quote(sys.executable)} {shlex.quote(str(REPLAY))} {shlex.quote(str(FIXTURE))} --delay 0.05"
    env = {**wandb_env, **KNOBS, "MODEL": PROXY, "OUTPUT_ROOT": str(tmp_path / "runs"), "WANDB": "1",
           "WANDB_API_KEY": SENTINEL, "ENTRY": "command", "ENTRY_COMMAND": step}
    proc = _launcher("interactive_benchmarking.sh", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / PROXY).iterdir()
    files = offline_runs(run_dir)
    assert len(files) == 1, files
    got = read_run(files[0])
    assert_every_iteration(got["iterations"], FIXTURE)
    result = json.loads((run_dir / RESULT_FILE).read_text())
    assert_suite_summary(got["summary"], result)
    assert got["summary"]["status"] == "completed" and got["summary"]["job/exit_status"] == 0
    assert got["run"].run_id == record_of(run_dir)["id"] and record_of(run_dir)["finished"] is True
    assert "training ended: status completed" in (run_dir / "logs" / "wandb.log").read_text()
    assert (run_dir / WANDB_STOP_FILE).read_text().strip() == "0"  # training's exit status, from the script
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path
    assert SENTINEL not in proc.stdout + proc.stderr
    assert not [p for p in os.listdir(run_dir) if p.startswith(".")]  # no half-written file left


# --- the sbatch job on a real Slurm ---------------------------------------------------------------

@pytest.mark.slurm
def test_sbatch_job_with_wandb_makes_exactly_one_run(slurm_cluster, wandb_env):
    """sbatch_benchmarking.sh WANDB=1 on a real one-node Slurm (CONTAINER_RUNTIME=none, 2 tasks): rank 0's
    stand-in step prints a real log through `srun --label`; the batch script's follower logs it, then the summary."""
    from test_slurm_jobs import launch

    step = f"bash -c '[ \"$RANK\" = 0 ] && {shlex.quote(sys.executable)} {REPLAY} {FIXTURE} --delay 0.02 || true'"
    job_id, run_dir = launch(slurm_cluster, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "GPU_TYPE": "H200"},
                             ENTRY="command", ENTRY_COMMAND=step, WANDB="1", MBS="4", GBS="32", TRAIN_ITERS="15", COMMENT="wandb")
    row = slurm_cluster.wait_finished(job_id, timeout=180)
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), row
    files = offline_runs(run_dir)
    assert len(files) == 1, files
    got = read_run(files[0])
    assert_every_iteration(got["iterations"], FIXTURE)
    assert_suite_summary(got["summary"], json.loads((run_dir / RESULT_FILE).read_text()))
    assert got["summary"]["job/exit_status"] == 0 and got["run"].run_id == record_of(run_dir)["id"]


# --- the run a real H200 job wrote ------------------------------------------------------------------

H200_RUN = Path(__file__).resolve().parent / "fixtures" / "wandb" / "h200"
H200_LOG = Path(__file__).resolve().parent / "fixtures" / "gate" / "h200x1_qwen3-proxy_repeats5_train.log"


def test_the_offline_run_of_a_real_h200_job_has_every_iteration_and_the_suite_summary():
    """`WANDB=1 WANDB_MODE=offline python -m bench run qwen3-30b-a3b-proxy_repeats5` on one H200
    (2026-12-01): the job's one offline run (its .wandb file), its result.json and its train.log
    (tests/fixtures/gate/, five launches of 30 iterations). Read back with wandb's protobufs."""
    run = read_run(H200_RUN / "run-fa0bb368.wandb")
    result = json.loads((H200_RUN / "result.json").read_text())
    assert len(run["iterations"]) == 150  # 5 launches x 30 iterations, each logged as it was written
    assert_every_iteration(run["iterations"], H200_LOG)
    assert_suite_summary(run["summary"], result)
    assert run["summary"]["status"] == "completed" and result["repeats"]["n"] == 5
