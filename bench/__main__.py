"""python -m bench: run named benchmark scenarios through the suite and record what they measured.

    python -m bench list                              # the scenarios
    python -m bench run NAME [KEY=VALUE ...] [--timeout S] [--name N] [-- EXTRA MEGATRON ARGS]
    python -m bench records                           # check every record's provenance
    python -m bench table                             # the README's table of figures
    python -m bench split RECORD_A RECORD_B           # per micro-batch vs per iteration, both sides

Run it from the repository root on the GPU machine, with an interpreter that has benchlib's
dependencies (e.g. .venv/bin/python). Records go to bench/results/<name>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchlib.core.errors import BenchError


def _overrides(words: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key.isupper():
            raise BenchError(f"expected KEY=VALUE, got {word!r}",
                             hint="knobs are KEY=VALUE (e.g. MBS=2); extra Megatron arguments go after `--`")
        overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    from bench.records import load_records, record_problems, table_markdown
    from bench.runner import RESULTS_DIR, run_check, run_training
    from bench.scenarios import SCENARIOS, get_scenario

    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # extra Megatron arguments, passed last so they win
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the scenarios")
    run_p = sub.add_parser("run", help="run a scenario and write its record")
    run_p.add_argument("scenario")
    run_p.add_argument("overrides", nargs="*", help="KEY=VALUE knobs over the scenario's")
    run_p.add_argument("--timeout", type=int, default=900, help="seconds per launch (default 900)")
    run_p.add_argument("--name", help="record name; required with overrides, which make it another run than the scenario's")
    run_p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where records go (default bench/results)")
    run_p.add_argument("--peer-variants", default="eager,compiled",
                       help="torchtitan variants a peer scenario runs, comma-separated (default eager,compiled)")
    sub.add_parser("records", help="check that every record names a scenario or says why it is historical")
    sub.add_parser("table", help="print the README's table of figures from the records")
    split_p = sub.add_parser("split", help="solve two records of one shape at two GBS for the time per micro-batch "
                                           "and per iteration beyond them, the suite's and the peer's")
    split_p.add_argument("records", nargs=2, help="record names under bench/results (without .json) or paths")
    # knobs may come before or after the options: argparse leaves the later ones over
    args, leftover = parser.parse_known_args(argv)
    if leftover and args.cmd != "run":
        parser.error(f"unrecognized arguments: {' '.join(leftover)}")
    try:
        if args.cmd != "run" and extra:
            raise BenchError(f"`{args.cmd}` takes no Megatron arguments", hint="only `run` does, after `--`")
        if args.cmd == "list":
            for s in SCENARIOS.values():
                where = f"{s.gpus} GPU(s)" if s.gpus else "CPU"
                kind = "check" if s.is_check else f"{s.model}" + (f", baseline {s.baseline}" if s.baseline else "")
                print(f"{s.name:<52} {where:<9} {kind}\n    {s.doc}")
            return 0
        if args.cmd == "records":
            problems = record_problems(load_records())
            print("\n".join(problems) or "every record names a scenario or says why it is historical")
            return 1 if problems else 0
        if args.cmd == "table":
            print(table_markdown(load_records()))
            return 0
        if args.cmd == "split":
            from bench.split import load_record, split_records, split_table

            print(split_table(split_records(*(load_record(r, RESULTS_DIR) for r in args.records))))
            return 0
        scenario = get_scenario(args.scenario)
        overrides = _overrides([*args.overrides, *leftover])
        if (overrides or extra) and not args.name:
            raise BenchError("overrides make a different run than the scenario's, so its record needs its own name",
                             hint=f"add --name, e.g. --name h200x{scenario.gpus}_{scenario.name}_custom")
        if scenario.is_check:
            if overrides or extra:
                raise BenchError(f"{scenario.name} is a check: it takes no knobs", hint=f"python -m bench run {scenario.name}")
            path = run_check(scenario, environ=os.environ, timeout_s=args.timeout, results_dir=args.results)
            if not json.loads(path.read_text())["check_passed"]:
                print(f"[bench] wrote {path}; the check FAILED (see its result)", file=sys.stderr)
                return 1
        else:
            from bench.peers.torchtitan import VARIANTS as known  # checked here, before the suite's run

            variants = tuple(v.strip() for v in args.peer_variants.split(",") if v.strip())
            if not variants or any(v not in known for v in variants):
                raise BenchError(f"--peer-variants {args.peer_variants!r}: choose from {', '.join(known)}",
                                 hint="e.g. --peer-variants compiled")
            path = run_training(scenario, overrides, extra, environ=os.environ, timeout_s=args.timeout,
                                name=args.name, results_dir=args.results, peer_variants=variants)
        print(f"[bench] wrote {path}")
        return 0
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
