"""The MIMO Triton kernels against the PyTorch reference on small awkward shapes.

Without CUDA the kernels run under ``TRITON_INTERPRET=1`` on the CPU, which must be set
before Triton is first imported (``TRITON_INTERPRET=1 pytest tests``); the ``gpu`` tests
(16-bit inputs, the public dispatch) need a CUDA device and skip otherwise.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

tl = pytest.importorskip("triton.language")
if not torch.cuda.is_available() and type(tl.sum).__name__ != "InterpretedFunction":
    pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set: run "
                "`TRITON_INTERPRET=1 pytest tests`", allow_module_level=True)

from mamba3_integrations.kernels import (  # noqa: E402
    mamba3_mimo_scan,
    mamba3_mimo_step,
    mamba3_mimo_triton,
)
from mamba3_integrations.kernels.mamba3_mimo_reference import (  # noqa: E402
    mamba3_mimo_scan_reference,
    mamba3_mimo_step_reference,
)
from mamba3_integrations.kernels.mamba3_mimo_triton import (  # noqa: E402
    FwdConfig,
    _forward,
    mamba3_mimo_scan_triton,
)
from mamba3_integrations.kernels.mamba3_mimo_triton_step import (  # noqa: E402
    arrival_counters,
    mamba3_mimo_step_triton,
    step_tma,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


SEQ_AXIS = {"Q": 1, "K": 1, "V": 1, "Z": 1, "Angles": 1, "ADT": 2, "DT": 2, "Trap": 2}


def along_seq(x: dict, index: slice | int) -> dict:
    """Scan inputs cut along the tokens (an int drops the axis, as a step wants)."""
    return {k: v[(slice(None),) * SEQ_AXIS[k] + (index,)] if k in SEQ_AXIS else v
            for k, v in x.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(batch: int, seqlen: int, rank: int, ngroups: int, nheads: int, d_state: int,
                headdim: int, n_angles: int, norm: bool = False, seed: int = 0,
                step: bool = False) -> dict:
    """Random scan inputs (float64 on the CPU); ``step`` drops the seqlen axis."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    lead = (batch,) if step else (batch, seqlen)
    scal = (batch, nheads) if step else (batch, nheads, seqlen)
    dt = torch.nn.functional.softplus(rand(*scal) - 2)
    return dict(
        Q=rand(*lead, rank, ngroups, d_state), K=rand(*lead, rank, ngroups, d_state),
        V=rand(*lead, nheads, headdim), ADT=-dt * torch.rand(*scal, generator=g), DT=dt,
        Trap=rand(*scal), Q_bias=rand(nheads, rank, d_state), K_bias=rand(nheads, rank, d_state),
        Angles=rand(*lead, nheads, n_angles) * 2, MIMO_V=rand(nheads, rank, headdim) / rank,
        MIMO_O=rand(nheads, rank, headdim) / rank, D=rand(nheads), Z=rand(*lead, nheads, headdim),
        MIMO_Z=rand(nheads, rank, headdim), Norm_Weight=rand(nheads, headdim) if norm else None,
    )


def make_state(nseq: int, rank: int, nheads: int, d_state: int, headdim: int, n_angles: int,
               seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(nseq, nheads, n_angles, generator=g, dtype=torch.float64) * 6,
            torch.randn(nseq, nheads, headdim, d_state, generator=g, dtype=torch.float64),
            torch.randn(nseq, rank, nheads, d_state, generator=g, dtype=torch.float64),
            torch.randn(nseq, nheads, headdim, generator=g, dtype=torch.float64))


def cast(obj, dtype: torch.dtype, device: str = DEVICE):
    """Tensors (in dicts/tuples) to ``device``; activations to ``dtype``, parameters and
    angles and states to float32 (as a model keeps them)."""
    if isinstance(obj, dict):
        low = {"Q", "K", "V", "Z", "Trap"}
        return {k: None if v is None else v.to(device, dtype if k in low else torch.float32)
                for k, v in obj.items()}
    return tuple(s.to(device, dtype if i >= 2 else torch.float32) for i, s in enumerate(obj))


