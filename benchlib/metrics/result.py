"""One run's numbers: steady-state time, tokens/s/GPU, TFLOP/s/GPU (Megatron's and ours), MFU, status.

The result JSON schema is documented in docs/metrics.md (`schema_version` 1).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import __version__
from benchlib.core.errors import BenchError
from benchlib.metrics import flops as flops_mod
from benchlib.metrics.logparse import ParsedLog
from benchlib.metrics.peaks import PeakSpec, normalize_gpu, peak_tflops
from benchlib.metrics.runconfig import layout_of, precision_of, split_config
from benchlib.metrics.status import DEFAULT_HANG_FACTOR, DEFAULT_HANG_MIN_S, RunStatus, determine_status
from benchlib.metrics.steady import TimeStats, select_window, time_stats

SCHEMA_VERSION = 1
# Megatron's per-iteration load-balancing losses, one per --moe-router-load-balancing-type; a run
# logs those its type names (seq_aux_loss also logs a plain one that stays 0).
LOAD_BALANCING_KEYS = ("load_balancing_loss", "seq_load_balancing_loss", "global_load_balancing_loss")
# Fewer kept iteration lines than this and the window's median is at the mercy of one slow step.
MIN_WINDOW_LINES = 10
WINDOW_WHY = ("per launch: drop the first line (start-up) and the first interval (it averages warm-up in), then the "
              "first max(3, 10%) iterations and any interval with an eval or save; with learned routing the expert "
              "load still drifts inside the window (see expert_load), with ROUTING=forced it does not")
ENERGY_KEY = "energy per GPU (J/iter/GPU)"
POWER_KEY = "power per GPU (W/GPU)"

@dataclass
class RunResult:
    schema_version: int
    model: str | None
    gpu_type: str | None
    num_gpus: int | None
    precision: str
    layout: dict[str, int | None]
    layout_name: str
    status: str  # one of benchlib.metrics.status.STATUSES
    status_evidence: str  # the log line that shows it
    status_detail: str
    exit_code: int  # what `benchlib parse` exits with for this status
    steady_window: dict[str, Any]
    iteration_time_ms: dict[str, float] | None
    tokens_per_s_per_gpu: float | None
    tflops_per_gpu_reported: float | None  # median of Megatron's figure over the window
    tflops_per_gpu_recomputed: float | None  # benchlib FLOPs model / median iteration time
    recomputed_vs_reported_pct: float | None
    model_flops_per_iteration: float | None
    mfu: float | None  # recomputed TFLOP/s/GPU / peak (fraction, 0..1)
    peak: dict[str, Any] | None
    peak_memory_mb: dict[str, Any]
    theoretical_memory_mb: dict[str, float] | None
    energy: dict[str, float] | None  # --log-energy: medians over the window of J/iter/GPU and W/GPU
    loss: dict[str, Any]
    segments: int
    series: list[dict[str, Any]]
    config: dict[str, Any]
    source: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    # Added with issue 16 (absent in older result files, which still load):
    routing: str | None = None  # "learned" | "forced" (--moe-router-force-load-balancing); None: no MoE
    expert_load: dict[str, Any] | None = None  # Megatron's load_balancing_loss over the run (1.0 = uniform)
    flops_by_component: dict[str, Any] | None = None  # share of model FLOPs per part (benchlib.metrics.flops)
    calibration: dict[str, Any] | None = None  # the GPU calibration before training (benchlib.metrics.calibration)
    repeats: dict[str, Any] | None = None  # REPEATS>1: across-run statistics (benchlib.metrics.repeats)
    profile: dict[str, Any] | None = None  # PROFILE=torch: where a step's GPU time goes (benchlib.metrics.profile)

    def to_json(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunResult":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise BenchError(f"result JSON has schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}",
                             hint="re-run `benchlib parse` on the run's log to regenerate it")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: _from_json_safe(v) for k, v in data.items() if k in names})


_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _from_json_safe(value: Any) -> Any:
    """Inverse of _json_safe: the strings "nan", "inf", "-inf" back to floats."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: _from_json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json_safe(v) for v in value]
    return value


