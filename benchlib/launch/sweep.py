"""`benchlib sweep`: several layouts as ONE Slurm job array, then rank them by measured throughput.

A sweep directory `<OUTPUT_ROOT>/sweeps/<stamp>-<MODEL>/` holds:
  array.sh    the array script (task i runs the i-th run's own rendered launch.sh)
  index.json  task id -> layout knobs, run directory, job id once submitted
Each task is an ordinary run directory (launch.sh, resolved.json, manifest.json, logs/,
result.json), resolved and rendered exactly as `benchlib launch` would, so a task can be
re-run alone. `benchlib sweep --results DIR` parses every task's log (benchlib's metrics) and
prints them best first by tokens/s/GPU, with `benchlib compare`'s table in that order.

Grid YAML (docs/planning.md):
  model: Qwen3-30B-A3B-Proxy       # optional if the base sets MODEL
  base: {NNODES: 1, GBS: 64}       # knobs shared by every task (KEY=VALUE arguments win over them)
  layouts:                         # one task each
    - {TP: 1, EP: 8}
    - {TP: 2, EP: 4, MBS: 2}
  # or a cross product:  grid: {EP: [2, 4, 8], MBS: [1, 2]}
ENTRY_COMMAND may name a task's knobs as {TP}, {EP}, ... (filled per task).
"""
from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from benchlib.core.errors import BenchError
from benchlib.config.knobs import KNOB_NAMES, check_knob_name
from benchlib.core.rundir import atomic_write, atomic_write_json

INDEX = "index.json"
ARRAY_SCRIPT = "array.sh"
_PLACE = re.compile(r"\{([A-Z_][A-Z0-9_]*)\}")


