"""Inference cache: plain typed containers of tensors, indexed by batch row.

One ``InferenceCache`` per generation. Per layer:
- Mamba-3: the constant state of the spec (angle, ssm, previous k and v).
- sliding-window attention: a ring buffer of ``window`` keys/values.
- global attention: a KV cache that grows with the sequence.
Attention layers with ``d_conv`` also keep the last ``d_conv - 1`` projected inputs.

Positions are absolute (left padding included); ``pad_lengths`` says how many of a
row's first positions are padding. Rows can be selected, cloned and measured.

For CUDA graphs, an attention cache may carry ``device_length``: a 0-dim int64 tensor on
its device equal to ``length``. Decode steps then write and attend through
``decode_append`` without Python integers or data-dependent shapes, and whoever set
``device_length`` (``runtime.cuda_graph``) advances it and ``length``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


def _map_tensors(obj, fn):
    """Apply ``fn`` to every tensor field of a dataclass, returning a new instance."""
    changes = {
        f.name: fn(value)
        for f in fields(obj)
        if isinstance(value := getattr(obj, f.name), Tensor)
    }
    return replace(obj, **changes)


def _tensor_bytes(obj) -> int:
    return sum(
        v.numel() * v.element_size()
        for f in fields(obj)
        if isinstance(v := getattr(obj, f.name), Tensor)
    )


@dataclass
class Mamba3LayerCache:
    """Decode state of one Mamba-3 layer (official layout).

    ``angle`` (b, H, n_angles) float32; ``ssm`` (b, H, P, N) float32;
    ``k`` (b, R, H, N) rotated biased k of the last token (R = 1 for SISO);
    ``v`` (b, H, P) the last token's x.
    """

    angle: Tensor
    ssm: Tensor
    k: Tensor
    v: Tensor

    @classmethod
    def zeros(cls, batch: int, nheads: int, headdim: int, d_state: int, n_angles: int,
              rank: int, device: torch.device, dtype: torch.dtype) -> Mamba3LayerCache:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return cls(
            angle=torch.zeros(batch, nheads, n_angles, device=device, dtype=torch.float32),
            ssm=torch.zeros(batch, nheads, headdim, d_state, device=device, dtype=state_dtype),
            k=torch.zeros(batch, rank, nheads, d_state, device=device, dtype=dtype),
            v=torch.zeros(batch, nheads, headdim, device=device, dtype=dtype),
        )

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.angle, self.ssm, self.k, self.v

    def copy_(self, angle: Tensor, ssm: Tensor, k: Tensor, v: Tensor) -> None:
        """Overwrite the state in place (keeps the buffers, e.g. for CUDA graphs)."""
        self.angle.copy_(angle)
        self.ssm.copy_(ssm)
        self.k.copy_(k.reshape(self.k.shape))
        self.v.copy_(v)


@dataclass
class KVCache:
    """Growing key/value cache of a global attention layer.

    ``keys``/``values`` (b, capacity, h_kv, d) hold absolute positions
    ``[0, length)``; the capacity doubles when it runs out.
    """

    keys: Tensor
    values: Tensor
    length: int = 0
    conv_state: Tensor | None = None
    device_length: Tensor | None = None

    def decode_append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Capture-safe: store the (b, 1, h_kv, d) key/value of position ``device_length``
        (capacity is not grown); return all keys, values and each slot's position (S,)."""
        self.keys.index_copy_(1, self.device_length.view(1), k)
        self.values.index_copy_(1, self.device_length.view(1), v)
        return self.keys, self.values, torch.arange(self.keys.shape[1], device=k.device)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new (b, n, h_kv, d) keys/values; return all keys/values so far."""
        end = self.length + k.shape[1]
        if end > self.keys.shape[1]:
            capacity = max(end, 2 * self.keys.shape[1])
            grow = capacity - self.keys.shape[1]
            pad = (0, 0, 0, 0, 0, grow)
            self.keys = torch.nn.functional.pad(self.keys, pad)
            self.values = torch.nn.functional.pad(self.values, pad)
        self.keys[:, self.length:end] = k
        self.values[:, self.length:end] = v
        self.length = end
        return self.keys[:, :end], self.values[:, :end]


@dataclass
class SlidingWindowCache:
    """Ring buffer of the last ``window`` keys/values of a sliding-window layer.

    Absolute position ``p`` lives in slot ``p % window``; ``length`` counts positions
    written so far.
    """

    keys: Tensor
    values: Tensor
    window: int
    length: int = 0
    conv_state: Tensor | None = None
    device_length: Tensor | None = None

    def decode_append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Capture-safe: store the (b, 1, h_kv, d) key/value of position ``device_length``
        in its ring slot; return the ring's keys, values and the position each slot holds
        (S,), negative for slots never written."""
        position = self.device_length
        slot = (position % self.window).view(1)
        self.keys.index_copy_(1, slot, k)
        self.values.index_copy_(1, slot, v)
        slots = torch.arange(self.window, device=k.device)
        return self.keys, self.values, position - (position - slots) % self.window

    def ordered(self) -> tuple[Tensor, Tensor, int]:
        """Cached keys/values in position order and the absolute position of the first."""
        n = min(self.length, self.window)
        start = self.length - n
        slots = torch.arange(start, self.length, device=self.keys.device) % self.window
        return self.keys[:, slots], self.values[:, slots], start

    def write(self, k: Tensor, v: Tensor) -> None:
        """Store new (b, n, h_kv, d) keys/values, keeping only the last ``window``."""
        n = k.shape[1]
        keep = min(n, self.window)
        positions = torch.arange(self.length + n - keep, self.length + n, device=k.device)
        slots = positions % self.window
        self.keys[:, slots] = k[:, n - keep:]
        self.values[:, slots] = v[:, n - keep:]
        self.length += n


LayerCache = Mamba3LayerCache | KVCache | SlidingWindowCache


@dataclass
class InferenceCache:
    """The cache of one generation: one entry per layer plus batch bookkeeping."""

    layers: list[LayerCache]
    seqlen: int = 0
    pad_lengths: Tensor | None = None

    @property
    def batch_size(self) -> int:
        first = self.layers[0]
        return (first.angle if isinstance(first, Mamba3LayerCache) else first.keys).shape[0]

    def select(self, rows: Tensor | list[int]) -> InferenceCache:
        """A cache holding only the given batch rows (e.g. finished rows leave)."""
        index = torch.as_tensor(rows, dtype=torch.long)

        def pick(t: Tensor) -> Tensor:
            return t.index_select(0, index.to(t.device))

        pads = None if self.pad_lengths is None else pick(self.pad_lengths)
        return InferenceCache([_map_tensors(c, pick) for c in self.layers], self.seqlen, pads)

    def clone(self) -> InferenceCache:
        """A deep copy, e.g. to reuse the state of a shared prompt prefix."""
        pads = None if self.pad_lengths is None else self.pad_lengths.clone()
        return InferenceCache([_map_tensors(c, Tensor.clone) for c in self.layers],
                              self.seqlen, pads)

    def nbytes(self) -> dict[str, int]:
        """Bytes held per kind of layer: mamba3, sliding_window, kv."""
        totals = {"mamba3": 0, "sliding_window": 0, "kv": 0}
        for c in self.layers:
            kind = {Mamba3LayerCache: "mamba3", SlidingWindowCache: "sliding_window",
                    KVCache: "kv"}[type(c)]
            totals[kind] += _tensor_bytes(c)
        return totals
