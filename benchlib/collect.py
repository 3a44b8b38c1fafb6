"""Turn a finished run directory into result.json (via benchlib.metrics) and print its summary."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import BenchError
from .render import LOG_NAME


def collect_run_dir(run_dir: Path) -> int:
    from .metrics import format_summary, parse_log, summarize, write_result

    log = run_dir / "logs" / LOG_NAME
    if not log.is_file():
        raise BenchError(f"no training log at {log}", hint="was the run started? see the Slurm output in logs/")
    resolved_path = run_dir / "resolved.json"
    resolved = json.loads(resolved_path.read_text()) if resolved_path.is_file() else {}
    gpu_type = (resolved.get("cluster_config") or {}).get("GPU_TYPE")
    parsed = parse_log([log])
    result = summarize(parsed, gpu_type, world_size=resolved.get("world_size"), config=resolved or None)
    write_result(result, run_dir / "result.json")
    print(format_summary(result))
    return result.exit_code
