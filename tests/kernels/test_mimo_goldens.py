"""Every MIMO scan golden of the official implementation, reproduced by the public MIMO
scan and step (reference path on the CPU) in float64 and float32."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mamba3_integrations.kernels import mamba3_mimo_scan, mamba3_mimo_step

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
DTYPES = [torch.float64, torch.float32]
SCANS = ["scan_mimo_r4", "scan_mimo_r2_norm", "scan_mimo_decode"]
PARAMS = ["Q_bias", "K_bias", "MIMO_V", "MIMO_O", "MIMO_Z", "D", "Norm_Weight"]
ACTIVATIONS = ["Q", "K", "V", "ADT", "DT", "Trap", "Angles", "Z"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def angle_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of angles compared modulo 2*pi."""
    d = torch.remainder(a.double() - b.double() + torch.pi, 2 * torch.pi) - torch.pi
    return (d.norm() / b.double().norm()).item()


def golden_inputs(g: dict, dtype: torch.dtype) -> tuple[dict, tuple | None]:
    """Scan arguments in ``dtype`` (parameters float32 unless float64, as in a model)."""
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    args = {k: g[k].to(dtype) for k in ACTIVATIONS}
    args["Angles"] = g["Angles"].float()
    args.update({k: g[k].to(param_dtype) for k in PARAMS if k in g})
    state = None
    if "init_ssm" in g:
        state = (g["init_angle"].float(), g["init_ssm"].to(param_dtype), g["init_k"].to(dtype),
                 g["init_v"].to(dtype))
    return args, state


def check_final(final: tuple, g: dict, tol: float) -> None:
    angle, ssm, k, v = final
    assert angle_err(angle, g["final_angle"]) < tol
    for ours, key in ((ssm, "final_ssm"), (k, "final_k"), (v, "final_v")):
        assert rel_err(ours, g[key]) < tol, key


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SCANS)
def test_scan_prefill_and_final_states(golden_dir, name, dtype):
    g = load_file(golden_dir / f"{name}.safetensors")
    args, state = golden_inputs(g, dtype)
    out, final = mamba3_mimo_scan(**args, initial_state=state, return_final_state=True)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == g["out"].shape
    assert rel_err(out, g["out"]) < tol
    if "step_out" in g:  # the official token-by-token reference
        assert rel_err(out, g["step_out"]) < tol
    check_final(final, g, tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SCANS)
def test_scan_token_by_token(golden_dir, name, dtype):
    g = load_file(golden_dir / f"{name}.safetensors")
    args, state = golden_inputs(g, dtype)
    if state is None:
        batch, _, rank, _, d_state = args["Q"].shape
        nheads, headdim = args["V"].shape[2:]
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        state = (torch.zeros(batch, nheads, args["Angles"].shape[-1]),
                 torch.zeros(batch, nheads, headdim, d_state, dtype=ssm_dtype),
                 torch.zeros(batch, rank, nheads, d_state, dtype=dtype),
                 torch.zeros(batch, nheads, headdim, dtype=dtype))
    outs = []
    for t in range(args["V"].shape[1]):
        token = {k: args[k][:, :, t] if args[k].dim() == 3 else args[k][:, t]
                 for k in ACTIVATIONS}
        y, state = mamba3_mimo_step(**token, **{k: args[k] for k in PARAMS if k in args},
                                    state=state)
        outs.append(y)
    tol = TOLERANCE[dtype]
    assert rel_err(torch.stack(outs, dim=1), g["out"]) < tol
    check_final(state, g, tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_rank_output(golden_dir, dtype):
    """Without gate, norm and MIMO_O the scan returns every rank (with the D term)."""
    g = load_file(golden_dir / "scan_mimo_r2_norm.safetensors")
    args, _ = golden_inputs(g, dtype)
    args.update(Z=None, MIMO_Z=None, Norm_Weight=None, MIMO_O=None)
    out = mamba3_mimo_scan(**args)
    assert out.shape == g["out_ranks"].shape
    assert rel_err(out, g["out_ranks"]) < TOLERANCE[dtype]


def test_chunk_size_and_packing_do_not_change_the_result(golden_dir):
    g = load_file(golden_dir / "scan_mimo_decode.safetensors")
    args, state = golden_inputs(g, torch.float64)
    out, final = mamba3_mimo_scan(**args, initial_state=state, return_final_state=True)
    for chunk_size in (1, 3, 64):
        other = mamba3_mimo_scan(**args, initial_state=state, chunk_size=chunk_size)
        assert rel_err(other, out) < 1e-12
    # The two batch rows packed into one row of two sequences.
    seq_axis = {"ADT": 2, "DT": 2, "Trap": 2}
    packed = {k: (torch.cat(v.unbind(0), dim=seq_axis.get(k, 1) - 1).unsqueeze(0)
                  if k in ACTIVATIONS else v) for k, v in args.items()}
    seqlen = args["V"].shape[1]
    cu = torch.tensor([0, seqlen, 2 * seqlen])
    out_p, final_p = mamba3_mimo_scan(**packed, initial_state=state, return_final_state=True,
                                      cu_seqlens=cu)
    assert rel_err(out_p, out.flatten(0, 1).unsqueeze(0)) < 1e-12
    for a, b in zip(final_p, final, strict=True):
        assert rel_err(a, b) < 1e-12
