"""Every SISO golden of the official implementation, reproduced in float64 and float32."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mamba3_integrations import Mamba3ForCausalLM
from mamba3_integrations.kernels import mamba3_scan, mamba3_step
from mamba3_integrations.modeling import Mamba3Mixer

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
DTYPES = [torch.float64, torch.float32]
SCANS = ["scan_decode1", "scan_gqa_dz", "scan_mha_init"]
MIXERS = ["mixer_siso_gated", "mixer_siso_outnorm"]
LMS = ["lm_pure", "lm_hybrid_mha"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def angle_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of angles compared modulo 2*pi."""
    d = torch.remainder(a.double() - b.double() + torch.pi, 2 * torch.pi) - torch.pi
    return (d.norm() / b.double().norm()).item()


def scan_inputs(g: dict, dtype: torch.dtype) -> tuple[dict, tuple | None]:
    names = ["Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles", "D", "Z"]
    args = {k: g[k].to(dtype) for k in names if k in g}
    state = None
    if "init_ssm" in g:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        state = (g["init_angle"].float(), g["init_ssm"].to(state_dtype),
                 g["init_k"].to(dtype), g["init_v"].to(dtype))
    return args, state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SCANS)
def test_scan_prefill_and_final_states(golden_dir, name, dtype):
    g = load_file(golden_dir / f"{name}.safetensors")
    args, state = scan_inputs(g, dtype)
    out, (angle, ssm, k, v) = mamba3_scan(**args, initial_state=state, return_final_state=True,
                                          chunk_size=16)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == g["out"].shape
    assert rel_err(out, g["out"]) < tol
    assert angle_err(angle, g["final_angle"]) < tol
    for ours, key in ((ssm, "final_ssm"), (k, "final_k"), (v, "final_v")):
        assert rel_err(ours, g[key]) < tol, key


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SCANS)
def test_scan_step_by_step(golden_dir, name, dtype):
    g = load_file(golden_dir / f"{name}.safetensors")
    args, state = scan_inputs(g, dtype)
    b, seqlen, _, n = args["Q"].shape
    h, p = args["V"].shape[2:]
    if state is None:
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        state = (torch.zeros(b, h, args["Angles"].shape[-1]), torch.zeros(b, h, p, n, dtype=sdt),
                 torch.zeros(b, h, n, dtype=dtype), torch.zeros(b, h, p, dtype=dtype))
    outs = []
    for t in range(seqlen):
        y, state = mamba3_step(
            args["Q"][:, t], args["K"][:, t], args["V"][:, t], args["ADT"][..., t],
            args["DT"][..., t], args["Trap"][..., t], args["Q_bias"], args["K_bias"],
            args["Angles"][:, t], state, D=args.get("D"),
            Z=args["Z"][:, t] if "Z" in args else None,
        )
        outs.append(y)
    assert rel_err(torch.stack(outs, dim=1), g["step_out"]) < TOLERANCE[dtype]


def test_chunk_size_does_not_change_the_result(golden_dir):
    """Only the float32 rounding of the decays moves with the chunking (~1e-8)."""
    g = load_file(golden_dir / "scan_gqa_dz.safetensors")
    args, _ = scan_inputs(g, torch.float64)
    outs = [mamba3_scan(**args, chunk_size=c) for c in (1, 7, 16, 64, 256)]
    for out in outs[1:]:
        assert rel_err(out, outs[0]) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MIXERS)
def test_mixer(golden_dir, name, dtype):
    kwargs = json.loads((golden_dir / f"{name}.json").read_text())
    g = load_file(golden_dir / f"{name}.safetensors")
    mixer = Mamba3Mixer(**kwargs, dtype=dtype)
    mixer.load_state_dict({k.removeprefix("mixer."): v for k, v in g.items()
                           if k.startswith("mixer.")})
    u = g["u"].to(dtype)
    assert rel_err(mixer(u), g["y"]) < TOLERANCE[dtype]
    # Prefill part of the sequence, then decode the rest token by token.
    cache = mixer.allocate_cache(u.shape[0])
    half = u.shape[1] // 2
    ys = [mixer(u[:, :half], cache)] + [mixer.step(u[:, t], cache).unsqueeze(1)
                                        for t in range(half, u.shape[1])]
    assert rel_err(torch.cat(ys, dim=1), g["y"]) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LMS)
def test_language_model_logits_and_greedy(golden_dir, name, dtype):
    folder = golden_dir / name
    g = load_file(folder / "expected.safetensors")
    model = Mamba3ForCausalLM.from_pretrained(folder, dtype=dtype)
    assert rel_err(model(g["input_ids"]).logits, g["logits"]) < TOLERANCE[dtype]
    new = g["greedy"].shape[1] - g["input_ids"].shape[1]
    assert torch.equal(model.generate(g["input_ids"], max_new_tokens=new), g["greedy"])
