"""Builders of small real checkpoints for tests: a byte-level BPE tokenizer trained on a
few paragraphs, and random-weight Mamba-3 hybrid models saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import torch

from mamba3_integrations import Mamba3Config, Mamba3ForCausalLM
from mamba3_integrations.runtime.tokenizer import train_bpe_tokenizer

CORPUS = [
    "Mamba-3 is a state space model. It keeps a constant-size state while it reads text.",
    "PostgreSQL stores rows in tables; pgvector adds a vector type and nearest-neighbour search.",
    "The quick brown fox jumps over the lazy dog. Dr. Smith paid $3.50 for 2.5 kg of apples.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "Retrieval-augmented generation finds relevant passages and gives them to a language model.",
    "Ünïcödé text, emoji 🙂 and accents: café, naïve, résumé. 日本語のテキストも少し。",
]

def make_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer (transformers fast tokenizer) trained on CORPUS."""
    return train_bpe_tokenizer(CORPUS * 4, vocab_size=vocab_size)


def hybrid_config(vocab_size: int, window: int | None = 6, **overrides) -> Mamba3Config:
    """4 layers: Mamba-3, global attention, Mamba-3, sliding-window attention (GatedMLP)."""
    cfg = dict(
        d_model=32, d_intermediate=64, n_layer=4, vocab_size=vocab_size,
        ssm_cfg={"layer": "Mamba3", "d_state": 16, "headdim": 8, "chunk_size": 8},
        attn_layer_idx=[1, 3],
        attn_cfg={"num_heads": 4, "num_heads_kv": 2, "head_dim": 8, "rotary_emb_dim": 8,
                  "causal": True, "d_conv": 3},
        rms_norm=True, residual_in_fp32=True, fused_add_norm=False,
        pad_vocab_size_multiple=8, tie_embeddings=True,
        attn_window={3: window} if window else {},
    )
    cfg.update(overrides)
    return Mamba3Config(**cfg)


def save_tiny_lm(folder: Path, config: Mamba3Config | None = None, seed: int = 0,
                 with_tokenizer: bool = True) -> Path:
    """Save a random-weight hybrid LM (and tokenizer) to ``folder``; return it."""
    tokenizer = make_tokenizer() if with_tokenizer else None
    vocab = len(tokenizer) if tokenizer is not None else 300
    torch.manual_seed(seed)
    model = Mamba3ForCausalLM(config or hybrid_config(vocab), tokenizer=tokenizer)
    model.init_weights()
    with torch.no_grad():  # larger random weights than the init, for less uniform outputs
        model.backbone.embedding.weight.normal_(0, 1.0)
    model.save_pretrained(folder)
    return folder


TINY_EMBEDDING = {"pooling": "mean", "normalize": True, "query_prefix": "query: ",
                  "document_prefix": "passage: ", "max_segment_tokens": 16}


def save_tiny_encoder(folder: Path, embedding: dict | None = None,
                      global_attention: bool = False, seed: int = 1) -> Path:
    """Save a random-weight embedding model (``embedding`` settings, default
    ``TINY_EMBEDDING``) with a tokenizer. Its attention layers are sliding-window (state
    of constant size) unless ``global_attention``."""
    windows = {3: 6} if global_attention else {1: 8, 3: 6}
    config = hybrid_config(len(make_tokenizer()), attn_window=windows,
                           embedding=dict(embedding or TINY_EMBEDDING))
    return save_tiny_lm(folder, config=config, seed=seed)


def save_tiny_embedder(folder: Path, seed: int = 1) -> Path:
    """A random-weight pure Mamba-3 encoder folder with ``embedding`` settings."""
    tokenizer = make_tokenizer()
    config = hybrid_config(len(tokenizer), window=None, attn_layer_idx=[],
                           embedding={"pooling": "mean", "normalize": True})
    return save_tiny_lm(folder, config=config, seed=seed)
