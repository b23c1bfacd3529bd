"""The Mamba-3 SISO Triton kernels against the PyTorch reference on small awkward shapes.

Without CUDA the kernels run on the CPU under ``TRITON_INTERPRET=1``, which must be set
before Triton is first imported (``TRITON_INTERPRET=1 pytest tests/kernels``); the
interpreter computes bfloat16 ``tl.dot`` wrongly, so CPU tests use float32 and float16.
The ``gpu`` tests (bfloat16, the public dispatch, larger shapes) need a CUDA device.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton defines any kernel

tl = pytest.importorskip("triton.language")

from mamba3_integrations.kernels import mamba3_scan, mamba3_step  # noqa: E402
from mamba3_integrations.kernels.mamba3_siso_reference import (  # noqa: E402
    mamba3_scan_reference,
    mamba3_step_reference,
)
from mamba3_integrations.kernels.mamba3_siso_triton import (  # noqa: E402
    mamba3_scan_triton,
    mamba3_step_triton,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
if not CUDA and type(tl.sum).__name__ != "InterpretedFunction":
    pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set: run "
                "`TRITON_INTERPRET=1 pytest tests/kernels`", allow_module_level=True)

NAMES = ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles", "D", "Z")
STATE = ("angle", "ssm", "k", "v")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make_inputs(batch, seqlen, ngroups, nheads, d_state, headdim, n_angles, dtype,
                nstates=None, seed=0, step=False):
    """Random scan (or, with ``step``, decode) inputs and an initial state (or None)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    lead = (batch,) if step else (batch, seqlen)
    gates = (batch, nheads) if step else (batch, nheads, seqlen)
    dt = torch.nn.functional.softplus(rand(*gates) - 2)
    x = {
        "Q": rand(*lead, ngroups, d_state).to(dtype), "K": rand(*lead, ngroups, d_state).to(dtype),
        "V": rand(*lead, nheads, headdim).to(dtype), "Z": rand(*lead, nheads, headdim).to(dtype),
        "ADT": -torch.rand(*gates, generator=g) * dt * 4, "DT": dt, "Trap": rand(*gates).to(dtype),
        "Q_bias": rand(nheads, d_state), "K_bias": rand(nheads, d_state),
        # The mixer shares one angle vector across heads: a stride-0 head axis.
        "Angles": rand(*lead, 1, n_angles).expand(*lead, nheads, n_angles), "D": rand(nheads),
    }
    n = nstates or batch
    state = (rand(n, nheads, n_angles) * 4, rand(n, nheads, headdim, d_state),
             rand(n, nheads, d_state).to(dtype), rand(n, nheads, headdim).to(dtype))
    x = {k: v.to(DEVICE) for k, v in x.items()}
    return x, tuple(s.to(DEVICE) for s in state)


def as_float64(x: dict, state):
    return ({k: v.double() for k, v in x.items()},
            None if state is None else tuple(s.double() for s in state))


def run_with_grads(fn, x: dict, state, weights, **kwargs):
    """Output, final state and the gradients of a fixed random projection of both."""
    x = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    state = None if state is None else tuple(s.detach().clone().requires_grad_() for s in state)
    out, final = fn(**x, initial_state=state, return_final_state=True, **kwargs)
    loss = (out.double() * weights[0]).sum()
    loss = loss + sum((f.double() * w).sum() for f, w in zip(final, weights[1:], strict=True))
    loss.backward()
    grads = {k: v.grad for k, v in x.items()}
    if state is not None:
        grads.update({name: s.grad for name, s in zip(STATE, state, strict=True)})
    return out, final, grads


