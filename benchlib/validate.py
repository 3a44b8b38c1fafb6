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
from typing import Iterator

from .errors import BenchError

GPU_CAPABILITY = {"A100": (8, 0), "H100": (9, 0), "H200": (9, 0), "B200": (10, 0), "GB200": (10, 0), "GB300": (10, 3)}


@contextlib.contextmanager
def _as_if_on(gpu_type: str, world_size: int, env: dict[str, str]) -> Iterator[None]:
    import torch

    if gpu_type not in GPU_CAPABILITY:
        raise BenchError(f"unknown GPU type {gpu_type!r}", hint="one of " + ", ".join(GPU_CAPABILITY))
    cap = GPU_CAPABILITY[gpu_type]
    saved_env = dict(os.environ)
    saved_argv = sys.argv
    saved_cap = torch.cuda.get_device_capability
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": str(world_size), **env})
    torch.cuda.get_device_capability = lambda device=None: cap  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.get_device_capability = saved_cap  # type: ignore[assignment]
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


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
        try:
            with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
                namespace = parse_args(ignore_unknown_args=False)
                validate_args(namespace, {})
        except SystemExit as err:  # argparse refusal (unknown flag, bad choice)
            raise BenchError(f"Megatron's argument parser refused the flags (exit {err.code}); see its message above", hint="fix or remove the flag it names") from None
        except (AssertionError, ValueError, RuntimeError, TypeError, KeyError) as err:
            raise BenchError(f"Megatron-Core refused this run: {err or type(err).__name__}", hint="change the setting Megatron names (or the knob behind it)") from None
    return namespace


def megatron_namespace(run) -> argparse.Namespace:  # run: ResolvedRun
    """The args namespace Megatron would build for this run on its cluster."""
    return validate_megatron_args(run.megatron_args, run.cluster.GPU_TYPE, run.world_size, run.env)
