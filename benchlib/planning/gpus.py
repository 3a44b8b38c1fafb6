"""GPU specs the planner and the memory check use: memory, NVLink and network bandwidth.

Peak TFLOP/s come from `benchlib.metrics.peaks` (one table for MFU and planning). Bandwidths
are per GPU and per direction, from vendor datasheets; memory is what CUDA reports as the
device's total (`torch.cuda.get_device_properties(0).total_memory`) where we have seen it,
else the datasheet figure (decimal GB, the lower number).
"""
from __future__ import annotations

from dataclasses import dataclass

from benchlib.core.gpus import GIB, GPU_TABLE, MIB, gpu_type  # noqa: F401 (GIB, MIB re-exported)
from benchlib.metrics.peaks import peak_tflops



@dataclass(frozen=True)
class GpuSpec:
    """What the planner needs of a GPU type (a view of benchlib/core/gpus.py's table)."""

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
    name: GpuSpec(g.name, g.memory_bytes, g.nvlink_gbps, g.network_gbps, g.nvlink_domain, g.gpus_per_node, g.source)
    for name, g in GPU_TABLE.items()
}


def gpu_spec(name: str) -> GpuSpec:
    return GPU_SPECS[gpu_type(name).name]