@pytest.fixture
def small_chunks(monkeypatch):
    """State chunks of a few tokens, so that short inputs cross several chunks."""
    monkeypatch.setattr(mamba3_mimo_triton, "DEFAULT_CONFIG", FwdConfig(rows=16, chunk=8))


# batch, seqlen, rank, ngroups, nheads, d_state, headdim, n_angles, norm, state, rows, chunk
FORWARD_CASES = [
    (2, 37, 4, 1, 2, 32, 16, 8, False, False, 64, 32),   # 2 chunks of 2 sub-chunks, tail
    (1, 1, 2, 2, 4, 48, 16, 12, True, True, 64, 128),    # one token, N not a power of two
    (2, 70, 1, 1, 2, 16, 40, 8, False, True, 64, 128),   # rank 1, chunks of 64, headdim 40
    (1, 20, 8, 2, 2, 32, 32, 16, False, False, 32, 8),   # rank 8, rope 1.0, 3 chunks
    (1, 33, 3, 1, 2, 40, 24, 10, True, True, 32, 16),    # rank 3 (padded), headdim 24
    (1, 9, 2, 1, 2, 16, 16, 4, False, True, 16, 8),      # chunk = sub-chunk, tail of 1
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=str)
def test_forward_matches_reference(case):
    (batch, seqlen, rank, ngroups, nheads, d_state, headdim, n_angles, norm, state, rows,
     chunk) = case
    x = make_inputs(batch, seqlen, rank, ngroups, nheads, d_state, headdim, n_angles, norm)
    init = make_state(batch, rank, nheads, d_state, headdim, n_angles) if state else None
    args = cast(x, torch.float32)
    init32 = cast(init, torch.float32) if init else None
    out, final = _forward(**args, initial_state=init32, return_state=True, cu=None,
                          out_dtype=torch.float32, config=FwdConfig(rows=rows, chunk=chunk))
    ref, ref_final = mamba3_mimo_scan_reference(**x, initial_state=init, return_final_state=True)
    assert rel_err(out, ref) < 1e-5
    angle, *rest = final
    d = torch.remainder(angle.double().cpu() - ref_final[0] + torch.pi, 2 * torch.pi) - torch.pi
    assert d.abs().max() < 1e-5
    for ours, theirs in zip(rest, ref_final[1:], strict=True):
        assert rel_err(ours, theirs) < 1e-5


@pytest.mark.parametrize("chunked", [False, True], ids=["one_chunk", "small_chunks"])
def test_per_rank_output_and_packed_sequences(chunked, request):
    if chunked:
        request.getfixturevalue("small_chunks")
    x = make_inputs(1, 40, 4, 2, 4, 16, 16, 4)
    x["MIMO_O"] = None
    cu = torch.tensor([0, 7, 8, 8, 40])  # with an empty sequence
    init = make_state(4, 4, 4, 16, 16, 4)
    out, final = mamba3_mimo_scan_triton(**cast(x, torch.float32),
                                         initial_state=cast(init, torch.float32),
                                         return_final_state=True, cu_seqlens=cu)
    assert out.shape == (1, 40, 4, 4, 16)
    for i, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        if lo == hi:  # an empty sequence keeps its state
            for ours, theirs in zip(final, init, strict=True):
                assert rel_err(ours[i], theirs[i]) < 1e-6
            continue
        ref, ref_final = mamba3_mimo_scan_reference(
            **along_seq(x, slice(lo, hi)), initial_state=tuple(s[i : i + 1] for s in init),
            return_final_state=True)
        assert rel_err(out[:, lo:hi], ref) < 1e-5
        for ours, theirs in zip(final[1:], ref_final[1:], strict=True):
            assert rel_err(ours[i : i + 1], theirs) < 1e-5


