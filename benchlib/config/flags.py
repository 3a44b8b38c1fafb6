"""Knobs -> Megatron flags. Each `_xxx_flags` function owns one knob family.

The final argument list is: model flags (YAML, placeholders filled), then the derived flags
below, then the user's extra arguments (last, so they win: Megatron's argparse keeps the last
occurrence of a flag).
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from benchlib.config.cluster import ClusterConfig
from benchlib.core.errors import BenchError
from benchlib.core.rundir import PROFILE_TENSORBOARD_DIR
from benchlib.config.knobs import Knobs

FlagList = list[tuple[str, Any]]  # ordered (flag, value); value True = bare flag

# Transformer Engine is needed for these precisions (refused on other backends, see backend.py).
PRECISION_FLAGS: dict[str, FlagList] = {
    "bf16": [("--bf16", True)],
    "fp8": [("--bf16", True), ("--fp8-format", "e4m3"), ("--fp8-recipe", "blockwise")],
    "mxfp8": [("--bf16", True), ("--fp8-format", "e4m3"), ("--fp8-recipe", "mxfp8"), ("--fp8-param-gather", True)],
}
DISPATCHER_FLAGS: dict[str, FlagList] = {
    "alltoall": [("--moe-token-dispatcher-type", "alltoall")],
    "allgather": [("--moe-token-dispatcher-type", "allgather")],
    "deepep": [("--moe-token-dispatcher-type", "flex"), ("--moe-flex-dispatcher-backend", "deepep")],
    "hybridep": [("--moe-token-dispatcher-type", "flex"), ("--moe-flex-dispatcher-backend", "hybridep")],
}
# Flags whose presence in the user's extra args means "I set the pipeline layout myself".
LAYOUT_OVERRIDE_FLAGS = (
    "--pipeline-model-parallel-layout",
    "--decoder-first-pipeline-num-layers",
    "--decoder-last-pipeline-num-layers",
    "--num-layers-per-virtual-pipeline-stage",
    "--num-virtual-stages-per-pipeline-rank",
)
# Benchmarks train only (--eval-iters 0): all documents go to training. A split with weight but
# no document makes Megatron-Core 0.19.2 loop forever building it (small corpora).
RUN_SPLIT = "100,0,0"
# Steps between manual garbage collections (Megatron-Bridge's performance recipes use 100).
MANUAL_GC_INTERVAL = 100


def _precision_flags(k: Knobs) -> FlagList:
    return list(PRECISION_FLAGS[k.PR])


def _moe_flags(k: Knobs, model_flags: dict[str, Any], backend: str) -> FlagList:
    if "--num-experts" not in model_flags:
        return []
    out = list(DISPATCHER_FLAGS[k.DISPATCHER])
    if k.MOE_GROUPED_GEMM:
        out.append(("--moe-grouped-gemm", True))
    if k.ROUTING == "forced":
        out.append(("--moe-router-force-load-balancing", True))
    if k.A2A_OVERLAP:
        out.append(("--overlap-moe-expert-parallel-comm", True))
        # delaying the expert weight gradients (more overlap) needs TE's grouped linear
        if backend == "te":
            out.append(("--delay-wgrad-compute", True))
    return out


def _parallel_flags(k: Knobs, extra_flags: set[str]) -> FlagList:
    out: FlagList = []
    if k.TP > 1:
        out.append(("--sequence-parallel", True))
    if extra_flags & set(LAYOUT_OVERRIDE_FLAGS):
        return out
    if k.PP_LAYOUT:
        # the layout fixes every stage and VPP itself; Megatron refuses it beside the other layout flags
        out.append(("--pipeline-model-parallel-layout", k.PP_LAYOUT))
        return out
    if k.PP_FIRST:
        out.append(("--decoder-first-pipeline-num-layers", k.PP_FIRST))
    if k.PP_LAST:
        out.append(("--decoder-last-pipeline-num-layers", k.PP_LAST))
    if k.VPP > 1:
        out.append(("--num-virtual-stages-per-pipeline-rank", k.VPP))
    return out


def _recompute_flags(k: Knobs) -> FlagList:
    if k.RECOMPUTE == "selective":
        out: FlagList = [("--recompute-granularity", "selective")]
        if k.RECOMPUTE_MODULES.strip():
            out.append(("--recompute-modules", k.RECOMPUTE_MODULES.split()))
        return out
    if k.RECOMPUTE == "full":
        return [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", 1)]
    return []


def _optimizer_flags(k: Knobs) -> FlagList:
    if not k.OPTIMIZER_OFFLOAD:
        return []
    return [("--optimizer-cpu-offload", True), ("--overlap-cpu-optimizer-d2h-h2d", True), ("--use-precision-aware-optimizer", True)]


# Data choices that are Megatron's --mock-data for argv purposes; the driver tells them apart by
# the DATA knob in every rank's environment (data_env): Megatron's parser has no flag for it.
MOCK_DATA_CHOICES = ("mock", "random")
DATA_ENV = "DATA"


def _data_flags(k: Knobs, cluster: ClusterConfig, data_path: str, tokenizer: str) -> FlagList:
    if k.DATA in MOCK_DATA_CHOICES:
        return [("--mock-data", True), ("--tokenizer-type", "NullTokenizer")]
    missing = [name for name, value in (("DATA_PATH", data_path), ("TOKENIZER_MODEL", tokenizer)) if not value]
    if missing:
        raise BenchError(
            f"DATA=real needs {' and '.join(missing)} for model {k.MODEL} in cluster {cluster.NAME}",
            hint=f"set them in a [{k.MODEL}] section of cluster_configs/benchmarking/{cluster.NAME}.conf, "
            "pass them as KEY=VALUE, or use DATA=mock or DATA=random",
        )
    return [("--data-path", data_path), ("--tokenizer-type", "HuggingFaceTokenizer"), ("--tokenizer-model", tokenizer), ("--split", RUN_SPLIT)]


def data_env(k: Knobs) -> dict[str, str]:
    """The DATA knob under its own name on every rank (benchlib/megatron/driver/train.py reads it), always
    rendered: a DATA inherited from the submitting shell must not reach the rank unless it is the run's."""
    return {DATA_ENV: k.DATA}


