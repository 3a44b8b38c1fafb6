"""GPU specs the planner and the memory check use: memory, NVLink and network bandwidth.

Peak TFLOP/s come from `benchlib.metrics.peaks` (one table for MFU and planning). Bandwidths
are per GPU and per direction, from vendor datasheets; memory is what CUDA reports as the
device's total (`torch.cuda.get_device_properties(0).total_memory`) where we have seen it,
else the datasheet figure (decimal GB, the lower number).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BenchError, did_you_mean
from ..metrics.peaks import peak_tflops

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    nvlink_gbps: float  # GB/s per GPU per direction inside the NVLink domain
    network_gbps: float  # GB/s per GPU per direction between NVLink domains (scale-out NICs)
    nvlink_domain: int  # GPUs that share one NVLink fabric
    gpus_per_node: int
    source: str

    def peak_tflops(self, precision: str = "bf16") -> float:
        return peak_tflops(self.name, "fp8" if precision in ("fp8", "mxfp8") else "bf16").tflops


GPU_SPECS: dict[str, GpuSpec] = {
    "A100": GpuSpec("A100", 81251 * MIB, 300.0, 25.0, 8, 8,
                    "NVIDIA A100 datasheet: 80 GB HBM2e, NVLink 3 600 GB/s bidirectional; DGX A100 8x 200 Gb/s HDR per node "
                    "(25 GB/s per GPU); memory as CUDA reports an A100-SXM4-80GB"),
    "H100": GpuSpec("H100", 81559 * MIB, 450.0, 50.0, 8, 8,
                    "NVIDIA H100 SXM datasheet: 80 GB HBM3, NVLink 4 900 GB/s bidirectional (450 per direction); "
                    "DGX H100: 8x ConnectX-7 400 Gb/s, one per GPU (50 GB/s); memory as CUDA reports an H100 80GB HBM3"),
    "H200": GpuSpec("H200", 143771 * MIB, 450.0, 50.0, 8, 8,
                    "NVIDIA H200 SXM datasheet: 141 GB HBM3e, NVLink 4 900 GB/s bidirectional; DGX H200: 8x ConnectX-7 "
                    "400 Gb/s (50 GB/s per GPU); memory as CUDA reports an H200"),
    "B200": GpuSpec("B200", 180 * 10**9, 900.0, 50.0, 8, 8,
                    "NVIDIA DGX B200 datasheet: 1,440 GB HBM3e per 8 GPUs (180 GB each), NVLink 5 1.8 TB/s bidirectional "
                    "per GPU; 8x ConnectX-7 400 Gb/s (50 GB/s per GPU)"),
    "GB200": GpuSpec("GB200", 186 * 10**9, 900.0, 50.0, 72, 4,
                     "NVIDIA GB200 NVL72 datasheet: 13.4 TB HBM3e per 72 GPUs (186 GB each), NVLink 5 1.8 TB/s "
                     "bidirectional per GPU across the 72-GPU domain; ConnectX-7 400 Gb/s per GPU off the rack"),
    "GB300": GpuSpec("GB300", 279 * 10**9, 900.0, 100.0, 72, 4,
                     "NVIDIA GB300 NVL72 datasheet: up to 20.1 TB HBM3e per 72 GPUs (279 GB each), NVLink 5 1.8 TB/s "
                     "bidirectional; ConnectX-8 800 Gb/s per GPU"),
}


def gpu_spec(name: str) -> GpuSpec:
    key = name.strip().upper().replace("-SXM", "")
    if key not in GPU_SPECS:  # a device name as CUDA reports it, e.g. "NVIDIA H200" or "NVIDIA H100 80GB HBM3"
        words = key.replace("NVIDIA", " ").replace("-", " ").split()
        key = next((w for w in words if w in GPU_SPECS), key)
    if key not in GPU_SPECS:
        raise BenchError(f"unknown GPU type {name!r}{did_you_mean(key, list(GPU_SPECS))}",
                         hint=f"use one of {', '.join(GPU_SPECS)}")
    return GPU_SPECS[key]
