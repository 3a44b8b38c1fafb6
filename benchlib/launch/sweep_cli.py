"""`benchlib sweep`: several layouts as one Slurm job array (docs/planning.md)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchlib.core.errors import BenchError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="submit several layouts as one Slurm job array (top K of a plan, or a YAML grid)",
                       description="benchlib sweep MODEL --from-plan --top K [KEY=VALUE ...] | --grid FILE.yaml [KEY=VALUE ...] "
                       "| --results SWEEP_DIR. Options may come before or after MODEL; KEY=VALUE knobs apply to every task.")
    _sweep_options(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="[MODEL] KEY=VALUE knobs shared by every task, then extra Megatron args")
    p.set_defaults(func=_sweep)


def _sweep_options(p: argparse.ArgumentParser, *, inner: bool = False) -> None:
    d = argparse.SUPPRESS if inner else None
    p.add_argument("--from-plan", action="store_true", default=d, help="take the top K layouts of `benchlib plan`")
    p.add_argument("--grid", type=Path, default=d, help="YAML file: base knobs + a list of layouts (docs/planning.md)")
    p.add_argument("--results", type=Path, metavar="SWEEP_DIR", default=d,
                   help="rank a finished sweep's layouts by measured tokens/s/GPU (benchlib compare's table, best first)")
    p.add_argument("--top", type=int, default=d if inner else 3)
    p.add_argument("--nodes", type=int, default=d, help="with --from-plan: nodes per layout (default: the model's NNODES)")
    p.add_argument("--gpu", default=d, help="with --from-plan: GPU type (default: the cluster's)")
    p.add_argument("--concurrency", type=int, default=d if inner else 2, help="at most this many array tasks run at once (%%M)")
    p.add_argument("--dry-run", action="store_true", default=d, help="write the array's directory and script, do not submit")


def _sweep(args: argparse.Namespace) -> int:
    from benchlib.launch.sweep import sweep_from_grid, sweep_from_plan

    rest = list(args.rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    # Options written after MODEL land in `rest` (argparse's REMAINDER): read them from there.
    inner = argparse.ArgumentParser(add_help=False, prog="benchlib sweep")
    _sweep_options(inner, inner=True)
    found, rest = inner.parse_known_args(rest)
    for key, value in vars(found).items():
        setattr(args, key, value)
    model = None
    if rest and "=" not in rest[0] and not rest[0].startswith("-"):
        model, rest = rest[0], rest[1:]
    modes = [m for m in ("from_plan", "grid", "results") if getattr(args, m)]
    if len(modes) != 1:
        raise BenchError("benchlib sweep needs exactly one of --from-plan, --grid FILE, --results SWEEP_DIR",
                         hint="benchlib sweep DeepSeek-V3 --from-plan --top 3 CLUSTER=mycluster")
    if args.results:
        from benchlib.launch.sweep import rank_results

        print(rank_results(args.results))
        return 0
    if args.grid:
        out = sweep_from_grid(args.grid, rest, os.environ, concurrency=args.concurrency, submit=not args.dry_run)
    else:
        if not model:
            raise BenchError("--from-plan needs a MODEL", hint="benchlib sweep DeepSeek-V3 --from-plan --top 3 --nodes 128 --gpu H100")
        out = sweep_from_plan(model, rest, os.environ, top=args.top, nodes=args.nodes, gpu=args.gpu,
                              concurrency=args.concurrency, submit=not args.dry_run)
    print(out.summary())
    return 0
