"""Model configuration: the official ``MambaLMHeadModel`` keys plus our documented extensions.

Official checkpoints load unchanged. Extension keys have defaults that reproduce the
official model; any other key is an error that names it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mamba3_integrations.errors import ConfigError

# Mixer keyword arguments of the official Mamba3 module (``ssm_cfg`` minus "layer").
MAMBA3_KEYS = {
    "d_state", "expand", "headdim", "ngroups", "rope_fraction", "dt_min", "dt_max",
    "dt_init_floor", "A_floor", "is_outproj_norm", "is_mimo", "mimo_rank",
    "fuse_pregate_headwise_norm", "chunk_size", "dropout",
}
# Keyword arguments of the official MHA module (``attn_cfg``).
ATTENTION_KEYS = {
    "num_heads", "num_heads_kv", "head_dim", "mlp_dim", "qkv_proj_bias", "out_proj_bias",
    "softmax_scale", "causal", "d_conv", "rotary_emb_dim", "rotary_emb_base",
    "rotary_emb_interleaved",
}


def _check_keys(section: str, given: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {section}; allowed keys are {sorted(allowed)}"
        )


@dataclass
class Mamba3Config:
    """Configuration of a Mamba-3 hybrid LM (``config.json``).

    Official keys: ``d_model, d_intermediate, n_layer, vocab_size, ssm_cfg,
    attn_layer_idx, attn_cfg, rms_norm, residual_in_fp32, fused_add_norm,
    pad_vocab_size_multiple, tie_embeddings``.

    Extensions (absent from official checkpoints, defaults = official model):
    - ``attn_window``: ``{layer_idx: window}`` for attention layers that use
      causal sliding-window attention over the ``window`` most recent tokens;
      attention layers not listed are global.
    - ``norm_epsilon``: epsilon of the block norms (official: 1e-5).
    - ``context_length``: the context the model was trained for (metadata only).
    - ``embedding``: pooling settings of an embedding model (see runtime.embedding).
    """

    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict[str, Any] = field(default_factory=dict)
    attn_layer_idx: list[int] = field(default_factory=list)
    attn_cfg: dict[str, Any] = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    # Extensions.
    attn_window: dict[int, int] = field(default_factory=dict)
    norm_epsilon: float = 1e-5
    context_length: int | None = None
    embedding: dict[str, Any] | None = None

    OFFICIAL_KEYS = (
        "d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
        "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm",
        "pad_vocab_size_multiple", "tie_embeddings",
    )

    def __post_init__(self) -> None:
        self.ssm_cfg = dict(self.ssm_cfg or {})
        self.attn_cfg = dict(self.attn_cfg or {})
        self.attn_layer_idx = [int(i) for i in self.attn_layer_idx or []]
        self.attn_window = {int(k): int(v) for k, v in (self.attn_window or {}).items()}
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ConfigError naming the first problem found."""
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_intermediate < 0:
            raise ConfigError(f"d_intermediate must be >= 0, got {self.d_intermediate}")
        layer = self.ssm_cfg.get("layer", "Mamba3")
        if layer != "Mamba3":
            raise ConfigError(
                f"ssm_cfg.layer is {layer!r}; this package implements only 'Mamba3' layers"
            )
        _check_keys("ssm_cfg", {k: v for k, v in self.ssm_cfg.items() if k != "layer"},
                    MAMBA3_KEYS)
        _check_keys("attn_cfg", self.attn_cfg, ATTENTION_KEYS)
        bad = [i for i in self.attn_layer_idx if not 0 <= i < self.n_layer]
        if bad:
            raise ConfigError(f"attn_layer_idx {bad} out of range for n_layer={self.n_layer}")
        if self.attn_layer_idx and "num_heads" not in self.attn_cfg:
            raise ConfigError("attn_cfg needs num_heads when attn_layer_idx is not empty")
        for idx, window in self.attn_window.items():
            if idx not in self.attn_layer_idx:
                raise ConfigError(
                    f"attn_window names layer {idx}, which is not in attn_layer_idx "
                    f"{self.attn_layer_idx}"
                )
            if window < 1:
                raise ConfigError(f"attn_window[{idx}] must be >= 1, got {window}")
        self._check_mixer_shapes()

    def _check_mixer_shapes(self) -> None:
        cfg = self.mixer_kwargs()
        d_inner = cfg.get("expand", 2) * self.d_model
        headdim = cfg.get("headdim", 64)
        if d_inner % headdim:
            raise ConfigError(f"expand*d_model ({d_inner}) must be a multiple of headdim "
                              f"({headdim})")
        nheads, ngroups = d_inner // headdim, cfg.get("ngroups", 1)
        if nheads % ngroups:
            raise ConfigError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
        if cfg.get("rope_fraction", 0.5) not in (0.5, 1.0):
            raise ConfigError(f"rope_fraction must be 0.5 or 1.0, got {cfg['rope_fraction']}")
        if self.attn_layer_idx:
            heads = self.attn_cfg["num_heads"]
            heads_kv = self.attn_cfg.get("num_heads_kv") or heads
            if heads % heads_kv:
                raise ConfigError(f"attn_cfg.num_heads ({heads}) must be a multiple of "
                                  f"num_heads_kv ({heads_kv})")
            if self.attn_cfg.get("head_dim") is None and self.d_model % heads:
                raise ConfigError("d_model must be divisible by attn_cfg.num_heads when "
                                  "head_dim is not given")

    # ------------------------------------------------------------- derived
    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rounded up to ``pad_vocab_size_multiple`` (rows of the embedding)."""
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    def mixer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for Mamba3Mixer."""
        return {k: v for k, v in self.ssm_cfg.items() if k != "layer"}

    def attention_kwargs(self, layer_idx: int) -> dict[str, Any]:
        """Keyword arguments for Attention at ``layer_idx``, the window included."""
        return {**self.attn_cfg, "window": self.attn_window.get(layer_idx)}

    @property
    def is_mimo(self) -> bool:
        return bool(self.ssm_cfg.get("is_mimo", False))

    # --------------------------------------------------------- (de)serialise
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mamba3Config:
        """Build from a ``config.json`` dict; unknown keys raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        _check_keys("config.json", data, known)
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid config: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: str | Path) -> Mamba3Config:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Official keys always; extension keys only where they differ from the default."""
        data = asdict(self)
        defaults = type(self)()
        out = {k: data[k] for k in self.OFFICIAL_KEYS}
        for f in fields(self):
            if f.name not in out and data[f.name] != getattr(defaults, f.name):
                out[f.name] = data[f.name]
        if "attn_window" in out:
            out["attn_window"] = {str(k): v for k, v in out["attn_window"].items()}
        return out

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=4) + "\n", encoding="utf-8")
