"""Every run knob, defined once: name, type, allowed values and what it does.

Where a knob's *default* comes from: `runtime_configs/benchmarking/common.conf`, then the
model's row in `runtime.conf` (optionally per GPU type), then the environment, then
`KEY=VALUE` arguments. Where it is *turned into Megatron flags*: `benchlib/config/flags.py`.
Where it is *rendered*: `benchlib/render/templates/*.j2` (through `benchlib/render/scripts.py`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from benchlib.core.errors import BenchError, did_you_mean


def knob(doc: str, default: Any = None, choices: tuple[str, ...] | None = None, minimum: int = 1) -> Any:
    """`minimum` is for integer knobs: the smallest value that means something (sizes start at 1)."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "minimum": minimum})


@dataclass
class Knobs:
    """The fully resolved knobs of one run. Field docstrings are the reference (README 'Knobs')."""

    # --- what to run ---------------------------------------------------------------
    MODEL: str = knob("Model config name: a file model_configs/benchmarking/<MODEL>.yaml.", "")
    CLUSTER: str = knob("Cluster config name: a file cluster_configs/benchmarking/<CLUSTER>.conf.", "local")
    # --- parallel layout -----------------------------------------------------------
    TP: int = knob("Tensor-parallel size.", 1)
    PP: int = knob("Pipeline-parallel size.", 1)
    EP: int = knob("Expert-parallel size.", 1)
    ETP: int = knob("Expert tensor-parallel size.", 1)
    CP: int = knob("Context-parallel size.", 1)
    VPP: int = knob("Virtual pipeline stages per pipeline rank (1 = no interleaving).", 1)
    PP_FIRST: int = knob("Layers on the first pipeline stage (0 = even split).", 0, minimum=0)
    PP_LAST: int = knob("Layers on the last pipeline stage (0 = even split).", 0, minimum=0)
    PP_LAYOUT: str = knob(
        "Megatron's --pipeline-model-parallel-layout: stages split by |, E embedding, t layer, m MTP layer, "
        "L loss, repetition x*N and (group)*N, e.g. 'Et|(tt|)*30mL'; PP x VPP stages (VPP follows from it). "
        "Empty = PP_FIRST/PP_LAST/VPP.",
        "",
    )
    NNODES: int = knob("Number of nodes.", 1)
    # --- batch and shape -----------------------------------------------------------
    MBS: int = knob("Micro-batch size.", 1)
    GBS: int = knob("Global batch size (sequences per iteration).", 8)
    NUM_LAYERS: int = knob("Transformer layers (fewer than the published model makes a proxy).", 1)
    SEQ_LEN: int = knob("Sequence length; above the model's max positions it raises them.", 4096)
    TRAIN_ITERS: int = knob("Training iterations.", 50)
    # --- MoE and precision ---------------------------------------------------------
    DISPATCHER: str = knob("MoE token dispatcher.", "alltoall", ("alltoall", "allgather", "deepep", "hybridep"))
    MOE_GROUPED_GEMM: bool = knob("Run experts as grouped GEMMs.", True)
    PR: str = knob("Precision.", "bf16", ("bf16", "fp8", "mxfp8"))
    A2A_OVERLAP: bool = knob("Overlap MoE all-to-all with compute (EP>1, needs VPP>1 or PP=1).", False)
    OPTIMIZER_OFFLOAD: bool = knob("Offload optimizer state and step to CPU (precision-aware optimizer).", False)
    RECOMPUTE: str = knob("Activation recompute.", "none", ("none", "selective", "full"))
    RECOMPUTE_MODULES: str = knob(
        "Modules for RECOMPUTE=selective, space separated (e.g. 'moe_act layernorm'); empty = Megatron's default.", ""
    )
    BACKEND: str = knob(
        "Layer implementation: auto (Transformer Engine if importable, else the torch-native spec), "
        "te, native (benchlib's torch-native spec), local (Megatron's local spec).",
        "auto",
        ("auto", "te", "native", "local"),
    )
    FAST_OPS: bool = knob(
        "BACKEND=native only: benchlib's Triton kernels (cross-entropy, MoE permutation, RoPE) in place of "
        "Megatron's unfused functions; 0 = Megatron's own, to compare. No effect on te or local.",
        True,
    )
    FAST_OPTIMIZER: bool = knob(
        "BACKEND=native or local (no TE/Apex): AdamW as one Triton kernel that also writes the bf16 params, "
        "clipping folded into it, a multi-tensor grad norm, no zeroing of the gradient buffer (a step's first "
        "write copies), main_grad += grad as one vectorised kernel that also gives Megatron's per-bucket NaN "
        "check its norms, judged with one host sync, and no device round trip for one-rank step statistics "
        "(benchlib/megatron/fast_optimizer.py, fast_grads.py, step_stats.py); 0 = Megatron's own, to compare.",
        True,
    )
    COMPILE: bool = knob(
        "BACKEND=native only: torch.compile on the spec's norms and MoE router scoring "
        "(benchlib/megatron/spec/compiled.py); 0 until measured faster on the GPU. No effect on te or local.",
        False,
    )
    ROUTING: str = knob(
        "MoE routing: learned (the router trains, expert load drifts with the iteration count on mock data) or "
        "forced (--moe-router-force-load-balancing: balanced random routing, as NVIDIA's published figures). "
        "Recorded in every result.",
        "learned",
        ("learned", "forced"),
    )
    # --- measurement ---------------------------------------------------------------
    REPEATS: int = knob(
        "Launches of the same run in one allocation (1 or more), one after another with the same seed; each has its "
        "own log (logs/repeat-N.log, all of them also in logs/train.log) and the result gains across-run statistics.",
        1,
    )
    CALIBRATE: bool = knob(
        "Before training, every rank measures its GPU (bf16 GEMM, HBM copy, nvidia-smi clocks/power/ECC; NCCL "
        "all-reduce/all-to-all with more than one GPU) into calibration/; the result warns about a slow GPU.",
        True,
    )
    MANUAL_GC: bool = knob(
        "Megatron's --manual-gc with --manual-gc-interval 100: Python's garbage collector runs at the same step on "
        "every rank instead of whenever it likes (a source of step-time jitter).",
        True,
    )
    BASELINE: str = knob(
        "A recorded baseline (JSON file or run directory): after collect, `benchlib check` compares the run with it "
        "and the launch fails on a regression. Empty = no check.",
        "",
    )
    # --- data and checkpoints ------------------------------------------------------
    DATA: str = knob(
        "mock: Megatron's MockGPTDataset, documents 1, 2, 3, ... then EOD (the model learns them: its loss falls "
        "towards 0 within tens of steps and MoE routing specializes with it). random: uniform random token ids over "
        "the vocabulary, as torchtitan's synthetic loader feeds its model (benchlib/megatron/random_tokens.py): "
        "nothing to learn, the loss stays near ln(vocab); the data for comparing step time and loss with that peer. "
        "Both are Megatron's --mock-data with NullTokenizer; random needs benchlib's driver (not pretrain_gpt.py). "
        "real: the cluster's DATA_PATH and TOKENIZER_MODEL.",
        "mock",
        ("mock", "random", "real"),
    )
    PRETRAIN: bool = knob("1: train from scratch; 0: load the cluster's LOAD_PATH.", True)
    # --- job -----------------------------------------------------------------------
    RUN_TIME: str = knob("Slurm time limit, HH:MM:SS or D-HH:MM:SS (above zero, within the partition's limit).", "00:30:00")
    PROFILE: str = knob(
        "Profile rank 0 over PROFILE_STEPS. torch: torch.profiler writes a Chrome trace to "
        "`<run_dir>/torch_profile/rank-0.json.gz` and `result.json` gets `profile` (per step: GPU busy/idle, "
        "the largest idle gaps, kernel time by category, top kernels, host syncs), printed in the summary. "
        "nsys: only Megatron's cudaProfilerStart/Stop around the steps (run under `nsys profile "
        "--capture-range=cudaProfilerApi`).",
        "0", ("0", "nsys", "torch"))
    PROFILE_STEPS: str = knob("Profiled iterations as START:END (END not included).", "10:12")
    COMMENT: str = knob("Free text appended to the job and WandB run names.", "")
    SINGLETON: bool = knob("Add --dependency=singleton: one job of this name at a time.", False)
    ENTRY: str = knob(
        "What each task runs: auto (pretrain_gpt.py when MEGATRON_PATH is set, else benchlib's driver), "
        "driver, pretrain_gpt, validate (Megatron's argument validation of the same flags, on CPU), "
        "command (ENTRY_COMMAND instead of training).",
        "auto",
        ("auto", "driver", "pretrain_gpt", "validate", "command"),
    )
    ENTRY_COMMAND: str = knob("The step's command when ENTRY=command (shell words).", "")
    MEM_CHECK: bool = knob("Refuse a launch whose memory estimate exceeds the GPU's memory.", True)
    # --- WandB -----------------------------------------------------------------------
    WANDB: bool = knob(
        "One WandB run per benchmark, written by the job as it trains (each iteration's loss, time, TFLOP/s, "
        "tokens/s; the suite's summary at the end). Online with WANDB_API_KEY (read at run time), else offline "
        "in the run directory.",
        False,
    )
    WANDB_PROJECT: str = knob("WandB project.", "megatron-moe-bench")
    WANDB_RUN_NAME: str = knob("WandB run name; empty = derived from model, layout and COMMENT.", "")


