"""`benchlib convert verify`, MTP-less exports and routing Megatron-Core cannot reproduce, on tiny local models.

Real parts: transformers' own config classes, `save_pretrained` and `from_pretrained` (random weights, no
download), Megatron-Core 0.19.2's GPTModel on CPU (local spec; MLA with the SDPA core attention of
benchlib.megatron.sdpa_attention), Megatron's torch_dist checkpoints. Faked: nothing; no GPU is needed.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "convert"))
import tiny_hf  # noqa: E402

pytestmark = [pytest.mark.megatron, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
# V3-style router whose group score Megatron computes differently: top-3 of 12 experts in 4 groups, 2 groups kept
# (Megatron ranks groups by their top 3 // 2 = 1 expert, Hugging Face by their top 2)
MISMATCHED_ROUTER = {"n_routed_experts": 12, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchlib", "convert", *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def _verify(hf: Path, mc: Path, **kw: object) -> object:
    from benchlib.convert.verify import verify

    return verify(hf, mc, **kw)


@pytest.mark.parametrize("family", tiny_hf.FAMILIES)
def test_verify_passes_on_every_family(family: str, tmp_path: Path) -> None:
    """Whole model on the torch_dist checkpoint; layer by layer on legacy files cut at TP=2, EP=2 (PP=3 for one family)."""
    from benchlib.convert.convert import hf_to_mcore
    from benchlib.convert.layout import Layout

    hf_dir, _ = tiny_hf.build(family, tmp_path / "hf")
    hf_to_mcore(hf_dir, tmp_path / "mc", formats=("torch_dist", "legacy"), dtype="fp32",
                layout=Layout(tp=2, ep=2, pp=3 if family == "Mixtral" else 1))
    whole = _verify(hf_dir, tmp_path / "mc" / "torch_dist")
    assert whole.passed, whole.summary()
    assert [d.name for d in whole.diffs] == ["embedding", "layer 0", "layer 1", "layer 2", "logits"]
    assert whole.argmax_agreement == 1.0 and whole.diffs[-1].ref_max > 0.5
    by_layer = _verify(hf_dir, tmp_path / "mc" / "legacy", layer_by_layer=True)
    assert by_layer.passed, by_layer.summary()
    assert by_layer.mode == "layer-by-layer" and len(by_layer.diffs) == 5


def _swap_experts(hf_dir: Path, out: Path, layer: int, a: int, b: int) -> None:
    """A copy of hf_dir whose layer `layer` has experts a and b exchanged (names swapped in the shards)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(hf_dir, out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    pa, pb = f"model.layers.{layer}.mlp.experts.{a}.", f"model.layers.{layer}.mlp.experts.{b}."
    swapped = {}
    for name in index["weight_map"]:
        if name.startswith(pa):
            swapped[name] = pb + name[len(pa):]
        elif name.startswith(pb):
            swapped[name] = pa + name[len(pb):]
    assert len(swapped) == 6
    tensors = {}
    for f in sorted({index["weight_map"][n] for n in swapped}):
        sd = load_file(out / f)
        tensors.update({n: sd.pop(n) for n in list(sd) if n in swapped})
        save_file(sd, str(out / f), metadata={"format": "pt"})
        for n in [n for n, g in index["weight_map"].items() if g == f and n in swapped]:
            del index["weight_map"][n]
    save_file({swapped[n]: t for n, t in tensors.items()}, str(out / "swapped.safetensors"), metadata={"format": "pt"})
    index["weight_map"].update({n: "swapped.safetensors" for n in swapped})
    (out / "model.safetensors.index.json").write_text(json.dumps(index))


def test_verify_fails_on_a_swapped_expert_naming_the_layer(tmp_path: Path) -> None:
    """The Megatron checkpoint is converted from a copy with experts 0 and 1 of layer 2 exchanged; verify
    against the original names layer 2 as the first divergence (earlier layers agree), in both modes, and the
    CLI exits 1."""
    from benchlib.convert.convert import hf_to_mcore

    hf_dir, _ = tiny_hf.build("Qwen3-MoE", tmp_path / "hf")
    _swap_experts(hf_dir, tmp_path / "bad-hf", 2, 0, 1)
    hf_to_mcore(tmp_path / "bad-hf", tmp_path / "mc", dtype="fp32")
    for by_layer in (False, True):
        report = _verify(hf_dir, tmp_path / "mc", layer_by_layer=by_layer)
        assert not report.passed and report.first_divergence == "layer 2", report.summary()
        assert all(d.ok for d in report.diffs[:3])  # embedding, layers 0 and 1
    proc = _cli("verify", "--hf-dir", str(hf_dir), "--mcore-dir", str(tmp_path / "mc"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "FAIL: first divergence at layer 2" in proc.stdout
    assert re.search(r"layer 2 +max abs diff \S+ .* DIVERGES", proc.stdout), proc.stdout


@pytest.mark.parametrize("family", ["DeepSeek-V3", "GLM-4.5-Air"])
def test_export_without_mtp_weights_converts_without_mtp(family: str, tmp_path: Path) -> None:
    """transformers' save_pretrained keeps num_nextn_predict_layers=1 but drops the MTP weights: converted
    without MTP, one note naming --mtp-num-layers, hf_config / Megatron flags without MTP, verify passes
    (hf-to-mcore --verify)."""
    hf_dir, _ = tiny_hf.build(family, tmp_path / "hf", mtp_weights=False)
    assert json.loads((hf_dir / "config.json").read_text())["num_nextn_predict_layers"] == 1
    assert not any(".layers.3." in n for n in json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"])
    proc = _cli("hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "mc"), "--dtype", "fp32", "--verify")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no MTP weights" in notes[0] and "--mtp-num-layers" in notes[0], proc.stdout
    assert "PASS" in proc.stdout
    assert json.loads((tmp_path / "mc" / "hf_config.json").read_text())["num_nextn_predict_layers"] == 0
    assert "--mtp-num-layers" not in (tmp_path / "mc" / "megatron_model_args.txt").read_text()
    # Megatron's own strict load of the model built from the recorded flags (no MTP layer expected)
    import torch

    tokens = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(3))
    assert tiny_hf.megatron_logits(tmp_path / "mc", tokens).shape == (1, 8, 256)


def test_partial_mtp_set_is_an_error(tmp_path: Path) -> None:
    from benchlib.convert.convert import hf_to_mcore
    from benchlib.core.errors import BenchError

    hf_dir, _ = tiny_hf.build("DeepSeek-V3", tmp_path / "hf")
    index_path = hf_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.layers.3.eh_proj.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(BenchError, match=r"MTP layers are incomplete: 1 of \d+ MTP tensors are missing, e\.g\. model\.layers\.3\.eh_proj\.weight"):
        hf_to_mcore(hf_dir, tmp_path / "mc", dtype="fp32")


def test_v3_router_megatron_cannot_reproduce_is_refused_then_allowed(tmp_path: Path) -> None:
    """12 experts, top-3, 4 groups, top-2 groups: refused with the reason and the fix; with
    --allow-routing-mismatch converted, the note in the checkpoint's metadata, and verify fails."""

    hf_dir, _ = tiny_hf.build("DeepSeek-V3", tmp_path / "hf", router=MISMATCHED_ROUTER)
    proc = _cli("hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "mc"), "--dtype", "fp32")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "routing mismatch" in proc.stderr and "top-2" in proc.stderr and "3 // 2 = 1" in proc.stderr
    assert "--allow-routing-mismatch" in proc.stderr
    assert not (tmp_path / "mc").exists()

    proc = _cli("hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "mc"), "--dtype", "fp32", "--allow-routing-mismatch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: routing mismatch (converted with --allow-routing-mismatch)" in proc.stdout
    from megatron.core import dist_checkpointing

    common = dist_checkpointing.load_common_state_dict(str(tmp_path / "mc" / "iter_0000001"))
    assert any("top-2" in n for n in common["conversion_notes"]), common.get("conversion_notes")
    assert any("routing mismatch" in n for n in json.loads((tmp_path / "mc" / "convert_report.json").read_text())["notes"])
    report = _verify(hf_dir, tmp_path / "mc", seq_len=64)
    assert not report.passed, report.summary()
    assert report.first_divergence.startswith("layer ") and report.diffs[1].ok  # layer 0 is dense
    assert any("routing Megatron-Core cannot reproduce" in n for n in report.notes)


def _layer_by_layer_growth(tmp: Path, layers: int) -> tuple[float, int, int]:
    """(RSS growth of `verify --layer-by-layer` in a subprocess, largest layer's bytes, model's bytes) for a
    Qwen3-MoE-shaped model of `layers` layers (fp32, ~24 MiB per MoE layer)."""
    from safetensors import safe_open

    from benchlib.convert.convert import hf_to_mcore

    hf_dir, _ = tiny_hf.build("Qwen3-MoE", tmp / "hf", max_shard_size="12MB", hidden=512, layers=layers, experts=16, vocab=4096)
    sizes: dict[str, int] = {}
    for name, f in json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"].items():
        with safe_open(str(hf_dir / f), "pt") as fh:
            n = 4
            for d in fh.get_slice(name).get_shape():
                n *= d
        m = re.match(r"model\.layers\.(\d+)\.", name)
        sizes[f"layer {m.group(1)}" if m else name] = sizes.get(f"layer {m.group(1)}" if m else name, 0) + n
    hf_to_mcore(hf_dir, tmp / "mc", dtype="fp32", dist_file_bytes=8 * 2**20)
    proc = _cli("verify", "--hf-dir", str(hf_dir), "--mcore-dir", str(tmp / "mc"), "--layer-by-layer")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = re.search(r"growth during verify ([\d.]+) MiB", proc.stdout)
    assert m, proc.stdout
    return float(m.group(1)) * 2**20, max(v for k, v in sizes.items() if k.startswith("layer ")), sum(sizes.values())


def test_layer_by_layer_memory_does_not_grow_with_the_model(tmp_path: Path) -> None:
    """`verify --layer-by-layer` (CLI subprocess; peak from Linux VmHWM, reset once the tokens are embedded) on
    the same layer shape at 2 and 8 layers: six more layers (~150 MiB) add less than one layer to the peak,
    and the peak growth stays below the model's size. (The growth itself holds one layer of each side, the
    one-layer file transformers loads, and fixed costs of the first forward.)"""
    small, _, _ = _layer_by_layer_growth(tmp_path / "small", 2)
    big, largest, total = _layer_by_layer_growth(tmp_path / "big", 8)
    assert total > 7 * largest
    mib = 2**20
    assert big - small < largest, f"8 layers grew {big / mib:.1f} MiB, 2 layers {small / mib:.1f} MiB; a layer is {largest / mib:.1f} MiB"
    assert big < total, f"grew {big / mib:.1f} MiB for a {total / mib:.1f} MiB model"
