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
batches = [(torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))) for _ in range(3 * world)][rank::world]
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
                                                                     check_for_nan_in_grad=True), model)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.1, bf16=True,
                                                 use_distributed_optimizer=True, clip_grad=clip), [ddp])
    losses, norms = [], []
    for tokens, labels in batches:
        ddp.zero_grad_buffer()
        opt.zero_grad()
        loss = ddp(tokens, positions, None, labels=labels).float().mean()
        loss.backward()
        ddp.finish_grad_sync()  # reduce-scatter over the data-parallel ranks (gloo)
        ok, norm, _ = opt.step()
        assert ok
        losses.append(loss.item())
        norms.append(float(norm))
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
    (ddp(tokens, positions, None, labels=labels).float().mean() * float("nan")).backward()
    try:
        ddp.finish_grad_sync()
        nan_error = None
    except RuntimeError as e:
        nan_error = str(e).split("message=")[-1]
    return {"losses": losses, "norms": norms, "main": main, "model": model_params, "fused": fused, "parts": len(parts),
            "kinds": kinds, "nan_error": nan_error}

megatron_own = train()
patched = fast_optimizer.install()
counted(clip_grads, "l2_norm_impl")
counted(clip_grads, "multi_tensor_scale_impl")
counted(optimizer_module, "clip_grad_by_total_norm_fp32")
counted(distrib_optimizer.DistributedOptimizer, "_copy_main_params_to_model_params")
from benchlib.megatron import fast_adam, grad_accumulate
counted(fast_adam.TritonAdamW, "_kernel_step")
counted(fast_optimizer, "_validate_bucket_norms")
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


@pytest.mark.parametrize("kernel", ["triton", "torch-foreach"])
@pytest.mark.parametrize("ranks,ep", [(1, 1), (2, 2)], ids=["1rank", "2ranks-ep2"])
def test_fast_optimizer_steps_match_megatrons_own_with_clipping(tmp_path, ranks, ep, kernel):
    """One rank, and two ranks with EP=2 (dense parameters data-parallel over both, experts
    split): the same stand-ins, each on its rank's shard, give Megatron's steps. `triton`: the
    AdamW kernel (fast_adam.py) under Triton's CPU interpreter, as it runs on a GPU, writing the
    bf16 params itself from the second step on; `torch-foreach`: the same optimizer class on CPU
    tensors without the interpreter, which hands the step to torch's own (foreach) AdamW."""
    env = {"BENCH_KERNELS_ON_CPU": "1"} if kernel == "triton" else {"BENCH_KERNELS_ON_CPU": "0"}
    # the grad norm is ~2-3: clipping scales every step
    out = run_child(0.05, tmp_path, ranks=ranks, ep=ep, **env)
    own, fast = out["megatron"], out["fast"]
    assert "megatron.core.optimizer:Adam" in out["patched"]
    assert own["kinds"] == ["AdamW"] * own["parts"] and fast["kinds"] == ["TritonAdamW"] * fast["parts"]
    # Megatron's per-bucket NaN check ran (deferred to the end of the grad sync, not per bucket),
    # and stops a NaN step with Megatron's own message
    assert out["calls"]["_validate_bucket_norms"] >= 4 * fast["parts"]
    assert own["nan_error"] and "found NaN in local grad norm for bucket #0" in own["nan_error"]
    assert fast["nan_error"] == own["nan_error"]
    if kernel == "triton":
        assert out["calls"]["accumulate_"] > 0  # main_grad += grad in the kernel
        assert out["calls"]["_kernel_step"] >= 3 * fast["parts"]
        # step 1 registers the bf16 destinations (and copies); steps 2 and 3 wrote them in the kernel
        assert out["calls"]["copies_skipped"] == 2 * fast["parts"]
    else:
        assert out["calls"].get("_kernel_step", 0) == 0 and out["calls"]["copies_skipped"] == 0
        assert out["calls"].get("accumulate_", 0) == 0
    # the stand-ins really ran: a norm per step per part, a clip per step per part (folded into
    # the fused step: no scaling pass of its own), one copy per step per part
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
    torch's own `add_` bit for bit: fp32 += bf16 / fp16 / fp32, sizes around the block."""
    from benchlib.megatron import grad_accumulate

    monkeypatch.setenv("BENCH_KERNELS_ON_CPU", "1")
    torch.manual_seed(0)
    for n in (1, 2047, 2048, 2049, 5000):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            acc = torch.randn(n)
            grad = torch.randn(n).to(dtype)
            expected = acc.clone().add_(grad)
            assert grad_accumulate.kernel_applies(acc, grad)
            grad_accumulate.accumulate_(acc, grad)
            assert torch.equal(acc, expected), (n, dtype)
    # what the kernel does not take goes to add_ (a strided view)
    acc = torch.randn(8, 4)
    grad = torch.randn(4, 8).t()
    assert not grad_accumulate.kernel_applies(acc, grad)
    expected = acc.clone().add_(grad)
    grad_accumulate.accumulate_(acc, grad)
    assert torch.equal(acc, expected)
