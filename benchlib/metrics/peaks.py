"""Peak dense (non-sparse) tensor-core TFLOP/s per GPU, the denominator of MFU.

Vendor datasheets quote sparse figures next to dense ones; MFU uses the dense figure. Every
entry carries its source so a result JSON can say which peak it divided by.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import BenchError, did_you_mean


@dataclass(frozen=True)
class PeakSpec:
    gpu_type: str
    precision: str
    tflops: float
    source: str

    def to_json(self) -> dict:
        return asdict(self)


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (SXM): BF16 312 TFLOPS dense (624 with sparsity); no FP8"
_H100 = ("NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16 1,979 / FP8 3,958 TFLOPS with sparsity, "
         "dense is half: 989.4 / 1,978.9")
_H200 = ("NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 1,979 / FP8 3,958 TFLOPS with sparsity "
         "(same compute as H100 SXM), dense is half: 989.4 / 1,978.9")
_B200 = ("NVIDIA DGX B200 / HGX B200 datasheet: 72 PFLOPS FP8 training and 36 PFLOPS FP16/BF16 "
         "per 8 GPUs with sparsity; per GPU dense: 2,250 BF16, 4,500 FP8")
_GB200 = ("NVIDIA GB200 NVL72 datasheet: 360 PFLOPS FP16/BF16 and 720 PFLOPS FP8 with sparsity per 72 GPUs; "
          "per GPU dense: 2,500 BF16, 5,000 FP8")
_GB300 = ("NVIDIA GB300 NVL72 datasheet: 360 PFLOPS FP16/BF16 and 720 PFLOPS FP8/FP6 with sparsity per 72 GPUs "
          "(Blackwell Ultra adds FP4, not BF16/FP8); per GPU dense: 2,500 BF16, 5,000 FP8")

# gpu_type -> precision -> (dense TFLOP/s, source)
PEAKS: dict[str, dict[str, tuple[float, str]]] = {
    "A100": {"bf16": (312.0, _A100), "fp16": (312.0, _A100)},
    "H100": {"bf16": (989.4, _H100), "fp16": (989.4, _H100), "fp8": (1978.9, _H100)},
    "H200": {"bf16": (989.4, _H200), "fp16": (989.4, _H200), "fp8": (1978.9, _H200)},
    "B200": {"bf16": (2250.0, _B200), "fp16": (2250.0, _B200), "fp8": (4500.0, _B200)},
    "GB200": {"bf16": (2500.0, _GB200), "fp16": (2500.0, _GB200), "fp8": (5000.0, _GB200)},
    "GB300": {"bf16": (2500.0, _GB300), "fp16": (2500.0, _GB300), "fp8": (5000.0, _GB300)},
}

GPU_TYPES: tuple[str, ...] = tuple(PEAKS)


def normalize_gpu(gpu_type: str) -> str:
    key = gpu_type.strip().upper().replace("-SXM", "").replace("_SXM", "")
    if key not in PEAKS:
        raise BenchError(f"unknown GPU type {gpu_type!r}{did_you_mean(key, GPU_TYPES)}",
                         hint=f"use one of {', '.join(GPU_TYPES)}")
    return key


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
