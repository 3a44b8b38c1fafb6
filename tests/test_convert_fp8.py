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
    from benchlib.errors import BenchError

    with pytest.raises(BenchError, match="weight_scale_inv shape"):
        dequantize_fp8(torch.zeros(256, 256).to(torch.float8_e4m3fn), torch.ones(1, 2))
