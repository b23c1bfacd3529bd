"""MIMO Mamba-3: mixer goldens, prefill-then-decode equals a full forward (mixers and a
small LM), left padding, and checkpoints with the official state-dict names."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mamba3_integrations import Mamba3Config, Mamba3ForCausalLM
from mamba3_integrations.modeling import Mamba3LMHeadModel, Mamba3Mixer

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
MIXERS = ["mixer_mimo_r4_gated", "mixer_mimo_r2_outnorm"]
# Angles are float32 as in the official code: the chunked prefill and the recurrence
# agree to float32 rounding (~1e-7 relative) even in a float64 model.
DECODE_TOL = 2e-6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", MIXERS)
def test_mixer_goldens(golden_dir, name, dtype):
    kwargs = json.loads((golden_dir / f"{name}.json").read_text())
    g = load_file(golden_dir / f"{name}.safetensors")
    mixer = Mamba3Mixer(**kwargs, dtype=dtype)
    state = {k.removeprefix("mixer."): v for k, v in g.items() if k.startswith("mixer.")}
    assert sorted(mixer.state_dict()) == sorted(state)  # the official names
    mixer.load_state_dict(state)
    y = mixer(g["u"].to(dtype))
    assert y.dtype == dtype
    assert rel_err(y, g["y"]) < TOLERANCE[dtype]


def random_mixer(seed: int = 0, **kwargs) -> Mamba3Mixer:
    """A float64 MIMO mixer whose every parameter is random (not its initial value)."""
    torch.manual_seed(seed)
    mixer = Mamba3Mixer(32, headdim=8, is_mimo=True, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if name != "dt_bias":
                p.copy_(torch.randn_like(p) * (0.3 if name == "in_proj.weight" else 1.0))
    return mixer.eval()


# d_state, ngroups, rope_fraction, mimo_rank, is_outproj_norm
MIXER_CASES = [
    (16, 1, 0.5, 1, False),
    (48, 2, 0.5, 2, True),
    (32, 1, 1.0, 4, False),
    (48, 2, 1.0, 8, True),
    (48, 1, 0.5, 4, False),
    (20, 2, 1.0, 2, False),
]


@pytest.mark.parametrize("case", MIXER_CASES, ids=str)
def test_mixer_prefill_then_decode_matches_full_forward(case):
    d_state, ngroups, rope, rank, norm = case
    mixer = random_mixer(d_state=d_state, ngroups=ngroups, rope_fraction=rope, mimo_rank=rank,
                         is_outproj_norm=norm, chunk_size=max(1, 16 // rank))
    u = torch.randn(2, 23, 32, dtype=torch.float64)
    full = mixer(u)
    with torch.no_grad():
        cache = mixer.allocate_cache(2)
        assert cache.k.shape == (2, rank, mixer.nheads, d_state)
        parts = [mixer(u[:, :5], cache), mixer(u[:, 5:11], cache)]  # prefill in segments
        parts += [mixer.step(u[:, t], cache).unsqueeze(1) for t in range(11, 23)]
    assert rel_err(torch.cat(parts, dim=1), full) < DECODE_TOL


def mimo_config(**ssm) -> Mamba3Config:
    """A small MIMO hybrid LM: Mamba-3 MIMO, attention, Mamba-3 MIMO (GatedMLP)."""
    return Mamba3Config(
        d_model=32, d_intermediate=64, n_layer=3, vocab_size=61,
        ssm_cfg={"layer": "Mamba3", "d_state": 48, "headdim": 8, "ngroups": 2,
                 "is_mimo": True, "mimo_rank": 4, "chunk_size": 4, **ssm},
        attn_layer_idx=[1],
        attn_cfg={"num_heads": 4, "head_dim": 8, "rotary_emb_dim": 8, "causal": True},
        tie_embeddings=True,
    )


def random_lm(config: Mamba3Config, cls=Mamba3LMHeadModel, seed: int = 0):
    torch.manual_seed(seed)
    model = cls(config, dtype=torch.float64)
    model.init_weights()
    with torch.no_grad():
        model.backbone.embedding.weight.normal_(0, 1.0)
        for name, p in model.named_parameters():
            if name.endswith(("mimo_x", "mimo_z", "mimo_o", "B_bias", "C_bias")):
                p.copy_(torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("ssm", [{}, {"rope_fraction": 1.0, "is_outproj_norm": True,
                                      "mimo_rank": 2, "d_state": 16}], ids=["r4", "r2_outnorm"])
def test_lm_cached_decode_matches_full_forward(ssm):
    model = random_lm(mimo_config(**ssm))
    ids = torch.randint(0, 61, (2, 17))
    full = model(ids).logits
    cache = model.allocate_cache(2)
    logits = [model(ids[:, :6], cache=cache).logits]
    logits += [model.step(ids[:, t], cache).unsqueeze(1) for t in range(6, 17)]
    assert rel_err(torch.cat(logits, dim=1), full) < DECODE_TOL


def test_lm_left_padding_matches_unpadded_rows():
    model = random_lm(mimo_config())
    long, short = torch.randint(0, 61, (1, 12)), torch.randint(0, 61, (1, 7))
    ids = torch.cat((long, torch.cat((torch.zeros(1, 5, dtype=torch.long), short), 1)))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    cache = model.allocate_cache(2)
    logits = model(ids, attention_mask=mask, cache=cache).logits
    nxt = torch.randint(0, 61, (2,))
    step = model.step(nxt, cache)
    for row, alone in ((0, long), (1, short)):
        ref_cache = model.allocate_cache(1)
        ref = model(alone, cache=ref_cache).logits
        assert rel_err(logits[row, -alone.shape[1]:], ref[0]) < DECODE_TOL
        assert rel_err(step[row], model.step(nxt[row:row + 1], ref_cache)[0]) < DECODE_TOL


def official_names(config: Mamba3Config) -> list[str]:
    """The state-dict keys of the official ``MambaLMHeadModel`` for this config."""
    mixer = ["in_proj.weight", "dt_bias", "B_bias", "C_bias", "B_norm.weight",
             "C_norm.weight", "mimo_x", "mimo_z", "mimo_o", "D"]
    mixer += ["norm.weight"] if config.ssm_cfg.get("is_outproj_norm") else []
    mixer += ["out_proj.weight"]
    attention = ["in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"]
    names = ["backbone.embedding.weight"]
    for i in range(config.n_layer):
        prefix = f"backbone.layers.{i}."
        names += [prefix + "norm.weight"]
        names += [prefix + "mixer." + n
                  for n in (attention if i in config.attn_layer_idx else mixer)]
        names += [prefix + "norm2.weight", prefix + "mlp.fc1.weight", prefix + "mlp.fc2.weight"]
    return names + ["backbone.norm_f.weight", "lm_head.weight"]


def test_checkpoint_has_official_names_and_round_trips(tmp_path):
    config = mimo_config(is_outproj_norm=True)
    model = random_lm(config, cls=Mamba3ForCausalLM)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    saved = torch.load(tmp_path / "bin" / "pytorch_model.bin", weights_only=True)
    assert sorted(saved) == sorted(official_names(config))
    layer = "backbone.layers.0.mixer."
    nheads, rank, d_state = 8, 4, 48
    assert saved[layer + "in_proj.weight"].shape == (2 * 64 + 2 * d_state * 2 * rank
                                                     + 3 * nheads + d_state // 4, 32)
    assert saved[layer + "B_bias"].shape == (nheads, rank, d_state)
    assert saved[layer + "mimo_o"].shape == (nheads, rank, 8)
    assert saved[layer + "norm.weight"].shape == (64,)

    model.save_pretrained(tmp_path / "st")
    assert json.loads((tmp_path / "st" / "config.json").read_text())["ssm_cfg"]["is_mimo"]
    loaded = Mamba3ForCausalLM.from_pretrained(tmp_path / "st", dtype=torch.float64)
    ids = torch.randint(0, 61, (1, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
