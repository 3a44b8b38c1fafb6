"""benchlib/megatron/fast_optimizer.py against Megatron-Core's own optimizer (the torch fallback
it builds without TE/Apex): a tiny native-spec MoE GPTModel wrapped in Megatron's DDP, Megatron's
`get_megatron_optimizer` (distributed optimizer, bf16, fp32 main params, gradient clipping
active), three steps each way from the same weights and batches, on one rank and on two
(EP=2: dense parameters data-parallel over both ranks, experts split).

Runs Megatron in child processes (torch.distributed.run; its global state and gloo groups stay there).
Faked: the GPU. Megatron's optimizer makes its scalars with device='cuda' and checks parameter
types by the strings 'torch.cuda.*Tensor'; the child answers both for CPU tensors, and gives DDP's
grad reduction a stand-in for the current CUDA stream (it only waits on CUDA-graph events there).
Several ranks are real processes on gloo.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.megatron, pytest.mark.slow]
torch = pytest.importorskip("torch")

CHILD = r"""
import json, sys, types
import torch

torch.cuda.current_device = lambda: "cpu"
_type = torch.Tensor.type
def _as_gpu_type(self, *args, **kwargs):
    name = _type(self, *args, **kwargs)
    return name.replace("torch.", "torch.cuda.", 1) if not (args or kwargs) and self.device.type == "cpu" else name
torch.Tensor.type = _as_gpu_type

class CpuTorch(types.ModuleType):
    '''torch, with device='cuda' in the factory calls Megatron's optimizer makes read as the CPU'''
    def __getattr__(self, name):
        return getattr(torch, name)
    def _factory(name):
        def make(self, *args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return getattr(torch, name)(*args, **kwargs)
        return make
    tensor, zeros, empty, ones = _factory("tensor"), _factory("zeros"), _factory("empty"), _factory("ones")

import os
# DDP's grad reduction asks for the current CUDA stream (to wait on CUDA-graph events only)
torch.cuda.current_stream = lambda *a, **k: types.SimpleNamespace(wait_event=lambda e: None, wait_stream=lambda s: None)
torch.distributed.init_process_group("gloo")
from megatron.core import parallel_state as ps
ps.initialize_model_parallel(1, 1, expert_model_parallel_size=int(os.environ["EP"]))
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
import megatron.core.optimizer.clip_grads as clip_grads
import megatron.core.optimizer.distrib_optimizer as distrib_optimizer
import megatron.core.optimizer.optimizer as optimizer_module
import megatron.core.utils as mcore_utils
for module in (clip_grads, distrib_optimizer, optimizer_module, mcore_utils):
    module.torch = CpuTorch("torch")

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from benchlib.megatron import fast_optimizer
from tiny_moe import tiny_moe_config
from benchlib.megatron.spec.layer_spec import build_native_spec

cfg = tiny_moe_config(bf16=True, params_dtype=torch.bfloat16)
clip = float(sys.argv[1])
torch.manual_seed(3)
batches = [(torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))) for _ in range(6 * world)][rank::world]
micro_batches = int(os.environ.get("MICRO_BATCHES", "1"))
overlap = os.environ.get("OVERLAP", "0") == "1"
positions = torch.arange(16).unsqueeze(0).expand(2, -1)
calls = {}

def counted(owner, name):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return inner(*args, **kwargs)
    setattr(owner, name, wrapper)

