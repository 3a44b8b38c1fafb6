"""Peak dense (non-sparse) tensor-core TFLOP/s per GPU, the denominator of MFU.

Vendor datasheets quote sparse figures next to dense ones; MFU uses the dense figure. Every
entry carries its source so a result JSON can say which peak it divided by.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from benchlib.core.errors import BenchError
from benchlib.core.gpus import GPU_TABLE, GPU_TYPES, gpu_type  # noqa: F401 (GPU_TYPES re-exported)


@dataclass(frozen=True)
class PeakSpec:
    gpu_type: str
    precision: str
    tflops: float
    source: str

    def to_json(self) -> dict:
        return asdict(self)


def _peaks() -> dict[str, dict[str, tuple[float, str]]]:
    return {name: gpu.peaks for name, gpu in GPU_TABLE.items()}


# gpu_type -> precision -> (dense TFLOP/s, source); read from the one GPU table (benchlib/core/gpus.py)
PEAKS: dict[str, dict[str, tuple[float, str]]] = _peaks()


def normalize_gpu(name: str) -> str:
    return gpu_type(name).name


def peak_tflops(gpu_type: str, precision: str) -> PeakSpec:
    """Dense peak for a GPU type and training precision ('bf16', 'fp16', 'fp8'; fp4 counts as fp8)."""
    gpu = normalize_gpu(gpu_type)
    prec = precision.strip().lower()
    if prec in ("mxfp8", "e4m3", "hybrid", "tensorwise", "delayed", "blockwise"):
        prec = "fp8"  # every FP8 recipe runs its GEMMs at the FP8 tensor-core rate
    table = PEAKS[gpu]
    if prec not in table:
        raise BenchError(f"no {prec} peak for {gpu}", hint=f"{gpu} has peaks for {', '.join(table)}")
    tflops, source = table[prec]
    return PeakSpec(gpu, prec, tflops, source)
