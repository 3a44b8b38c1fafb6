"""`benchlib estimate`, `benchlib plan`, `benchlib sweep` (docs/planning.md)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import BenchError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="per-rank GPU memory (most loaded rank) and FLOPs of a run, before queueing it")
    p.add_argument("--record", type=Path, help="estimate a result record's megatron_args instead of a config (JSON)")
    p.add_argument("--log", type=Path, nargs="+", metavar="LOG",
                   help="estimate from a Megatron log's argument dump, and show its measured max allocated")
    p.add_argument("--gpu", help="GPU type to check against (default: the cluster's GPU_TYPE)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="[MODEL] KEY=VALUE knobs, then extra Megatron args (as for a launch)")
    p.set_defaults(func=_estimate)

    p = sub.add_parser("plan", help="rank the valid parallel layouts of a model on N nodes by a cost model")
    p.add_argument("model")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpu", required=True, help="H100, H200, B200, GB200 (GB300, A100)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--gbs", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None, help="default: the model's shipped NUM_LAYERS")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: the GPU type's usual node (4 on GB200)")
    p.add_argument("--backend", choices=("te", "native", "local"), default="te",
                   help="layer implementation the memory estimate assumes (default te: a cluster with Transformer Engine)")
    p.add_argument("--json", action="store_true", help="print the ranked layouts as JSON")
    p.set_defaults(func=_plan)

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


def _rest(rest: list[str]) -> list[str]:
    rest = list(rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    # `benchlib estimate DeepSeek-V3 TP=2`: a bare first word is the model.
    if rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest[0] = f"MODEL={rest[0]}"
    return rest


def _estimate(args: argparse.Namespace) -> int:
    from .memory import estimate_from_args, estimate_memory

    # Options written after MODEL land in `rest` (argparse's REMAINDER): take ours back out.
    inner = argparse.ArgumentParser(add_help=False, allow_abbrev=False, prog="benchlib estimate")
    inner.add_argument("--record", type=Path, default=argparse.SUPPRESS)
    inner.add_argument("--log", type=Path, nargs="+", default=argparse.SUPPRESS)
    inner.add_argument("--gpu", default=argparse.SUPPRESS)
    inner.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    found, args.rest = inner.parse_known_args(list(args.rest))
    for key, value in vars(found).items():
        setattr(args, key, value)

    measured = None
    if args.log:
        from ..metrics.logparse import parse_log
        from .memory import log_args

        parsed = parse_log(args.log)
        margs, backend = log_args(parsed.config)
        est = estimate_from_args(margs, backend=backend, gpu_type=args.gpu)
        if parsed.memory:
            measured = max(m.max_allocated_mb for m in parsed.memory)
    elif args.record:
        try:
            record = json.loads(args.record.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise BenchError(f"cannot read record {args.record}: {err}", hint="pass a result JSON with megatron_args") from None
        from .memory import args_from_record

        margs, backend = args_from_record(record)
        est = estimate_from_args(margs, backend=backend, gpu_type=args.gpu or record.get("gpu_type"))
    else:
        from ..resolve import resolve_run

        run = resolve_run(_rest(args.rest), os.environ)
        est = estimate_memory(run)
        if args.gpu:
            from .gpus import gpu_spec

            est.gpu_type, est.capacity = args.gpu, gpu_spec(args.gpu).memory_bytes
    if args.json:
        out = est.to_json()
        if measured is not None:
            out["measured_max_allocated_mb"] = measured
        print(json.dumps(out, indent=2))
    else:
        print(est.table())
        if measured is not None:
            est_mb = est.peak_allocated / 2**20
            print(f"measured max allocated in the log: {measured:.0f} MB; estimate {est_mb:.0f} MB ({est_mb / measured - 1:+.1%})")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .planner import plan, print_plan

    result = plan(args.model, nodes=args.nodes, gpu=args.gpu, seq_len=args.seq_len, gbs=args.gbs,
                  num_layers=args.num_layers, gpus_per_node=args.gpus_per_node, backend=args.backend)
    if args.json:
        print(json.dumps(result.to_json(args.top), indent=2))
    else:
        print_plan(result, args.top, sys.stdout)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep_from_grid, sweep_from_plan

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
        from .sweep import rank_results

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