def train():
    torch.manual_seed(7)
    model = GPTModel(cfg, build_native_spec(cfg), vocab_size=300, max_sequence_length=16,
                     position_embedding_type="rope").bfloat16()
    ddp = DistributedDataParallel(cfg, DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True,
                                                                     check_for_nan_in_grad=True, overlap_grad_reduce=overlap,
                                                                     bucket_size=4000 if overlap else None), model)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.1, bf16=True,
                                                 use_distributed_optimizer=True, clip_grad=clip), [ddp])
    losses, norms, left_at_reset = [], [], []
    for step in range(3):
        ddp.zero_grad_buffer()
        opt.zero_grad()
        # what zero_grad_buffer left in the gradient buffers (Megatron zeroes them; the stand-ins
        # leave last step's values, which the first write of this step overwrites)
        left_at_reset.append(any(float(b.grad_data.abs().sum()) > 0 for b in ddp.buffers + ddp.expert_parallel_buffers))
        for i in range(micro_batches):
            tokens, labels = batches[step * micro_batches + i]
            loss = ddp(tokens, positions, None, labels=labels).float().mean()
            if i < micro_batches - 1:
                with ddp.no_sync():
                    loss.backward()
            else:
                loss.backward()
            losses.append(loss.item())
        ddp.finish_grad_sync()  # reduce-scatter over the data-parallel ranks (gloo)
        ok, norm, _ = opt.step()
        assert ok
        norms.append(float(norm))
    # a step in which only the word embeddings get a gradient: every other main_grad must read
    # zero, as after Megatron's zeroing, not hold the last step's values (with overlap_grad_reduce
    # Megatron itself requires every parameter's gradient in every step)
    stale, embedding_grad = None, None
    if not overlap:
        ddp.zero_grad_buffer()
        opt.zero_grad()
        tokens, labels = batches[0]
        model.embedding(input_ids=tokens, position_ids=positions).float().sum().backward()
        ddp.finish_grad_sync()
        stale = sorted(n for n, p in model.named_parameters()
                       if "word_embeddings" not in n and float(p.main_grad.abs().sum()) != 0)
        embedding_grad = float(model.embedding.word_embeddings.weight.main_grad.abs().sum())
    fused_norms = sum(getattr(g, "_benchlib_norms").fused_checks for g in ddp.bucket_groups + ddp.expert_parallel_bucket_groups
                      if hasattr(g, "_benchlib_norms"))
    parts = opt.chained_optimizers if hasattr(opt, "chained_optimizers") else [opt]
    main = [p.detach().float().reshape(-1).tolist() for part in parts for group in part.shard_fp32_from_float16_groups for p in group]
    model_params = {n: p.detach().float().reshape(-1).tolist() for n, p in model.named_parameters()}
    fused = [part.optimizer.defaults.get("fused") for part in parts]
    kinds = [type(part.optimizer).__name__ for part in parts]
    assert all(getattr(part.optimizer, "grad_scale", None) is None and getattr(part.optimizer, "clip_coeff", None) is None
               for part in parts)  # no clip outlives its step
    # a NaN gradient: Megatron's per-bucket check must stop the step, with its own message
    ddp.zero_grad_buffer()
    opt.zero_grad()
    tokens, labels = batches[0]
    try:  # with overlap_grad_reduce, Megatron's own check runs (and stops) inside the backward
        (ddp(tokens, positions, None, labels=labels).float().mean() * float("nan")).backward()
        ddp.finish_grad_sync()
        nan_error = None
    except RuntimeError as e:
        nan_error = str(e).split("message=")[-1]
    return {"losses": losses, "norms": norms, "main": main, "model": model_params, "fused": fused, "parts": len(parts),
            "kinds": kinds, "nan_error": nan_error, "left_at_reset": left_at_reset, "stale": stale,
            "embedding_grad": embedding_grad, "fused_norms": fused_norms}

megatron_own = train()
patched = fast_optimizer.install()
counted(clip_grads, "l2_norm_impl")
counted(clip_grads, "multi_tensor_scale_impl")
counted(optimizer_module, "clip_grad_by_total_norm_fp32")
counted(distrib_optimizer.DistributedOptimizer, "_copy_main_params_to_model_params")
from benchlib.megatron import fast_adam, fast_grads, grad_accumulate
counted(fast_adam.TritonAdamW, "_kernel_step")
counted(fast_grads, "_validate_bucket_norms")
counted(fast_grads, "_validate_all")
counted(grad_accumulate, "accumulate_")
written = []
take_written = fast_adam.TritonAdamW.take_written
def recording_take_written(self, *args):
    written.append(take_written(self, *args))
    return written[-1]
