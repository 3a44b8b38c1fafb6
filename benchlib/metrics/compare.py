"""Side-by-side comparison of runs: a text table, a CSV and a PNG plot."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from benchlib.core.rundir import atomic_write
from benchlib.metrics.result import RunResult


def _rep(r: RunResult, key: str) -> Any:
    return ((r.repeats or {}).get("stats", {}).get("tflops_per_gpu") or {}).get(key)


def _share(r: RunResult, part: str) -> float | None:
    share = ((r.flops_by_component or {}).get("shares") or {}).get(part)
    return None if share is None else share * 100


def _calib(r: RunResult, metric: str) -> float | None:
    return ((r.calibration or {}).get("slowest", {}).get(metric) or {}).get("measured")


# (label, getter) for the metrics rows; deltas are computed for numbers.
METRICS: tuple[tuple[str, Any], ...] = (
    ("status", lambda r: r.status),
    ("GPUs", lambda r: r.num_gpus),
    ("GPU type", lambda r: r.gpu_type),
    ("precision", lambda r: r.precision),
    ("layout", lambda r: r.layout_name),
    ("steady lines", lambda r: r.steady_window.get("intervals")),
    ("iter time median (ms)", lambda r: (r.iteration_time_ms or {}).get("median")),
    ("iter time p90 (ms)", lambda r: (r.iteration_time_ms or {}).get("p90")),
    ("iter time cv (%)", lambda r: None if not r.iteration_time_ms else r.iteration_time_ms["cv"] * 100),
    ("tokens/s/GPU", lambda r: r.tokens_per_s_per_gpu),
    ("TFLOP/s/GPU Megatron", lambda r: r.tflops_per_gpu_reported),
    ("TFLOP/s/GPU benchlib", lambda r: r.tflops_per_gpu_recomputed),
    ("MFU (%)", lambda r: None if r.mfu is None else r.mfu * 100),
    ("max allocated (MB)", lambda r: r.peak_memory_mb.get("max_allocated")),
    ("max reserved (MB)", lambda r: r.peak_memory_mb.get("max_reserved")),
    ("routing", lambda r: r.routing),
    ("load_balancing_loss window median", lambda r: (r.expert_load or {}).get("window_median")),
    ("output layer FLOPs (%)", lambda r: _share(r, "output_layer")),
    ("repeats", lambda r: (r.repeats or {}).get("n")),
    ("repeats TFLOP/s median", lambda r: _rep(r, "median")),
    ("repeats TFLOP/s min", lambda r: _rep(r, "min")),
    ("repeats TFLOP/s max", lambda r: _rep(r, "max")),
    ("repeats TFLOP/s olympic mean", lambda r: _rep(r, "olympic_mean")),
    ("repeats cv (%)", lambda r: None if _rep(r, "cv") is None else _rep(r, "cv") * 100),
    ("repeats spread (%)", lambda r: None if _rep(r, "spread") is None else _rep(r, "spread") * 100),
    ("repeats steady cv (%)", lambda r: None if not r.repeats else
     " ".join(f"{run['steady_cv'] * 100:.1f}" for run in r.repeats["runs"] if run["steady_cv"] is not None)),
    ("calibration GEMM min (TFLOP/s)", lambda r: _calib(r, "bf16 GEMM")),
    ("calibration HBM copy min (GB/s)", lambda r: _calib(r, "HBM copy")),
    ("loss first", lambda r: r.loss.get("first")),
    ("loss last", lambda r: r.loss.get("last")),
)
IGNORED_CONFIG_KEYS = {"rank", "local_rank", "save", "load", "data_path", "tensorboard_dir", "wandb_exp_name", "wandb_save_dir"}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def differing_config(results: list[RunResult]) -> list[tuple[str, list[Any]]]:
    keys = sorted(set().union(*(r.config.keys() for r in results)) - IGNORED_CONFIG_KEYS)
    rows = []
    for k in keys:
        values = [r.config.get(k) for r in results]
        if any(repr(v) != repr(values[0]) for v in values[1:]):
            rows.append((k, values))
    return rows


def delta_pct(value: Any, base: Any) -> float | None:
    if _is_num(value) and _is_num(base) and base:
        return (value / base - 1.0) * 100.0
    return None


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.1f}"
    return str(v)


def table_rows(results: list[RunResult]) -> list[list[str]]:
    rows: list[list[str]] = []
    for key, values in differing_config(results):
        rows.append([f"config: {key}", *(_cell(v) for v in values)])
    for label, get in METRICS:
        values = [get(r) for r in results]
        cells = [_cell(values[0])]
        for v in values[1:]:
            d = delta_pct(v, values[0])
            cells.append(_cell(v) + ("" if d is None else f" ({d:+.1f}%)"))
        rows.append([label, *cells])
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def write_csv(path: Path, header: list[str], results: list[RunResult]) -> None:
    """Machine-readable: one row per metric/config key, raw values, deltas in their own columns."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", *header[1:], *(f"delta_pct:{h}" for h in header[2:])])
    for key, values in differing_config(results):
        w.writerow([f"config:{key}", *values, *([""] * (len(values) - 1))])
    for label, get in METRICS:
        values = [get(r) for r in results]
        deltas = [delta_pct(v, values[0]) for v in values[1:]]
        w.writerow([label, *("" if v is None else v for v in values), *("" if d is None else f"{d:.4f}" for d in deltas)])
    atomic_write(path, buf.getvalue())


