"""HF -> Megatron logit parity and HF -> Megatron -> HF identity, per family, on tiny local models.

Real parts: transformers' own model classes (random weights, no download), Megatron-Core 0.19.2's
GPTModel built on CPU from the same flags the conversion records (local spec; MLA with the SDPA
core attention from benchlib.megatron.sdpa_attention because Megatron's local DotProductAttention
refuses MLA), Megatron's dist_checkpointing.load. Faked: nothing; GPUs are not needed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "convert"))
import tiny_hf  # noqa: E402

pytestmark = [pytest.mark.megatron, pytest.mark.slow]

# DeepSeek-V2-Lite (no q LoRA) builds through the native spec's NativeMLASelfAttention (benchlib.megatron.sdpa_attention).
PARITY = ["Qwen3-MoE", "Mixtral", "GLM-4.5-Air", "DeepSeek-V2-Lite", "DeepSeek-V2", "DeepSeek-V3"]


def _hf_tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values())):
        out.update(load_file(d / f))
    return out


@pytest.mark.parametrize("family", PARITY)
def test_logit_parity_and_round_trip(family: str, tmp_path: Path) -> None:
    import torch

    from benchlib.convert.convert import hf_to_mcore, mcore_to_hf

    hf_dir, model = tiny_hf.build(family, tmp_path / "hf")
    assert len(list(hf_dir.glob("*.safetensors"))) > 5  # streamed from many shards
    report = hf_to_mcore(hf_dir, tmp_path / "mc", dtype="fp32")
    assert report.peak_rss > 0
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    ref = tiny_hf.hf_logits(model, tokens)
    got = tiny_hf.megatron_logits(tmp_path / "mc", tokens)
    diff = (ref - got).abs().max().item()
    assert diff < 1e-4, f"{family}: max abs logit difference {diff}"
    assert ref.abs().max().item() > 0.5  # not trivially zero logits

    mcore_to_hf(tmp_path / "mc", tmp_path / "back", dtype="fp32", max_shard_bytes=100_000)
    a, b = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("family", ["Qwen3-MoE", "DeepSeek-V3"])
def test_legacy_round_trip_tp_pp_uneven_ep(family: str, tmp_path: Path) -> None:
    """Legacy per-rank files at TP=2, PP=2 (first stage 1 layer of 3), EP=2, grouped experts -> back to HF."""
    import torch

    from benchlib.convert.convert import hf_to_mcore, mcore_to_hf
    from benchlib.convert.layout import Layout

    hf_dir, _ = tiny_hf.build(family, tmp_path / "hf")
    hf_to_mcore(hf_dir, tmp_path / "leg", formats=("legacy",), dtype="fp32",
                layout=Layout(tp=2, pp=2, ep=2, first=1), expert_layout="grouped")
    it = tmp_path / "leg" / "iter_0000001"
    assert (tmp_path / "leg" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert sorted(p.name for p in it.iterdir()) == [f"mp_rank_{t:02d}_{p:03d}_{e:03d}" for t in range(2) for p in range(2) for e in range(2)]
    first = torch.load(it / "mp_rank_00_000_000" / "model_optim_rng.pt", weights_only=False)["model"]
    last = torch.load(it / "mp_rank_01_001_001" / "model_optim_rng.pt", weights_only=False)["model"]
    assert {k.split(".")[2] for k in first if k.startswith("decoder.layers.")} == {"0"}
    assert {k.split(".")[2] for k in last if k.startswith("decoder.layers.")} == {"0", "1"}
    assert "embedding.word_embeddings.weight" in first and "output_layer.weight" in last
    # with MTP the last stage embeds the shifted tokens itself, so Megatron builds an embedding there too
    assert ("embedding.word_embeddings.weight" in last) == (family == "DeepSeek-V3")
    assert "decoder.layers.0.mlp.experts.linear_fc1.weight1" in last  # grouped layout, 2 local experts
    mcore_to_hf(tmp_path / "leg", tmp_path / "back", dtype="fp32")
    a, b = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


NATIVE = "benchlib.megatron.spec.layer_spec:build_native_spec"


@pytest.mark.parametrize(
    ("family", "convert_spec"), [("Qwen3-MoE", None), ("DeepSeek-V3", None), ("GLM-4.5-Air", NATIVE), ("DeepSeek-V2-Lite", NATIVE)]
)
def test_native_spec_loads_the_checkpoint_with_parity(family: str, convert_spec: str | None, tmp_path: Path) -> None:
    """The suite's torch-native spec (benchlib.megatron.spec: SDPA attention, grouped experts named weight{i})
    loads a torch_dist checkpoint converted with Megatron's local spec (same sharded keys), and one
    converted with the native spec itself, and computes HF's logits."""
    import torch

    from benchlib.convert.convert import hf_to_mcore

    pytest.importorskip("benchlib.megatron.spec.layer_spec")
    hf_dir, model = tiny_hf.build(family, tmp_path / "hf")
    hf_to_mcore(hf_dir, tmp_path / "mc", dtype="fp32", spec=convert_spec)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    diff = (tiny_hf.hf_logits(model, tokens) - tiny_hf.megatron_logits(tmp_path / "mc", tokens, spec=NATIVE)).abs().max().item()
    assert diff < 1e-4, f"{family}: max abs logit difference {diff}"


