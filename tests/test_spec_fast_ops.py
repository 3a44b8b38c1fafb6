"""The native spec's fast stand-ins (benchlib/megatron/spec/fast_ops.py) against Megatron's own functions.

The Triton kernels run on the CPU under Triton's interpreter (TRITON_INTERPRET=1 is set by
conftest.py before triton is imported; the `interpreted` fixture sends CPU tensors to the kernels). Megatron's originals run on the CPU as they are. Compared: per-token losses and the
logits' gradient (cross-entropy); permuted tokens, probs and indices, the restored tokens and
both gradients (MoE permutation, fp32 and bf16); the identity chunk sort; rotary embedding
(rotate-half, partial rotary dim, MLA's layout and mscale, strided input); and a whole MoE
GPTModel's loss and gradients with the stand-ins installed vs without. The same kernels on an
H200 are checked by bench/gpu_fast_ops_check.py (record: bench/results/h200_fast_ops_check.json).
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.megatron

torch = pytest.importorskip("torch")


@pytest.fixture
def interpreted(monkeypatch):
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does it)")
    monkeypatch.setenv("BENCH_KERNELS_ON_CPU", "1")


@pytest.fixture
def fast_ops():
    from benchlib.megatron.spec import fast_ops as ops

    ops.uninstall()
    yield ops
    ops.uninstall()


def rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def megatron_cross_entropy():
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    return vocab_parallel_cross_entropy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cross_entropy_matches_megatron_loss_and_gradient(mpu, interpreted, fast_ops, dtype):
    torch.manual_seed(0)
    s, b, vocab = 5, 3, 3000  # vocab not a multiple of the kernel's block
    logits = (torch.randn(s, b, vocab) * 4).to(dtype)
    target = torch.randint(0, vocab, (s, b))
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss_mine = fast_ops.vocab_parallel_cross_entropy(mine, target)
    loss_theirs = megatron_cross_entropy()(theirs, target)
    assert loss_mine.dtype == torch.float32 and loss_mine.shape == (s, b)
    assert torch.allclose(loss_mine, loss_theirs, rtol=1e-5, atol=1e-5)
    g = torch.rand(s, b)
    (loss_mine * g).sum().backward()
    (loss_theirs * g).sum().backward()
    assert mine.grad.dtype == dtype
    # same fp32 arithmetic, one rounding to the logits' dtype: at most one unit in the last place
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 1e-6
    assert torch.allclose(mine.grad.float(), theirs.grad.float(), rtol=ulp, atol=ulp * 1e-2)


def test_cross_entropy_target_outside_vocab_is_lse_only(interpreted, fast_ops):
    from benchlib.megatron.spec.kernels.cross_entropy import cross_entropy

    logits = torch.randn(4, 50)
    target = torch.tensor([3, 60, -1, 49])
    loss = cross_entropy(logits, target)
    lse = torch.logsumexp(logits, -1)
    assert torch.allclose(loss, torch.stack([lse[0] - logits[0, 3], lse[1], lse[2], lse[3] - logits[3, 49]]), atol=1e-5)


def test_cross_entropy_falls_back_to_megatron_for_tp_or_label_smoothing(mpu, interpreted, fast_ops, monkeypatch):
    calls = []
    monkeypatch.setattr(fast_ops, "_original", lambda module, name: lambda *a, **k: calls.append(name) or "megatron")
    logits, target = torch.randn(2, 1, 10), torch.zeros(2, 1, dtype=torch.long)
    two_ranks = type("G", (), {"size": lambda self: 2})()
    assert fast_ops.vocab_parallel_cross_entropy(logits, target, tp_group=two_ranks) == "megatron"
    assert fast_ops.vocab_parallel_cross_entropy(logits, target, label_smoothing=0.1) == "megatron"
    assert fast_ops.fused_vocab_parallel_cross_entropy(logits, target, two_ranks) == "megatron"
    assert calls == ["vocab_parallel_cross_entropy", "vocab_parallel_cross_entropy", "fused_vocab_parallel_cross_entropy"]


def routing(num_tokens: int, num_experts: int, topk: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(num_tokens, num_experts, generator=g)
    top = scores.topk(topk, dim=1).indices
    routing_map = torch.zeros(num_tokens, num_experts, dtype=torch.bool).scatter_(1, top, True)
    probs = (scores * routing_map).softmax(-1) * routing_map
    return routing_map, probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_permute_and_unpermute_match_megatron_with_gradients(interpreted, fast_ops, dtype):
    from megatron.core.transformer.moe import moe_utils

    T, E, K, H = 13, 8, 3, 40
    routing_map, probs = routing(T, E, K, seed=1)
    torch.manual_seed(2)
    tokens = torch.randn(T, H).to(dtype)
    mine_in, theirs_in = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    mine = fast_ops.permute(mine_in, routing_map, probs=probs, num_out_tokens=T * K)
    theirs = moe_utils.permute(theirs_in, routing_map, probs=probs, num_out_tokens=T * K)
    assert torch.equal(mine[0], theirs[0])  # same rows in the same (expert-major) order
    assert torch.equal(mine[1], theirs[1])  # permuted probs
    assert torch.equal(mine[2], theirs[2])  # sorted indices
    # experts' stand-in: scale each routed copy, then restore token order
    scale = torch.rand(T * K, 1).to(dtype)
    out_mine = fast_ops.unpermute(mine[0] * scale, mine[2], restore_shape=tokens.shape, routing_map=routing_map)
    out_theirs = moe_utils.unpermute(theirs[0] * scale, theirs[2], restore_shape=tokens.shape, routing_map=routing_map)
    tol = 1e-6 if dtype == torch.float32 else 2e-2  # Megatron sums the k copies in bf16, here in fp32
    assert out_mine.dtype == dtype and rel(out_mine, out_theirs) < tol
    grad = torch.randn(T, H).to(dtype)
    out_mine.backward(grad)
    out_theirs.backward(grad)
    assert rel(mine_in.grad, theirs_in.grad) < tol


def test_uneven_copies_per_token_match_megatron(interpreted, fast_ops):
    """An all-gather dispatcher's local map (or token dropping): tokens with 0, 1 or 3 copies."""
    from megatron.core.transformer.moe import moe_utils

    routing_map = torch.tensor([[1, 1, 1], [0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    n_out = int(routing_map.sum())
    tokens = torch.randn(5, 7)
    mine_in, theirs_in = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    mine = fast_ops.permute(mine_in, routing_map, num_out_tokens=n_out)
    theirs = moe_utils.permute(theirs_in, routing_map, num_out_tokens=n_out)
    assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[2], theirs[2])
    out_mine = fast_ops.unpermute(mine[0] * 2, mine[2], restore_shape=tokens.shape, routing_map=routing_map)
    out_theirs = moe_utils.unpermute(theirs[0] * 2, theirs[2], restore_shape=tokens.shape, routing_map=routing_map)
    assert torch.allclose(out_mine, out_theirs, atol=1e-6)
    assert torch.equal(out_mine[1], torch.zeros(7))  # a token with no copy comes back as zeros
    out_mine.sum().backward()
    out_theirs.sum().backward()
    assert torch.allclose(mine_in.grad, theirs_in.grad)


def test_permute_hands_uncovered_cases_to_megatron(interpreted, fast_ops, monkeypatch):
    calls = []
    monkeypatch.setattr(fast_ops, "_original", lambda module, name: lambda *a, **k: calls.append((name, k)) or "megatron")
    routing_map, probs = routing(6, 4, 2, seed=3)
    tokens = torch.randn(6, 8)
    assert fast_ops.permute(tokens, routing_map, num_out_tokens=12, drop_and_pad=True) == "megatron"
    assert fast_ops.permute(tokens, routing_map, num_out_tokens=12, fused=True) == "megatron"
    idx = torch.arange(12) % 6
    assert fast_ops.unpermute(torch.randn(12, 8), idx, torch.Size([6, 8]), probs=probs, routing_map=routing_map) == "megatron"
    assert [c[0] for c in calls] == ["permute", "permute", "unpermute"]


def test_sort_chunks_identity_is_free_and_real_orders_go_to_megatron(fast_ops):
    from megatron.core.transformer.moe import moe_utils

    x = torch.randn(10, 4)
    sizes = torch.tensor([3, 0, 7])
    out, probs = fast_ops.sort_chunks_by_idxs(x, sizes, torch.arange(3))
    assert out is x and probs is None
    order = torch.tensor([2, 0, 1])
    out, _ = fast_ops.sort_chunks_by_idxs(x, sizes, order)
    assert torch.equal(out, moe_utils.sort_chunks_by_idxs(x, sizes, order)[0])
    assert torch.equal(out, torch.cat([x[3:], x[:3]]))


@pytest.mark.parametrize("mla,rot,dim,mscale", [(False, 16, 16, 1.0), (False, 8, 12, 1.0), (True, 8, 8, 1.3), (True, 8, 14, 0.7)])
def test_rope_matches_megatron_with_gradients(interpreted, fast_ops, mla, rot, dim, mscale):
    """Rotate-half RoPE (partial rotary dim too) and MLA's even/odd layout with mscale, on a
    strided view like the query split out of a fused QKV projection."""
    from megatron.core.models.common.embeddings import rope_utils

    torch.manual_seed(3)
    s, b, h = 6, 2, 3
    fused = torch.randn(s, b, h, dim + 5)
    t = fused[..., :dim]  # non-contiguous, last dim contiguous
    freqs = torch.randn(s, 1, 1, rot // 2).repeat(1, 1, 1, 2) * 3
    mine_in, theirs_in = t.clone().requires_grad_(), t.clone().requires_grad_()
    mine = fast_ops.apply_rotary_pos_emb_bshd(mine_in, freqs, mla_rotary_interleaved=mla, mscale=mscale)
    theirs = rope_utils._apply_rotary_pos_emb_bshd(theirs_in, freqs, mla_rotary_interleaved=mla, mscale=mscale)
    assert mine.shape == theirs.shape
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(theirs)
    mine.backward(g)
    theirs.backward(g)
    assert torch.allclose(mine_in.grad, theirs_in.grad, atol=1e-5, rtol=1e-5)
    strided = fast_ops.apply_rotary_pos_emb_bshd(t, freqs, mla_rotary_interleaved=mla, mscale=mscale)
    assert torch.allclose(strided, theirs, atol=1e-5)


def test_rope_bf16_within_a_unit_of_megatron(interpreted, fast_ops):
    from megatron.core.models.common.embeddings import rope_utils

    torch.manual_seed(4)
    t = torch.randn(8, 2, 4, 32).bfloat16()
    freqs = torch.rand(8, 1, 1, 16).repeat(1, 1, 1, 2) * 10
    mine = fast_ops.apply_rotary_pos_emb_bshd(t, freqs)
    theirs = rope_utils._apply_rotary_pos_emb_bshd(t, freqs)
    # Megatron rounds cos, sin and both products to bf16; here one rounding at the end
    assert mine.dtype == torch.bfloat16 and (mine.float() - theirs.float()).abs().max() <= 0.05


def test_install_patches_megatron_and_can_be_turned_off(fast_ops, monkeypatch):
    from megatron.core import tensor_parallel
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    monkeypatch.setenv("FAST_OPS", "0")
    assert fast_ops.install() == []
    assert token_dispatcher.permute is moe_utils.permute
    monkeypatch.delenv("FAST_OPS")
    names = fast_ops.install()
    assert "megatron.core.transformer.moe.token_dispatcher:permute" in names
    assert token_dispatcher.permute is fast_ops.permute
    assert tensor_parallel.vocab_parallel_cross_entropy is fast_ops.vocab_parallel_cross_entropy
    assert fast_ops.install() == names  # idempotent: the originals stay Megatron's
    fast_ops.uninstall()
    assert token_dispatcher.permute is moe_utils.permute


def test_moe_model_loss_and_gradients_unchanged_by_fast_ops(mpu, interpreted, fast_ops, monkeypatch):
    """A 2-layer GQA MoE GPTModel on the native spec: the same weights give the same loss and
    gradients with the stand-ins as with Megatron's functions. (The all-gather dispatcher: the
    all-to-all one makes a CUDA stream at build time; both call the same permute/unpermute.)"""
    from megatron.core.models.gpt.gpt_model import GPTModel
    from benchlib.megatron.spec.layer_spec import build_native_spec
    from tiny_moe import tiny_moe_config

    cfg = tiny_moe_config()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")  # rotary embedding asks for a GPU
    torch.manual_seed(7)
    model = GPTModel(cfg, build_native_spec(cfg), vocab_size=300, max_sequence_length=16, position_embedding_type="rope")
    tokens = torch.randint(0, 300, (2, 16))
    labels = torch.randint(0, 300, (2, 16))
    position_ids = torch.arange(16).unsqueeze(0).expand(2, -1)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(tokens, position_ids, None, labels=labels)
        loss.sum().backward()
        return loss.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    base_loss, base_grads = loss_and_grads()
    installed = fast_ops.install()
    assert len(installed) == 6
    launched = spy_kernel_launches(monkeypatch)
    fast_loss, fast_grads = loss_and_grads()
    # the kernels really ran: CE forward+backward once, segment sums per MoE layer (unpermute
    # forward, permute backward)
    assert launched["_ce_forward_kernel"] == 1 and launched["_ce_backward_kernel"] == 1
    assert launched["_segment_sum_kernel"] == 2 * cfg.num_layers
    assert launched["_rope_kernel"] == 4 * cfg.num_layers  # q and k, forward and backward
    assert torch.allclose(fast_loss, base_loss, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == base_grads.keys()
    for name, g in base_grads.items():
        assert rel(fast_grads[name], g) < 1e-4, name


def spy_kernel_launches(monkeypatch) -> dict[str, int]:
    """Count launches of the Triton kernels (kernel[grid](...)) from here on."""
    from benchlib.megatron.spec.kernels import cross_entropy, permute, rope

    counts: dict[str, int] = {}

    class Spy:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def counted(*args, **kwargs):
                counts[self.name] = counts.get(self.name, 0) + 1
                return launch(*args, **kwargs)

            return counted

    for module, name in ((cross_entropy, "_ce_forward_kernel"), (cross_entropy, "_ce_backward_kernel"),
                         (permute, "_segment_sum_kernel"), (rope, "_rope_kernel")):
        monkeypatch.setattr(module, name, Spy(name, getattr(module, name)))
    return counts
