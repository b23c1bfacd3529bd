"""When the model's decode step runs its fused Triton kernels (one switch for all of them).

On CUDA by default; ``MAMBA3_FUSED_DECODE=0`` or ``MAMBA3_DISABLE_TRITON=1`` turn them off
(the unfused PyTorch step runs), ``MAMBA3_FUSED_DECODE=1`` also turns them on off CUDA,
i.e. in Triton's interpreter (``TRITON_INTERPRET=1``), for tests.
"""

from __future__ import annotations

import os

from torch import Tensor

try:
    import triton  # noqa: F401
except ImportError:  # Triton is an optional extra
    HAVE_TRITON = False
else:
    HAVE_TRITON = True


def fused_decode_enabled(x: Tensor) -> bool:
    """Whether decode steps on tensors like ``x`` use the fused kernels."""
    setting = os.environ.get("MAMBA3_FUSED_DECODE", "")
    if not HAVE_TRITON or setting == "0":
        return False
    if os.environ.get("MAMBA3_DISABLE_TRITON", "0") not in ("", "0"):
        return False
    return x.is_cuda or setting == "1"
