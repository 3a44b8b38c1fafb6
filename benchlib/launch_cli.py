"""Subcommands of the spine: launch, resolve, render, validate, validate-args, collect, models, knobs."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="resolve, render and run (sbatch or interactive); DRY_RUN=1 prints the script")
    p.add_argument("--mode", choices=("sbatch", "interactive"), required=True)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="KEY=VALUE knobs, then extra Megatron args")
    p.set_defaults(func=_launch)

    p = sub.add_parser("resolve", help="print the resolved run (knobs with their sources, Megatron args) as JSON")
    p.add_argument("--mode", choices=("sbatch", "interactive"), default="sbatch")
    p.add_argument("--print-args", action="store_true", help="print only the Megatron argument list, one shell line")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_resolve)

    p = sub.add_parser("render", help="print the rendered script without creating anything")
    p.add_argument("--mode", choices=("sbatch", "interactive"), default="sbatch")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_render)

    p = sub.add_parser("validate", help="run Megatron-Core's own argument validation for a run, on CPU")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="KEY=VALUE knobs (MODEL=...), then extra Megatron args")
    p.set_defaults(func=_validate)

    p = sub.add_parser("validate-args", help="validate a raw Megatron argument list (the job step of ENTRY=validate)")
    p.add_argument("--gpu-type", required=True)
    p.add_argument("--world-size", type=int, default=None, help="default: $WORLD_SIZE or 1")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_validate_args)

    p = sub.add_parser("collect", help="parse a run directory's log into result.json and print the summary")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=_collect)

    p = sub.add_parser("models", help="list the shipped models")
    p.set_defaults(func=_models)

    p = sub.add_parser("knobs", help="list every knob with its allowed values and meaning")
    p.add_argument("--markdown", action="store_true", help="print the README's knob table")
    p.set_defaults(func=_knobs)


def _rest(args: argparse.Namespace) -> list[str]:
    rest = list(args.rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return rest


def _launch(args: argparse.Namespace) -> int:
    from .launch import launch

    return launch(args.mode, _rest(args))


def _resolve(args: argparse.Namespace) -> int:
    from .render import shell_join
    from .resolve import resolve_run

    run = resolve_run(_rest(args), os.environ, mode=args.mode)
    if args.print_args:
        print(shell_join(run.megatron_args))
    else:
        print(json.dumps(run.to_json(), indent=2, default=str))
    return 0


def _render(args: argparse.Namespace) -> int:
    from .launch import prepare

    _, script = prepare(args.mode, _rest(args), os.environ)
    sys.stdout.write(script)
    return 0


def _validate(args: argparse.Namespace) -> int:
    import time

    from .resolve import resolve_run
    from .validate import megatron_namespace

    start = time.monotonic()
    run = resolve_run(_rest(args), os.environ)
    ns = megatron_namespace(run)
    print(
        f"ok: Megatron-Core accepts {run.model.name} on {run.world_size} x {run.cluster.GPU_TYPE} "
        f"(TP{ns.tensor_model_parallel_size} PP{ns.pipeline_model_parallel_size} EP{ns.expert_model_parallel_size} "
        f"CP{ns.context_parallel_size} DP{ns.data_parallel_size}, {time.monotonic() - start:.1f} s)"
    )
    return 0


def _validate_args(args: argparse.Namespace) -> int:
    from .validate import validate_megatron_args

    raw = list(args.args)
    if raw[:1] == ["--"]:
        raw = raw[1:]
    world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    ns = validate_megatron_args(raw, args.gpu_type, world)
    rank = os.environ.get("RANK", "0")
    print(f"rank {rank}: Megatron-Core accepts these {len(raw)} arguments (world {world}, DP {ns.data_parallel_size})")
    return 0


def _collect(args: argparse.Namespace) -> int:
    from .collect import collect_run_dir

    return collect_run_dir(args.run_dir)


def _models(args: argparse.Namespace) -> int:
    from .model_config import available_models

    print("\n".join(available_models()))
    return 0


def _knobs(args: argparse.Namespace) -> int:
    from .knobs import knob_doc_table, knob_markdown_table

    if args.markdown:
        print(knob_markdown_table())
        return 0
    for name, allowed, doc in knob_doc_table():
        print(f"{name:18} {allowed:32} {doc}")
    return 0
