"""Read a run's GPU calibration (RUN_DIR/calibration/rank<N>.json) and judge it against the GPU table.

The records are written by `benchlib.megatron.calibrate` before training. Each measured rate is
compared with the GPU type's expected value (`benchlib.core.gpus`, measured and sourced); one below
CALIBRATION_MARGIN of it gets a warning naming the rank, host and GPU. Uncorrected ECC errors and
pending retired pages are warnings too. Types without an expected value are recorded, not judged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchlib.core.gpus import CALIBRATION_MARGIN, match_device_name
from benchlib.core.gpus import GPU_TABLE
from benchlib.core.rundir import CALIBRATION_DIR

# (record path, label, unit, GpuType field with the expected (value, source))
CHECKS: tuple[tuple[tuple[str, str], str, str, str], ...] = (
    (("gemm", "tflops"), "bf16 GEMM", "TFLOP/s", "expected_gemm_tflops"),
    (("copy", "gbps"), "HBM copy", "GB/s", "expected_copy_gbps"),
)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every rank's record, in rank order; unreadable files become records with an `error`."""
    folder = Path(run_dir) / CALIBRATION_DIR
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("rank*.json")):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            data = {"rank": _rank_of(path), "error": f"unreadable {path.name}: {err}"}
        records.append(data)
    return sorted(records, key=lambda r: r.get("rank", 0) if isinstance(r.get("rank"), int) else 0)


def _rank_of(path: Path) -> int:
    digits = path.stem.removeprefix("rank")
    return int(digits) if digits.isdigit() else -1


def _who(record: dict[str, Any], gpu_name: str | None) -> str:
    smi = record.get("nvidia_smi") or {}
    where = record.get("host") or "?"
    ident = smi.get("pci_bus_id") or record.get("uuid") or f"local GPU {record.get('local_rank', '?')}"
    return f"rank {record.get('rank', '?')} ({where}, {ident}, {gpu_name or record.get('device') or 'unknown GPU'})"


def judge(records: list[dict[str, Any]], gpu_type: str | None, margin: float = CALIBRATION_MARGIN) -> tuple[dict[str, Any], list[str]]:
    """(the result's `calibration` field, warnings). `gpu_type`: the run's type, used when a record names none."""
    checks: list[dict[str, Any]] = []
    warnings: list[str] = []
    for rec in records:
        device = rec.get("device") or (rec.get("nvidia_smi") or {}).get("name")
        type_name = (match_device_name(device) if device else None) or gpu_type
        gpu = GPU_TABLE.get(type_name) if type_name else None
        who = _who(rec, device or type_name)
        if rec.get("error"):
            warnings.append(f"calibration of {who} failed: {rec['error']}")
            continue
        for (part, key), label, unit, field_name in CHECKS:
            measured = (rec.get(part) or {}).get(key)
            if measured is None:
                continue
            expected = getattr(gpu, field_name) if gpu else None
            check = {"rank": rec.get("rank"), "host": rec.get("host"), "gpu_type": type_name, "metric": label,
                     "unit": unit, "measured": measured, "expected": None, "ratio": None, "ok": None, "source": None}
            if expected is not None:
                value, source = expected
                ratio = measured / value
                check.update(expected=value, ratio=ratio, ok=ratio >= margin, source=source)
                if ratio < margin:
                    warnings.append(f"slow GPU: {who}: {label} {measured:,.0f} {unit} is {ratio:.0%} of the "
                                    f"{value:,.0f} {unit} a healthy {type_name} measures (warning below {margin:.0%})")
            checks.append(check)
        smi = rec.get("nvidia_smi") or {}
        ecc = smi.get("ecc_uncorrected_volatile")
        if isinstance(ecc, (int, float)) and ecc > 0:
            warnings.append(f"GPU with memory errors: {who}: {ecc:g} uncorrected ECC error(s) since the driver loaded")
        if str(smi.get("retired_pages_pending") or "").lower() == "yes":
            warnings.append(f"GPU with memory errors: {who}: retired pages pending (a reset retires them)")
    collectives = [dict(rec["collectives"], rank=rec.get("rank")) for rec in records if rec.get("collectives")]
    summary = {
        "margin": margin,
        "ranks": records,
        "checks": checks,
        "collectives": collectives,
        "slowest": _slowest(checks),
    }
    return summary, warnings


def _slowest(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the rank with the lowest ratio (or the lowest value where nothing is expected)."""
    out: dict[str, Any] = {}
    for check in checks:
        key = check["metric"]
        score = check["ratio"] if check["ratio"] is not None else check["measured"]
        best = out.get(key)
        if best is None or score < best["score"]:
            out[key] = {"rank": check["rank"], "measured": check["measured"], "ratio": check["ratio"], "score": score}
    for value in out.values():
        value.pop("score")
    return out


def calibration_for(run_dir: Path | None, gpu_type: str | None) -> tuple[dict[str, Any] | None, list[str]]:
    """(calibration field or None when the run has none, warnings)."""
    if run_dir is None:
        return None, []
    records = read_records(run_dir)
    if not records:
        return None, []
    return judge(records, gpu_type)


def summary_line(calibration: dict[str, Any] | None) -> str:
    """One line for the human summary."""
    if not calibration:
        return "-"
    parts = []
    for metric, slow in calibration.get("slowest", {}).items():
        unit = next((c["unit"] for c in calibration["checks"] if c["metric"] == metric), "")
        ratio = "" if slow["ratio"] is None else f" ({slow['ratio']:.0%} of expected)"
        parts.append(f"{metric} slowest rank {slow['rank']}: {slow['measured']:,.0f} {unit}{ratio}")
    for coll in calibration.get("collectives", [])[:1]:
        parts.append(f"all-reduce {coll['all_reduce_busbw_gbps']:,.0f} GB/s, all-to-all {coll['all_to_all_busbw_gbps']:,.0f} GB/s bus")
    n = len(calibration.get("ranks", []))
    return f"{n} rank(s): " + ("; ".join(parts) if parts else "nothing measured (see calibration.ranks[].skipped)")
