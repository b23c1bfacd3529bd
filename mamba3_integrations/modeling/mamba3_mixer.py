"""The Mamba-3 mixer: official constructor arguments, parameter names and function."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba3_integrations.errors import ConfigError, InputError
from mamba3_integrations.kernels import (
    mamba3_mimo_scan,
    mamba3_mimo_step,
    mamba3_scan,
    mamba3_step,
)
from mamba3_integrations.kernels.linear_decode import decode_linear
from mamba3_integrations.kernels.mamba3_siso_fused_step import (
    FUSED_CONFIG,
    SisoStepWeights,
    fused_step_supported,
    mamba3_fused_step_triton,
)
from mamba3_integrations.modeling.cache import Mamba3LayerCache
from mamba3_integrations.modeling.norms import GatedRMSNorm, RMSNorm, rms_norm


def heavy_tail(x: Tensor) -> Tensor:
    """``1 + x`` for x >= 0 and ``1 / (1 - x)`` for x < 0: positive, smooth at 0."""
    return x.clamp_min(0) + torch.reciprocal(1 - x.clamp_max(0))


class Mamba3Mixer(nn.Module):
    """Mamba-3 sequence mixer (``mamba_ssm.modules.mamba3.Mamba3``), SISO or MIMO.

    Takes the official keyword arguments and state-dict names. ``forward`` runs the
    chunked scan over a sequence (optionally from and to a decode state);
    ``step`` advances a decode state by one token. With ``is_mimo`` every head has
    ``mimo_rank`` B/C vectors per token, mixed by ``mimo_x``, ``mimo_z``, ``mimo_o``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        rope_fraction: float = 0.5,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_floor: float = 1e-4,
        is_outproj_norm: bool = False,
        is_mimo: bool = False,
        mimo_rank: int = 4,
        fuse_pregate_headwise_norm: bool = True,
        chunk_size: int = 64,
        dropout: float = 0.0,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if is_mimo and mimo_rank < 1:
            raise ConfigError(f"mimo_rank must be >= 1, got {mimo_rank}")
        if rope_fraction not in (0.5, 1.0):
            raise ConfigError(f"rope_fraction must be 0.5 or 1.0, got {rope_fraction}")
        self.d_model, self.d_state, self.expand, self.headdim = d_model, d_state, expand, headdim
        self.ngroups, self.chunk_size, self.layer_idx = ngroups, chunk_size, layer_idx
        self.A_floor, self.is_outproj_norm = A_floor, is_outproj_norm
        self.is_mimo, self.mimo_rank = is_mimo, mimo_rank if is_mimo else 1
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ConfigError(f"expand*d_model ({self.d_inner}) must be a multiple of headdim "
                              f"({headdim})")
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ConfigError(f"nheads ({self.nheads}) must be a multiple of ngroups ({ngroups})")
        rotary = int(d_state * rope_fraction)
        self.n_angles = (rotary - rotary % 2) // 2
        if self.n_angles < 1:
            raise ConfigError(f"d_state={d_state} with rope_fraction={rope_fraction} leaves no "
                              "rotary angle")
        self.rope_fraction = rope_fraction

        factory = {"device": device, "dtype": dtype}
        param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        bc_width = d_state * ngroups * self.mimo_rank
        self.split_sizes = [self.d_inner, self.d_inner, bc_width, bc_width,
                            self.nheads, self.nheads, self.nheads, self.n_angles]
        self.in_proj = nn.Linear(d_model, sum(self.split_sizes), bias=False, **factory)

        dt = torch.exp(torch.rand(self.nheads, device=device)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1, float32
        self.B_bias = nn.Parameter(torch.ones(self.nheads, self.mimo_rank, d_state,
                                              device=device))
        self.C_bias = nn.Parameter(torch.ones(self.nheads, self.mimo_rank, d_state,
                                              device=device))
        self.B_norm = RMSNorm(d_state, eps=1e-5, **factory)
        self.C_norm = RMSNorm(d_state, eps=1e-5, **factory)
        if is_mimo:  # up-projections of x and z, down-projection of the output
            shape = (self.nheads, self.mimo_rank, headdim)
            ones = {"device": device, "dtype": param_dtype}
            self.mimo_x = nn.Parameter(torch.ones(shape, **ones) / self.mimo_rank)
            self.mimo_z = nn.Parameter(torch.ones(shape, **ones))
            self.mimo_o = nn.Parameter(torch.ones(shape, **ones) / self.mimo_rank)
        self.D = nn.Parameter(torch.ones(self.nheads, device=device, dtype=param_dtype))
        for p in (self.dt_bias, self.D):
            p._no_weight_decay = True
        if is_outproj_norm:
            self.norm = GatedRMSNorm(self.d_inner, group_size=headdim, eps=1e-5, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory)

    # ----------------------------------------------------------- projections
    def _project(self, u: Tensor, token_mask: Tensor | None = None,
                 projected: bool = False) -> dict[str, Tensor]:
        """in_proj and the per-token preprocessing shared by forward and step.

        Works for u (..., d_model), or ``in_proj(u)`` when ``projected``; returns tensors
        with heads split out and B, C as (..., R, G, N) (rank-major in ``in_proj``, R = 1
        for SISO).
        """
        zxbcdt = u if projected else self.in_proj(u)
        z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(zxbcdt, self.split_sizes, dim=-1)
        A = (-heavy_tail(dd_A.float())).clamp(max=-self.A_floor)
        DT = F.softplus(dd_dt + self.dt_bias)
        x = x.unflatten(-1, (self.nheads, self.headdim))
        if token_mask is not None:  # padding: no decay, no input, no rotation
            DT = DT * token_mask.unsqueeze(-1)
            x = x * token_mask[..., None, None].to(x.dtype)
        lead = u.shape[:-1]
        bc_shape = (self.mimo_rank, self.ngroups, self.d_state)
        return {
            "z": z.unflatten(-1, (self.nheads, self.headdim)),
            "x": x,
            "B": rms_norm(B.unflatten(-1, bc_shape), self.B_norm.weight, 1e-5),
            "C": rms_norm(C.unflatten(-1, bc_shape), self.C_norm.weight, 1e-5),
            "ADT": A * DT,
            "DT": DT,
            "trap": trap,
            "angles": angles.float().unsqueeze(-2).expand(*lead, self.nheads, self.n_angles),
        }

    def _output(self, y: Tensor, z: Tensor, x_dtype: torch.dtype) -> Tensor:
        y = y.flatten(-2)
        if self.is_outproj_norm and not self.is_mimo:  # MIMO: normalised per rank in the scan
            y = self.norm(y, z.flatten(-2))
        return self.out_proj(y.to(x_dtype))

    def _mimo_args(self, p: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """The MIMO scan and step arguments that forward and step share."""
        norm = self.norm.weight.view(self.nheads, self.headdim) if self.is_outproj_norm else None
        return dict(Q=p["C"], K=p["B"], V=p["x"], Q_bias=self.C_bias, K_bias=self.B_bias,
                    Angles=p["angles"], MIMO_V=self.mimo_x, MIMO_O=self.mimo_o, D=self.D,
                    Z=p["z"], MIMO_Z=self.mimo_z, Norm_Weight=norm)

    # --------------------------------------------------------------- forward
    def forward(
        self,
        u: Tensor,
        cache: Mamba3LayerCache | None = None,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        """u (b, l, d_model) -> (b, l, d_model).

        With ``cache``, the scan starts from its state (zeros for a fresh cache) and
        the cache is overwritten with the state after the last token. ``token_mask``
        (b, l) marks real tokens; masked (padding) positions leave the state untouched.
        """
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise InputError(f"Mamba3Mixer expects (batch, seqlen, {self.d_model}), got "
                             f"{tuple(u.shape)}")
        p = self._project(u, token_mask)
        per_token = dict(ADT=p["ADT"].transpose(1, 2), DT=p["DT"].transpose(1, 2),
                         Trap=p["trap"].transpose(1, 2), return_final_state=cache is not None,
                         chunk_size=self.chunk_size)
        if self.is_mimo:
            state = None if cache is None else cache.as_tuple()
            result = mamba3_mimo_scan(**self._mimo_args(p), **per_token, initial_state=state)
        else:
            state = None if cache is None else (cache.angle, cache.ssm, cache.k[:, 0], cache.v)
            result = mamba3_scan(
                Q=p["C"][:, :, 0], K=p["B"][:, :, 0], V=p["x"], Q_bias=self.C_bias[:, 0],
                K_bias=self.B_bias[:, 0], Angles=p["angles"], D=self.D,
                Z=None if self.is_outproj_norm else p["z"], initial_state=state, **per_token,
            )
        if cache is not None:
            y, final = result
            cache.copy_(*final)
        else:
            y = result
        return self._output(y, p["z"], u.dtype)

    def step_weights(self) -> SisoStepWeights:
        """The parameters the fused SISO decode step reads."""
        return SisoStepWeights(
            nheads=self.nheads, headdim=self.headdim, d_state=self.d_state,
            ngroups=self.ngroups, n_angles=self.n_angles, A_floor=self.A_floor,
            dt_bias=self.dt_bias, B_norm=self.B_norm.weight, C_norm=self.C_norm.weight,
            B_bias=self.B_bias[:, 0], C_bias=self.C_bias[:, 0], D=self.D,
            norm=self.norm.weight if self.is_outproj_norm else None,
        )

    def step_prefetch(self, cache: Mamba3LayerCache) -> Tensor | None:
        """What the decode ``in_proj`` GEMV pulls into L2 for the fused step: the SSM state
        with ``FUSED_CONFIG["prefetch_state"]`` (off by default), else None."""
        return cache.ssm if FUSED_CONFIG["prefetch_state"] and not self.is_mimo else None

    def step(self, u: Tensor, cache: Mamba3LayerCache, projected: bool = False) -> Tensor:
        """One token: u (b, d_model) -> (b, d_model); advances ``cache`` in place.
        ``projected``: u is ``in_proj(u)`` already (b, in_proj.out_features), as the block
        computes it together with its norm (``modeling.block.decode_norm_linear``).

        SISO on CUDA: ``in_proj``, one fused kernel (``mamba3_fused_step``: everything
        between the projections, state update included), ``out_proj``; the projections
        of one row through the GEMV kernel (``decode_linear``; in_proj's may also pull the
        SSM state into L2 for the step, ``step_prefetch``)."""
        weights = None if self.is_mimo else self.step_weights()
        if weights is not None and fused_step_supported(self.in_proj.weight, weights):
            state = (cache.angle, cache.ssm, cache.k[:, 0], cache.v)
            zxbcdt = u if projected else decode_linear(
                u, self.in_proj.weight, self.in_proj.bias, prefetch=self.step_prefetch(cache))
            y = mamba3_fused_step_triton(zxbcdt, state, weights)
            return decode_linear(y.to(u.dtype), self.out_proj.weight, self.out_proj.bias)
        p = self._project(u, projected=projected)
        if self.is_mimo:
            y, _ = mamba3_mimo_step(**self._mimo_args(p), ADT=p["ADT"], DT=p["DT"],
                                    Trap=p["trap"], state=cache.as_tuple(), inplace=True)
        else:
            y, _ = mamba3_step(
                Q=p["C"][:, 0], K=p["B"][:, 0], V=p["x"], ADT=p["ADT"], DT=p["DT"],
                Trap=p["trap"], Q_bias=self.C_bias[:, 0], K_bias=self.B_bias[:, 0],
                Angles=p["angles"], state=(cache.angle, cache.ssm, cache.k[:, 0], cache.v),
                D=self.D, Z=None if self.is_outproj_norm else p["z"], inplace=True,
            )
        return self._output(y, p["z"], u.dtype)

    def allocate_cache(self, batch: int, device=None, dtype=None) -> Mamba3LayerCache:
        """A zero decode state for ``batch`` sequences."""
        weight = self.in_proj.weight
        return Mamba3LayerCache.zeros(
            batch, self.nheads, self.headdim, self.d_state, self.n_angles, self.mimo_rank,
            device or weight.device, dtype or weight.dtype,
        )
