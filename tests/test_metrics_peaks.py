"""Peak table: dense vendor figures (sparse / 2), sources recorded, bad input refused with a fix."""
from __future__ import annotations

import pytest

from benchlib.core.errors import BenchError
from benchlib.metrics.peaks import PEAKS, peak_tflops
from benchlib.metrics.runconfig import precision_of


@pytest.mark.parametrize("gpu,precision,dense", [
    ("H100", "bf16", 1979 / 2), ("H200", "fp8", 3958 / 2), ("A100", "bf16", 624 / 2),
    ("B200", "bf16", 36000 / 8 / 2), ("B200", "fp8", 72000 / 8 / 2),
    ("GB200", "bf16", 360000 / 72 / 2), ("GB200", "fp8", 720000 / 72 / 2), ("GB300", "fp8", 720000 / 72 / 2),
])
def test_dense_peak_is_half_the_sparse_datasheet_figure(gpu, precision, dense):
    spec = peak_tflops(gpu, precision)
    assert spec.tflops == pytest.approx(dense, abs=0.6)  # H100/H200 datasheets round 1978.9 up to 1,979
    assert spec.gpu_type == gpu and spec.precision == precision and "datasheet" in spec.source


def test_every_entry_has_a_source():
    for gpu, table in PEAKS.items():
        for precision, (tflops, source) in table.items():
            assert tflops > 0 and gpu in source and "NVIDIA" in source, (gpu, precision)


def test_names_are_forgiving_and_fp8_recipes_map_to_fp8():
    assert peak_tflops("h100-sxm", "BF16").tflops == peak_tflops("H100", "bf16").tflops
    assert peak_tflops("B200", "mxfp8").precision == "fp8"


def test_refusals_say_what_exists():
    with pytest.raises(BenchError) as err:
        peak_tflops("A100", "fp8")
    assert "bf16" in err.value.hint
    with pytest.raises(BenchError) as err:
        peak_tflops("H20", "bf16")
    assert "H200" in str(err.value) and err.value.hint


def test_precision_from_the_argument_dump():
    assert precision_of({"bf16": True, "fp8": None}) == "bf16"
    assert precision_of({"bf16": True, "fp8": "hybrid"}) == "fp8"
    assert precision_of({"fp16": True}) == "fp16"
