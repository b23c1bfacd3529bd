"""Decode kernels against their PyTorch twins on small awkward shapes: the split SISO step,
the fused mixer step, the one-row GEMV, add + RMSNorm, add + RMSNorm + GEMV, rotary/cache
write and split-KV attention; the mixer and the whole model decoding with them against the
unfused path.

Without CUDA the kernels run under Triton's interpreter (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton defines any kernel

tl = pytest.importorskip("triton.language")

from mamba3_integrations.kernels import attention_decode_triton, linear_decode  # noqa: E402
from mamba3_integrations.kernels import mamba3_siso_triton_step as step_mod  # noqa: E402
from mamba3_integrations.kernels.add_rms_norm import (  # noqa: E402
    add_rms_norm_reference,
    add_rms_norm_triton,
)
from mamba3_integrations.kernels.attention_decode_triton import (  # noqa: E402
    cache_attention_reference,
    cache_attention_triton,
    rope_append_reference,
    rope_append_triton,
)
from mamba3_integrations.kernels.mamba3_siso_fused_step import (  # noqa: E402
    fused_split,
    mamba3_fused_step_reference,
    mamba3_fused_step_triton,
)
from mamba3_integrations.kernels.mamba3_siso_reference import mamba3_step_reference  # noqa: E402
from mamba3_integrations.modeling.mamba3_mixer import Mamba3Mixer  # noqa: E402
from tests.kernels.test_siso_triton import STATE, make_inputs, rel_err  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and type(tl.sum).__name__ != "InterpretedFunction":
    pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set: run "
                "`TRITON_INTERPRET=1 pytest tests/kernels`", allow_module_level=True)


@pytest.mark.parametrize("pblk,num_warps,early,evict,tma", [
    (4, 1, False, False, False), (8, 2, True, True, False), (32, 4, True, False, False),
    (4, 2, True, False, True), (4, 1, False, False, True)])
@pytest.mark.parametrize("inplace", [False, True])
def test_split_step_matches_reference(pblk, num_warps, early, evict, inplace, tma):
    """headdim 20 in blocks of 4, 8 (a partial block) or one block; in place, the last
    program of a head writes angle and k, and leaves the arrival counters at zero; the
    state loaded first or late, with or without streaming hints, through pointers or
    tensor descriptors (``tma``: d_state 36 in blocks of 64 columns)."""
    x, state = make_inputs(3, 1, 2, 4, 36, 20, 9, torch.float32, step=True, seed=11)
    want_y, want = mamba3_step_reference(**x, state=state)
    mine = tuple(s.clone() for s in state)
    out = mine if inplace else tuple(torch.empty_like(s) for s in mine)
    y = torch.empty_like(x["V"])
    step_mod.launch_step(x["Q"], x["K"], x["V"], x["ADT"], x["DT"], x["Trap"], x["Q_bias"],
                         x["K_bias"], x["Angles"].contiguous(), x["D"], x["Z"], mine, out, y,
                         pblk=pblk, num_warps=num_warps, early_load=early, evict=evict,
                         tma=tma)
    if tma and not step_mod.step_tma((mine[1], out[1]), 20, pblk, 3, True):
        pytest.skip("no TMA on this device")
    assert rel_err(y, want_y) < 1e-5
    for name, got, ref in zip(STATE, out, want, strict=True):
        assert rel_err(got, ref) < 1e-5, name
    counters = step_mod._COUNTERS.get(torch.device(DEVICE))
    assert counters is None or not counters.any()


def make_mixer(dtype, ngroups=2, is_outproj_norm=False, headdim=12, d_state=14, seed=0):
    torch.manual_seed(seed)
    mixer = Mamba3Mixer(24, d_state=d_state, expand=2, headdim=headdim, ngroups=ngroups,
                        is_outproj_norm=is_outproj_norm, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        for p in (mixer.B_bias, mixer.C_bias, mixer.D, mixer.B_norm.weight,
                  mixer.C_norm.weight, mixer.dt_bias):
            p.add_(torch.randn_like(p) * 0.3)
        if is_outproj_norm:
            mixer.norm.weight.add_(torch.randn_like(mixer.norm.weight) * 0.3)
    return mixer


def random_cache(mixer, batch, seed):
    cache = mixer.allocate_cache(batch)
    g = torch.Generator().manual_seed(seed)
    for t in cache.as_tuple():
        t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))
    return cache


@pytest.mark.parametrize("is_outproj_norm,cast,pblk,early", [
    (False, False, 4, False), (True, False, 4, True), (False, True, 4, True),
    (False, False, None, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_step_matches_reference(is_outproj_norm, cast, pblk, early, dtype):
    """``cast``: a model converted with ``.to(dtype)`` (dt_bias, D and biases 16-bit too);
    ``pblk`` None: the automatic split (few sequences: smaller blocks, several programs
    per head); ``early``: the state tile loaded first."""
    mixer = make_mixer(dtype, is_outproj_norm=is_outproj_norm)
    if cast:
        mixer = mixer.to(dtype)
    w = mixer.step_weights()
    g = torch.Generator().manual_seed(3)
    zx = (torch.randn(3, mixer.in_proj.out_features, generator=g) * 2).to(DEVICE, dtype)
    zx[0, -mixer.n_angles - 3 * mixer.nheads] = 30.0  # softplus above its threshold
    zx[1, -mixer.n_angles - 2 * mixer.nheads] = 2.5  # dd_A >= 0
    ref_state = random_cache(mixer, 3, 5)
    state = random_cache(mixer, 3, 5)
    want = mamba3_fused_step_reference(
        zx, (ref_state.angle, ref_state.ssm, ref_state.k[:, 0], ref_state.v), w)
    got = mamba3_fused_step_triton(zx, (state.angle, state.ssm, state.k[:, 0], state.v), w,
                                   pblk=pblk, num_warps=2, early_load=early)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    assert rel_err(got, want) < tol
    for name, a, b in zip(STATE, state.as_tuple(), ref_state.as_tuple(), strict=True):
        assert rel_err(a, b) < tol, name


@pytest.mark.parametrize("is_outproj_norm,pblk", [(False, 4), (False, None), (True, None)])
@pytest.mark.parametrize("early", [False, True])
def test_fused_step_tma_matches_reference(is_outproj_norm, pblk, early):
    """The fused step with its state tile by tensor descriptors: 3 heads of headdim 16 in
    blocks of 4 (the arrival counter), the automatic split or whole heads (gated
    RMSNorm); d_state 20 in blocks of 32 columns."""
    mixer = make_mixer(torch.float32, ngroups=1, is_outproj_norm=is_outproj_norm,
                       headdim=16, d_state=20)
    w = mixer.step_weights()
    g = torch.Generator().manual_seed(4)
    zx = torch.randn(3, mixer.in_proj.out_features, generator=g).to(DEVICE)
    ref_state = random_cache(mixer, 3, 6)
    state = random_cache(mixer, 3, 6)
    pb = fused_split(3, mixer.nheads, 16, is_outproj_norm, pblk)[0]
    if not step_mod.step_tma((state.ssm,), 16, pb, 3, True):
        pytest.skip("no TMA on this device")
    want = mamba3_fused_step_reference(
        zx, (ref_state.angle, ref_state.ssm, ref_state.k[:, 0], ref_state.v), w)
    got = mamba3_fused_step_triton(zx, (state.angle, state.ssm, state.k[:, 0], state.v), w,
                                   pblk=pblk, num_warps=2, early_load=early, tma=True)
    assert rel_err(got, want) < 1e-5
    for name, a, b in zip(STATE, state.as_tuple(), ref_state.as_tuple(), strict=True):
        assert rel_err(a, b) < 1e-5, name
    counters = step_mod._COUNTERS.get(torch.device(DEVICE))
    assert counters is None or not counters.any()


@pytest.mark.parametrize("is_outproj_norm", [False, True])
def test_mixer_fused_step_equals_unfused(monkeypatch, is_outproj_norm):
    """Three decode steps of the mixer: the fused kernel against the unfused path."""
    mixer = make_mixer(torch.float32, ngroups=1, is_outproj_norm=is_outproj_norm, headdim=16,
                       d_state=16)
    u = torch.randn(4, 2, 24, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    caches = {}
    for fused in ("0", "1"):
        monkeypatch.setenv("MAMBA3_FUSED_DECODE", fused)
        cache = random_cache(mixer, 2, 9)
        caches[fused] = ([mixer.step(u[t], cache) for t in range(4)], cache)
    (want, want_cache), (got, got_cache) = caches["0"], caches["1"]
    for a, b in zip(got, want, strict=True):
        assert rel_err(a, b) < 1e-5
    for name, a, b in zip(STATE, got_cache.as_tuple(), want_cache.as_tuple(), strict=True):
        assert rel_err(a, b) < 1e-5, name


@pytest.mark.parametrize("is_mimo", [False, True])
@pytest.mark.parametrize("fused", ["0", "1"])
def test_mixer_step_takes_projected_input(monkeypatch, is_mimo, fused):
    """``step(in_proj(u), projected=True)`` (what the block's fused norm + in_proj hands
    over) equals ``step(u)``: the fused SISO step, the unfused one, MIMO."""
    monkeypatch.setenv("MAMBA3_FUSED_DECODE", fused)
    torch.manual_seed(0)
    mixer = Mamba3Mixer(24, d_state=16, expand=2, headdim=16, ngroups=1, is_mimo=is_mimo,
                        mimo_rank=2, device=DEVICE, dtype=torch.float32)
    u = torch.randn(3, 1, 24, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    caches = [random_cache(mixer, 1, 9) for _ in range(2)]
    for t in range(3):
        want = mixer.step(u[t], caches[0])
        got = mixer.step(torch.nn.functional.linear(u[t], mixer.in_proj.weight), caches[1],
                         projected=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(caches[1].as_tuple(), caches[0].as_tuple(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_split_fills_the_gpu_at_batch_one():
    """Batch 1, 64 heads of 64: blocks of 8 rows (512 programs); large batches keep the step
    kernel's blocks; the gated RMSNorm keeps whole heads."""
    assert fused_split(1, 64, 64, False) == (8, 8, True)
    pb = step_mod.STEP_CONFIG["pblk"]
    assert fused_split(128, 64, 64, False) == (pb, 64 // pb, False)
    assert fused_split(1, 64, 64, True) == (64, 1, False)
    assert fused_split(1, 4, 12, False, pblk=4) == (4, 3, False)


# ------------------------------------------------------------ one-row GEMV
@pytest.mark.parametrize("n_out,k_in,block_n,block_k", [
    (37, 45, 8, 16),  # N and K not multiples of the blocks
    (5, 100, 4, 32),  # fewer rows than one block
    (64, 96, 8, 32),  # even K (no masks), several K tiles
    (24, 24, 16, 64),  # one K tile wider than K
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(n_out, k_in, block_n, block_k, dtype, bias):
    """The GEMV kernel against F.linear in float32 rounded once to the dtype: one row, and
    three rows (the kernel's row axis); a row stride longer than the row."""
    g = torch.Generator().manual_seed(n_out + k_in)
    w = torch.randn(n_out, k_in, generator=g).to(DEVICE, dtype)
    b = torch.randn(n_out, generator=g).to(DEVICE, dtype) if bias else None
    for rows in (1, 3):
        x = torch.randn(rows, k_in + 3, generator=g).to(DEVICE, dtype)[:, :k_in]
        want = torch.nn.functional.linear(x.float(), w.float(),
                                          None if b is None else b.float()).to(dtype)
        got = linear_decode.linear_decode_triton(x, w, b, block_n=block_n, block_k=block_k,
                                                 num_warps=2)
        assert got.dtype == dtype and got.shape == (rows, n_out)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("n_pf", [1, 37, 1000, 5000])
def test_gemv_prefetch_keeps_results(n_pf):
    """Pulling another tensor into L2 (the SSM state) changes neither the GEMV's result
    nor that tensor: few or many elements per program, one or three rows."""
    g = torch.Generator().manual_seed(n_pf)
    w = torch.randn(37, 45, generator=g).to(DEVICE)
    state = torch.randn(n_pf, generator=g).to(DEVICE)
    before = state.clone()
    for rows in (1, 3):
        x = torch.randn(rows, 45, generator=g).to(DEVICE)
        want = linear_decode.linear_decode_triton(x, w, block_n=8, block_k=16, num_warps=2)
        got = linear_decode.linear_decode_triton(x, w, block_n=8, block_k=16, num_warps=2,
                                                 prefetch=state)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(state, before, rtol=0, atol=0)


def test_decode_linear_dispatch(monkeypatch):
    """The kernel for one row with the fused decode on; F.linear for more rows, mixed
    dtypes, autograd, or the fused decode off (the results say which ran: none differ)."""
    monkeypatch.setenv("MAMBA3_FUSED_DECODE", "1")
    w = torch.randn(6, 8, device=DEVICE)
    x = torch.randn(1, 1, 8, device=DEVICE)
    assert linear_decode.linear_decode_supported(x, w)
    assert linear_decode.decode_linear(x, w).shape == (1, 1, 6)
    assert not linear_decode.linear_decode_supported(torch.randn(2, 8, device=DEVICE), w)
    assert not linear_decode.linear_decode_supported(x.half(), w)
    assert not linear_decode.linear_decode_supported(x, w.requires_grad_())
    with torch.no_grad():
        assert linear_decode.linear_decode_supported(x, w)
    monkeypatch.setenv("MAMBA3_FUSED_DECODE", "0")
    assert not linear_decode.linear_decode_supported(x, w.detach())
    with pytest.raises(ValueError, match="features"):
        linear_decode.linear_decode_triton(torch.randn(1, 7, device=DEVICE), w.detach())


# ------------------------------------------------------------ add + RMSNorm
@pytest.mark.parametrize("residual_in_fp32", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("first", [False, True])
def test_add_rms_norm_matches_reference(residual_in_fp32, dtype, first):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 37, generator=g).to(DEVICE, dtype)
    res_dtype = torch.float32 if residual_in_fp32 else dtype
    residual = None if first else torch.randn(3, 37, generator=g).to(DEVICE, res_dtype)
    weight = torch.randn(37, generator=g).to(DEVICE, dtype)
    want = add_rms_norm_reference(hidden, residual, weight, 1e-5, residual_in_fp32)
    got = add_rms_norm_triton(hidden, residual, weight, 1e-5, residual_in_fp32)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=2e-3 if dtype == torch.float16 else 1e-5,
                                   atol=1e-5)


# ------------------------------------------------------------ add + RMSNorm + GEMV
@pytest.mark.parametrize("n_out,k_in,block_n,block_k,bias", [
    (37, 45, 8, 16, True),  # N and K not multiples of the blocks, several K tiles
    (5, 100, 4, 128, False),  # fewer rows than one block, K in one masked tile
    (64, 96, 8, 32, False),  # even K (no masks), several K tiles
    (24, 24, 16, None, True),  # the default settings (the whole row in one tile)
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("residual_kind", ["none", "same", "fp32"])
@pytest.mark.parametrize("residual_in_fp32", [False, True])
def test_norm_linear_matches_reference(n_out, k_in, block_n, block_k, dtype, residual_kind,
                                       residual_in_fp32, bias):
    """The fused add + RMSNorm + GEMV against ``add_rms_norm_reference`` then F.linear (the
    residual bit for bit, y to float32 sums), and against the two kernels it replaces
    (``add_rms_norm`` then the GEMV, same tiles): bit for bit in the interpreter where the
    row is one tile (the same sum of squares; the normalised row is rounded to the dtype
    before the GEMV, as there). One and three rows; no residual (the first block), one in
    the dtype, or a float32 one."""
    g = torch.Generator().manual_seed(n_out * k_in)
    res_dtype = {"none": None, "same": dtype, "fp32": torch.float32}[residual_kind]
    nw = (1 + 0.3 * torch.randn(k_in, generator=g)).to(DEVICE, dtype)
    w = torch.randn(n_out, k_in, generator=g).to(DEVICE, dtype)
    b = torch.randn(n_out, generator=g).to(DEVICE, dtype) if bias else None
    settings = dict(block_n=block_n, block_k=block_k, num_warps=2)
    for rows in (1, 3):
        hidden = (torch.randn(rows, k_in, generator=g) * 2).to(DEVICE, dtype)
        residual = (None if res_dtype is None else
                    torch.randn(rows, k_in, generator=g).to(DEVICE, res_dtype))
        y, res = linear_decode.norm_linear_decode_triton(
            hidden, residual, nw, 1e-5, w, b, residual_in_fp32, **settings)
        normed, want_res = add_rms_norm_reference(hidden, residual, nw, 1e-5, residual_in_fp32)
        want = torch.nn.functional.linear(normed.float(), w.float(),
                                          None if b is None else b.float()).to(dtype)
        two_normed, two_res = add_rms_norm_triton(hidden, residual, nw, 1e-5, residual_in_fp32)
        assert y.dtype == dtype and y.shape == (rows, n_out)
        assert res.dtype == want_res.dtype and torch.equal(res, two_res)
        if not (residual_in_fp32 and res_dtype == dtype != torch.float32):
            # (else the float32 sum, unrounded, as add_rms_norm; a model's residual is
            # already float32 there)
            assert torch.equal(res, want_res)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(y, want, rtol=tol, atol=tol)
        cfg = linear_decode.norm_gemv_config(n_out, k_in)
        two = linear_decode.linear_decode_triton(
            two_normed, w, b, block_n=block_n or cfg["block_n"],
            block_k=block_k or cfg["block_k"], num_warps=2)
        if CUDA or (block_k or k_in) < k_in:  # sums of squares in another order
            torch.testing.assert_close(y, two, rtol=tol, atol=tol)
        else:
            assert torch.equal(y, two)


def test_norm_linear_shapes_and_dispatch(monkeypatch):
    """Leading axes are kept; the fused kernel for one row with the fused decode on and
    the norm weight in the weight's dtype, not for two rows, other dtypes, autograd, the
    fused decode off or ``MAMBA3_DECODE_NORM_LINEAR=0``; mismatched shapes raise."""
    monkeypatch.setenv("MAMBA3_FUSED_DECODE", "1")
    monkeypatch.delenv("MAMBA3_DECODE_NORM_LINEAR", raising=False)
    supported = linear_decode.norm_linear_decode_supported
    w, nw = torch.randn(6, 8, device=DEVICE), torch.ones(8, device=DEVICE)
    h = torch.randn(1, 1, 8, device=DEVICE)
    r = torch.randn(1, 1, 8, device=DEVICE)
    y, res = linear_decode.norm_linear_decode_triton(h, r, nw, 1e-5, w)
    assert y.shape == (1, 1, 6) and res.shape == (1, 1, 8)
    assert supported(h, r, nw, w) and supported(h, None, nw, w)
    assert supported(h.half(), r, nw.half(), w.half())  # float32 residual, half the rest
    assert not supported(torch.randn(2, 8, device=DEVICE), None, nw, w)
    assert not supported(h, r, nw.half(), w)
    assert not supported(h, r[..., :4], nw, w)
    assert not supported(h, r, nw, w.requires_grad_())
    with torch.no_grad():
        assert supported(h, r, nw, w)
    w = w.detach()
    monkeypatch.setenv("MAMBA3_DECODE_NORM_LINEAR", "0")
    assert not supported(h, r, nw, w)
    monkeypatch.delenv("MAMBA3_DECODE_NORM_LINEAR")
    monkeypatch.setenv("MAMBA3_FUSED_DECODE", "0")
    assert not supported(h, r, nw, w)
    with pytest.raises(ValueError, match="features"):
        linear_decode.norm_linear_decode_triton(h, r, nw[:7], 1e-5, w)
    with pytest.raises(ValueError, match="residual"):
        linear_decode.norm_linear_decode_triton(h, r[..., :4], nw, 1e-5, w)


def test_norm_gemv_config_overrides():
    """``NORM_GEMV_CONFIG`` (the whole row of the model's shapes in one tile), per-shape
    overrides win."""
    assert linear_decode.norm_gemv_config(8672, 2048)["block_k"] >= 2048
    linear_decode.NORM_GEMV_SHAPES[(8672, 2048)] = {"block_n": 2}
    try:
        cfg = linear_decode.norm_gemv_config(8672, 2048)
        assert cfg == {**linear_decode.NORM_GEMV_CONFIG, "block_n": 2}
        assert linear_decode.norm_gemv_config(3072, 2048) == linear_decode.NORM_GEMV_CONFIG
    finally:
        del linear_decode.NORM_GEMV_SHAPES[(8672, 2048)]


# ------------------------------------------------------------ attention decode
def cache_case(batch, slots, h, h_kv, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    keys, values = (torch.randn(batch, slots, h_kv, d, generator=g).to(DEVICE, dtype)
                    for _ in range(2))
    qkv = torch.randn(batch, (h + 2 * h_kv) * d + 5, generator=g).to(DEVICE, dtype)
    return qkv[:, :-5], keys, values  # a row stride longer than the row


@pytest.mark.parametrize("window,position,interleaved", [
    (None, 0, False), (None, 29, True), (7, 3, False), (7, 23, True)])
@pytest.mark.parametrize("pad", [False, True])
def test_rope_append_and_cache_attention_match_reference(window, position, interleaved, pad):
    """KV cache of 37 slots (several splits) or a ring of 7 before and after wrapping;
    GQA (6 query heads on 2 kv heads), rotary on 8 of 12 channels, left padding."""
    batch, h, h_kv, d = 2, 6, 2, 12
    slots = window or 37
    qkv, keys, values = cache_case(batch, slots, h, h_kv, d, torch.float32, position)
    pos = torch.tensor(position, device=DEVICE)
    pads = torch.tensor([0, min(position, 2)], device=DEVICE) if pad else None
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32, device=DEVICE)
                                  / 8))
    k_ref, v_ref = keys.clone(), values.clone()
    q_ref = rope_append_reference(qkv, k_ref, v_ref, pos, pads, h, inv_freq, interleaved,
                                  window)
    q = rope_append_triton(qkv, keys, values, pos, pads, h, inv_freq, interleaved, window)
    torch.testing.assert_close(q, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(keys, k_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(values, v_ref, rtol=0, atol=0)
    want = cache_attention_reference(q_ref, k_ref, v_ref, pos, window, pads, 0.3)
    decode_config = dict(attention_decode_triton.DECODE_CONFIG)
    attention_decode_triton.DECODE_CONFIG.update(block_n=16, target_programs=8)
    try:
        got = cache_attention_triton(q, keys, values, pos, window, pads, 0.3)
    finally:
        attention_decode_triton.DECODE_CONFIG.update(decode_config)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ whole model
@pytest.mark.parametrize("batch", [2, 1])
def test_model_fused_decode_equals_unfused(monkeypatch, batch):
    """A float32 hybrid (Mamba-3 with is_outproj_norm and ngroups 2, global and sliding-window
    attention with conv, GatedMLP), left padding, the ring wrapping: decode through the
    capture-safe path with every fused kernel against the unfused one. Batch 1 also takes
    the GEMV kernel for every projection and the LM head, and the add + RMSNorm + GEMV
    kernel for every norm (before each mixer and MLP, the final one): its launches are
    counted, and it is also compared with the fused decode without it
    (``MAMBA3_DECODE_NORM_LINEAR=0``: ``add_rms_norm`` and the GEMV)."""
    from mamba3_integrations.modeling import Mamba3LMHeadModel
    from mamba3_integrations.modeling import block as block_mod
    from mamba3_integrations.modeling.cache import KVCache, SlidingWindowCache
    from tests.fixtures import hybrid_config

    launches = []
    fused_norm_linear = block_mod.norm_linear_decode_triton

    def counted(*args, **kwargs):
        launches.append(args[4].shape)  # the projection's weight
        return fused_norm_linear(*args, **kwargs)

    monkeypatch.setattr(block_mod, "norm_linear_decode_triton", counted)
    torch.manual_seed(0)
    ssm = {"layer": "Mamba3", "d_state": 16, "headdim": 8, "ngroups": 2,
           "is_outproj_norm": True, "chunk_size": 8}
    model = Mamba3LMHeadModel(hybrid_config(97, window=5, ssm_cfg=ssm), device=DEVICE,
                              dtype=torch.float32)
    model.init_weights()
    model.eval()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    mask = torch.ones(2, 4, dtype=torch.long, device=DEVICE)
    mask[1, :2] = 0
    ids, mask = ids[:batch], mask[:batch]
    logits, counts = {}, {}
    for fused in ("0", "1", "1 without norm + GEMV"):
        monkeypatch.setenv("MAMBA3_FUSED_DECODE", fused[0])
        monkeypatch.setenv("MAMBA3_DECODE_NORM_LINEAR", "0" if " " in fused else "1")
        launches.clear()
        cache = model.allocate_cache(batch, capacity=16)
        model(ids[:, :4], attention_mask=mask, cache=cache)
        position = torch.tensor(4, device=DEVICE)
        for c in cache.layers:
            if isinstance(c, KVCache | SlidingWindowCache):
                c.device_length = position
        out = []
        for t in range(4, ids.shape[1]):
            out.append(model.step(ids[:, t], cache))
            position += 1
        logits[fused], counts[fused] = torch.stack(out), len(launches)
    for fused in ("1", "1 without norm + GEMV"):
        torch.testing.assert_close(logits[fused], logits["0"], rtol=1e-4, atol=1e-4)
    # 4 blocks with a mixer and an MLP norm each, the final norm; 8 tokens
    assert counts == {"0": 0, "1": 9 * 8 if batch == 1 else 0, "1 without norm + GEMV": 0}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_graph_decode_fused_equals_unfused(monkeypatch, dtype):
    """CUDA graphs of the whole step with and without the fused kernels, bf16 included."""
    from mamba3_integrations.modeling import Mamba3LMHeadModel
    from mamba3_integrations.runtime.cuda_graph import CudaGraphDecoder
    from tests.fixtures import hybrid_config

    torch.manual_seed(0)
    ssm = {"layer": "Mamba3", "d_state": 64, "headdim": 32, "chunk_size": 16}
    attn = {"num_heads": 8, "num_heads_kv": 2, "head_dim": 64, "rotary_emb_dim": 32,
            "causal": True}
    model = Mamba3LMHeadModel(hybrid_config(97, window=5, d_model=128, ssm_cfg=ssm,
                                            attn_cfg=attn), device="cuda", dtype=dtype)
    model.init_weights()
    model.eval()
    ids = torch.randint(0, 97, (3, 40), device="cuda")
    cache = model.allocate_cache(3, capacity=40)
    model(ids[:, :9], cache=cache)
    logits = {}
    for fused in ("0", "1"):
        monkeypatch.setenv("MAMBA3_FUSED_DECODE", fused)
        decoder = CudaGraphDecoder(model, cache.clone())
        logits[fused] = torch.stack([decoder.step(ids[:, t]).float() for t in range(9, 40)])
        decoder.close()
    err = ((logits["1"] - logits["0"]).norm() / logits["0"].norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 2e-2)


def graph_kernels(decoder, token) -> int:
    """Kernels in one replay of a CUDA-graph decoder (profiler; 0 if it sees none)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        decoder.step(token)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith("Memcpy"))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_graph_decode_norm_linear_equals_two_kernels(monkeypatch):
    """Batch 1 bfloat16 CUDA graphs with the add + RMSNorm + GEMV kernel and without it
    (``add_rms_norm`` then the GEMV): the same logits up to the order of float32 sums, and
    one kernel fewer per norm (8 blocks of mixer and MLP, the final norm: 17)."""
    from mamba3_integrations.modeling import Mamba3LMHeadModel
    from mamba3_integrations.runtime.cuda_graph import CudaGraphDecoder
    from tests.fixtures import hybrid_config

    torch.manual_seed(0)
    ssm = {"layer": "Mamba3", "d_state": 128, "headdim": 64, "chunk_size": 16}
    attn = {"num_heads": 8, "num_heads_kv": 2, "head_dim": 64, "rotary_emb_dim": 32,
            "causal": True, "qkv_proj_bias": True}
    model = Mamba3LMHeadModel(hybrid_config(4099, window=5, d_model=384, n_layer=8,
                                            d_intermediate=640, attn_layer_idx=[1, 3, 6],
                                            attn_window={3: 5}, ssm_cfg=ssm, attn_cfg=attn),
                              device="cuda", dtype=torch.bfloat16)
    model.init_weights()
    model.eval()
    ids = torch.randint(0, 4099, (1, 40), device="cuda")
    cache = model.allocate_cache(1, capacity=40)
    model(ids[:, :9], cache=cache)
    monkeypatch.setenv("MAMBA3_FUSED_DECODE", "1")
    logits, kernels = {}, {}
    for fused in ("0", "1"):
        monkeypatch.setenv("MAMBA3_DECODE_NORM_LINEAR", fused)
        decoder = CudaGraphDecoder(model, cache.clone())
        logits[fused] = torch.stack([decoder.step(ids[:, t]).float() for t in range(9, 39)])
        kernels[fused] = graph_kernels(decoder, ids[:, 39])
        decoder.close()
    err = ((logits["1"] - logits["0"]).norm() / logits["0"].norm()).item()
    assert err < 1e-2
    if kernels["0"]:
        assert kernels["0"] - kernels["1"] == 17, kernels


# ------------------------------------------------------------ programmatic dependent launch
def test_pdl_switch_off_in_interpreter_and_off_cuda(monkeypatch):
    """PDL only for CUDA tensors outside the interpreter, and ``MAMBA3_DECODE_PDL=0``
    turns it off; off, the kernels take no launch option (the interpreter's path)."""
    from mamba3_integrations.kernels import fused_decode

    monkeypatch.delenv("MAMBA3_DECODE_PDL", raising=False)
    assert not fused_decode.decode_pdl(torch.zeros(2))
    assert fused_decode.pdl_launch(False) == {}
    assert fused_decode.pdl_launch(True) == {"launch_pdl": True}
    if CUDA:
        x = torch.zeros(2, device="cuda")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert not fused_decode.decode_pdl(x)
        monkeypatch.delenv("TRITON_INTERPRET")
        want = fused_decode.HAVE_PDL and torch.cuda.get_device_capability()[0] >= 9
        assert fused_decode.decode_pdl(x) == want
        monkeypatch.setenv("MAMBA3_DECODE_PDL", "0")
        assert not fused_decode.decode_pdl(x)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert not fused_decode.decode_pdl(torch.zeros(2))


def _compile_for_sm90(script: str) -> dict:
    """Run a compile script in a fresh process without the interpreter; its last output
    line is JSON. Skips where no sm_90 compiler (ptxas) is at hand."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode and ("ptxas" in proc.stderr or "CUDA" in proc.stderr.split("\n")[-2]):
        pytest.skip(f"no sm_90 compiler here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_PDL_COMPILE = r"""
import inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamba3_integrations.kernels import add_rms_norm, attention_decode_triton as att
from mamba3_integrations.kernels import linear_decode, mamba3_siso_fused_step as fs

FLOATS = {"eps", "A_floor", "scale_log2"}
INTS = {"POS": "*i64", "PAD": "*i64", "COUNTER": "*i32"}
kernels = [
    (linear_decode._gemv_kernel, dict(BLOCK_N=4, BLOCK_K=256, EVEN_K=False, HAS_BIAS=True,
                                      PF_BLOCK=64, NORM=False, HAS_R=False)),
    (linear_decode._gemv_kernel, dict(BLOCK_N=8, BLOCK_K=256, EVEN_K=False, HAS_BIAS=True,
                                      PF_BLOCK=64, NORM=True, HAS_R=True)),
    (add_rms_norm._add_rms_norm_kernel, dict(BLOCK=256, HAS_R=True)),
    (fs._fused_step_kernel, dict(NB=64, PBLK=16, OUT_NORM=False, SYNC=True, DT_ROUND=True,
                                 EARLY=True, EVICT=False, TMA=False)),
    (att._rope_append_kernel, dict(BD=64, HALF=16, ROTARY=True, INTERLEAVED=False,
                                   HAS_PAD=True, RING=True)),
    (att._split_kv_kernel, dict(BLOCK_N=64, GP=16, BD=64, RING=True, HAS_PAD=True,
                                IEEE=False)),
    (att._combine_kernel, dict(SP=8, BD=64)),
]
out = {}
for fn, const in kernels:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in const or name == "PDL":
            sig[name] = "constexpr"
        elif name in FLOATS:
            sig[name] = "fp32"
        elif name[0].isupper():
            sig[name] = INTS.get(name, "*fp32")
        else:
            sig[name] = "i32"
    for pdl in (False, True):
        src = ASTSource(fn, sig, {**const, "PDL": pdl})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 4, "launch_pdl": pdl})
        ptx = k.asm["ptx"]
        out[f"{fn.__name__} {const.get('NORM', '')} {pdl}"] = [
            "griddepcontrol.wait" in ptx, "griddepcontrol.launch_dependents" in ptx,
            bool(k.metadata.launch_pdl)]
print(json.dumps(out))
"""


def test_pdl_kernels_compile_for_sm90_either_way():
    """Every decode kernel compiles for sm_90 (no GPU needed) with ``PDL`` off (no grid
    dependency instructions) and on (wait and launch_dependents, the launch option)."""

    from mamba3_integrations.kernels import fused_decode

    if not fused_decode.HAVE_PDL:
        pytest.skip("this Triton has no programmatic dependent launch")
    got = _compile_for_sm90(_PDL_COMPILE)
    assert len(got) == 14
    for key, flags in got.items():
        assert flags == ([True] * 3 if key.endswith("True") else [False] * 3), key


_TMA_COMPILE = r"""
import inspect, json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamba3_integrations.kernels import mamba3_siso_fused_step as fs
from mamba3_integrations.kernels import mamba3_siso_triton_step as st

# The state tile of the B=128 step (PBLK 64, N 128, 4 warps), fp32 and bf16 states, and
# the fused step at batch 1 (8 rows, 1 warp, PDL).
kernels = [
    (st._step_kernel, "fp32", dict(NB=128, PBLK=64, HAS_D=True, HAS_Z=True, SYNC=False,
                                   EARLY=True, EVICT=False), 4, {}),
    (st._step_kernel, "bf16", dict(NB=128, PBLK=64, HAS_D=True, HAS_Z=True, SYNC=True,
                                   EARLY=False, EVICT=False), 4, {}),
    (fs._fused_step_kernel, "fp32", dict(NB=128, PBLK=8, OUT_NORM=False, SYNC=True,
                                         DT_ROUND=True, EARLY=True, EVICT=False, PDL=True),
     1, {"launch_pdl": True}),
]
out = {}
for fn, sdt, const, warps, opts in kernels:
    for tma in (False, True):
        sig = {}
        for name in inspect.signature(fn.fn).parameters:
            if name in const or name == "TMA":
                sig[name] = "constexpr"
            elif name in ("SSM", "SSM_OUT"):
                block = f"{const['PBLK']}, {const['NB']}"
                sig[name] = f"tensordesc<{sdt}[{block}]>" if tma else f"*{sdt}"
            elif name in ("eps", "A_floor"):
                sig[name] = "fp32"
            elif name[0].isupper():
                sig[name] = "*i32" if name == "COUNTER" else "*fp32"
            else:
                sig[name] = "i32"
        k = triton.compile(ASTSource(fn, sig, {**const, "TMA": tma}),
                           target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps, **opts})
        ptx = k.asm["ptx"]
        out[f"{fn.__name__} {sdt} {tma}"] = [
            re.search(r"cp\.async\.bulk\.tensor\.2d\.shared::\w+\.global", ptx) is not None,
            "cp.async.bulk.tensor.2d.global.shared" in ptx, k.metadata.shared]
print(json.dumps(out))
"""


def test_tma_step_kernels_compile_for_sm90():
    """The step kernels compile for sm_90 (no GPU needed) with the state tile through
    tensor descriptors (bulk tensor load and store, the tile in shared memory) and
    without (neither, no shared tile)."""

    if step_mod.TensorDescriptor is None:
        pytest.skip("this Triton has no host tensor descriptors")
    got = _compile_for_sm90(_TMA_COMPILE)
    assert len(got) == 6
    for key, (load, store, shared) in got.items():
        tma = key.endswith("True")
        assert load == tma and store == tma, key
        if key.startswith("_step_kernel"):
            tile = 64 * 128 * (4 if " fp32 " in key else 2)
        else:
            tile = 8 * 128 * 4
        assert (shared >= tile) == tma, (key, shared)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 3])
def test_gpu_graph_decode_pdl_equals_no_pdl(monkeypatch, batch):
    """CUDA graphs of the fused step launched with PDL and without: the same logits, bit
    for bit (PDL changes when kernels start, not what they compute), replay after replay.
    Batch 1 takes the GEMV for every projection, batch 3 the other kernels."""
    from mamba3_integrations.kernels import fused_decode
    from mamba3_integrations.modeling import Mamba3LMHeadModel
    from mamba3_integrations.runtime.cuda_graph import CudaGraphDecoder
    from tests.fixtures import hybrid_config

    if not fused_decode.decode_pdl(torch.zeros(1, device="cuda")):
        pytest.skip("no PDL on this device (needs compute capability 9 and the Triton API)")
    torch.manual_seed(0)
    ssm = {"layer": "Mamba3", "d_state": 128, "headdim": 64, "chunk_size": 16}
    attn = {"num_heads": 8, "num_heads_kv": 2, "head_dim": 64, "rotary_emb_dim": 32,
            "causal": True}
    model = Mamba3LMHeadModel(hybrid_config(4099, window=5, d_model=512, n_layer=8,
                                            attn_layer_idx=[1, 3, 6], attn_window={3: 5},
                                            ssm_cfg=ssm, attn_cfg=attn),
                              device="cuda", dtype=torch.bfloat16)
    model.init_weights()
    model.eval()
    ids = torch.randint(0, 4099, (batch, 40), device="cuda")
    cache = model.allocate_cache(batch, capacity=40)
    model(ids[:, :9], cache=cache)
    monkeypatch.setenv("MAMBA3_FUSED_DECODE", "1")
    logits = {}
    for pdl in ("0", "1"):
        monkeypatch.setenv("MAMBA3_DECODE_PDL", pdl)
        decoder = CudaGraphDecoder(model, cache.clone())
        logits[pdl] = torch.stack([decoder.step(ids[:, t]).float() for t in range(9, 40)])
        decoder.close()
    assert torch.isfinite(logits["1"]).all()
    torch.testing.assert_close(logits["1"], logits["0"], rtol=0, atol=0)
