"""From a run directory (or a log, or a result JSON) to its RunResult: the one way, used by
`benchlib collect` (the job's last step), `benchlib parse`, `compare`, `push` and sweeps."""
from __future__ import annotations

import json
from pathlib import Path

from benchlib.core.errors import BenchError
from benchlib.core.rundir import CALIBRATION_LOG, ENDING_FILE, LOGS_DIR, MANIFEST_FILE, RESOLVED_FILE, RESULT_FILE, TRAIN_LOG, atomic_write_json
from benchlib.metrics.status import DEFAULT_HANG_FACTOR, DEFAULT_HANG_MIN_S, Ending, reconcile


def run_logs(path: Path) -> list[Path]:
    """The log files of a run directory (logs/train.log, else every *.log / *.out in logs/)."""
    logs_dir = path / LOGS_DIR if (path / LOGS_DIR).is_dir() else path
    main = logs_dir / TRAIN_LOG
    if main.is_file():
        return [main]
    from benchlib.metrics.repeats import is_repeat_log

    # not the calibration's log, nor the repeats' own copies of what train.log holds
    found = sorted(p for p in logs_dir.iterdir() if p.is_file() and p.suffix in (".log", ".out", ".err")
                   and p.name != CALIBRATION_LOG and not is_repeat_log(p.name))
    if not found:
        raise BenchError(f"no log files in {logs_dir}", hint="was the run started? a run directory keeps its logs in logs/")
    return found


def load_config(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"cannot read config {path}: {err}", hint="give a resolved.json or a JSON object of Megatron arguments") from None
    if not isinstance(data, dict):
        raise BenchError(f"config {path} is not a JSON object", hint="give a resolved.json or a JSON object of Megatron arguments")
    return data


def result_for(arg: str, *, gpu: str | None = None, world_size: int | None = None, config: dict | None = None,
               skip: int | None = None, hang_factor: float = DEFAULT_HANG_FACTOR, hang_min_s: float = DEFAULT_HANG_MIN_S):
    """A RunResult from a result JSON, a log file or a run directory. Returns (result, run_dir or None)."""
    from benchlib.metrics.logparse import parse_log
    from benchlib.metrics.result import load_result, summarize

    path = Path(arg)
    if path.is_file() and path.suffix == ".json":
        return load_result(path), None
    run_dir = None
    if path.is_dir():
        run_dir = path
        logs = run_logs(path)
        config = config if config is not None else run_dir_config(path)
    elif path.is_file():
        logs = [path]
    else:
        raise BenchError(f"not found: {arg}", hint="give a result JSON, a log file or a run directory")
    parsed = parse_log(logs)
    result = summarize(parsed, gpu, world_size=world_size, config=config, skip=skip,
                       hang_factor=hang_factor, hang_min_s=hang_min_s)
    if run_dir is not None:
        add_run_dir_parts(result, run_dir, config=config, skip=skip)
    ending = read_ending(run_dir) if run_dir is not None else None
    return with_ending(result, ending), run_dir


def add_run_dir_parts(result, run_dir: Path, *, config: dict | None, skip: int | None = None) -> None:
    """What only a run directory has: the GPU calibration, the repeat logs (REPEATS>1) and the
    profiler traces (PROFILE=torch)."""
    from benchlib.metrics.calibration import calibration_for
    from benchlib.metrics.profile import profile_for
    from benchlib.metrics.repeats import repeats_for, spread_warning

    manifest = run_dir / MANIFEST_FILE
    if manifest.is_file():  # the suite commit and versions the run was launched with
        try:
            data = json.loads(manifest.read_text())
            result.source["suite_commit"] = data.get("suite_commit")
            result.source["versions"] = data.get("versions_at_submit")
        except (OSError, ValueError, AttributeError):
            result.warnings.append(f"unreadable {MANIFEST_FILE}: the result carries no suite commit")
    result.calibration, warnings = calibration_for(run_dir, result.gpu_type)
    result.warnings.extend(warnings)
    result.repeats = repeats_for(run_dir, gpu=result.gpu_type, world_size=result.num_gpus, config=config, skip=skip)
    warning = spread_warning(result.repeats)
    if warning:
        result.warnings.append(warning)
    try:  # the knobs say whether a trace is expected; a missing or unreadable resolved.json: read what is there
        knobs = (run_dir_config(run_dir) or {}).get("knobs") or {}
    except BenchError:
        knobs = {}
    result.profile, warnings = profile_for(run_dir, profile_knob=knobs.get("PROFILE"))
    result.warnings.extend(warnings)


def read_ending(run_dir: Path) -> Ending | None:
    """The run directory's ended.json (written by the launch script's collect and by `benchlib status`)."""
    path = Path(run_dir) / ENDING_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    fields = {k: data[k] for k in ("how", "exit_status", "source", "slurm_exit_code") if k in data}
    return Ending(**fields)


def write_ending(run_dir: Path, ending: Ending) -> None:
    from dataclasses import asdict

    atomic_write_json(Path(run_dir) / ENDING_FILE, asdict(ending))


def with_ending(result, ending: Ending | None):
    """The result with its status reconciled with how the launcher / Slurm says the run ended."""
    import dataclasses

    from benchlib.metrics.status import RunStatus

    if ending is None:
        return result
    status = reconcile(RunStatus(result.status, result.status_evidence, result.status_detail), ending)
    return dataclasses.replace(result, status=status.status, status_evidence=status.evidence,
                               status_detail=status.detail, exit_code=status.exit_code)


def run_dir_config(run_dir: Path) -> dict | None:
    """The run's resolved.json, when it has one."""
    path = Path(run_dir) / RESOLVED_FILE
    return load_config(path) if path.is_file() else None


def run_dir_result(run_dir: Path):
    """A run directory's RunResult from its training log, with the GPU type and world size it was launched with."""
    run_dir = Path(run_dir)
    log = run_dir / LOGS_DIR / TRAIN_LOG
    if not log.is_file():
        raise BenchError(f"no training log at {log}", hint="was the run started? see the Slurm output in logs/")
    config = run_dir_config(run_dir) or {}
    gpu_type = (config.get("cluster_config") or {}).get("GPU_TYPE")
    result, _ = result_for(str(run_dir), gpu=gpu_type, world_size=config.get("world_size"))
    return result


def collect_run_dir(run_dir: Path, ending: Ending | None = None) -> int:
    """Parse a finished run directory into its result.json and print the summary. `ending` (the
    launch script's exit status, and whether it was cancelled or cut by the time limit) is kept
    in ended.json first, so every later parse of the directory agrees with it."""
    from benchlib.metrics.result import write_result
    from benchlib.metrics.summary_text import format_summary

    run_dir = Path(run_dir)
    if ending is not None:
        write_ending(run_dir, ending)
    result = run_dir_result(run_dir)
    write_result(result, run_dir / RESULT_FILE)
    print(format_summary(result))
    return result.exit_code
