"""A training rank stand-in for the launch tests: what made a real OOM-ing rank outlive its traceback.

It runs through the driver's own ending guard (benchlib.megatron.driver.ending.run_rank, as
`python -m benchlib.megatron.driver` does), joins a real gloo process group, installs Megatron's
own exit-signal handler (megatron.training.global_vars._set_signal_handler, as
--exit-signal-handler does: SIGTERM becomes a flag), and starts a non-daemon thread that never
ends. Then, by MODE (argv[1]):
  crash   rank 1 raises RuntimeError; rank 0 waits in a barrier
  oom     rank 0 raises torch.OutOfMemoryError (the message a CUDA OOM prints); rank 1 waits
  sleep   every rank "trains" (sleeps) until stopped
  ok      every rank prints and returns (no extra thread: a clean exit keeps the normal shutdown)
"""
from __future__ import annotations

import os
import sys
import threading
import time


def body(mode: str) -> None:
    import signal

    import torch
    import torch.distributed as dist
    from megatron.training import global_vars

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    global_vars._set_signal_handler(signal.SIGTERM)
    if mode != "ok":  # a finished rank exits normally, which joins threads: ok has none
        threading.Thread(target=time.sleep, args=(3600,), name="never-ends").start()
    sys.stdout.write(f"rank {rank} pid {os.getpid()} training\n")  # one write: whole lines
    sys.stdout.flush()
    if mode == "crash" and rank == 1:
        raise RuntimeError("stand-in rank failure")
    if mode == "oom" and rank == 0:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (stand-in)")
    if mode in ("crash", "oom"):
        dist.barrier()
        time.sleep(3600)
    if mode == "sleep":
        time.sleep(3600)
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    from benchlib.megatron.driver.ending import run_rank

    run_rank(lambda: body(sys.argv[1]))