def projection_weights(x: dict, nstates: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    b, l, h, p = x["V"].shape
    n, a = x["Q"].shape[-1], x["Angles"].shape[-1]
    shapes = [(b, l, h, p), (nstates, h, a), (nstates, h, p, n), (nstates, h, n), (nstates, h, p)]
    return [torch.randn(s, generator=g, dtype=torch.float64).to(DEVICE) for s in shapes]


# (batch, seqlen, ngroups, nheads, d_state, headdim, n_angles, chunk, with_state)
SHAPES = [
    (2, 37, 1, 2, 32, 16, 8, 16, False),  # not a multiple of the chunk
    (1, 1, 2, 4, 32, 16, 8, 16, True),  # one token, GQA, a state in
    (2, 50, 2, 4, 36, 20, 9, 32, True),  # padded blocks, odd n_angles, rope on part of N
]


@pytest.fixture(params=[1, 2, 4], ids=lambda n: f"{n}-chunks-per-program")
def chunks_per_program(request, monkeypatch):
    """Super-chunks of 1, 2 and 4 chunks (more than one per sequence in most shapes)."""
    from mamba3_integrations.kernels import mamba3_siso_triton as triton_scan

    monkeypatch.setitem(triton_scan.TUNING, "chunks_per_program", request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(shape, chunks_per_program):
    b, l, g, h, n, p, a, chunk, with_state = shape
    x, state = make_inputs(b, l, g, h, n, p, a, torch.float32)
    state = state if with_state else None
    out, final = mamba3_scan_triton(**x, initial_state=state, return_final_state=True,
                                    chunk_size=chunk)
    x64, state64 = as_float64(x, state)
    ref, ref_final = mamba3_scan_reference(**x64, initial_state=state64,
                                           return_final_state=True)
    assert rel_err(out, ref) < 1e-5
    for name, got, want in zip(STATE, final, ref_final, strict=True):
        assert got.shape == want.shape, name
        assert rel_err(got, want) < 1e-5, name


def test_forward_float16_without_d_and_z():
    x, state = make_inputs(1, 40, 1, 2, 32, 16, 8, torch.float16, seed=3)
    x.pop("D"), x.pop("Z")
    out, final = mamba3_scan_triton(**x, initial_state=state, return_final_state=True,
                                    chunk_size=32)
    x64, state64 = as_float64(x, state)
    ref, ref_final = mamba3_scan_reference(**x64, initial_state=state64,
                                           return_final_state=True)
    assert out.dtype == torch.float16
    assert rel_err(out, ref) < 3e-3
    assert rel_err(final[1], ref_final[1]) < 3e-3


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]], ids=str)
def test_backward_matches_reference(shape, chunks_per_program):
    b, l, g, h, n, p, a, chunk, with_state = shape
    x, state = make_inputs(b, l, g, h, n, p, a, torch.float32, seed=1)
    state = state if with_state else None
    weights = projection_weights(x, b)
    _, _, grads = run_with_grads(mamba3_scan_triton, x, state, weights, chunk_size=chunk)
    x64, state64 = as_float64(x, state)
    _, _, ref = run_with_grads(mamba3_scan_reference, x64, state64, weights)
    assert set(grads) == set(ref)
    for name in ref:
        assert rel_err(grads[name], ref[name]) < 2e-5, name


def test_packed_sequences_match_separate_ones(chunks_per_program):
    lens = [5, 40, 1, 17]
    cu = torch.tensor([0, 5, 45, 46, 63], dtype=torch.int32, device=DEVICE)
    x, state = make_inputs(1, sum(lens), 2, 4, 32, 16, 8, torch.float32, nstates=len(lens),
                           seed=2)
    weights = projection_weights(x, len(lens))
    out, final, grads = run_with_grads(mamba3_scan_triton, x, state, weights, chunk_size=16,
                                       cu_seqlens=cu)

    x64, state64 = as_float64(x, state)
    x64 = {k: v.detach().requires_grad_() for k, v in x64.items()}
    state64 = tuple(s.detach().requires_grad_() for s in state64)
    time_axis = {"Q": 1, "K": 1, "V": 1, "Z": 1, "Angles": 1, "ADT": 2, "DT": 2, "Trap": 2}
    loss = 0
    bounds = cu.tolist()
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = {k: v.narrow(time_axis[k], lo, hi - lo) if k in time_axis else v
                for k, v in x64.items()}
        o, f = mamba3_scan_reference(**part, initial_state=tuple(s[i:i + 1] for s in state64),
                                     return_final_state=True)
        assert rel_err(out[:, lo:hi], o) < 1e-5
        for name, got, want in zip(STATE, final, f, strict=True):
            assert rel_err(got[i:i + 1], want) < 1e-5, name
        loss = loss + (o * weights[0][:, lo:hi]).sum()
        loss = loss + sum((y * w[i:i + 1]).sum() for y, w in zip(f, weights[1:], strict=True))
    loss.backward()
    ref = {k: v.grad for k, v in x64.items()}
    ref.update({name: s.grad for name, s in zip(STATE, state64, strict=True)})
    for name in ref:
        assert rel_err(grads[name], ref[name]) < 2e-5, name