GRAD_CASES = [  # batch, seqlen, rank, ngroups, nheads, d_state, headdim, n_angles, norm, cu
    (2, 37, 4, 1, 2, 32, 16, 8, False, None),
    (1, 21, 2, 2, 4, 48, 16, 12, True, None),
    (1, 40, 8, 1, 2, 16, 16, 8, False, [0, 7, 8, 40]),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_backward_matches_autograd_through_the_reference(case, small_chunks):
    batch, seqlen, rank, ngroups, nheads, d_state, headdim, n_angles, norm, cu = case
    x = make_inputs(batch, seqlen, rank, ngroups, nheads, d_state, headdim, n_angles, norm)
    nseq = batch if cu is None else len(cu) - 1
    init = make_state(nseq, rank, nheads, d_state, headdim, n_angles)
    cu_t = torch.tensor(cu) if cu is not None else None
    weights = torch.randn(batch, seqlen, nheads, headdim, dtype=torch.float64)

    def grads(dtype: torch.dtype, device: str, scan) -> dict:
        leaves = {k: v.to(device, dtype).requires_grad_() for k, v in x.items() if v is not None}
        state = tuple(s.to(device, dtype).requires_grad_() for s in init)
        out = scan(**leaves, initial_state=state, cu_seqlens=cu_t)
        (out * weights.to(device, dtype)).sum().backward()
        named = {k: v.grad for k, v in leaves.items()}
        named.update({f"state{i}": s.grad for i, s in enumerate(state)})
        return named

    ours = grads(torch.float32, DEVICE, mamba3_mimo_scan_triton)
    theirs = grads(torch.float64, "cpu", mamba3_mimo_scan)
    for name, g in theirs.items():
        assert rel_err(ours[name].cpu(), g) < 2e-5, name


# batch, rank, ngroups, nheads, d_state, headdim, n_angles, norm
STEP_CASES = [
    (2, 1, 1, 2, 16, 16, 8, False),
    (3, 2, 2, 4, 48, 16, 12, True),
    (2, 4, 1, 2, 32, 16, 8, False),
    (1, 8, 2, 4, 64, 32, 32, True),
    (2, 4, 2, 4, 32, 48, 8, False),   # 3 programs per head (arrival counter), headdim 48
    (1, 3, 1, 2, 20, 40, 6, False),   # rank 3, N = 20, headdim 40
]


# Step kernel settings: tensor-core products (``tl.dot``, bfloat16 activations) with every
# load first (the small-batch form) or the epilogue's loads where used (the large-batch
# form), and the outer-product form that float32 inputs take.
STEP_VARIANTS = {"dot": dict(fma=False, early=True), "dot_late": dict(fma=False, early=False),
                 "fma": dict(fma=True, early=True)}


def check_step(case: tuple, inplace: bool, **options) -> None:
    """One step of ``case`` (a STEP_CASES row) against the float64 reference on the same
    (rounded) inputs: output, new state (in place: the same tensors; otherwise new ones
    and the input state untouched), arrival counters left at zero. Tensor-core products
    (``fma=False``) take bfloat16 activations, whose 16-bit operands bound the error."""
    batch, rank, ngroups, nheads, d_state, headdim, n_angles, norm = case
    dtype, tol = (torch.bfloat16, 1e-2) if options.get("fma") is False else (torch.float32, 1e-5)
    x = cast(make_inputs(batch, 1, rank, ngroups, nheads, d_state, headdim, n_angles, norm,
                         step=True), dtype)
    live = cast(make_state(batch, rank, nheads, d_state, headdim, n_angles), dtype)
    ref_y, ref_state = mamba3_mimo_step_reference(
        **{k: None if v is None else v.double().cpu() for k, v in x.items()},
        state=tuple(s.double().cpu() for s in live))
    before = tuple(s.clone() for s in live)
    y, new = mamba3_mimo_step_triton(**x, state=live, inplace=inplace, **options)
    assert all((a is b) == inplace for a, b in zip(new, live, strict=True))
    if not inplace:
        assert all(torch.equal(a, b) for a, b in zip(live, before, strict=True))
    assert not arrival_counters(live[1].device, 1).any()  # left at zero
    assert rel_err(y, ref_y) < tol
    for ours, theirs in zip(new, ref_state, strict=True):
        assert rel_err(ours, theirs) < tol


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "new_state"])
@pytest.mark.parametrize("variant", list(STEP_VARIANTS))
@pytest.mark.parametrize("pblk", [16, 64], ids=["p16", "p64"])  # split heads, whole heads
@pytest.mark.parametrize("case", STEP_CASES, ids=str)
def test_step_matches_reference(case, pblk, variant, inplace):
    check_step(case, inplace, pblk=pblk, **STEP_VARIANTS[variant])


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "new_state"])
@pytest.mark.parametrize("pblk", [16, 32], ids=["p16", "p32"])
@pytest.mark.parametrize("d_state", [32, 20])  # whole tile; tile clipped by the descriptor
def test_step_tma_matches_reference(d_state, pblk, inplace):
    """The state tile by tensor descriptors (Hopper's TMA; the interpreter when asked):
    two programs per head (in place: the arrival counter) or one, 4 heads in 2 groups."""
    case = (3, 2, 2, 4, d_state, 32, d_state // 4, False)
    shape = (3, 4, 32, d_state)
    ssm = torch.zeros(shape, device=DEVICE)
    if torch.cuda.is_available() and not step_tma((ssm,), 32, pblk, 3, True):
        pytest.skip("no TMA on this device")
    assert step_tma((ssm,), 32, pblk, 3, True)
    check_step(case, inplace, pblk=pblk, tma=True)


def test_step_with_16bit_products_does_not_drift():
    """48 bfloat16 decode steps (tensor-core form: 16-bit operands, float32 state) from a
    long-memory state stay as close to the float64 scan on the same inputs at the end as
    at the start: rounding errors of the products do not accumulate."""
    steps, rank, nheads, d_state, headdim, n_angles = 48, 4, 2, 32, 16, 8
    x = make_inputs(1, steps, rank, 1, nheads, d_state, headdim, n_angles)
    x["ADT"] = x["ADT"] * 0.05  # alpha close to 1: the state remembers every token
    x = cast(x, torch.bfloat16)
    ref, ref_final = mamba3_mimo_scan_reference(
        **{k: None if v is None else v.double().cpu() for k, v in x.items()},
        return_final_state=True)
    state = cast(tuple(torch.zeros_like(s) for s in make_state(1, rank, nheads, d_state,
                                                                headdim, n_angles)),
                 torch.bfloat16)
    ys = []
    for t in range(steps):
        token = {**x, **along_seq(x, t)}
        y, state = mamba3_mimo_step_triton(**token, state=state, inplace=True, fma=False)
        ys.append(y)
    y = torch.stack(ys, 1)
    first, last = (rel_err(y[:, a:a + 16], ref[:, a:a + 16]) for a in (0, steps - 16))
    # bfloat16 operands and outputs: ~1.5e-2 here (float32 products ~5e-3), flat in time
    assert first < 3e-2 and last < 3e-2 and last < 2 * first + 1e-3, (first, last)
    assert rel_err(state[1], ref_final[1]) < 1e-2


def test_step_tma_falls_back_to_pointers():
    """Layouts a descriptor cannot take keep the pointer path: PBLK not dividing P, rows
    of N * element size not a multiple of 16 bytes, non-contiguous states, mixed dtypes."""
    ssm = torch.zeros(2, 3, 32, 20)
    assert step_tma((ssm, ssm), 32, 16, 2, True)
    assert not step_tma((ssm,), 32, 16, 2, False)
    assert not step_tma((ssm,), 48, 32, 2, True)
    assert not step_tma((torch.zeros(2, 3, 32, 18),), 32, 16, 2, True)
    assert not step_tma((ssm.transpose(2, 3),), 20, 4, 2, True)
    assert not step_tma((ssm, ssm.to(torch.float16)), 32, 16, 2, True)
    check_step((2, 4, 1, 2, 18, 40, 4, False), True, pblk=16, tma=True)  # falls back


_STEP_COMPILE = r"""
import inspect, json, os, re, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamba3_integrations.kernels import mamba3_mimo_triton_step as st

# The benchmark's step (H=64 P=64 N=128 R=4, bf16 activations, float32 state, whole
# heads, 4 warps): B=1 (every load first, no register cap), B=128 (late loads, cap 128)
# and B=128 with the state tile by TMA.
LOW = {"Q", "K", "V", "Z", "TRAP", "KST", "VST", "KST_OUT", "VST_OUT", "OUT"}
const = dict(R=4, KR=16, NB=128, PBLK=64, HAS_D=True, HAS_Z=True, HAS_NORM=False,
             SYNC=False, FAST=True, EVEN=True, FMA=False, ROUND_ONLY=False, nsplit=1)
runs = {"B=1": (dict(EARLY=True, TMA=False), {}),
        "B=128": (dict(EARLY=False, TMA=False), {"maxnreg": 128}),
        "B=128 tma": (dict(EARLY=False, TMA=True), {"maxnreg": 128})}
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
out = {}
for name, (flags, opts) in runs.items():
    sig, attrs = {}, {}
    for i, arg in enumerate(inspect.signature(st._mimo_step_kernel.fn).parameters):
        if arg in const or arg in flags:
            sig[arg] = "constexpr"
        elif arg in ("SSM", "SSM_OUT") and flags["TMA"]:
            sig[arg] = "tensordesc<fp32[64, 128]>"
        elif arg[0].isupper():
            sig[arg] = "*i32" if arg == "COUNTER" else "*bf16" if arg in LOW else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # every size and stride of this shape is a multiple of 16
            sig[arg] = "fp32" if arg == "eps" else "i32"
            attrs[(i,)] = [] if arg == "eps" else [["tt.divisibility", 16]]
    k = triton.compile(ASTSource(st._mimo_step_kernel, sig, {**const, **flags}, attrs),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, "num_stages": 1, **opts})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    out[name] = [int(regs), int(stack), "warp_group_dot" in k.asm["ttgir"]]
print(json.dumps(out))
"""


def test_step_compiles_for_sm90_without_spills():
    """The benchmark-shaped step compiles for sm_90 (no GPU needed) on tensor cores
    (wgmma), without spilling at B=1 (the latency-bound case) and within a few dozen
    bytes under the cap of 128 registers at B=128."""
    from tests.kernels.test_decode_kernels import _compile_for_sm90

    got = _compile_for_sm90(_STEP_COMPILE)
    assert got["B=1"][1] == 0, got
    assert all(regs <= 128 and stack <= 64 for regs, stack, _ in
               (got["B=128"], got["B=128 tma"])), got
    assert all(wgmma for _, _, wgmma in got.values()), got


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_public_dispatch_on_cuda(dtype):
    """16-bit inputs with float32 states through ``mamba3_mimo_scan``/``_step`` on CUDA."""
    x = make_inputs(2, 300, 4, 2, 4, 64, 32, 16, norm=True)
    init = make_state(2, 4, 4, 64, 32, 16)
    out, final = mamba3_mimo_scan(**cast(x, dtype), initial_state=cast(init, dtype),
                                  return_final_state=True)
    ref, ref_final = mamba3_mimo_scan_reference(**x, initial_state=init, return_final_state=True)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert out.dtype == dtype and rel_err(out.cpu(), ref) < tol
    assert rel_err(final[1].cpu(), ref_final[1]) < tol
    new_token = along_seq(make_inputs(2, 1, 4, 2, 4, 64, 32, 16, seed=5), 0)
    token = {**x, **{k: new_token[k] for k in SEQ_AXIS}}
    y, _ = mamba3_mimo_step(**cast(token, dtype), state=final, inplace=True)
    ref_y, _ = mamba3_mimo_step_reference(**token, state=ref_final)
    assert rel_err(y.cpu(), ref_y) < tol
