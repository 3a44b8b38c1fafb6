"""The driver's ending guard (benchlib.megatron.driver.ending) on one process, no launcher.

Real: Megatron-Core's own exit-signal handler (megatron.training.global_vars._set_signal_handler,
what --exit-signal-handler installs), a non-daemon thread, real signals. Not real: the CUDA OOM
(torch.OutOfMemoryError raised with the message a CUDA OOM prints).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchlib.megatron.driver.ending import EXIT_CRASHED, EXIT_NAN, EXIT_OOM, TERM_GRACE_S, failure_exit_code

ROOT = Path(__file__).resolve().parent.parent
RANK = """
import signal, sys, threading, time
from benchlib.megatron.driver.ending import run_rank

def body():
    from megatron.training import global_vars
    global_vars._set_signal_handler(signal.SIGTERM)
    threading.Thread(target=time.sleep, args=(3600,)).start()
    print("ready", flush=True)
    {action}

run_rank(body)
"""


def _start(action: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": "0"}
    return subprocess.Popen([sys.executable, "-c", RANK.format(action=action)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.megatron
def test_exit_codes_name_the_failure() -> None:
    import torch

    assert failure_exit_code(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == EXIT_OOM
    assert failure_exit_code(RuntimeError("CUDA error: out of memory")) == EXIT_OOM
    assert failure_exit_code(RuntimeError("Rank 0: found NaN in local grad norm for bucket #0")) == EXIT_NAN
    assert failure_exit_code(ValueError("bad value: nanosecond")) == EXIT_CRASHED
    assert failure_exit_code(AssertionError("shapes differ")) == EXIT_CRASHED


@pytest.mark.megatron
def test_raising_rank_exits_despite_a_live_thread() -> None:
    proc = _start("raise RuntimeError('boom')")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CRASHED, err
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert "exiting with code 1" in err


@pytest.mark.megatron
def test_sigterm_swallowed_by_megatron_ends_the_rank_after_the_grace() -> None:
    """Megatron's handler makes SIGTERM a flag read only at an iteration's end; a rank that never
    gets there (here: sleeping, like one waiting on a dead peer) still ends."""
    proc = _start("time.sleep(3600)")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TERM_GRACE_S + 60)
    took = time.monotonic() - t0
    assert proc.returncode == 143, err
    assert TERM_GRACE_S - 1 <= took < TERM_GRACE_S + 15, took
    assert "did not stop" in err
