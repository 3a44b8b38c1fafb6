"""`benchlib parse`, `benchlib compare`, `benchlib push`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchlib.core.errors import BenchError
from benchlib.core.rundir import RESULT_FILE
from benchlib.metrics.collect import add_run_dir_parts, load_config, result_for, run_logs, run_dir_config
from benchlib.metrics.peaks import GPU_TYPES
from benchlib.metrics.status import DEFAULT_HANG_FACTOR, DEFAULT_HANG_MIN_S, EXIT_CODES, STATUSES
from benchlib.metrics.steady import DEFAULT_MIN_SKIP, DEFAULT_SKIP_FRACTION

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "parse", help="parse Megatron logs: steady-state time, tokens/s, TFLOP/s, MFU, status",
        description="Parse one run's Megatron log(s) (files of one run, in order; or a run directory) into a result JSON. "
                    "Exit code: " + ", ".join(f"{k}={v}" for k, v in EXIT_CODES.items()) + "; 2 = bad input.",
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="log file(s) of ONE run, in order, or a run directory")
    p.add_argument("--gpu", type=str.upper, help=f"GPU type for MFU ({', '.join(GPU_TYPES)}); default: the run dir's cluster")
    p.add_argument("--world-size", type=int, help="number of GPUs (default: the log's argument dump)")
    p.add_argument("--config", type=Path, help="a resolved.json or JSON dict of Megatron arguments, for logs without an argument dump")
    p.add_argument("--skip", type=int, default=None,
                   help=f"warm-up iterations to leave out per launch (default max({DEFAULT_MIN_SKIP}, "
                        f"{DEFAULT_SKIP_FRACTION * 100:.0f}%% of the logged iterations))")
    p.add_argument("--hang-factor", type=float, default=DEFAULT_HANG_FACTOR, help="hang after this many median iteration times without a line")
    p.add_argument("--hang-min-s", type=float, default=DEFAULT_HANG_MIN_S, help="...and at least this many seconds")
    p.add_argument("--out", type=Path, help="result JSON path (default: <run dir>/result.json for a run directory, else none)")
    p.add_argument("--json", action="store_true", help="print the result JSON instead of the table")
    p.add_argument("--ok", default="completed", help="comma-separated statuses that exit 0 (e.g. completed,timeout)")
    p.set_defaults(func=cmd_parse)

    c = subparsers.add_parser("compare", help="compare runs side by side (table, CSV, PNG)",
                              description="Compare runs: result JSONs, logs or run directories. Deltas are against the first.")
    c.add_argument("runs", nargs="+", metavar="RUN")
    c.add_argument("--gpu", type=str.upper, help="GPU type for runs given as bare logs")
    c.add_argument("--out", type=Path, default=Path("compare"), help="output prefix for .csv and .png (default ./compare)")
    c.add_argument("--no-plot", action="store_true")
    c.set_defaults(func=cmd_compare)

    from benchlib.metrics import gate as G

    g = subparsers.add_parser(
        "check", help="regression gate: a run against a recorded baseline (or record one)",
        description="Compare RUN (run directory, log or result JSON) with a baseline: step time and tokens/s over the steady "
                    "window, peak memory and the loss curve. Prints a verdict table; exit 0 = pass, 1 = regression, "
                    "2 = bad input (e.g. a baseline of another model or layout). `--record-baseline RUN --out FILE` "
                    "writes a baseline instead.")
    g.add_argument("run", nargs="?", metavar="RUN")
    g.add_argument("--baseline", metavar="B", help="a baseline JSON, or a run directory / result.json to compare with")
    g.add_argument("--record-baseline", metavar="RUN", help="record RUN as a baseline (with --out)")
    g.add_argument("--out", type=Path, help="where --record-baseline writes (e.g. bench/baselines/<name>.json)")
    g.add_argument("--gpu", type=str.upper, help="GPU type for runs given as bare logs")
    g.add_argument("--step-tol", type=float, default=G.DEFAULT_STEP_TOL, help="step time and tokens/s tolerance (fraction, default %(default)s)")
    g.add_argument("--memory-tol", type=float, default=G.DEFAULT_MEMORY_TOL, help="peak memory tolerance (fraction, default %(default)s)")
    g.add_argument("--loss-rtol", type=float, default=G.DEFAULT_LOSS_RTOL, help="largest per-iteration relative loss difference (default %(default)s)")
    g.add_argument("--loss-min-corr", type=float, default=G.DEFAULT_LOSS_MIN_CORR, help="lowest loss-curve correlation (default %(default)s)")
    g.set_defaults(func=cmd_check)

    w = subparsers.add_parser("push", help="push runs to WandB (offline without WANDB_API_KEY)",
                              description="Log config, per-iteration series and summary of each run to WandB: group = model, "
                                          "tags = layout, precision, GPU type and backend. A run directory goes into its own "
                                          "WandB run (the one its job logged with WANDB=1, else one made now and kept in "
                                          "wandb_run.json): pushing again updates it, never duplicates it. "
                                          "Offline (wandb sync later) unless WANDB_API_KEY is set.")
    w.add_argument("runs", nargs="+", metavar="RUN")
    w.add_argument("--gpu", type=str.upper, help="GPU type for runs given as bare logs")
    w.add_argument("--project", default=None, help="WandB project (default $WANDB_PROJECT or megatron-moe-bench)")
    w.add_argument("--entity", default=None, help="WandB entity (default $WANDB_ENTITY)")
    w.add_argument("--dir", type=Path, default=None, help="where the wandb/ folder goes (default: the run dir, else ./)")
    w.add_argument("--offline", action="store_true", help="offline even if WANDB_API_KEY is set")
    w.set_defaults(func=cmd_push)

    f = subparsers.add_parser("wandb-follow", help="(the job script runs it with WANDB=1) log a training run to WandB as it trains",
                              description="Tail RUN_DIR/logs/train.log and log each iteration to the run's WandB run; when the "
                                          "job script writes RUN_DIR/wandb_stop (or is gone), write the suite's summary into the "
                                          "same run and finish. Offline unless WANDB_API_KEY is set.")
    f.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    f.add_argument("--parent-pid", type=int, default=None, help="finish when this process (the job script) is gone")
    f.add_argument("--interval", type=float, default=2.0, help="seconds between looks at the log (default 2)")
    f.add_argument("--term-grace", type=float, default=25.0, help="seconds to keep following after SIGTERM (default 25)")
    f.set_defaults(func=cmd_wandb_follow)


def cmd_parse(args: argparse.Namespace) -> int:
    from benchlib.metrics.logparse import parse_log
    from benchlib.metrics.result import summarize, write_result
    from benchlib.metrics.summary_text import format_summary

    ok = {s.strip() for s in args.ok.split(",") if s.strip()}
    bad = ok - set(STATUSES)
    if bad:
        raise BenchError(f"--ok names unknown status(es) {', '.join(sorted(bad))}", hint=f"choose from {', '.join(STATUSES)}")
    paths = [Path(p) for p in args.logs]
    config = load_config(args.config)
    run_dir = None
    if len(paths) == 1 and paths[0].is_dir():
        run_dir = paths[0]
        logs = run_logs(run_dir)
        config = config if config is not None else run_dir_config(run_dir)
    else:
        for p in paths:
            if p.is_dir():
                raise BenchError(f"{p} is a directory", hint="give one run directory alone, or log files")
        logs = paths
    parsed = parse_log(logs)
    result = summarize(parsed, args.gpu, world_size=args.world_size, config=config, skip=args.skip,
                       hang_factor=args.hang_factor, hang_min_s=args.hang_min_s)
    if run_dir is not None:
        add_run_dir_parts(result, run_dir, config=config, skip=args.skip)
    out = args.out or (run_dir / RESULT_FILE if run_dir else None)
    if out is not None:
        write_result(result, out)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(format_summary(result))
        if out is not None:
            print(f"result: {out}")
    return 0 if result.status in ok else result.exit_code


def cmd_compare(args: argparse.Namespace) -> int:
    from benchlib.metrics.compare import compare_results

    results = [result_for(r, gpu=args.gpu)[0] for r in args.runs]
    text, csv_path, png_path = compare_results(results, args.runs, args.out, plot=not args.no_plot)
    print(text)
    print(f"csv: {csv_path}")
    if png_path:
        print(f"plot: {png_path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from benchlib.metrics.wandb_push import push_result, push_run_dir

    for r in args.runs:
        result, run_dir = result_for(r, gpu=args.gpu)
        if run_dir is not None:
            info = push_run_dir(run_dir, result, project=args.project, entity=args.entity, force_offline=args.offline,
                                directory=args.dir)
        else:
            path = Path(r)
            info = push_result(result, directory=args.dir or path.parent, project=args.project, entity=args.entity,
                               force_offline=args.offline, name=path.stem, log=None if path.suffix == ".json" else path)
        print(f"{r}: {info}")
    return 0


def cmd_wandb_follow(args: argparse.Namespace) -> int:
    from benchlib.metrics.wandb_follow import cmd_wandb_follow as follow

    return follow(args)


def cmd_check(args: argparse.Namespace) -> int:
    from benchlib.metrics import gate as G

    if args.record_baseline:
        if args.run or args.baseline:
            raise BenchError("--record-baseline takes the run itself, without RUN or --baseline",
                             hint="benchlib check --record-baseline RUN --out FILE")
        if not args.out:
            raise BenchError("--record-baseline needs --out FILE", hint="e.g. --out bench/baselines/h200x1_qwen3-30b-a3b-proxy.json")
        result, run_dir = result_for(args.record_baseline, gpu=args.gpu)
        G.record_baseline(result, run_dir, args.out, source=args.record_baseline)
        print(f"baseline: {args.out}")
        return 0
    if not args.run or not args.baseline:
        raise BenchError("check needs RUN and --baseline B", hint="benchlib check RUN --baseline bench/baselines/<name>.json")
    baseline = G.load_baseline(args.baseline)
    result, run_dir = result_for(args.run, gpu=args.gpu or (baseline.get("key") or {}).get("gpu_type"))
    tol = G.Tolerances(step=args.step_tol, memory=args.memory_tol, loss_rtol=args.loss_rtol, loss_min_corr=args.loss_min_corr)
    verdicts = G.gate(result, baseline, tol)
    run_versions = (G.run_manifest(run_dir).get("versions_at_submit") or None) if run_dir else None
    print(G.format_verdicts(verdicts, baseline, run_versions))
    return 0 if G.passed(verdicts) else 1