def _checkpoint_flags(k: Knobs, cluster: ClusterConfig, load_path: str) -> FlagList:
    if k.PRETRAIN:
        return []
    if not load_path:
        raise BenchError(
            f"PRETRAIN=0 needs LOAD_PATH for model {k.MODEL} in cluster {cluster.NAME}",
            hint=f"set LOAD_PATH in a [{k.MODEL}] section of the cluster conf (convert one with `benchlib convert hf-to-mcore`), or PRETRAIN=1",
        )
    return [("--load", load_path), ("--no-load-optim", True), ("--no-load-rng", True)]


def _training_flags(k: Knobs, run_dir: str) -> FlagList:
    # No --exit-duration-in-mins: under Slurm the job's time-limit warning sends SIGTERM, which
    # --exit-signal-handler turns into a clean stop (one mechanism, see docs/slurm.md).
    out: FlagList = [
        ("--train-iters", k.TRAIN_ITERS),
        ("--log-interval", 1),
        ("--log-throughput", True),
        ("--eval-iters", 0),
        ("--exit-signal-handler", True),
    ]
    if k.MANUAL_GC:
        out += [("--manual-gc", True), ("--manual-gc-interval", MANUAL_GC_INTERVAL)]
    if k.PROFILE != "0":
        start, _, end = k.PROFILE_STEPS.partition(":")
        if not (start.isdigit() and end.isdigit() and int(start) < int(end)):
            raise BenchError(f"PROFILE_STEPS={k.PROFILE_STEPS!r} is not START:END", hint="e.g. PROFILE_STEPS=10:12")
        out += [("--profile", True), ("--profile-step-start", int(start)), ("--profile-step-end", int(end)), ("--profile-ranks", ["0"])]
        if k.PROFILE == "torch":
            out += [("--use-pytorch-profiler", True), ("--tensorboard-dir", f"{run_dir}/{PROFILE_TENSORBOARD_DIR}")]
    # WANDB=1 adds no Megatron flag: Megatron's own writer logs almost nothing without TensorBoard and
    # would make a second run. The job script's follower writes the one run (benchlib.metrics.wandb_follow).
    return out


def derived_flags(
    k: Knobs,
    cluster: ClusterConfig,
    model_flags: dict[str, Any],
    extra_flags: set[str],
    *,
    backend: str,
    run_dir: str,
    data_path: str,
    tokenizer: str,
    load_path: str,
) -> FlagList:
    return [
        *_precision_flags(k),
        *_moe_flags(k, model_flags, backend),
        *_parallel_flags(k, extra_flags),
        *_recompute_flags(k),
        *_optimizer_flags(k),
        *_data_flags(k, cluster, data_path, tokenizer),
        *_checkpoint_flags(k, cluster, load_path),
        *_training_flags(k, run_dir),
    ]


def raise_max_positions(model_flags: dict[str, Any], seq_len: int) -> None:
    """SEQ_LEN beyond the model's max positions raises them (RoPE models extrapolate)."""
    current = model_flags.get("--max-position-embeddings")
    if current is None or int(current) < seq_len:
        model_flags["--max-position-embeddings"] = seq_len


def to_tokens(flags: Iterable[tuple[str, Any]]) -> list[str]:
    tokens: list[str] = []
    for flag, value in flags:
        if value is None or value is False:
            continue
        tokens.append(flag)
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            tokens.extend(str(v) for v in value)
        else:
            tokens.append(str(value))
    return tokens


def tokens_to_dict(tokens: list[str]) -> dict[str, Any]:
    """`--flag v1 v2 --bare` -> {'--flag': 'v1 v2'-ish, '--bare': True}; the last occurrence wins."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            i += 1
            continue
        if "=" in tok:
            name, _, val = tok.partition("=")
            out[name] = val
            i += 1
            continue
        values = []
        j = i + 1
        while j < len(tokens) and not _is_flag(tokens[j]):
            values.append(tokens[j])
            j += 1
        out[tok] = True if not values else (values[0] if len(values) == 1 else values)
        i = j
    return out


def _is_flag(token: str) -> bool:
    # "--x" is a flag; "-1" or "-0.5" is a negative number value.
    return token.startswith("--") or (token.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?([eE][-+]?\d+)?", token))


def megatron_arg_dict(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags as Megatron argument names with typed values (the shape of a log's argument dump).

    Only what a flag says is here; Megatron's defaults for absent flags are not filled in. A bare
    `--no-x` sets both `no_x=True` and `x=False` (Megatron's dest is one or the other per flag).
    """
    out: dict[str, Any] = {}
    for flag, value in flags.items():
        name = flag[2:].replace("-", "_")
        if value is True:
            out[name] = True
            if name.startswith("no_"):
                out[name[3:]] = False
        elif isinstance(value, list):
            out[name] = [parse_arg_value(str(v)) for v in value]
        else:
            out[name] = parse_arg_value(str(value))
    return out


def parse_arg_value(text: str) -> Any:
    """A Megatron argument value as written on a command line or printed in the argument dump."""
    text = text.strip()
    if text in ("None", ""):
        return None
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text[:1] in "[({" and text[-1:] in "])}":
        import ast

        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text
