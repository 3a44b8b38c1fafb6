"""Interactive runs end, and say how: a failed rank, an interrupt, the port, a busy GPU.

Launched as users do (`bash interactive_benchmarking.sh`, ENTRY=command) with a real
`torch.distributed.run` of 2 ranks on gloo; each rank is tests/rank_standin.py, which runs through
the driver's ending guard and carries what kept a real OOM-ing rank alive: Megatron's own
exit-signal handler (SIGTERM becomes a flag) and a non-daemon thread that never ends.

Faked, because it cannot exist here: the GPUs (2 ranks via GPUS_PER_NODE=2 on CPU) and, for the
busy-GPU check, `nvidia-smi` (a script on PATH that lists a real `sleep` process as a compute app).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = "Qwen3-30B-A3B-Proxy"
STANDIN = ROOT / "tests" / "rank_standin.py"
pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(300)]  # the stand-in uses torch.distributed and Megatron's signal handler


def _env(clean_env: dict[str, str], out: Path, **extra: str) -> dict[str, str]:
    return {**clean_env, "MODEL": MODEL, "OUTPUT_ROOT": str(out), "BENCH_PYTHON": sys.executable,
            "ENTRY": "command", "GPUS_PER_NODE": "2", **extra}


def _pids_with(tag: str) -> list[int]:
    """Live processes whose command line holds `tag` (the stand-in's unique argument)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if tag.encode() in cmd:
            pids.append(int(proc.name))
    return pids


def _run_dir(out: Path) -> Path:
    dirs = list((out / MODEL).iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def _ignore_sigint() -> None:
    """What a background job of a script (`nohup bash interactive_benchmarking.sh &`) starts with."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(env: dict[str, str], mode: str, tag: str, sigint_ignored: bool = False) -> subprocess.Popen:
    env = {**env, "ENTRY_COMMAND": f"{sys.executable} {STANDIN} {mode} {tag}"}
    return subprocess.Popen(["bash", str(ROOT / "interactive_benchmarking.sh")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_ignore_sigint if sigint_ignored else None)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return out


@pytest.mark.parametrize(("mode", "status"), [("crash", "crashed"), ("oom", "oom")])
def test_failed_rank_ends_the_run(clean_env: dict[str, str], tmp_path: Path, mode: str, status: str) -> None:
    tag = f"standin-{uuid.uuid4().hex}"
    proc = _start(_env(clean_env, tmp_path), mode, tag)
    out = _finish(proc, timeout=240)
    log = (_run_dir(tmp_path) / "logs" / "train.log").read_text()
    # The traceback is in the log, and the whole run ended within 30 s of it.
    assert "Traceback (most recent call last)" in log, out
    assert proc.returncode != 0, out
    assert _pids_with(tag) == [], "a rank outlived the run"
    run_dir = _run_dir(tmp_path)
    assert (run_dir / "INCOMPLETE").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == status, result
    assert "exiting with code" in log  # the guard's own line: it did not wait for the thread


def test_failed_rank_ends_within_30_s_of_its_traceback(clean_env: dict[str, str], tmp_path: Path) -> None:
    """Timed from the moment the traceback reaches the launcher's output to the launcher's exit."""
    tag = f"standin-{uuid.uuid4().hex}"
    proc = _start(_env(clean_env, tmp_path), "crash", tag)
    assert proc.stdout is not None
    seen_at = None
    for line in proc.stdout:
        if seen_at is None and "Traceback (most recent call last)" in line:
            seen_at = time.monotonic()
    proc.wait(timeout=60)
    ended_at = time.monotonic()
    assert seen_at is not None
    assert ended_at - seen_at < 30, f"ended {ended_at - seen_at:.1f} s after the traceback"
    assert proc.returncode != 0 and _pids_with(tag) == []


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigint-to-a-launch-started-ignoring-it"])
def test_interrupt_ends_every_process(clean_env: dict[str, str], tmp_path: Path, how: str) -> None:
    """The last case: the launcher inherited SIGINT ignored, yet an explicit SIGINT to it cancels the run
    (bash cannot trap a signal ignored when it started, so the launcher starts the script with it)."""
    tag = f"standin-{uuid.uuid4().hex}"
    proc = _start(_env(clean_env, tmp_path), "sleep", tag, sigint_ignored=how.startswith("sigint-to"))
    assert proc.stdout is not None
    training = 0
    for line in proc.stdout:  # two ranks' lines may share one line of the merged output
        training += line.count(" training")
        if training >= 2:
            break
    assert training == 2, "both ranks started"
    ranks = _pids_with(tag)
    assert ranks
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's SIGINT goes to the foreground group
    elif how == "sigterm":
        os.kill(proc.pid, signal.SIGTERM)  # `kill` of the launcher
    else:
        os.kill(proc.pid, signal.SIGINT)  # `kill -INT` of the launcher
    t0 = time.monotonic()
    out = _finish(proc, timeout=60)
    assert time.monotonic() - t0 < 30, out
    assert proc.returncode == (143 if how == "sigterm" else 130), out
    assert _pids_with(tag) == [], "a rank outlived the interrupted run"
    run_dir = _run_dir(tmp_path)
    assert (run_dir / "INCOMPLETE").exists()
    assert json.loads((run_dir / "result.json").read_text())["status"] == "cancelled"


def _port_of(out: Path) -> int:
    log = (_run_dir(out) / "logs" / "train.log").read_text()
    ports = [int(line.split("port=", 1)[1].split()[0]) for line in log.splitlines() if "port=" in line]
    assert ports, log
    return ports[0]


def test_free_port_unless_master_port_is_set(clean_env: dict[str, str], tmp_path: Path) -> None:
    step = {"ENTRY_COMMAND": "bash -c 'echo port=$MASTER_PORT'", "GPUS_PER_NODE": "1"}
    ports = []
    for name in ("a", "b"):
        res = subprocess.run(["bash", str(ROOT / "interactive_benchmarking.sh")], env=_env(clean_env, tmp_path / name, **step),
                             capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert res.returncode == 0, res.stdout + res.stderr
        ports.append(_port_of(tmp_path / name))
    assert ports[0] != ports[1] and 29500 not in ports
    res = subprocess.run(["bash", str(ROOT / "interactive_benchmarking.sh")],
                         env=_env(clean_env, tmp_path / "c", MASTER_PORT="23456", **step), capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert _port_of(tmp_path / "c") == 23456
    result = json.loads((_run_dir(tmp_path / "c") / "result.json").read_text())
    assert result["status"] == "completed", result  # a step without iteration lines that exited 0


def test_gpu_held_by_a_leftover_process_is_refused(clean_env: dict[str, str], tmp_path: Path) -> None:
    holder = subprocess.Popen(["sleep", "300"])
    try:
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        smi = fake_bin / "nvidia-smi"
        smi.write_text(
            "#!/bin/sh\n"
            "case \"$*\" in\n"
            f"  *query-compute-apps*) echo '{holder.pid}, /usr/bin/python3, 140000 MiB' ;;\n"
            "  *-L*) echo 'GPU 0: NVIDIA H200 (UUID: GPU-fake)' ;;\n"
            "  *) echo 'NVIDIA H200' ;;\n"
            "esac\n"
        )
        smi.chmod(0o755)
        env = _env(clean_env, tmp_path / "out", ENTRY_COMMAND="true", GPUS_PER_NODE="1")
        env["PATH"] = f"{fake_bin}:{env['PATH']}"
        res = subprocess.run(["bash", str(ROOT / "interactive_benchmarking.sh")], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert res.returncode != 0
        assert f"pid {holder.pid}" in res.stderr and "sleep 300" in res.stderr, res.stderr
        assert f"kill {holder.pid}" in res.stderr and "ALLOW_BUSY_GPU=1" in res.stderr
        assert not (tmp_path / "out").exists(), "nothing is written before the check"
        res = subprocess.run(["bash", str(ROOT / "interactive_benchmarking.sh")], env={**env, "ALLOW_BUSY_GPU": "1"},
                             capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        assert "launching anyway" in res.stderr
    finally:
        holder.kill()
        holder.wait()