@pytest.mark.parametrize(("family", "spec"), [("Qwen3-MoE", None), ("DeepSeek-V3", NATIVE), ("Mixtral", NATIVE)])
def test_legacy_file_loads_strictly_with_parity(family: str, spec: str | None, tmp_path: Path) -> None:
    """Legacy mp_rank_00/model_optim_rng.pt (TP=PP=EP=1) loads with a strict load_state_dict into the
    model the spec builds (sequential experts for the local spec, weight{i} for the native one)."""
    import torch

    from benchlib.convert.convert import hf_to_mcore

    if spec:
        pytest.importorskip("benchlib.megatron.spec.layer_spec")
    hf_dir, model = tiny_hf.build(family, tmp_path / "hf")
    hf_to_mcore(hf_dir, tmp_path / "leg", formats=("legacy",), dtype="fp32", spec=spec)
    ck = torch.load(tmp_path / "leg" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert ck["checkpoint_version"] == 3.0 and ck["args"].num_layers == 3
    mc, shape = tiny_hf.build_megatron(tmp_path / "leg", spec)
    mc.load_state_dict(ck["model"], strict=True)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4))
    diff = (tiny_hf.hf_logits(model, tokens) - tiny_hf.megatron_forward(mc, tokens, shape.vocab)).abs().max().item()
    assert diff < 1e-4, f"{family}: max abs logit difference {diff}"


def test_deepseek_v3_yarn_rope_parity(tmp_path: Path) -> None:
    """DeepSeek-V3's published YaRN rope scaling (factor 40, mscale_all_dim 1) maps to Megatron's yarn flags."""
    import torch

    from benchlib.convert.convert import hf_to_mcore

    hf_dir, model = tiny_hf.build("DeepSeek-V3", tmp_path / "hf", yarn=True)
    report = hf_to_mcore(hf_dir, tmp_path / "mc", dtype="fp32")
    flags = " ".join(report.megatron_flags)
    assert "--rope-type yarn --rotary-scaling-factor 40.0 --mscale 1.0 --mscale-all-dim 1.0" in flags
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))
    diff = (tiny_hf.hf_logits(model, tokens) - tiny_hf.megatron_logits(tmp_path / "mc", tokens)).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("family", ["Qwen3-MoE", "DeepSeek-V3"])
def test_checkpoint_saved_by_megatron_converts_back(family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mcore-to-hf reads what Megatron itself saves (dist_checkpointing.save of the model's sharded
    state dict, as after training), not only what hf-to-mcore wrote. Megatron's writer calls
    torch.cuda.synchronize() / current_device() unconditionally; on this CPU-only machine they are
    answered as no-op / "cpu" (faked: no GPU here)."""
    import torch
    from megatron.core import dist_checkpointing

    from benchlib.convert.convert import hf_to_mcore, mcore_to_hf

    pytest.importorskip("psutil")  # Megatron's checkpoint writer needs it (undeclared by megatron-core)
    hf_dir, _ = tiny_hf.build(family, tmp_path / "hf")
    hf_to_mcore(hf_dir, tmp_path / "mc", dtype="fp32")
    model, _ = tiny_hf.build_megatron(tmp_path / "mc")
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(tmp_path / "mc" / "iter_0000001"))
    model.load_state_dict(state["model"])
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    saved = tmp_path / "trained"
    (saved / "iter_0000005").mkdir(parents=True)
    from benchlib.megatron.build import cpu_current_device

    with cpu_current_device():  # Megatron's writer also asks torch.cuda.current_device()
        dist_checkpointing.save({"model": model.sharded_state_dict(), "checkpoint_version": 3.0, "iteration": 5},
                                str(saved / "iter_0000005"))
    (saved / "latest_checkpointed_iteration.txt").write_text("5")
    mcore_to_hf(saved, tmp_path / "back", hf_config=hf_dir, dtype="fp32")
    a, b = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("family", "tp", "pp", "ep", "last", "dirs"),
    [
        ("GLM-4.5-Air", 2, 1, 2, None, ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]),
        ("Mixtral", 1, 3, 1, None, ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_00_002"]),
        ("DeepSeek-V2", 2, 2, 1, 1, ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]),
    ],
)
def test_legacy_layouts_round_trip(family: str, tp: int, pp: int, ep: int, last: int | None, dirs: list[str], tmp_path: Path) -> None:
    """Megatron's folder names for EP-only, PP-only and uneven-last-stage layouts; exact round trip."""
    import torch

    from benchlib.convert.convert import hf_to_mcore, mcore_to_hf
    from benchlib.convert.layout import Layout

    hf_dir, _ = tiny_hf.build(family, tmp_path / "hf")
    hf_to_mcore(hf_dir, tmp_path / "leg", formats=("legacy",), dtype="fp32", layout=Layout(tp=tp, pp=pp, ep=ep, last=last))
    it = tmp_path / "leg" / "iter_0000001"
    assert sorted(p.name for p in it.iterdir()) == dirs
    if last is not None:
        final = torch.load(it / dirs[-1] / "model_optim_rng.pt", weights_only=False)["model"]
        assert {k.split(".")[2] for k in final if k.startswith("decoder.layers.")} == {str(i) for i in range(last)}
    mcore_to_hf(tmp_path / "leg", tmp_path / "back", dtype="fp32")
    a, b = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