def check_step(x: dict, state: tuple, inplace: bool, **options) -> None:
    """``mamba3_step_triton`` against the reference: output, new state (dtype and
    values), in place or leaving the input state untouched."""
    want_y, want = mamba3_step_reference(**x, state=state)
    mine = tuple(s.clone() for s in state)
    y, new = mamba3_step_triton(**x, state=mine, inplace=inplace, **options)
    assert all((a is b) == inplace for a, b in zip(new, mine, strict=True))
    if not inplace:
        assert all(torch.equal(a, b) for a, b in zip(mine, state, strict=True))
    tol = 1e-5 if state[1].dtype == torch.float32 else 1e-2
    assert rel_err(y, want_y) < tol
    for name, got, ref in zip(STATE, new, want, strict=True):
        assert got.dtype == ref.dtype, name
        assert rel_err(got, ref) < tol, name


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
def test_step_matches_reference(state_dtype, inplace):
    x, state = make_inputs(3, 1, 2, 4, 36, 20, 9, torch.float32, step=True, seed=4)
    check_step(x, (state[0], state[1].to(state_dtype), state[2], state[3]), inplace)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("pblk", [8, 32])
def test_step_tma_matches_reference(state_dtype, inplace, pblk):
    """The state tile by tensor descriptors (Hopper's TMA; the interpreter when asked):
    several programs per head (in place: the arrival counter) or one, d_state below its
    power of two (the descriptor clips the columns), 5 heads of 3 sequences."""
    from mamba3_integrations.kernels.mamba3_siso_triton_step import step_split, step_tma

    x, state = make_inputs(3, 1, 1, 5, 40, 32, 9, torch.float32, step=True, seed=7)
    state = (state[0], state[1].to(state_dtype), state[2], state[3])
    pb, _ = step_split(32, pblk)
    if CUDA and not step_tma((state[1],), 32, pb, 3, True):
        pytest.skip("no TMA on this device")
    assert step_tma((state[1],), 32, pb, 3, True)
    check_step(x, state, inplace, pblk=pblk, tma=True)


def test_step_tma_falls_back_to_pointers():
    """Layouts a descriptor cannot take keep the pointer path: PBLK not dividing P, rows
    of N * element size not a multiple of 16 bytes, non-contiguous states."""
    from mamba3_integrations.kernels.mamba3_siso_triton_step import step_tma

    ssm = torch.zeros(2, 3, 20, 36)
    assert step_tma((ssm,), 20, 4, 2, True)
    assert not step_tma((ssm,), 20, 32, 2, True)
    assert not step_tma((ssm,), 20, 8, 2, True)
    assert not step_tma((ssm.to(torch.bfloat16),), 20, 4, 2, True)
    assert not step_tma((ssm.transpose(2, 3),), 36, 4, 2, True)
    assert not step_tma((ssm,), 20, 4, 2, False)
    x, state = make_inputs(3, 1, 2, 4, 36, 20, 9, torch.float32, step=True, seed=4)
    want_y, want = mamba3_step_reference(**x, state=state)
    y, new = mamba3_step_triton(**x, state=tuple(s.clone() for s in state), inplace=True,
                                pblk=8, tma=True)
    assert rel_err(y, want_y) < 1e-5
    for name, got, ref in zip(STATE, new, want, strict=True):
        assert rel_err(got, ref) < 1e-5, name


def test_step_continues_the_scan():
    """Prefill 20 tokens, then 3 steps: equals one 23-token scan."""
    x, _ = make_inputs(2, 23, 1, 2, 32, 16, 8, torch.float16, seed=5)
    time_axis = {"Q": 1, "K": 1, "V": 1, "Z": 1, "Angles": 1, "ADT": 2, "DT": 2, "Trap": 2}
    full = mamba3_scan_triton(**x, chunk_size=16)
    head = {k: v.narrow(time_axis[k], 0, 20) if k in time_axis else v for k, v in x.items()}
    _, state = mamba3_scan_triton(**head, return_final_state=True, chunk_size=16)
    for t in range(20, 23):
        token = {k: v.select(time_axis[k], t) if k in time_axis else v for k, v in x.items()}
        y, state = mamba3_step_triton(**token, state=state, inplace=True)
        assert rel_err(y, full[:, t]) < 3e-3


def test_reference_dispatch_handles_packed_sequences_on_cpu():
    x, state = make_inputs(1, 30, 1, 2, 16, 8, 4, torch.float64, nstates=2, seed=6)
    x, state = {k: v.cpu() for k, v in x.items()}, tuple(s.cpu() for s in state)
    cu = torch.tensor([0, 12, 30])
    out, final = mamba3_scan(**x, initial_state=state, return_final_state=True, cu_seqlens=cu)
    part = {k: v[:, 12:] if k in ("Q", "K", "V", "Z", "Angles") else v for k, v in x.items()}
    part.update({k: x[k][..., 12:] for k in ("ADT", "DT", "Trap")})
    ref, ref_final = mamba3_scan_reference(**part, initial_state=tuple(s[1:] for s in state),
                                           return_final_state=True)
    torch.testing.assert_close(out[:, 12:], ref)
    torch.testing.assert_close(final[1][1:], ref_final[1])
    with pytest.raises(ValueError, match="cu_seqlens"):
        mamba3_scan(**x, cu_seqlens=torch.tensor([0, 12, 29]))


