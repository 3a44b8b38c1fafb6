"""Subcommands that need Megatron-Core: validate (a resolved run) and validate-args (a raw argument list)."""
from __future__ import annotations

import argparse
import os

from benchlib.megatron.driver.argv import strip_separator


def register(sub: argparse._SubParsersAction) -> None:
    # Like a launch, everything after `validate` is the run's words: KEY=VALUE knobs, then Megatron
    # flags. '+' as the only option prefix keeps argparse from reading `--moe-aux-loss-coeff` as its own.
    p = sub.add_parser(
        "validate", help="run Megatron-Core's own argument validation for a run, on CPU", prefix_chars="+", add_help=False,
        usage="benchlib validate [KEY=VALUE ...] [extra Megatron args ...]",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="KEY=VALUE knobs (MODEL=...), then extra Megatron args")
    p.set_defaults(func=_validate, parser=p)

    p = sub.add_parser("validate-args", help="validate a raw Megatron argument list (the job step of ENTRY=validate)")
    p.add_argument("--gpu-type", required=True)
    p.add_argument("--world-size", type=int, default=None, help="default: $WORLD_SIZE or 1")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_validate_args)



def _validate(args: argparse.Namespace) -> int:
    import time

    from benchlib.config.resolve import resolve_run
    from benchlib.megatron.validate import megatron_namespace

    if args.rest in (["-h"], ["--help"]):
        args.parser.print_help()
        return 0
    start = time.monotonic()
    run = resolve_run(strip_separator(args.rest), os.environ)
    ns = megatron_namespace(run)
    print(
        f"ok: Megatron-Core accepts {run.model.name} on {run.world_size} x {run.cluster.GPU_TYPE} "
        f"(TP{ns.tensor_model_parallel_size} PP{ns.pipeline_model_parallel_size} EP{ns.expert_model_parallel_size} "
        f"CP{ns.context_parallel_size} DP{ns.data_parallel_size}, {time.monotonic() - start:.1f} s)"
    )
    return 0


def _validate_args(args: argparse.Namespace) -> int:
    from benchlib.megatron.validate import validate_megatron_args

    raw = strip_separator(args.args)
    world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    ns = validate_megatron_args(raw, args.gpu_type, world)
    rank = os.environ.get("RANK", "0")
    print(f"rank {rank}: Megatron-Core accepts these {len(raw)} arguments (world {world}, DP {ns.data_parallel_size})")
    return 0
