"""Megatron-Core's own argument parser and validator, on the CPU of a login node.

Megatron asks `torch.cuda.get_device_capability()` while validating; here it is answered from
the cluster's GPU type, so what Megatron would refuse on the cluster is refused in seconds.
Needs torch and megatron-core (the `train` extra); imported only when called.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

from benchlib.core.gpus import GPU_TABLE
from benchlib.core.errors import BenchError

# When Transformer Engine is not installed here, Megatron's TE version checks are answered with
# the version the suite's containers ship (dockers/*.Dockerfile pin it).
ASSUMED_TE_VERSION = "2.10.0"
GPU_CAPABILITY = {name: gpu.capability for name, gpu in GPU_TABLE.items()}


@contextlib.contextmanager
def _as_if_on(gpu_type: str, world_size: int, env: dict[str, str]) -> Iterator[None]:
    import types

    import torch

    if gpu_type not in GPU_CAPABILITY:
        raise BenchError(f"unknown GPU type {gpu_type!r}", hint="one of " + ", ".join(GPU_CAPABILITY))
    cap = GPU_CAPABILITY[gpu_type]
    saved_env = dict(os.environ)
    saved_argv = sys.argv
    saved_cap, saved_props = torch.cuda.get_device_capability, torch.cuda.get_device_properties
    props = types.SimpleNamespace(major=cap[0], minor=cap[1], name=gpu_type, total_memory=0, multi_processor_count=132)
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": str(world_size), **env})
    torch.cuda.get_device_capability = lambda device=None: cap  # type: ignore[assignment]
    torch.cuda.get_device_properties = lambda device=None: props  # type: ignore[assignment]
    restore_te = _assume_te_version()
    try:
        yield
    finally:
        restore_te()
        torch.cuda.get_device_capability = saved_cap  # type: ignore[assignment]
        torch.cuda.get_device_properties = saved_props  # type: ignore[assignment]
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


def _assume_te_version():
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is not None:
        return lambda: None
    import megatron.core.utils as mcu
    from packaging.version import Version

    saved = mcu.get_te_version
    mcu.get_te_version = lambda: Version(ASSUMED_TE_VERSION)

    def restore() -> None:
        mcu.get_te_version = saved

    return restore


def _describe(err: BaseException) -> str:
    """Megatron's message, or the failing assert's source line when it has none."""
    import traceback

    text = str(err).strip()
    if text:
        return text
    frames = traceback.extract_tb(err.__traceback__)
    if frames:
        last = frames[-1]
        return f"{type(err).__name__} at {Path(last.filename).name}:{last.lineno}: {last.line}"
    return type(err).__name__


def _save_full_text(text: str) -> Path:
    """Megatron's whole answer (usage text, printed arguments, traceback) in a file the message names."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="benchlib-validate-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return Path(name)


def _explaining_lines(text: str) -> list[str]:
    """The lines of argparse's answer that say what is wrong: its `error:` line(s), not the usage."""
    lines = [ln.strip() for ln in text.splitlines()]
    found = [ln for ln in lines if ": error:" in ln or ln.startswith("error:")]
    return found or [ln for ln in lines if ln][-1:]


def validate_megatron_args(args: list[str], gpu_type: str, world_size: int, env: dict[str, str] | None = None, *, quiet: bool = True) -> argparse.Namespace:
    """Run Megatron's parse_args + validate_args; raise BenchError with Megatron's message on refusal."""
    try:
        from megatron.training.arguments import parse_args, validate_args
    except ImportError as err:
        raise BenchError(
            f"Megatron-Core is not importable here ({err})",
            hint="install the train extra: pip install -e '.[train]' (Python >= 3.12)",
        ) from None
    with _as_if_on(gpu_type, world_size, env or {}):
        sys.argv = ["pretrain_gpt.py", *args]
        sink = io.StringIO()
        errors = io.StringIO()  # argparse's usage text (hundreds of lines) and its error line
        warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
        try:
            with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext(), contextlib.redirect_stderr(errors):
                namespace = parse_args(ignore_unknown_args=False)
                validate_args(namespace, {})
        except SystemExit as err:  # argparse refusal (unknown flag, bad choice, bad value)
            full = _save_full_text(errors.getvalue() + sink.getvalue())
            raise BenchError(
                f"Megatron's argument parser refused the flags (exit {err.code}): " + " / ".join(_explaining_lines(errors.getvalue()))
                + f"\n  (Megatron's full answer: {full})",
                hint="fix or remove the flag it names",
            ) from None
        except (AssertionError, ValueError, RuntimeError, TypeError, KeyError) as err:
            import traceback

            full = _save_full_text(sink.getvalue() + errors.getvalue() + "".join(traceback.format_exception(err)))
            raise BenchError(
                f"Megatron-Core refused this run: {_describe(err)}\n  (Megatron's full answer: {full})",
                hint="change the setting Megatron names (or the knob behind it)",
            ) from None
        finally:
            if errors.getvalue() and not quiet:
                sys.stderr.write(errors.getvalue())
    return namespace


def megatron_namespace(run) -> argparse.Namespace:  # run: ResolvedRun
    """The args namespace Megatron would build for this run on its cluster."""
    return validate_megatron_args(run.megatron_args, run.cluster.GPU_TYPE, run.world_size, run.env)