fast_adam.TritonAdamW.take_written = recording_take_written
fast = train()
calls["copies_skipped"] = sum(written)
if rank == 0:
    print("RESULT " + json.dumps({"megatron": megatron_own, "fast": fast, "patched": patched, "calls": calls}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(clip: float, tmp_path: Path, ranks: int = 1, ep: int = 1, **env_extra: str) -> dict:
    """The child on `ranks` gloo processes (torch.distributed.run), EP=`ep`."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, EP=str(ep), OMP_NUM_THREADS="1", **env_extra,
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    proc = subprocess.run([*launcher, str(script), str(clip)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def max_rel(a: list[float], b: list[float]) -> float:
    ta, tb = torch.tensor(a), torch.tensor(b)
    return float((ta - tb).abs().max() / tb.abs().max().clamp_min(1e-12))


CASES = {  # id: (ranks, EP, micro-batches per step, overlap_grad_reduce)
    "1rank": (1, 1, 1, False),
    "2ranks-ep2-2microbatches": (2, 2, 2, False),
    "1rank-overlap-2microbatches": (1, 1, 2, True),
}


@pytest.mark.parametrize("kernel", ["triton", "torch-foreach"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_optimizer_steps_match_megatrons_own_with_clipping(tmp_path, case, kernel):
    """One rank, and two ranks with EP=2 (dense parameters data-parallel over both, experts
    split), and one rank with Megatron's overlapped grad reduce (the NaN check runs from the
    backward hook): the same stand-ins, each on its rank's shard, give Megatron's steps, one or
    two micro-batches per step. `triton`: the AdamW kernel (fast_adam.py) and the gradient
    kernel (grad_accumulate.py) under Triton's CPU interpreter, as they run on a GPU;
    `torch-foreach`: the same classes on CPU tensors without the interpreter, which hand the
    step to torch's own (foreach) AdamW and the gradients to Megatron's `add_`."""
    ranks, ep, micro_batches, overlap = CASES[case]
    if overlap and kernel == "torch-foreach":
        pytest.skip("the torch fallback path is the same with or without overlap; covered by the other cases")
    env = {"BENCH_KERNELS_ON_CPU": "1"} if kernel == "triton" else {"BENCH_KERNELS_ON_CPU": "0"}
    env.update(MICRO_BATCHES=str(micro_batches), OVERLAP="1" if overlap else "0")
    # the grad norm is ~2-3: clipping scales every step
    out = run_child(0.05, tmp_path, ranks=ranks, ep=ep, **env)
    own, fast = out["megatron"], out["fast"]
    assert "megatron.core.optimizer:Adam" in out["patched"]
    assert own["kinds"] == ["AdamW"] * own["parts"] and fast["kinds"] == ["TritonAdamW"] * fast["parts"]
    # Megatron's per-bucket NaN check ran, judged once per grad sync (not per bucket), and stops a
    # NaN step with Megatron's own message
    syncs = 4 if overlap else 5  # 3 steps (+ the embeddings-only step) + the NaN step
    assert out["calls"]["_validate_all"] == syncs
    assert out["calls"]["_validate_bucket_norms"] >= syncs
    assert own["nan_error"] and "found NaN in local grad norm for bucket #0" in own["nan_error"]
    assert fast["nan_error"] == own["nan_error"]
    # Megatron zeroes the gradient buffers at every step; the stand-ins leave them (the first write
    # of a step overwrites), and a parameter without a gradient still reads zero
    assert own["left_at_reset"] == [False, False, False]
    assert fast["left_at_reset"] == [False, True, True]
    if not overlap:
        assert own["stale"] == [] and fast["stale"] == []
        assert fast["embedding_grad"] == own["embedding_grad"] > 0
    if kernel == "triton":
        assert out["calls"]["accumulate_"] > 0  # main_grad = / += grad in the kernel
        assert fast["fused_norms"] > 0  # bucket norms from the kernel's squares
        assert out["calls"]["_kernel_step"] >= 3 * fast["parts"]
        # step 1 registers the bf16 destinations (and copies); steps 2 and 3 wrote them in the kernel
        assert out["calls"]["copies_skipped"] == 2 * fast["parts"]
    else:
        assert out["calls"].get("_kernel_step", 0) == 0 and out["calls"]["copies_skipped"] == 0
        assert out["calls"].get("accumulate_", 0) == 0 and fast["fused_norms"] == 0
    assert out["calls"]["l2_norm_impl"] >= 3 * fast["parts"]
    assert out["calls"]["clip_grad_by_total_norm_fp32"] == 3 * fast["parts"]
    assert out["calls"].get("multi_tensor_scale_impl", 0) == 0
    assert out["calls"]["_copy_main_params_to_model_params"] == 3 * fast["parts"]
    assert all(n > 0.05 for n in own["norms"])
    assert own["losses"][0] == fast["losses"][0]  # same weights, same batch
    for a, b in zip(fast["losses"], own["losses"]):
        assert abs(a - b) <= 1e-4 * abs(b)
    for a, b in zip(fast["norms"], own["norms"]):
        assert abs(a - b) <= 1e-5 * abs(b)
    assert len(fast["main"]) == len(own["main"])
    for a, b in zip(fast["main"], own["main"]):
        assert max_rel(a, b) < 1e-5  # fp32 main params: fused vs per-tensor AdamW differ in fp32 rounding
    for name, b in own["model"].items():
        # bf16 model params are the main params rounded: at most one bf16 step apart
        assert max_rel(fast["model"][name], b) <= 2 ** -7, name


def test_fast_optimizer_knob_off_leaves_megatrons_optimizer(tmp_path):
    out = run_child(0.05, tmp_path, FAST_OPTIMIZER="0")
    assert out["patched"] == []
    assert out["fast"]["fused"] == [None] * out["fast"]["parts"]
    assert out["fast"]["losses"] == out["megatron"]["losses"]
    assert out["fast"]["main"] == out["megatron"]["main"]  # the very same code: bit for bit


def test_multi_tensor_stand_ins_match_megatrons_local_fallbacks():
    """The foreach l2-norm and scale against megatron.core.utils' per-tensor versions, on fp32
    and bf16 tensors of uneven sizes (Megatron's l2-norm asks for a 'cuda' result: read as CPU)."""
    from megatron.core import utils as mcore_utils

    from benchlib.megatron import fast_optimizer

    torch.manual_seed(0)
    tensors = [torch.randn(n) for n in (1, 7, 1000, 4096)]
    own = torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors]))
    norm, per_tensor = fast_optimizer.foreach_l2_norm(65536, torch.zeros(1, dtype=torch.int), [tensors], False)
    assert per_tensor is None and norm.shape == (1,) and norm.dtype == torch.float32
    assert torch.allclose(norm, own.reshape(1), rtol=1e-6)
    assert float(fast_optimizer.foreach_l2_norm(65536, torch.zeros(1), [[]], False)[0]) == 0.0

    for dtype in (torch.float32, torch.bfloat16):
        src = [t.to(dtype) for t in tensors]
        expected = [torch.empty_like(t) for t in src]
        mcore_utils.local_multi_tensor_scale(65536, None, [src, expected], 0.3)
        got = [torch.empty_like(t) for t in src]
        fast_optimizer.foreach_scale(65536, None, [src, got], 0.3)
        assert all(torch.equal(g, e) for g, e in zip(got, expected))
        in_place = [t.clone() for t in src]
        fast_optimizer.foreach_scale(65536, None, [in_place, in_place], 0.3)
        assert all(torch.equal(g, e) for g, e in zip(in_place, expected))
    # the main -> model copy casts fp32 to bf16 exactly as copy_ does
    main = [t.clone() for t in tensors]
    model = [torch.empty(t.shape, dtype=torch.bfloat16) for t in tensors]
    fast_optimizer.multi_tensor_copy_this_to_that(main, model)
    assert all(torch.equal(m, t.to(torch.bfloat16)) for m, t in zip(model, tensors))