def plot_runs(path: Path, results: list[RunResult], labels: list[str]) -> Path:
    """Iteration time, TFLOP/s/GPU and loss against iteration, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for n, (result, label) in enumerate(zip(results, labels)):
        color = f"C{n % 10}"
        pts = [s for s in result.series if isinstance(s.get("iteration"), int)]
        # one line per launch segment, so a restart does not draw a line back in time
        for seg_i, seg in enumerate(sorted({s.get("segment", 0) for s in pts})):
            sp = [s for s in pts if s.get("segment", 0) == seg]
            kw = {"color": color, "marker": ".", "label": label if seg_i == 0 else None}
            axes[0].plot([s["iteration"] for s in sp], [s["elapsed_ms"] for s in sp], **kw)
            tf = [(s["iteration"], s["tflops_reported"]) for s in sp if _is_num(s.get("tflops_reported"))]
            if tf:
                axes[1].plot(*zip(*tf), **kw)
            loss = [(s["iteration"], s["lm_loss"]) for s in sp if _is_num(s.get("lm_loss"))]
            if loss:
                axes[2].plot(*zip(*loss), **kw)
    axes[0].set_ylabel("iteration time (ms)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("TFLOP/s/GPU (Megatron)")
    axes[2].set_ylabel("lm loss")
    axes[2].set_xlabel("iteration")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _labels(results: list[RunResult], names: list[str]) -> list[str]:
    """Short labels: the model name, else the file/dir name without the part all runs share."""
    import os
    import re

    stems = [Path(n).stem if Path(n).suffix else (Path(n).name or n) for n in names]
    common = os.path.commonprefix(stems) if len(stems) > 1 else ""
    cut = max((m.end() for m in re.finditer(r"[_\-./]", common)), default=0)
    labels = []
    for i, (r, stem) in enumerate(zip(results, stems)):
        name = stem[cut:] or stem
        if r.model and len({x.model for x in results}) > 1:
            name = r.model
        labels.append(f"{i + 1}:{name if len(name) <= 32 else name[:31] + '~'}")
    return labels


def compare_results(results: list[RunResult], names: list[str], out_prefix: Path, *,
                    plot: bool = True) -> tuple[str, Path, Path | None]:
    """Return (table text, csv path, png path or None)."""
    labels = _labels(results, names)
    header = ["", *labels]
    text = format_table(header, table_rows(results))
    text = "\n".join(f"{lab} = {n}" for lab, n in zip(labels, names)) + "\n\n" + text
    out_prefix = Path(out_prefix)
    csv_path = out_prefix.with_name(out_prefix.name + ".csv")
    write_csv(csv_path, header, results)
    png_path = None
    if plot:
        png_path = plot_runs(out_prefix.with_name(out_prefix.name + ".png"), results, labels)
    return text, csv_path, png_path