@dataclass
class SweepOutcome:
    sweep_dir: Path
    tasks: list[dict[str, Any]]
    job_id: str | None = None
    array: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"sweep directory {self.sweep_dir} ({len(self.tasks)} layouts)"]
        for t in self.tasks:
            lines.append(f"  task {t['task']}: {_fmt(t['knobs'])}  -> {t['run_dir']}")
        if self.job_id:
            lines.append(f"submitted array job {self.job_id} (--array={self.array})")
        else:
            lines.append(f"not submitted (--dry-run): sbatch --array=0-{len(self.tasks) - 1} {self.sweep_dir / ARRAY_SCRIPT}")
        lines.append(f"when it is done: benchlib sweep --results {self.sweep_dir}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(knobs: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items())


def _fill(command: str, knobs: Mapping[str, Any]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in knobs:
            raise BenchError(f"ENTRY_COMMAND names {{{name}}}, which is not a knob of this task",
                             hint="use {TP}, {EP}, {MBS}, ... (any knob name)")
        return str(knobs[name])

    return _PLACE.sub(sub, command)


def _argv(knobs: Mapping[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in knobs.items()]


def _assigns(rest: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split shared KEY=VALUE arguments from extra Megatron args."""
    assigns, extra = {}, []
    for i, word in enumerate(rest):
        if word.startswith("-"):
            extra = rest[i:]
            break
        if "=" not in word:
            raise BenchError(f"expected KEY=VALUE, got {word!r}", hint="shared knobs as KEY=VALUE, then extra Megatron args")
        k, v = word.split("=", 1)
        assigns[k] = v
    return assigns, extra


def build_sweep(layouts: list[dict[str, Any]], shared: list[str], environ: Mapping[str, str], *,
                concurrency: int, submit: bool, label: str = "") -> SweepOutcome:
    """Resolve, check and render every layout, write the sweep directory, submit one array."""
    from benchlib.launch.run import memory_check, wandb_check, write_run_dir
    from benchlib.render.scripts import render_sbatch
    from benchlib.config.resolve import resolve_run
    from benchlib.launch.slurm.submit import array_script, check_can_submit, submit_array

    if not layouts:
        raise BenchError("the sweep has no layouts", hint="give --top K >= 1 or a grid with layouts")
    if concurrency < 1:
        raise BenchError(f"--concurrency {concurrency} must be at least 1")
    shared_knobs, extra = _assigns(shared)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs, tasks = [], []
    for i, layout in enumerate(layouts):
        knobs = {**{k: str(v) for k, v in layout.items()}, **shared_knobs}
        for key in knobs:
            if key in KNOB_NAMES:
                continue
            from benchlib.config.cluster import CLUSTER_KEYS

            if key not in CLUSTER_KEYS:
                check_knob_name(key, f"sweep task {i}")
        # Resolve once to learn every knob's value, then fill {KNOB} in ENTRY_COMMAND.
        run = resolve_run(_argv(knobs) + extra, environ, mode="sbatch", stamp=f"{stamp}-t{i}")
        if "{" in run.knobs.ENTRY_COMMAND:
            import dataclasses

            knobs["ENTRY_COMMAND"] = _fill(run.knobs.ENTRY_COMMAND, dataclasses.asdict(run.knobs))
            run = resolve_run(_argv(knobs) + extra, environ, mode="sbatch", stamp=f"{stamp}-t{i}")
        memory_check(run, dry_run=False)  # a layout that cannot fit stops the sweep before anything is queued
        runs.append((run, knobs))
    with_wandb = [run for run, _ in runs if run.knobs.WANDB]
    if with_wandb:  # the tasks share the cluster's interpreter: one check
        wandb_check(with_wandb[0], environ, dry_run=not submit)
    check_can_submit(runs[0][0].cluster.CONTAINER_RUNTIME) if submit else None
    model = runs[0][0].knobs.MODEL
    root = runs[0][0].run_dir.parent.parent  # <OUTPUT_ROOT>/<MODEL>/<run> -> <OUTPUT_ROOT>
    sweep_dir = root / "sweeps" / f"{stamp}-{model}{('-' + label) if label else ''}"
    if sweep_dir.exists():
        raise BenchError(f"{sweep_dir} already exists", hint="wait a second and run the sweep again")
    sweep_dir.mkdir(parents=True)
    scripts, run_dirs = [], []
    for i, (run, knobs) in enumerate(runs):
        script = render_sbatch(run)
        path = write_run_dir(run, script, _argv(knobs) + extra, "sbatch")
        scripts.append(path)
        run_dirs.append(run.run_dir)
        tasks.append({"task": i, "knobs": {k: v for k, v in layouts[i].items()}, "run_dir": str(run.run_dir),
                      "job_name": run.job_name})
    text = array_script(scripts, job_name=f"sweep-{model}"[:120], output_dir=sweep_dir)
    atomic_write(sweep_dir / ARRAY_SCRIPT, text, mode=0o755)
    index: dict[str, Any] = {"model": model, "created": stamp, "shared": shared_knobs, "extra_args": extra,
                             "concurrency": concurrency, "tasks": tasks}
    atomic_write_json(sweep_dir / INDEX, index)
    outcome = SweepOutcome(sweep_dir=sweep_dir, tasks=tasks)
    if submit:
        res = submit_array(sweep_dir / ARRAY_SCRIPT, run_dirs=run_dirs, max_parallel=concurrency, cwd=sweep_dir, quiet=True)
        outcome.job_id, outcome.array = res.job_id, res.array
        for t, task_id in zip(tasks, res.task_ids):
            t["job_id"] = task_id
        index.update(array_job_id=res.job_id, array=res.array)
        atomic_write_json(sweep_dir / INDEX, index)
    return outcome


def load_grid(path: Path) -> tuple[str | None, dict[str, Any], list[dict[str, Any]]]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise BenchError(f"cannot read grid file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise BenchError(f"{path}: not valid YAML: {err}") from None
    allowed = ("model", "base", "layouts", "grid")
    if not isinstance(data, dict) or any(k not in allowed for k in data):
        raise BenchError(f"{path}: expected a mapping with keys {', '.join(allowed)}", hint="see docs/planning.md (Sweeps)")
    base = data.get("base") or {}
    layouts = list(data.get("layouts") or [])
    grid = data.get("grid") or {}
    if grid:
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise BenchError(f"{path}: grid must map knob names to non-empty lists", hint="grid: {EP: [2, 4], MBS: [1, 2]}")
        names = list(grid)
        layouts += [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]
    if not layouts:
        raise BenchError(f"{path}: no layouts", hint="add a 'layouts:' list or a 'grid:' mapping")
    for i, lay in enumerate(layouts):
        if not isinstance(lay, dict):
            raise BenchError(f"{path}: layout {i} is not a mapping of knobs")
        for key in lay:
            check_knob_name(str(key), f"{path} layout {i}")
    for key in base:
        check_knob_name(str(key), f"{path} base")
    return data.get("model"), base, layouts


def sweep_from_grid(path: Path, shared: list[str], environ: Mapping[str, str], *, concurrency: int, submit: bool) -> SweepOutcome:
    model, base, layouts = load_grid(path)
    head = {**({"MODEL": model} if model else {}), **base}
    return build_sweep([{**head, **lay} for lay in layouts], shared, environ, concurrency=concurrency, submit=submit,
                       label=Path(path).stem)


def sweep_from_plan(model: str, shared: list[str], environ: Mapping[str, str], *, top: int, nodes: int | None,
                    gpu: str | None, concurrency: int, submit: bool) -> SweepOutcome:
    from benchlib.config.resolve import resolve_run
    from benchlib.planning.planner import plan

    shared_knobs, _ = _assigns(shared)
    probe = resolve_run([f"MODEL={model}", *[f"{k}={v}" for k, v in shared_knobs.items() if k != "MODEL"]], environ)
    gpu_type = gpu or probe.cluster.GPU_TYPE
    n = nodes or probe.knobs.NNODES
    # Plan with the memory model of the backend this cluster's runs will use.
    result = plan(model, nodes=n, gpu=gpu_type, gpus_per_node=probe.gpus_per_node, seq_len=probe.knobs.SEQ_LEN,
                  gbs=probe.knobs.GBS, backend=probe.backend.name)
    if not result.ranked:
        raise BenchError(f"the plan for {model} on {n} x {gpu_type} found no layout that fits",
                         hint="more nodes, or a shorter SEQ_LEN")
    layouts = []
    for cand in result.ranked[:top]:
        k = {key: v for key, v in cand.knobs.items() if key != "RECOMPUTE_MODULES" or v}
        layouts.append({"MODEL": model, **k})
    out = build_sweep(layouts, shared, environ, concurrency=concurrency, submit=submit, label=f"plan-top{top}")
    out.notes.append(f"layouts are the plan's top {len(layouts)} ({result.default_note})")
    return out


def rank_results(sweep_dir: Path, *, plot: bool = False) -> str:
    """Parse each task's run directory and order the layouts by measured tokens/s/GPU (best first)."""
    from benchlib.metrics.cli import result_for
    from benchlib.metrics.compare import compare_results

    sweep_dir = Path(sweep_dir)
    try:
        index = json.loads((sweep_dir / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"{sweep_dir} is not a sweep directory ({INDEX}: {err})",
                         hint="pass the directory `benchlib sweep` printed") from None
    measured, missing = [], []
    for t in index["tasks"]:
        try:
            res, _ = result_for(t["run_dir"])
        except BenchError as err:
            missing.append(f"task {t['task']}: {err.message}")
            continue
        if res.tokens_per_s_per_gpu is None:
            missing.append(f"task {t['task']}: no steady-state throughput (status {res.status})")
            continue
        measured.append((res.tokens_per_s_per_gpu, t, res))
    if not measured:
        raise BenchError(f"no task of {sweep_dir} has a measured throughput yet: " + "; ".join(missing),
                         hint="wait for the array to finish (`benchlib status`), then run this again")
    measured.sort(key=lambda m: -m[0])
    lines = [f"{index['model']}: {len(measured)} of {len(index['tasks'])} layouts measured, best first by tokens/s/GPU"]
    for rank, (tps, t, res) in enumerate(measured, 1):
        lines.append(f"{rank:>3}. task {t['task']}  {tps:12.1f} tokens/s/GPU  {_fmt(t['knobs'])}  ({res.status})")
    lines += [f"  not ranked: {m}" for m in missing]
    table, csv_path, _ = compare_results([m[2] for m in measured], [m[1]["run_dir"] for m in measured],
                                         sweep_dir / "compare", plot=plot)
    return "\n".join(lines) + "\n\n" + table + f"\ncsv: {csv_path}"
