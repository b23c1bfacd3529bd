"""Mamba-3 kernels: Triton for CUDA, PyTorch references for everything else, one dispatch.

Public functions pick the implementation by device; every one has a reference
twin in a ``*_reference`` module that the tests use as the oracle.
"""

from mamba3_integrations.kernels.attention import attention, attention_decode
from mamba3_integrations.kernels.mamba3_mimo import mamba3_mimo_scan, mamba3_mimo_step
from mamba3_integrations.kernels.mamba3_siso import mamba3_scan, mamba3_step

__all__ = ["attention", "mamba3_scan", "mamba3_step"]
__all__ += ["attention_decode"]
__all__ += ["mamba3_mimo_scan", "mamba3_mimo_step"]
