"""Named benchmark scenarios: what `python -m bench run NAME` runs and records.

A training scenario is a model, a GPU count, knobs and extra Megatron arguments, run through the
suite's own `interactive_benchmarking.sh`; with `baseline` set, the same run with that backend
follows in the same call (same machine), and the record holds both and their ratio.
A check scenario runs one of bench/'s check scripts, which writes a JSON the record wraps.

Record names: `<gpu>x<gpus>_<scenario>` for training (`h200x4_ep4_qwen3-30b-a3b-proxy_fastops_mbs4`),
`<gpu>_<scenario>` for GPU checks (`h200_spec_check`), the scenario's own name for CPU checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from benchlib.core.errors import BenchError, did_you_mean

OUT_DIR = "{out_dir}"  # replaced, in a check's command, by the folder it writes its JSON into
PYTHON = "{python}"  # replaced by the interpreter running bench


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    model: str = ""
    gpus: int = 1  # 0: a CPU check
    knobs: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()  # extra Megatron arguments, passed last (they win)
    baseline: str | None = None  # backend of the same-call baseline run ("local": Megatron's local spec)
    baseline_knobs: dict[str, str] = field(default_factory=dict)  # knobs changed for the baseline run only
    peer_gbs: int | None = None  # run torchtitan (bench/peers/torchtitan.py) on the same shapes at this global batch
    check_command: tuple[str, ...] = ()  # a check: the script and its arguments
    check_output: str = ""  # the JSON the check writes into OUT_DIR

    @property
    def is_check(self) -> bool:
        return bool(self.check_command)

    def record_name(self, gpu_type: str) -> str:
        if self.is_check:
            return f"{gpu_type.lower()}_{self.name}" if self.gpus else self.name
        return f"{gpu_type.lower()}x{self.gpus}_{self.name}"


QWEN = "Qwen3-30B-A3B-Proxy"
DSV2 = "DeepSeek-V2-Lite-Proxy"
LOCAL_BASELINE_ITERS = {"TRAIN_ITERS": "10"}  # the local spec is 2-4x slower: fewer iterations suffice
# beside torchtitan: its data (uniform random ids, SyntheticTokens in the harness), not Megatron's
# learnable mock documents, so the losses compare and the routing sees the same kind of tokens
PEER_DATA = {"DATA": "random"}


def _scenarios() -> dict[str, Scenario]:
    items = [
        # --- training: one H200 -----------------------------------------------------------
        Scenario("qwen3-30b-a3b-proxy_fastops_mbs4",
                 "Qwen3-30B-A3B proxy on 1 GPU, runtime.conf's H200 defaults (MBS 4, GBS 32), native spec "
                 "with the fast ops; Megatron's local spec as the same-call baseline",
                 QWEN, 1, {"TRAIN_ITERS": "15"}, baseline="local", baseline_knobs=LOCAL_BASELINE_ITERS),
        Scenario("qwen3-30b-a3b-proxy_repeats5",
                 "Qwen3-30B-A3B proxy on 1 GPU, runtime.conf's H200 defaults (MBS 4, GBS 32), five launches in one "
                 "allocation (REPEATS=5, same seed): the run-to-run spread the suite's figures carry",
                 QWEN, 1, {"REPEATS": "5", "TRAIN_ITERS": "30"}),
        Scenario("qwen3-30b-a3b-proxy_vs_torchtitan_gbs4",
                 "Qwen3-30B-A3B proxy on 1 GPU at MBS 4, GBS 4 (no accumulation: the per-iteration overhead shows), "
                 "beside torchtitan 0.2.2 eager and compiled on the same shapes in the same sitting; both sides on "
                 "uniform random token ids (DATA=random, as torchtitan's synthetic loader), so the losses compare",
                 QWEN, 1, {"MBS": "4", "GBS": "4", "TRAIN_ITERS": "60", **PEER_DATA}, peer_gbs=4),
        Scenario("qwen3-30b-a3b-proxy_vs_torchtitan_gbs32",
                 "Qwen3-30B-A3B proxy on 1 GPU at MBS 4, GBS 32 (8 accumulation steps), beside torchtitan 0.2.2 "
                 "eager and compiled on the same shapes in the same sitting; both sides on uniform random token ids "
                 "(DATA=random, as torchtitan's synthetic loader), so the losses compare",
                 QWEN, 1, {"MBS": "4", "GBS": "32", "TRAIN_ITERS": "30", **PEER_DATA}, peer_gbs=32),
        Scenario("qwen3-30b-a3b-proxy_8l_mbs8_vs_torchtitan_gbs32",
                 "Qwen3-30B-A3B proxy with 8 layers at its best fitting MBS (8), GBS 32, beside torchtitan 0.2.2 "
                 "eager and compiled with 8 layers (bench/peers/peer_flavors.py) at its harness's local batch 4, "
                 "GBS 32, in the same sitting; both sides on uniform random token ids (DATA=random, as torchtitan's "
                 "synthetic loader), so the losses compare",
                 QWEN, 1, {"NUM_LAYERS": "8", "MBS": "8", "GBS": "32", "TRAIN_ITERS": "20", **PEER_DATA}, peer_gbs=32),
        Scenario("qwen3-30b-a3b-proxy_8l_mbs8",
                 "Qwen3-30B-A3B proxy with 8 layers at MBS 8 (the fastest layout that fits one H200; the memory "
                 "check must accept it without MEM_CHECK=0)",
                 QWEN, 1, {"NUM_LAYERS": "8", "MBS": "8", "GBS": "32", "TRAIN_ITERS": "20"}),
        Scenario("deepseek-v2-lite-proxy_fastops_mbs2",
                 "DeepSeek-V2-Lite proxy (MLA) on 1 GPU, native spec with the fast ops; no baseline: "
                 "Megatron's local spec cannot build MLA",
                 DSV2, 1, {"TRAIN_ITERS": "15"}),
        Scenario("qwen3-30b-a3b-proxy_loss_curve_lr5e-5",
                 "correctness: 50 iterations, native spec with the fast ops vs Megatron's local spec, same seed "
                 "and mock data, a gentle learning rate (no loss spike); the record compares the loss curves",
                 QWEN, 1, {"MBS": "2", "GBS": "8", "TRAIN_ITERS": "50"},
                 extra_args=("--lr", "5e-5", "--min-lr", "5e-6", "--seed", "1234"), baseline="local"),
        Scenario("qwen3-30b-a3b-proxy_profile_gbs4",
                 "where a step's GPU time goes: Qwen3-30B-A3B proxy on 1 GPU at MBS 4, GBS 4, torch.profiler over "
                 "steps 6-7 (PROFILE=torch); the record carries result.json's profile (GPU busy/idle per step, "
                 "kernel time by category, top kernels, host syncs)",
                 QWEN, 1, {"MBS": "4", "GBS": "4", "TRAIN_ITERS": "10", "PROFILE": "torch", "PROFILE_STEPS": "6:8",
                           "CALIBRATE": "0"}),
        Scenario("qwen3-30b-a3b-proxy_loss_curve_fast_vs_unfused",
                 "correctness: 50 iterations of the native spec with its fast paths (FAST_OPS, FAST_OPTIMIZER: the "
                 "Triton AdamW, fused grad accumulation) vs the same spec with neither, same seed and mock data, a "
                 "gentle learning rate; the record compares the loss curves",
                 QWEN, 1, {"MBS": "2", "GBS": "8", "TRAIN_ITERS": "50"},
                 extra_args=("--lr", "5e-5", "--min-lr", "5e-6", "--seed", "1234"), baseline="native",
                 baseline_knobs={"FAST_OPS": "0", "FAST_OPTIMIZER": "0", "CALIBRATE": "0"}),
        # --- training: 2 H200 -------------------------------------------------------------------
        Scenario("ep2_qwen3-30b-a3b-proxy_fastops_mbs4",
                 "Qwen3-30B-A3B proxy on 2 GPUs, EP=2, MBS 4 / GBS 64, native spec with the fast ops; local baseline",
                 QWEN, 2, {"EP": "2", "MBS": "4", "GBS": "64", "TRAIN_ITERS": "15"},
                 baseline="local", baseline_knobs=LOCAL_BASELINE_ITERS),
        Scenario("ep2_qwen3-30b-a3b-proxy_nofastops_mbs4",
                 "the same without the fast ops (FAST_OPS=0): their share at EP=2",
                 QWEN, 2, {"EP": "2", "MBS": "4", "GBS": "64", "TRAIN_ITERS": "15", "FAST_OPS": "0"},
                 baseline="local", baseline_knobs={**LOCAL_BASELINE_ITERS, "FAST_OPS": "1"}),
        # --- training: 4 H200 -------------------------------------------------------------------
        Scenario("ep4_qwen3-30b-a3b-proxy_fastops_mbs4",
                 "Qwen3-30B-A3B proxy on 4 GPUs, EP=4, MBS 4 / GBS 64, native spec with the fast ops; local baseline",
                 QWEN, 4, {"EP": "4", "MBS": "4", "GBS": "64", "TRAIN_ITERS": "20"},
                 baseline="local", baseline_knobs=LOCAL_BASELINE_ITERS),
        Scenario("ep4_qwen3-30b-a3b-proxy_fastops_a2a_mbs4",
                 "the same with A2A_OVERLAP=1 (Megatron's combined 1F1B schedule); the local baseline runs without "
                 "it (the local spec refuses it)",
                 QWEN, 4, {"EP": "4", "MBS": "4", "GBS": "64", "TRAIN_ITERS": "20", "A2A_OVERLAP": "1"},
                 baseline="local", baseline_knobs={**LOCAL_BASELINE_ITERS, "A2A_OVERLAP": "0"}),
        Scenario("pp2_ep2_qwen3-30b-a3b-proxy_fastops_mbs4",
                 "pipeline check on 4 GPUs: PP=2 EP=2 (4 layers, 2 per stage: the bubble dominates; shows PP>1 trains)",
                 QWEN, 4, {"PP": "2", "EP": "2", "MBS": "4", "GBS": "64", "TRAIN_ITERS": "12"}),
        Scenario("pp2_vpp2_ep2_qwen3-30b-a3b-proxy_fastops_a2a_mbs4",
                 "pipeline check on 4 GPUs: PP=2 VPP=2 EP=2 with A2A_OVERLAP=1 (one layer per virtual stage)",
                 QWEN, 4, {"PP": "2", "VPP": "2", "EP": "2", "MBS": "4", "GBS": "64", "TRAIN_ITERS": "12",
                           "A2A_OVERLAP": "1"}),
        Scenario("pp2_ep2_deepseek-v2-lite-proxy_fastops_mbs2",
                 "pipeline check on 4 GPUs with MLA: DeepSeek-V2-Lite proxy, PP=2 EP=2",
                 DSV2, 4, {"PP": "2", "EP": "2", "TRAIN_ITERS": "12"}),
        # --- checks -------------------------------------------------------------------------------
        Scenario("spec_check", "the native spec's grouped GEMM and SDPA attention in bf16 vs float64, forward "
                 "and gradients, and grouped-vs-loop expert timings (bench/gpu_spec_check.py)",
                 gpus=1, check_command=(PYTHON, "bench/gpu_spec_check.py", "--out", OUT_DIR),
                 check_output="spec_check.json"),
        Scenario("fast_ops_check", "the fast ops' Triton kernels vs Megatron's functions on the GPU, with "
                 "timings (bench/gpu_fast_ops_check.py)",
                 gpus=1, check_command=(PYTHON, "bench/gpu_fast_ops_check.py", OUT_DIR + "/fast_ops_check.json"),
                 check_output="fast_ops_check.json"),
        Scenario("adam_check", "the AdamW kernel (benchlib/megatron/fast_adam.py) against torch's AdamW on the GPU, and "
                 "its time on the Qwen3-30B-A3B proxy's 3.1 B parameters against torch's fused AdamW plus the "
                 "bf16 copy (bench/gpu_adam_check.py)",
                 gpus=1, check_command=(PYTHON, "bench/gpu_adam_check.py", OUT_DIR + "/adam_check.json"),
                 check_output="adam_check.json"),
        Scenario("convert_mla_parity", "MLA checkpoint conversion: Hugging Face vs Megatron logits on the GPU "
                 "(bench/gpu_convert_mla_parity.py)",
                 gpus=1, check_command=(PYTHON, "bench/gpu_convert_mla_parity.py", OUT_DIR),
                 check_output="convert_mla_parity.json"),
        Scenario("parse_speed", "log parsing throughput on one CPU core, 64-rank log (bench/parse_speed.py)",
                 gpus=0, check_command=(PYTHON, "bench/parse_speed.py", "--repeat", "5", "--out",
                                        OUT_DIR + "/parse_speed.json"),
                 check_output="parse_speed.json"),
    ]
    return {s.name: s for s in items}


SCENARIOS: dict[str, Scenario] = _scenarios()


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise BenchError(f"no scenario named {name!r}{did_you_mean(name, list(SCENARIOS))}",
                         hint="`python -m bench list` shows every scenario") from None
