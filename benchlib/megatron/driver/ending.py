"""A rank that fails ends at once, and a rank asked to stop stops.

Why a rank used to stay alive after its traceback (an OOM on an H200 held the GPU for minutes):
  - an exception leaving `main` starts the interpreter's normal shutdown: it joins every
    non-daemon thread, runs atexit handlers, and destroys the NCCL process group and the CUDA
    context, any of which can block (a thread that never ends, a collective whose peer is gone);
  - Megatron's --exit-signal-handler (DistributedSignalHandler) stays installed and turns SIGTERM
    into a flag that only the training loop reads, at the end of an iteration; a rank that left
    the loop, or one blocked in a collective, never reads it, so torchrun's SIGTERM does nothing
    and the rank lives until torchrun's SIGKILL 30 s later (or forever when torchrun is gone).

So: an uncaught exception prints its traceback, flushes, and leaves with `os._exit` (no thread
join, no atexit, no process-group teardown), with an exit code that names the failure class; and
a SIGTERM that Megatron's handler swallowed ends the rank after TERM_GRACE_S, enough for the
iteration in flight to finish and Megatron to stop cleanly on its own.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import traceback
from typing import Callable, NoReturn

# The same numbers as `benchlib parse` (benchlib.metrics.status.EXIT_CODES) for these classes.
EXIT_OOM = 6
EXIT_NAN = 7
EXIT_CRASHED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
TERM_GRACE_S = 20.0

_NAN = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)


def failure_exit_code(exc: BaseException) -> int:
    """The exit code of a rank that raised `exc`: OOM and NaN/Inf get their own."""
    name = type(exc).__name__
    text = f"{name}: {exc}"
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return EXIT_OOM
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if _NAN.search(str(exc)) and ("found" in text.lower() or "unexpected result" in text.lower()):
        return EXIT_NAN
    return EXIT_CRASHED


def _rank() -> str:
    return os.environ.get("RANK", "?")


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe must not keep the rank alive
            pass


def exit_now(code: int, why: str) -> NoReturn:
    print(f"benchlib driver: rank {_rank()} {why}; exiting with code {code} "
          "(not waiting for threads, atexit handlers or process-group teardown)", file=sys.stderr)
    _flush()
    os._exit(code)


def _arm_term_deadline(signum: int) -> None:
    def expire() -> None:
        exit_now(EXIT_TERMINATED, f"got signal {signal.Signals(signum).name} {TERM_GRACE_S:.0f} s ago and did not stop")

    timer = threading.Timer(TERM_GRACE_S, expire)
    timer.daemon = True
    timer.start()


def bound_megatron_signal_handler() -> None:
    """Give Megatron's DistributedSignalHandler a deadline: the first signal it swallows starts
    a TERM_GRACE_S timer that ends the rank if Megatron has not stopped it by then."""
    try:
        from megatron.training.dist_signal_handler import DistributedSignalHandler
    except ImportError:
        return
    if getattr(DistributedSignalHandler, "_benchlib_bounded", False):
        return
    original_enter = DistributedSignalHandler.__enter__

    def enter_with_deadline(self):  # type: ignore[no-untyped-def]
        result = original_enter(self)
        flag_handler = signal.getsignal(self.sig)
        armed = []

        def handler(signum, frame):  # type: ignore[no-untyped-def]
            if callable(flag_handler):
                flag_handler(signum, frame)
            if not armed:
                armed.append(True)
                _arm_term_deadline(signum)

        signal.signal(self.sig, handler)
        return result

    DistributedSignalHandler.__enter__ = enter_with_deadline
    DistributedSignalHandler._benchlib_bounded = True


def run_rank(body: Callable[[], object]) -> NoReturn:
    """Run one rank's work; whatever happens, the process ends here and now."""
    bound_megatron_signal_handler()
    try:
        body()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_CRASHED)
        if code == 0:
            _flush()
            sys.exit(0)  # a clean stop keeps the normal shutdown (Megatron has torn down itself)
        exit_now(code, f"called sys.exit({exc.code!r})")
    except BaseException as exc:  # noqa: BLE001  (KeyboardInterrupt included: the rank must end)
        # Signals back to their defaults first: nothing may turn a stop request into a flag now.
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        traceback.print_exc()
        exit_now(failure_exit_code(exc), f"failed with {type(exc).__name__}")
    _flush()
    sys.exit(0)
