"""The one GPU table: every fact the suite keeps per GPU type, each with its source.

Peaks (dense tensor-core TFLOP/s, the denominator of MFU), memory as CUDA reports it, NVLink and
network bandwidth (the planner), compute capability (Megatron's CPU validation), and which types
are Blackwell (mxfp8). Other parts read this table; none keeps its own list of GPU types.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from benchlib.core.errors import BenchError, did_you_mean

GIB = 1024**3
MIB = 1024**2

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

# Calibration references: measured, not datasheet (a GEMM never reaches the datasheet peak, a copy
# never reaches the HBM datasheet rate). The lower end of what healthy GPUs gave is the reference.
_H_GEMM = ("measured by benchlib.megatron.calibrate itself (bf16 8192^3 torch.matmul, 50 reps, CUDA events) on one "
           "H200 at full clocks (1980 MHz SM, 583 W) on 2026-12-01: 669, 668 and 671 TFLOP/s in three sittings while "
           "the Qwen3 proxy trained at its best figure (409 TFLOP/s/GPU, bench/results/h200x1_qwen3-30b-a3b-proxy_repeats5.json); "
           "other ways of timing a GEMM read higher (770-790 in earlier notes). Same SMs and clocks on H100 SXM")
_H200_COPY = ("measured on this project's H200 (issue 16; 4,281 GB/s by benchlib.megatron.calibrate on 2026-12-01): 4.0-4.3 TB/s effective for a large device-to-device copy "
              "(bytes read + written), against the datasheet's 4.8 TB/s")
# A GPU below this fraction of its expected calibration value gets a warning naming it.
CALIBRATION_MARGIN = 0.90


@dataclass(frozen=True)
class GpuType:
    """One GPU type. Bandwidths are GB/s per GPU per direction."""

    name: str
    capability: tuple[int, int]  # CUDA compute capability, as torch.cuda.get_device_capability answers
    peaks: dict[str, tuple[float, str]]  # precision -> (dense TFLOP/s, source)
    memory_bytes: int  # what CUDA reports as the device's total where seen, else the datasheet (decimal GB)
    nvlink_gbps: float  # inside the NVLink domain
    network_gbps: float  # between NVLink domains (scale-out NICs)
    nvlink_domain: int  # GPUs that share one NVLink fabric
    gpus_per_node: int
    source: str  # memory and bandwidth source
    hbm_gbps: float = 0.0  # datasheet HBM bandwidth (GB/s), for the calibration's copy test
    # What a healthy GPU of this type measures in the calibration (benchlib.megatron.calibrate), each
    # (value, source); None where nobody has measured one: the calibration then records without judging.
    expected_gemm_tflops: tuple[float, str] | None = None  # bf16 8192^3 torch.matmul, CUDA events
    expected_copy_gbps: tuple[float, str] | None = None  # device-to-device copy, bytes read + written per second
    blackwell: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)


GPU_TABLE: dict[str, GpuType] = {
    "A100": GpuType("A100", (8, 0), {"bf16": (312.0, _A100), "fp16": (312.0, _A100)}, 81251 * MIB, 300.0, 25.0, 8, 8,
                    "NVIDIA A100 datasheet: 80 GB HBM2e, NVLink 3 600 GB/s bidirectional; DGX A100 8x 200 Gb/s HDR per node "
                    "(25 GB/s per GPU); memory as CUDA reports an A100-SXM4-80GB", hbm_gbps=2039.0),
    "H100": GpuType("H100", (9, 0), {"bf16": (989.4, _H100), "fp16": (989.4, _H100), "fp8": (1978.9, _H100)}, 81559 * MIB, 450.0, 50.0, 8, 8,
                    "NVIDIA H100 SXM datasheet: 80 GB HBM3, NVLink 4 900 GB/s bidirectional (450 per direction); "
                    "DGX H100: 8x ConnectX-7 400 Gb/s, one per GPU (50 GB/s); memory as CUDA reports an H100 80GB HBM3", hbm_gbps=3350.0,
                    expected_gemm_tflops=(670.0, _H_GEMM)),
    "H200": GpuType("H200", (9, 0), {"bf16": (989.4, _H200), "fp16": (989.4, _H200), "fp8": (1978.9, _H200)}, 143771 * MIB, 450.0, 50.0, 8, 8,
                    "NVIDIA H200 SXM datasheet: 141 GB HBM3e, NVLink 4 900 GB/s bidirectional; DGX H200: 8x ConnectX-7 "
                    "400 Gb/s (50 GB/s per GPU); memory as CUDA reports an H200", hbm_gbps=4800.0,
                    expected_gemm_tflops=(670.0, _H_GEMM), expected_copy_gbps=(4000.0, _H200_COPY)),
    "B200": GpuType("B200", (10, 0), {"bf16": (2250.0, _B200), "fp16": (2250.0, _B200), "fp8": (4500.0, _B200)}, 180 * 10**9, 900.0, 50.0, 8, 8,
                    "NVIDIA DGX B200 datasheet: 1,440 GB HBM3e per 8 GPUs (180 GB each), NVLink 5 1.8 TB/s bidirectional "
                    "per GPU; 8x ConnectX-7 400 Gb/s (50 GB/s per GPU)", hbm_gbps=8000.0, blackwell=True),
    "GB200": GpuType("GB200", (10, 0), {"bf16": (2500.0, _GB200), "fp16": (2500.0, _GB200), "fp8": (5000.0, _GB200)}, 186 * 10**9, 900.0, 50.0, 72, 4,
                     "NVIDIA GB200 NVL72 datasheet: 13.4 TB HBM3e per 72 GPUs (186 GB each), NVLink 5 1.8 TB/s "
                     "bidirectional per GPU across the 72-GPU domain; ConnectX-7 400 Gb/s per GPU off the rack", hbm_gbps=8000.0, blackwell=True),
    "GB300": GpuType("GB300", (10, 3), {"bf16": (2500.0, _GB300), "fp16": (2500.0, _GB300), "fp8": (5000.0, _GB300)}, 279 * 10**9, 900.0, 100.0, 72, 4,
                     "NVIDIA GB300 NVL72 datasheet: up to 20.1 TB HBM3e per 72 GPUs (279 GB each), NVLink 5 1.8 TB/s "
                     "bidirectional; ConnectX-8 800 Gb/s per GPU", hbm_gbps=8000.0, blackwell=True),
}
GPU_TYPES: tuple[str, ...] = tuple(GPU_TABLE)
BLACKWELL_TYPES: tuple[str, ...] = tuple(name for name, gpu in GPU_TABLE.items() if gpu.blackwell)


def gpu_type(name: str) -> GpuType:
    """A GPU type by name ('H200', 'h200-sxm') or by the device name CUDA / nvidia-smi report
    ('NVIDIA H200', 'NVIDIA H100 80GB HBM3'); unknown names are refused with the valid list."""
    found = match_device_name(name)
    if found is None:
        key = name.strip().upper()
        raise BenchError(f"unknown GPU type {name!r}{did_you_mean(key, GPU_TYPES)}", hint=f"use one of {', '.join(GPU_TYPES)}")
    return GPU_TABLE[found]


def match_device_name(name: str) -> str | None:
    """The table's name for a type or device name, or None."""
    key = name.strip().upper().replace("-SXM", "").replace("_SXM", "")
    if key in GPU_TABLE:
        return key
    words = key.replace("NVIDIA", " ").replace("-", " ").split()
    # longest first, so "GB200" is not read as "B200"
    for candidate in sorted(GPU_TABLE, key=len, reverse=True):
        if candidate in words:
            return candidate
    return None
