"""When the model's decode step runs its fused Triton kernels (one switch for all of them).

On CUDA by default; ``MAMBA3_FUSED_DECODE=0`` or ``MAMBA3_DISABLE_TRITON=1`` turn them off
(the unfused PyTorch step runs), ``MAMBA3_FUSED_DECODE=1`` also turns them on off CUDA,
i.e. in Triton's interpreter (``TRITON_INTERPRET=1``), for tests.
``MAMBA3_DECODE_NORM_LINEAR=0`` keeps a block's add + RMSNorm and the projection after it
as two kernels (``linear_decode.norm_linear_decode_supported``).

Programmatic dependent launch (PDL, ``decode_pdl``): the decode kernels are launched with
``launch_pdl=True`` and their ``PDL`` constexpr on, so a kernel starts while the one
before it finishes; it issues the loads that do not depend on its predecessor (weights,
the SSM state), then ``gdc_wait()`` (the predecessor has finished and its writes are
visible) before it reads the predecessor's output or writes anything, then
``gdc_launch_dependents()`` (the next kernel may start). Every kernel launched with PDL
waits before it triggers, so when a kernel starts, all kernels before its predecessor
have finished: what they wrote (the state of the previous token) may be read before the
wait. On by default on CUDA with compute capability >= 9 and a Triton that has the API
(3.6 and 3.9 do); ``MAMBA3_DECODE_PDL=0`` turns it off; never in the interpreter.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
except ImportError:  # Triton is an optional extra
    HAVE_TRITON = False
else:
    HAVE_TRITON = True

HAVE_PDL = False
gdc_wait = gdc_launch_dependents = None  # without Triton
if HAVE_TRITON:
    try:  # the device-side API and the launch option (Triton 3.6, 3.9)
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except (ImportError, AttributeError):  # pragma: no cover - older Triton
        @triton.jit
        def gdc_wait():
            pass

        @triton.jit
        def gdc_launch_dependents():
            pass
    else:
        HAVE_PDL = "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})

_SM90_DEVICES: dict[int, bool] = {}


def fused_decode_enabled(x: Tensor) -> bool:
    """Whether decode steps on tensors like ``x`` use the fused kernels."""
    setting = os.environ.get("MAMBA3_FUSED_DECODE", "")
    if not HAVE_TRITON or setting == "0":
        return False
    if os.environ.get("MAMBA3_DISABLE_TRITON", "0") not in ("", "0"):
        return False
    return x.is_cuda or setting == "1"


def triton_interpreter() -> bool:
    """Whether Triton kernels run in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def hopper_or_newer(x: Tensor) -> bool:
    """Whether ``x`` lives on a CUDA (not ROCm) device of compute capability >= 9 and
    kernels run compiled (not in Triton's interpreter); cached per device."""
    if not x.is_cuda or torch.version.hip or triton_interpreter():
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    capable = _SM90_DEVICES.get(index)
    if capable is None:
        capable = _SM90_DEVICES[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return capable


def decode_pdl(x: Tensor) -> bool:
    """Whether the decode kernels on ``x``'s device launch with PDL (see the module
    docstring): ``MAMBA3_DECODE_PDL`` not ``0``, Triton with the API and
    ``hopper_or_newer``. Read at launch (graph capture)."""
    if not HAVE_PDL or os.environ.get("MAMBA3_DECODE_PDL", "1") == "0":
        return False
    return hopper_or_newer(x)


def pdl_launch(pdl: bool) -> dict:
    """Launch options of a kernel launched with ``PDL=pdl`` (none when off, which the
    interpreter also takes)."""
    return {"launch_pdl": True} if pdl else {}
