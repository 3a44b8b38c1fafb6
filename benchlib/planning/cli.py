"""`benchlib estimate`, `benchlib plan` (docs/planning.md)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchlib.core.errors import BenchError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="per-rank GPU memory (most loaded rank), FLOPs and predicted step time of a run, before queueing it")
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


def _rest(rest: list[str]) -> list[str]:
    rest = list(rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    # `benchlib estimate DeepSeek-V3 TP=2`: a bare first word is the model.
    if rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest[0] = f"MODEL={rest[0]}"
    return rest


def _estimate(args: argparse.Namespace) -> int:
    from benchlib.planning.memory import estimate_from_args, estimate_memory

    # Options written after MODEL land in `rest` (argparse's REMAINDER): take ours back out.
    inner = argparse.ArgumentParser(add_help=False, allow_abbrev=False, prog="benchlib estimate")
    inner.add_argument("--record", type=Path, default=argparse.SUPPRESS)
    inner.add_argument("--log", type=Path, nargs="+", default=argparse.SUPPRESS)
    inner.add_argument("--gpu", default=argparse.SUPPRESS)
    inner.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    found, args.rest = inner.parse_known_args(list(args.rest))
    for key, value in vars(found).items():
        setattr(args, key, value)

    from benchlib.planning.cost import predict_from_args, predict_run

    measured = None
    prediction = None
    if args.log:
        from benchlib.metrics.logparse import parse_log
        from benchlib.planning.memory import log_args

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
        from benchlib.planning.memory import args_from_record

        margs, backend = args_from_record(record)
        gpu = args.gpu or record.get("gpu_type")
        est = estimate_from_args(margs, backend=backend, gpu_type=gpu)
        if gpu:
            prediction = predict_from_args(margs, gpu, record.get("gpus_per_node"))
    else:
        from benchlib.config.resolve import resolve_run

        run = resolve_run(_rest(args.rest), os.environ)
        est = estimate_memory(run)
        prediction = predict_run(run)
        if args.gpu:
            from benchlib.planning.gpus import gpu_spec

            est.gpu_type, est.capacity = args.gpu, gpu_spec(args.gpu).memory_bytes
            from benchlib.planning.memory import run_args, run_layout

            prediction = predict_from_args(run_args(run), args.gpu, run.gpus_per_node, run_layout(run))
    if args.json:
        out = est.to_json()
        if measured is not None:
            out["measured_max_allocated_mb"] = measured
        out["fits"] = est.fits()
        if prediction is not None:
            out.update(prediction.to_json())
        print(json.dumps(out, indent=2))
    else:
        print(est.table())
        if prediction is not None:
            print(prediction.table())
        if measured is not None:
            est_mb = est.peak_allocated / 2**20
            print(f"measured max allocated in the log: {measured:.0f} MB; estimate {est_mb:.0f} MB ({est_mb / measured - 1:+.1%})")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from benchlib.planning.planner import plan, print_plan

    result = plan(args.model, nodes=args.nodes, gpu=args.gpu, seq_len=args.seq_len, gbs=args.gbs,
                  num_layers=args.num_layers, gpus_per_node=args.gpus_per_node, backend=args.backend)
    if args.json:
        print(json.dumps(result.to_json(args.top), indent=2))
    else:
        print_plan(result, args.top, sys.stdout)
    return 0
