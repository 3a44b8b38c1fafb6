"""Triton kernels behind the native spec's fast paths (imported only where torch is).

Each module holds one operation: a Triton kernel for CUDA tensors, a plain-torch path with the
same result for everything else, and an autograd Function over both. Triton's interpreter runs
the kernels on a CPU, which is how CI checks them: it needs TRITON_INTERPRET=1 before triton is
first imported (tests/conftest.py sets it), and BENCH_KERNELS_ON_CPU=1 sends CPU tensors to the
kernels.
"""
from __future__ import annotations

import os


def use_triton(*tensors: object) -> bool:
    """Triton for CUDA tensors; for CPU tensors only under Triton's interpreter, when asked (tests)."""
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("BENCH_KERNELS_ON_CPU") == "1":
        return True
    return all(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors)
