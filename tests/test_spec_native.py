"""The torch-native spec (benchlib.megatron.spec) against independent references, on CPU.

- SDPAttention vs a float64 softmax(Q K^T * scale + mask) V written out here: GQA and MLA shapes
  (q/k head dim != v head dim, MLA's mscale softmax scale), causal and padding masks, gradients.
- NativeGroupedMLP (one grouped GEMM per projection) vs Megatron's SequentialMLP (a loop of MLPs)
  with the same weights, on random tokens per expert (including experts with none), gradients too;
  same seed -> same initial experts; per-expert state-dict names and round trip.
- Whole GPTModels (GQA MoE with a dense first layer; MLA without q-LoRA) build with the spec.

Faked: the GPU. Megatron-Core's model pieces run on CPU here with a one-process gloo group and
`use_cpu_initialization`; where Megatron 0.19.2 hard-codes `torch.cuda.current_device()` while
building a module (MLA's rotary embedding), that call is answered with "cpu". The real bf16 CUDA
paths (torch grouped_mm and SDPA kernels) are checked on an H200 by bench/gpu_spec_check.py
(record in bench/results/h200_spec_check.json), and whole-model training by the scenarios of `python -m bench`.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.megatron

torch = pytest.importorskip("torch")


def rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def reference_attention(q, k, v, scale, causal, mask=None):
    """float64 attention from the definition; q [s,b,nq,dk], k [s,b,ng,dk], v [s,b,ng,dv]."""
    s, b, nq, _ = q.shape
    rep = nq // k.shape[2]
    k = k.repeat_interleave(rep, 2)
    v = v.repeat_interleave(rep, 2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) * scale
    if causal:
        scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
    if mask is not None:  # Megatron convention: True = not allowed
        scores = scores.masked_fill(mask, float("-inf"))
    p = scores.softmax(-1)
    return torch.einsum("bhst,tbhd->sbhd", p, v).reshape(s, b, -1)


def make_attention(nq, ng, dk, dv, scale, mask_type):
    from benchlib.megatron.spec.attention import SDPAttention

    cfg = SimpleNamespace(context_parallel_size=1, softmax_type="vanilla", window_size=None, window_attn_skip_freq=None,
                          kv_channels=dk, num_attention_heads=nq, num_query_groups=ng, attention_dropout=0.0,
                          sequence_parallel=False)
    return SDPAttention(cfg, 1, mask_type, "self", softmax_scale=scale, k_channels=dk, v_channels=dv,
                        pg_collection=SimpleNamespace(tp=SimpleNamespace(size=lambda: 1)))


@pytest.mark.parametrize(
    "nq,ng,dk,dv,scale",
    [
        (8, 2, 32, 32, None),  # GQA, 4 q heads per kv head, default 1/sqrt(d)
        (4, 4, 24, 16, (0.1 * 0.707 * math.log(40) + 1.0) ** 2 / math.sqrt(24)),  # MLA: dk != dv, mscale
    ],
)
def test_sdpa_attention_matches_float64(nq, ng, dk, dv, scale):
    from megatron.core.transformer.enums import AttnMaskType

    torch.manual_seed(nq * 100 + dk)
    attn = make_attention(nq, ng, dk, dv, scale, AttnMaskType.causal)
    s, b = 48, 3
    q = torch.randn(s, b, nq, dk, requires_grad=True)
    k = torch.randn(s, b, ng, dk, requires_grad=True)
    v = torch.randn(s, b, ng, dv, requires_grad=True)
    out = attn(q, k, v, None)
    assert out.shape == (s, b, nq * dv)
    g = torch.randn_like(out)
    out.backward(g)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qd, kd, vd, scale if scale is not None else 1 / math.sqrt(dk), causal=True)
    ref.backward(g.double())
    assert rel(out, ref) < 1e-5
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel(got, want) < 1e-5


def test_sdpa_attention_padding_mask():
    from megatron.core.transformer.enums import AttnMaskType

    torch.manual_seed(3)
    attn = make_attention(4, 2, 16, 16, None, AttnMaskType.padding)
    s, b = 20, 2
    q, k, v = torch.randn(s, b, 4, 16), torch.randn(s, b, 2, 16), torch.randn(s, b, 2, 16)
    mask = torch.zeros(b, 1, s, s, dtype=torch.bool)
    mask[1, :, :, 15:] = True  # second sequence: last 5 keys are padding
    out = attn(q, k, v, mask)
    ref = reference_attention(q.double(), k.double(), v.double(), 0.25, causal=False, mask=mask)
    assert rel(out, ref) < 1e-5
    # and the mask matters: without it the second sequence differs
    assert rel(attn(q, k, v, torch.zeros_like(mask)), ref) > 1e-3


def test_refusals_name_the_missing_piece():
    from benchlib.megatron.spec.layer_spec import unsupported_features

    cfg = SimpleNamespace(context_parallel_size=2, expert_tensor_parallel_size=2, num_moe_experts=8, fp8="e4m3", fp4=None,
                          sequence_parallel=True, add_bias_linear=True, moe_permute_fusion=True, moe_token_dispatcher_type="flex")
    problems = " | ".join(unsupported_features(cfg))
    for piece in ("CP>1", "ETP>1", "fp8", "sequence parallel", "bias", "permute-fusion", "DeepEP"):
        assert piece in problems
    ok = SimpleNamespace(context_parallel_size=1, expert_tensor_parallel_size=1, num_moe_experts=8, fp8=None, fp4=None,
                         sequence_parallel=False, add_bias_linear=False, moe_permute_fusion=False, moe_token_dispatcher_type="alltoall")
    assert unsupported_features(ok) == []


# ---------------------------------------------------------------- Megatron modules on CPU


def moe_config(**over):
    from megatron.core.transformer.transformer_config import TransformerConfig

    kw = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, kv_channels=16, ffn_hidden_size=96,
              num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32, gated_linear_unit=True,
              activation_func=torch.nn.functional.silu, normalization="RMSNorm", qk_layernorm=True, add_bias_linear=False,
              use_cpu_initialization=True, moe_token_dispatcher_type="allgather", bias_activation_fusion=False,
              masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
              apply_rope_fusion=False, transformer_impl="local", init_method_std=0.02)
    kw.update(over)
    return TransformerConfig(**kw)


def build_experts(cfg, seed):
    from megatron.core.models.backends import LocalSpecProvider
    from megatron.core.process_groups_config import ProcessGroupCollection

    from benchlib.megatron.spec.experts import NativeGroupedMLP

    pgs = ProcessGroupCollection.use_mpu_process_groups()
    torch.manual_seed(seed)
    seq = LocalSpecProvider().grouped_mlp_modules(False)(cfg.num_moe_experts, cfg, pg_collection=pgs)
    torch.manual_seed(seed)
    grp = NativeGroupedMLP(cfg.num_moe_experts, cfg, pg_collection=pgs)
    return seq, grp


def test_grouped_experts_init_like_sequential_and_match_it_with_gradients(mpu):
    cfg = moe_config()
    seq, grp = build_experts(cfg, seed=11)
    E = cfg.num_moe_experts
    # same seed -> the same initial experts, in SequentialMLP's order
    for i in range(E):
        assert torch.equal(grp.linear_fc1.weight[i], seq.local_experts[i].linear_fc1.weight)
        assert torch.equal(grp.linear_fc2.weight[i], seq.local_experts[i].linear_fc2.weight)
    # perturb the grouped copy's weights from a fresh draw and copy into the sequential one, so the
    # comparison does not depend on the init
    torch.manual_seed(5)
    with torch.no_grad():
        grp.linear_fc1.weight.normal_(0, 0.1)
        grp.linear_fc2.weight.normal_(0, 0.1)
        for i in range(E):
            seq.local_experts[i].linear_fc1.weight.copy_(grp.linear_fc1.weight[i])
            seq.local_experts[i].linear_fc2.weight.copy_(grp.linear_fc2.weight[i])
    counts = torch.tensor([7, 0, 13, 4])  # an expert with no token
    T = int(counts.sum())
    x = torch.randn(T, cfg.hidden_size)
    probs = torch.rand(T)
    xs, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
    ps_, pg = probs.clone().requires_grad_(), probs.clone().requires_grad_()
    out_s, _ = seq(xs, counts, ps_)
    out_g, _ = grp(xg, counts, pg)
    assert out_g.shape == out_s.shape == (T, cfg.hidden_size)
    assert rel(out_g, out_s) < 1e-5
    g = torch.randn_like(out_s)
    out_s.backward(g)
    out_g.backward(g)
    assert rel(xg.grad, xs.grad) < 1e-5
    assert rel(pg.grad, ps_.grad) < 1e-5
    for i in range(E):
        s1, s2 = seq.local_experts[i].linear_fc1.weight.grad, seq.local_experts[i].linear_fc2.weight.grad
        if int(counts[i]) == 0:
            assert grp.linear_fc1.weight.grad[i].abs().max() == 0
            continue
        assert rel(grp.linear_fc1.weight.grad[i], s1) < 1e-5
        assert rel(grp.linear_fc2.weight.grad[i], s2) < 1e-5


def test_grouped_experts_state_dict_is_per_expert_and_round_trips(mpu):
    cfg = moe_config()
    _, grp = build_experts(cfg, seed=1)
    sd = grp.state_dict()
    E, F, H = cfg.num_moe_experts, cfg.moe_ffn_hidden_size, cfg.hidden_size
    assert {f"linear_fc1.weight{i}" for i in range(E)} <= set(sd)
    assert "linear_fc1.weight" not in sd
    assert sd["linear_fc1.weight0"].shape == (2 * F, H) and sd["linear_fc2.weight3"].shape == (H, F)
    _, other = build_experts(cfg, seed=2)
    assert not torch.equal(other.linear_fc1.weight, grp.linear_fc1.weight)
    missing, unexpected = other.load_state_dict(sd, strict=False)
    assert not [m for m in missing if "weight" in m] and not unexpected
    assert torch.equal(other.linear_fc1.weight, grp.linear_fc1.weight)
    assert torch.equal(other.linear_fc2.weight, grp.linear_fc2.weight)


def test_gqa_moe_model_builds_with_native_modules(mpu):
    from megatron.core.models.gpt.gpt_model import GPTModel

    from benchlib.megatron.spec import native_spec
    from benchlib.megatron.spec.attention import SDPAttention
    from benchlib.megatron.spec.experts import NativeGroupedMLP

    cfg = moe_config(moe_layer_freq=[0, 1])
    model = GPTModel(cfg, native_spec(cfg), vocab_size=128, max_sequence_length=32, position_embedding_type="learned_absolute")
    layers = model.decoder.layers
    assert all(isinstance(layer.self_attention.core_attention, SDPAttention) for layer in layers)
    assert isinstance(layers[1].mlp.experts, NativeGroupedMLP)
    assert not hasattr(layers[0].mlp, "experts")  # first layer dense
    names = set(model.state_dict())
    assert "decoder.layers.1.mlp.experts.linear_fc1.weight3" in names
    assert "decoder.layers.0.mlp.linear_fc1.weight" in names
    assert "decoder.layers.0.self_attention.linear_qkv.weight" in names


def test_mla_without_q_lora_builds(mpu, monkeypatch):
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    from benchlib.megatron.spec import native_spec
    from benchlib.megatron.spec.attention import SDPAttention

    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")  # see module docstring
    base = {k: v for k, v in vars(moe_config()).items() if not k.startswith("_")}
    cfg = MLATransformerConfig(**{k: base[k] for k in ("hidden_size", "num_attention_heads", "ffn_hidden_size", "num_moe_experts",
                                                       "moe_router_topk", "moe_ffn_hidden_size", "gated_linear_unit", "activation_func",
                                                       "normalization", "add_bias_linear", "use_cpu_initialization",
                                                       "moe_token_dispatcher_type", "bias_activation_fusion", "masked_softmax_fusion",
                                                       "persist_layer_norm", "gradient_accumulation_fusion", "apply_rope_fusion")},
                               num_layers=2, kv_channels=16, qk_layernorm=True, transformer_impl="local", moe_layer_freq=[0, 1],
                               multi_latent_attention=True, q_lora_rank=None, kv_lora_rank=32, qk_head_dim=16, qk_pos_emb_head_dim=8,
                               v_head_dim=16, rope_type="rope", moe_shared_expert_intermediate_size=64)
    model = GPTModel(cfg, native_spec(cfg), vocab_size=128, max_sequence_length=32, position_embedding_type="rope")
    attn = model.decoder.layers[1].self_attention
    assert isinstance(attn.core_attention, SDPAttention)
    assert attn.core_attention.k_channels == 24 and attn.core_attention.v_channels == 16
    assert attn.core_attention.softmax_scale == pytest.approx(attn.softmax_scale)
    names = set(model.state_dict())
    # DeepSeek-V2-Lite has no query norm: a plain q projection, only the kv latent is normed
    assert "decoder.layers.1.self_attention.linear_q_proj.weight" in names
    assert not any("linear_q_proj.layer_norm" in n or "q_layernorm" in n for n in names)
    assert "decoder.layers.1.self_attention.kv_layernorm.weight" in names
