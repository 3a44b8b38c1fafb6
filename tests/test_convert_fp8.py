"""DeepSeek-V3 fp8 weights (float8_e4m3fn + 128x128 `weight_scale_inv` blocks) are dequantized to bf16."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_dequantize_blocks_match_an_independent_loop() -> None:
    from benchlib.convert.hf_io import dequantize_fp8

    g = torch.Generator().manual_seed(0)
    rows, cols = 300, 200  # not multiples of 128: partial edge blocks
    w = (torch.randn(rows, cols, generator=g) * 3).to(torch.float8_e4m3fn)
    scale = torch.rand(3, 2, generator=g) + 0.5
    got = dequantize_fp8(w, scale)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, cols)
    want = torch.empty(rows, cols)
    for i in range(rows):
        row_scale = torch.tensor([float(scale[i // 128, j // 128]) for j in range(cols)])
        want[i] = w[i].float() * row_scale
    assert torch.equal(got, want.to(torch.bfloat16))


def test_fp8_checkpoint_reader_dequantizes(tmp_path) -> None:  # noqa: ANN001
    import json

    from safetensors.torch import save_file

    from benchlib.convert.hf_io import HFReader

    w = torch.full((130, 129), 2.0).to(torch.float8_e4m3fn)
    s = torch.tensor([[0.5, 4.0], [1.0, 2.0]])
    save_file({"a.weight": w, "a.weight_scale_inv": s, "b.weight": torch.ones(3)}, str(tmp_path / "x.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "x.safetensors", "a.weight_scale_inv": "x.safetensors", "b.weight": "x.safetensors"}}))
    r = HFReader(tmp_path, (128, 128))
    assert sorted(r.names()) == ["a.weight", "b.weight"]
    a = r.get("a.weight").float()
    assert a[0, 0] == 1.0 and a[0, 128] == 8.0 and a[129, 0] == 2.0 and a[129, 128] == 4.0


def test_bad_scale_shape_is_named() -> None:
    from benchlib.convert.hf_io import dequantize_fp8
    from benchlib.core.errors import BenchError

    with pytest.raises(BenchError, match="weight_scale_inv shape"):
        dequantize_fp8(torch.zeros(256, 256).to(torch.float8_e4m3fn), torch.ones(1, 2))


@pytest.mark.megatron
def test_fp8_deepseek_v3_checkpoint_converts_both_ways(tmp_path) -> None:  # noqa: ANN001
    """A tiny DeepSeek-V3 stored the way the published one is (projection weights float8_e4m3fn with
    `weight_scale_inv`, here 16x16 blocks so a tiny matrix has several) converts to Megatron and back;
    every weight comes back as its dequantized value, quantization_config is dropped."""
    import json
    import sys
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    pytest.importorskip("megatron.core")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "convert"))
    import tiny_hf

    from benchlib.convert.convert import hf_to_mcore, mcore_to_hf

    hf_dir, _ = tiny_hf.build("DeepSeek-V3", tmp_path / "hf")
    index_path = hf_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    expected: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(7)
    quantized = 0
    for f in sorted(set(index["weight_map"].values())):
        tensors = load_file(hf_dir / f)
        out = {}
        for name, t in tensors.items():
            expected[name] = t
            if name.endswith("_proj.weight") and t.dim() == 2 and "eh_proj" not in name:
                rows, cols = t.shape
                scale = torch.rand(-(-rows // 16), -(-cols // 16), generator=g) + 0.25
                full_scale = torch.kron(scale, torch.ones(16, 16))[:rows, :cols]
                q = (t / full_scale).to(torch.float8_e4m3fn)
                out[name], out[name + "_scale_inv"] = q, scale
                index["weight_map"][name + "_scale_inv"] = f
                expected[name] = (q.float() * full_scale).to(torch.bfloat16).float()  # independent dequantization
                quantized += 1
            else:
                out[name] = t
        save_file(out, str(hf_dir / f))
    index_path.write_text(json.dumps(index))
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [16, 16]}
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    assert quantized > 20

    hf_to_mcore(hf_dir, tmp_path / "mc", dtype="fp32")
    mcore_to_hf(tmp_path / "mc", tmp_path / "back", dtype="fp32")
    back_index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())["weight_map"]
    assert not any(k.endswith("_scale_inv") for k in back_index)
    assert "quantization_config" not in json.loads((tmp_path / "back" / "config.json").read_text())
    got: dict[str, torch.Tensor] = {}
    for f in set(back_index.values()):
        got.update(load_file(tmp_path / "back" / f))
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