def _json_safe(value: Any) -> Any:
    """NaN/Inf are not JSON: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _median(values: list[float]) -> float | None:
    import statistics
    return statistics.median(values) if values else None


# Arguments that change what an iteration costs: launches that differ in one are not pooled.
SPEED_KEYS = (
    "world_size", "tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
    "context_parallel_size", "expert_model_parallel_size", "expert_tensor_parallel_size", "micro_batch_size",
    "global_batch_size", "seq_length", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
    "num_query_groups", "num_experts", "moe_router_topk", "moe_ffn_hidden_size", "moe_layer_freq",
    "moe_shared_expert_intermediate_size", "multi_latent_attention", "mtp_num_layers", "padded_vocab_size", "bf16",
    "fp16", "fp8", "fp8_recipe", "transformer_impl", "spec", "recompute_granularity", "recompute_method",
    "recompute_num_layers", "moe_token_dispatcher_type", "moe_grouped_gemm", "sequence_parallel",
    "overlap_grad_reduce", "overlap_param_gather", "use_distributed_optimizer",
)


def other_config_segments(parsed: ParsedLog) -> set[int]:
    """Launch segments whose argument dump differs from the last dump in a SPEED_KEYS entry."""
    if not parsed.segment_configs:
        return set()
    last = parsed.config
    return {seg for seg, cfg in parsed.segment_configs.items()
            if any(cfg.get(k) != last.get(k) for k in SPEED_KEYS)}


def summarize(parsed: ParsedLog, gpu_type: str | None = None, *, world_size: int | None = None,
              config: dict | None = None, skip: int | None = None, model: str | None = None,
              hang_factor: float = DEFAULT_HANG_FACTOR, hang_min_s: float = DEFAULT_HANG_MIN_S,
              now: float | None = None) -> RunResult:
    """Turn a parsed log into a RunResult. The log's argument dump wins over `config` (it is what ran)."""
    meta, given = split_config(config or {})
    cfg: dict[str, Any] = {**given, **parsed.config}
    warnings: list[str] = []
    if not parsed.config:
        warnings.append("no `---- arguments ----` dump in the log: config taken from the caller only")
    ws = world_size or (int(cfg["world_size"]) if isinstance(cfg.get("world_size"), int) else None) or meta.get("world_size")
    gpu_type = gpu_type or meta.get("gpu_type")
    gpu = normalize_gpu(gpu_type) if gpu_type else None
    model = model or meta.get("model")

    other = other_config_segments(parsed)
    if other:
        warnings.append(f"launch(es) {sorted(other)} ran another configuration than the last one: left out of the steady window")
    window_recs, window = select_window(parsed.iterations, skip, exclude_segments=other)
    if window.fallback:
        warnings.append("steady window rules left no iteration line; statistics include warm-up")
    times = [r.elapsed_ms for r in window_recs]
    stats: TimeStats | None = time_stats(times)
    median_s = stats.median / 1000.0 if stats else None
    status: RunStatus = determine_status(parsed, median_s, hang_factor=hang_factor, hang_min_s=hang_min_s, now=now)

    gbs_values = [r.global_batch for r in window_recs if r.global_batch]
    gbs = gbs_values[-1] if gbs_values else (cfg.get("global_batch_size") if isinstance(cfg.get("global_batch_size"), int) else None)
    seq = cfg.get("seq_length") if isinstance(cfg.get("seq_length"), int) else None

    tokens_per_s = None
    if median_s and gbs and seq and ws:
        tokens_per_s = gbs * seq / median_s / ws
    elif stats:
        warnings.append("tokens/s/GPU needs global batch, seq_length and world size (config or --world-size)")

    reported = _median([r.tflops_reported for r in window_recs if r.tflops_reported is not None])
    joules = _median([r.extra[ENERGY_KEY] for r in window_recs if ENERGY_KEY in r.extra])
    watts = _median([r.extra[POWER_KEY] for r in window_recs if POWER_KEY in r.extra])
    energy = None if joules is None else {"joules_per_iteration_per_gpu": joules, "watts_per_gpu": watts}
    model_flops = recomputed = None
    if gbs and cfg:
        try:
            model_flops = flops_mod.num_floating_point_operations(cfg, gbs)
        except BenchError as err:
            warnings.append(f"FLOPs model: {err.message}")
    if model_flops is not None and median_s and ws:
        recomputed = model_flops / (median_s * 1e12 * ws)
    rel = None
    if recomputed is not None and reported:
        rel = (recomputed / reported - 1.0) * 100.0
        if abs(rel) > 0.5:
            warnings.append(f"recomputed TFLOP/s/GPU differs from Megatron's by {rel:+.2f}%")

    precision = precision_of(cfg)
    peak: PeakSpec | None = None
    mfu = None
    if gpu:
        try:
            peak = peak_tflops(gpu, precision)
        except BenchError as err:
            warnings.append(err.message)
        if peak and recomputed is not None:
            mfu = recomputed / peak.tflops
    else:
        warnings.append("no GPU type: MFU needs --gpu (H100, H200, B200, GB200, GB300, A100)")

    per_rank: dict[str, dict[str, float]] = {}
    for m in parsed.memory:
        slot = per_rank.setdefault(str(m.rank), {"max_allocated": 0.0, "max_reserved": 0.0})
        slot["max_allocated"] = max(slot["max_allocated"], m.max_allocated_mb)
        slot["max_reserved"] = max(slot["max_reserved"], m.max_reserved_mb)
    peak_memory = {
        "per_rank": dict(sorted(per_rank.items(), key=lambda kv: int(kv[0]))),
        "max_allocated": max((v["max_allocated"] for v in per_rank.values()), default=None),
        "max_reserved": max((v["max_reserved"] for v in per_rank.values()), default=None),
    }

    routing = None
    if cfg.get("num_experts") not in (None, "None"):
        routing = "forced" if cfg.get("moe_router_force_load_balancing") is True else "learned"
    balance_key = load_balancing_key(parsed)
    expert_load = _expert_load(parsed, balance_key, set(id(r) for r in window_recs))
    if stats and stats.n < MIN_WINDOW_LINES and not window.fallback:
        warnings.append(f"the steady window has {stats.n} iteration line(s), fewer than {MIN_WINDOW_LINES}: its median "
                        "moves with single slow steps; run more iterations (TRAIN_ITERS)")
    flops_parts = None
    if model_flops is not None:
        try:
            flops_parts = flops_mod.component_shares(cfg)
        except BenchError as err:
            warnings.append(f"FLOPs by component: {err.message}")

    loss_key = "lm loss"
    with_loss = [r for r in parsed.iterations if loss_key in r.losses]
    loss = {
        "name": loss_key,
        "first": with_loss[0].losses[loss_key] if with_loss else None,
        "first_iteration": with_loss[0].iteration if with_loss else None,
        "last": with_loss[-1].losses[loss_key] if with_loss else None,
        "last_iteration": with_loss[-1].iteration if with_loss else None,
    }
    kept = set(id(r) for r in window_recs)
    series = [{
        "iteration": r.iteration, "segment": r.segment, "elapsed_ms": r.elapsed_ms,
        "tflops_reported": r.tflops_reported, "lm_loss": r.losses.get(loss_key), "global_batch": r.global_batch,
        "timestamp": r.timestamp, "in_window": id(r) in kept,
        "load_balancing_loss": r.losses.get(balance_key) if balance_key else None,
    } for r in parsed.iterations]

    layout, layout_name = layout_of(cfg, ws)
    if parsed.truncated_last_line:
        warnings.append("the log's last line is cut short (still being written, or the job was killed mid-line)")
    return RunResult(
        schema_version=SCHEMA_VERSION,
        model=model,
        gpu_type=gpu,
        num_gpus=ws,
        precision=precision,
        layout=layout,
        layout_name=layout_name,
        status=status.status,
        status_evidence=status.evidence,
        status_detail=status.detail,
        exit_code=status.exit_code,
        steady_window={**window.to_json(), "description": window.describe(), "why": WINDOW_WHY,
                       "enough": bool(stats and stats.n >= MIN_WINDOW_LINES and not window.fallback)},
        iteration_time_ms=stats.to_json() if stats else None,
        tokens_per_s_per_gpu=tokens_per_s,
        tflops_per_gpu_reported=reported,
        tflops_per_gpu_recomputed=recomputed,
        recomputed_vs_reported_pct=rel,
        model_flops_per_iteration=model_flops,
        mfu=mfu,
        peak=peak.to_json() if peak else None,
        peak_memory_mb=peak_memory,
        theoretical_memory_mb=parsed.theoretical_memory_mb,
        energy=energy,
        loss=loss,
        segments=parsed.segments,
        series=series,
        config=cfg,
        source={"logs": parsed.paths, "bytes": parsed.total_bytes, "benchlib_version": __version__,
                "parsed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        warnings=warnings,
        routing=routing,
        expert_load=expert_load,
        flops_by_component=flops_parts,
    )


def load_balancing_key(parsed: ParsedLog) -> str | None:
    """The load-balancing loss the run really logs (the first of LOAD_BALANCING_KEYS not always 0)."""
    for key in LOAD_BALANCING_KEYS:
        if any(r.losses.get(key) for r in parsed.iterations):
            return key
    return None


def _expert_load(parsed: ParsedLog, key: str | None, window_ids: set[int]) -> dict[str, Any] | None:
    """Megatron 0.19 logs no per-expert token counts; its load-balancing loss (the aux loss divided
    by its coefficient, averaged over MoE layers) is 1.0 for uniform routing and grows with imbalance."""
    if key is None:
        return None
    points = [(r.iteration, r.losses[key], id(r) in window_ids) for r in parsed.iterations if key in r.losses]
    in_window = [v for _, v, w in points if w]
    return {
        "metric": key,
        "meaning": "Megatron's aux load-balancing loss / its coefficient, mean over MoE layers: 1.0 = uniform routing",
        "first": points[0][1], "first_iteration": points[0][0],
        "last": points[-1][1], "last_iteration": points[-1][0],
        "window_first": in_window[0] if in_window else None,
        "window_last": in_window[-1] if in_window else None,
        "window_median": _median(in_window),
    }


def write_result(result: RunResult, path: Path | str) -> Path:
    """Write the result JSON atomically (readers never see half a file)."""
    from benchlib.core.rundir import atomic_write_json

    path = Path(path)
    atomic_write_json(path, result.to_json())
    return path


def load_result(path: Path | str) -> RunResult:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"cannot read result JSON {path}: {err}", hint="re-run `benchlib parse` to regenerate it") from None
    return RunResult.from_json(data)
