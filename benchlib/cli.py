"""`benchlib` command line. Each area registers its own subcommands (module.register(subparsers)).

A subcommand's handler returns an int exit code. A `BenchError` is printed as
`error: ...` plus its fix, with exit code 2 (or the error's own), and no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from benchlib.core.errors import BenchError
from benchlib.core.secrets import redact

# Modules that add subcommands, in help order. Each has `register(subparsers) -> None`.
COMMAND_MODULES = (
    "benchlib.launch.cli",  # resolve, render, launch, collect, models, knobs
    "benchlib.megatron.cli",  # validate, validate-args (Megatron-Core on CPU)
    "benchlib.launch.slurm.cli",  # status, stop
    "benchlib.metrics.cli",  # parse, compare, push
    "benchlib.planning.cli",  # estimate, plan
    "benchlib.launch.sweep_cli",  # sweep
    "benchlib.convert.cli",  # convert hf-to-mcore | mcore-to-hf
    "benchlib.data.cli",  # data prepare
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchlib", description="Megatron MoE Bench: resolve, launch and measure MoE pretraining runs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BenchError as err:
        print(redact(f"error: {err}"), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `benchlib plan ... | head`
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