def test_driver_installs_the_stand_ins_under_the_knob(monkeypatch, capsys):
    """What a rank does before Megatron's pretrain(): FAST_OPTIMIZER=1 patches Megatron's optimizer
    builder (this machine has neither TE nor Apex, as the native backend's GPU machine), 0 leaves it."""
    import megatron.core.optimizer as optimizer_pkg
    from megatron.core.optimizer import clip_grads

    from benchlib.megatron import fast_optimizer
    from benchlib.megatron.driver import train

    original_l2 = clip_grads.l2_norm_impl
    monkeypatch.setenv("RANK", "0")
    try:
        monkeypatch.setenv("FAST_OPTIMIZER", "0")
        train._install_fast_optimizer()
        assert fast_optimizer.installed() == [] and optimizer_pkg.USING_PYTORCH_OPTIMIZER is True
        monkeypatch.setenv("FAST_OPTIMIZER", "1")
        train._install_fast_optimizer()
        assert optimizer_pkg.Adam is fast_optimizer.fused_adam and optimizer_pkg.USING_PYTORCH_OPTIMIZER is False
        assert clip_grads.l2_norm_impl is fast_optimizer.foreach_l2_norm
        assert "fast optimizer stand-ins for" in capsys.readouterr().out
    finally:
        fast_optimizer.uninstall()
    assert optimizer_pkg.USING_PYTORCH_OPTIMIZER is True and clip_grads.l2_norm_impl is original_l2