# ------------------------------------------------------------------------- GPU
@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_dispatch_forward_backward(dtype):
    """The public functions on CUDA (Triton) against the float64 reference."""
    x, state = make_inputs(2, 300, 1, 8, 128, 64, 32, dtype, seed=8)
    weights = projection_weights(x, 2)
    out, final, grads = run_with_grads(mamba3_scan, x, state, weights)
    x64, state64 = as_float64(x, state)
    ref_out, ref_final, ref = run_with_grads(mamba3_scan_reference, x64, state64, weights)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert rel_err(out, ref_out) < tol
    for name, got, want in zip(STATE, final, ref_final, strict=True):
        assert rel_err(got, want) < tol, name
    for name in ref:
        assert rel_err(grads[name], ref[name]) < 3 * tol, name


@gpu
@needs_cuda
def test_gpu_packed_long_sequences():
    lens = [1000, 1, 777, 64]
    cu = torch.tensor([0, 1000, 1001, 1778, 1842], dtype=torch.int32, device=DEVICE)
    x, state = make_inputs(1, sum(lens), 2, 8, 128, 64, 32, torch.bfloat16, nstates=4, seed=9)
    out, final = mamba3_scan(**x, initial_state=state, return_final_state=True, cu_seqlens=cu)
    x64, state64 = as_float64(x, state)
    for i, (lo, hi) in enumerate([(0, 1000), (1000, 1001), (1001, 1778), (1778, 1842)]):
        part = {k: v[:, lo:hi] if k in ("Q", "K", "V", "Z", "Angles") else v
                for k, v in x64.items()}
        part.update({k: x64[k][..., lo:hi] for k in ("ADT", "DT", "Trap")})
        ref, ref_final = mamba3_scan_reference(
            **part, initial_state=tuple(s[i:i + 1] for s in state64), return_final_state=True)
        assert rel_err(out[:, lo:hi], ref) < 2e-2
        assert rel_err(final[1][i:i + 1], ref_final[1]) < 2e-2


@gpu
@needs_cuda
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_gpu_step(state_dtype):
    x, state = make_inputs(16, 1, 1, 64, 128, 64, 32, torch.bfloat16, step=True, seed=10)
    state = (state[0], state[1].to(state_dtype), state[2], state[3])
    x64, state64 = as_float64(x, state)
    want_y, want = mamba3_step_reference(**x64, state=state64)
    y, new = mamba3_step(**x, state=tuple(s.clone() for s in state), inplace=True)
    assert rel_err(y, want_y) < 2e-2
    assert rel_err(new[1], want[1]) < (1e-5 if state_dtype == torch.float32 else 1e-2)


def test_backward_state_is_freed_without_a_gc_pass():
    """The saved chunk states must not sit in a reference cycle (training leaked GPU memory)."""
    import gc

    from mamba3_integrations.kernels import mamba3_siso_triton as triton_scan

    torch.manual_seed(0)
    b, seqlen, h, p, n = 1, 20, 2, 8, 16
    args = dict(Q=torch.randn(b, seqlen, 1, n), K=torch.randn(b, seqlen, 1, n),
                V=torch.randn(b, seqlen, h, p), ADT=-torch.rand(b, h, seqlen),
                DT=torch.rand(b, h, seqlen), Trap=torch.randn(b, h, seqlen),
                Q_bias=torch.randn(h, n), K_bias=torch.randn(h, n),
                Angles=torch.randn(b, seqlen, h, n // 4))
    args = {k: v.to(DEVICE) for k, v in args.items()}
    for tensor in args.values():
        tensor.requires_grad_()
    def saved_alive() -> int:
        return sum(isinstance(o, triton_scan._Saved) for o in gc.get_objects())

    gc.collect()
    before = saved_alive()  # others' (e.g. held by a stored traceback of another test)
    gc.disable()
    try:
        for _ in range(2):
            out = triton_scan.mamba3_scan_triton(**args)
            out = out[0] if isinstance(out, tuple) else out
            out.sum().backward()
            del out
        alive = saved_alive() - before
    finally:
        gc.enable()
    assert alive == 0