KNOB_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Knobs)}
KNOB_NAMES: tuple[str, ...] = tuple(KNOB_FIELDS)
_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off", ""}
_RUN_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2}):(\d{2})$")


def _field_type(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def coerce(name: str, raw: Any, source: str) -> Any:
    """Turn a raw string (from a conf file, the environment or an argument) into the knob's type."""
    f = KNOB_FIELDS[name]
    kind = _field_type(f)
    text = str(raw).strip()
    if kind == "int":
        try:
            value: Any = int(text)
        except ValueError:
            raise BenchError(f"{name}={text!r} from {source} is not an integer", hint=f"set {name} to a whole number") from None
        minimum = f.metadata.get("minimum", 1)
        if value < minimum:
            raise BenchError(f"{name}={value} from {source} is below {minimum}", hint=f"set {name} to {minimum} or more")
        return value
    if kind == "bool":
        low = text.lower()
        if low in _BOOL_TRUE:
            return True
        if low in _BOOL_FALSE:
            return False
        raise BenchError(f"{name}={text!r} from {source} is not a boolean", hint=f"use {name}=1 or {name}=0")
    choices = f.metadata.get("choices")
    if choices and text not in choices:
        raise BenchError(
            f"{name}={text!r} from {source} is not one of: {', '.join(choices)}",
            hint=f"set {name} to one of {', '.join(choices)}",
        )
    if name == "RUN_TIME":
        run_time_seconds(text, source)
    return text


def run_time_seconds(text: str, source: str = "RUN_TIME") -> int:
    """Seconds in a Slurm time limit written HH:MM:SS or D-HH:MM:SS; refuse what Slurm would misread."""
    m = _RUN_TIME.match(text)
    if not m:
        raise BenchError(f"RUN_TIME={text!r} from {source} is not HH:MM:SS or D-HH:MM:SS", hint="e.g. RUN_TIME=00:30:00 or RUN_TIME=1-12:00:00")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if minutes >= 60 or seconds >= 60 or (m.group(1) is not None and hours >= 24):
        raise BenchError(
            f"RUN_TIME={text!r} from {source}: minutes and seconds must be below 60 (and hours below 24 after a day count)",
            hint="e.g. RUN_TIME=01:30:00 for 90 minutes, RUN_TIME=1-02:00:00 for 26 hours",
        )
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total == 0:
        raise BenchError(f"RUN_TIME={text!r} from {source} is zero (Slurm reads that as no limit at all)", hint="give the job a real limit, e.g. RUN_TIME=00:30:00")
    return total


def check_knob_name(name: str, source: str) -> None:
    if name not in KNOB_FIELDS:
        raise BenchError(
            f"unknown knob {name!r} in {source}{did_you_mean(name, KNOB_NAMES)}",
            hint="valid knobs: " + ", ".join(KNOB_NAMES),
        )


def knob_doc_table() -> list[tuple[str, str, str]]:
    """(name, allowed values, doc) for every knob: what the README's knob table is generated from."""
    rows = []
    for f in dataclasses.fields(Knobs):
        choices = f.metadata.get("choices")
        kind = _field_type(f)
        allowed = "|".join(choices) if choices else {"int": "integer", "bool": "0|1", "str": "text"}[kind]
        rows.append((f.name, allowed, f.metadata["doc"]))
    return rows


def knob_markdown_table() -> str:
    lines = ["| knob | values | what it does |", "| --- | --- | --- |"]
    for name, allowed, doc in knob_doc_table():
        values = allowed.replace("|", " \\| ")
        lines.append(f"| `{name}` | {values} | {doc} |")
    return "\n".join(lines)
