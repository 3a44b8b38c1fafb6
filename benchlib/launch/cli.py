"""Subcommands of the login node: launch, resolve, render, collect, models, knobs."""
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

    p = sub.add_parser("collect", help="parse a run directory's log into result.json and print the summary")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--exit-status", type=int, help="the training step's exit status (the launch scripts pass it)")
    p.add_argument("--ended", choices=("cancelled", "timeout"), help="the run was interrupted or cut by the time limit")
    p.add_argument("--source", default="launch script", help="who says how it ended (kept in ended.json)")
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
    from benchlib.launch.run import launch

    return launch(args.mode, _rest(args))


def _resolve(args: argparse.Namespace) -> int:
    from benchlib.render.scripts import shell_join
    from benchlib.config.resolve import resolve_run

    run = resolve_run(_rest(args), os.environ, mode=args.mode)
    if args.print_args:
        print(shell_join(run.megatron_args))
    else:
        print(json.dumps(run.to_json(), indent=2, default=str))
    return 0


def _render(args: argparse.Namespace) -> int:
    from benchlib.launch.run import prepare

    _, script = prepare(args.mode, _rest(args), os.environ)
    sys.stdout.write(script)
    return 0


def _collect(args: argparse.Namespace) -> int:
    from benchlib.metrics.collect import collect_run_dir
    from benchlib.metrics.status import Ending

    ending = None
    if args.exit_status is not None or args.ended:
        ending = Ending(how=args.ended or "", exit_status=args.exit_status, source=args.source)
    return collect_run_dir(args.run_dir, ending)


def _models(args: argparse.Namespace) -> int:
    from benchlib.config.model_config import available_models

    print("\n".join(available_models()))
    return 0


def _knobs(args: argparse.Namespace) -> int:
    from benchlib.config.knobs import knob_doc_table, knob_markdown_table

    if args.markdown:
        print(knob_markdown_table())
        return 0
    for name, allowed, doc in knob_doc_table():
        print(f"{name:18} {allowed:32} {doc}")
    return 0