def test_grad_accumulate_kernel_is_torchs_add(monkeypatch):
    """main_grad += grad through grad_accumulate's Triton kernel (Triton's CPU interpreter) gives
    torch's own `add_` bit for bit, and the first write (`overwrite`) torch's `copy_`: fp32 +=
    bf16 / fp16 / fp32, sizes around the block. The squares it adds for the NaN check sum to the
    squared 2-norm of what it wrote; a NaN or Inf written shows in them."""
    from benchlib.megatron import grad_accumulate

    monkeypatch.setenv("BENCH_KERNELS_ON_CPU", "1")
    torch.manual_seed(0)
    for n in (1, 2047, 2048, 2049, 5000):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            acc = torch.randn(n)
            grad = torch.randn(n).to(dtype)
            expected = acc.clone().add_(grad)
            assert grad_accumulate.kernel_applies(acc, grad)
            sumsq = grad_accumulate.new_sumsq(acc.device)[0]
            grad_accumulate.accumulate_(acc, grad, sumsq=sumsq)
            assert torch.equal(acc, expected), (n, dtype)
            assert torch.allclose(sumsq.sum(), expected.square().sum(), rtol=1e-5)
            stale = torch.randn(n)
            grad_accumulate.accumulate_(stale, grad, overwrite=True)
            assert torch.equal(stale, torch.zeros(n).copy_(grad)), (n, dtype)
    for bad in (float("nan"), float("inf")):
        acc, grad = torch.zeros(5000), torch.randn(5000).to(torch.bfloat16)
        grad[4321] = bad
        sumsq = grad_accumulate.new_sumsq(acc.device)[0]
        grad_accumulate.accumulate_(acc, grad, overwrite=True, sumsq=sumsq)
        total = sumsq.sum()
        assert (torch.isnan(total) if bad != bad else torch.isinf(total))
    # what the kernel does not take goes to add_ / copy_ (a strided view)
    acc = torch.randn(8, 4)
    grad = torch.randn(4, 8).t()
    assert not grad_accumulate.kernel_applies(acc, grad)
    expected = acc.clone().add_(grad)
    sumsq = grad_accumulate.new_sumsq(acc.device)[0]
    grad_accumulate.accumulate_(acc, grad, sumsq=sumsq)
    assert torch.equal(acc, expected)
    assert torch.allclose(sumsq.sum(), expected.square().sum())
    grad_accumulate.accumulate_(acc, grad, overwrite=True)
    assert torch.equal(acc, grad.contiguous())


def test_step_stats_over_one_rank_are_the_value_itself(monkeypatch):
    """train_step's reductions over a model-parallel group of one rank: the value with Megatron's
    fp32 rounding, None for a rank without the stat, `is True` for the flag; no device round trip.
    Over a larger group Megatron's own reduction runs."""
    import types

    import numpy

    from benchlib.megatron import step_stats

    one, two = types.SimpleNamespace(size=lambda: 1), types.SimpleNamespace(size=lambda: 2)
    assert step_stats.reduce_max_stat_across_model_parallel_group(0.1, group=one) == float(numpy.float32(0.1)) != 0.1
    assert step_stats.reduce_max_stat_across_model_parallel_group(None, group=one) is None
    assert step_stats.logical_and_across_model_parallel_group(True, group=one) is True
    assert step_stats.logical_and_across_model_parallel_group(False, group=one) is False
    assert step_stats.logical_and_across_model_parallel_group(1, group=one) is False  # Megatron's `input is True`
    seen = []
    monkeypatch.setattr("megatron.training.utils.common_utils.reduce_max_stat_across_model_parallel_group",
                        lambda stat, group=None: seen.append(("max", stat, group)) or 7.0)
    monkeypatch.setattr("megatron.training.utils.common_utils.logical_and_across_model_parallel_group",
                        lambda value, group=None: seen.append(("and", value, group)) or False)
    assert step_stats.reduce_max_stat_across_model_parallel_group(0.1, group=two) == 7.0
    assert step_stats.logical_and_across_model_parallel_group(True, group=two) is False
    assert seen == [("max", 0.1, two), ("and", True, two)]


def test_rerun_reduce_any_over_a_world_of_one(monkeypatch):
    """The rerun state machine's 'does any rank want a rerun' over a world of one process: the
    value itself (Megatron's int32 tensor > 0), a tuple for a list; Megatron's own over more."""
    import types

    from benchlib.megatron import step_stats

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 1)
    assert step_stats.reduce_any(None, False) is False and step_stats.reduce_any(None, True) is True
    assert step_stats.reduce_any(None, [True, False, True]) == (True, False, True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    seen = []
    monkeypatch.setattr("megatron.core.rerun_state_machine.RerunStateMachine._reduce_any",
                        lambda self, value: seen.append(value) or "megatron's")
    assert step_stats.reduce_any(types.SimpleNamespace(), [False]) == "megatron's" and seen == [[False]]
