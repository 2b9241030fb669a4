"""KV caches for the decoding engine: keep only the accepted path, never recompute the prompt.

Two implementations behind one small interface (`KVCache`):

- ``static``: one preallocated buffer per layer sized to the request (prompt + max new tokens +
  tree). A forward writes its tokens at the committed length; `keep` moves the kept nodes' entries
  down in place. No allocation or concatenation per step. With ``full_width=True`` every forward
  sees the whole buffer (fixed shapes, for `torch.compile` / CUDA graphs), the attention mask
  hides the unused tail, and writes go to slots computed from a *tensor* holding the committed
  length, so a compiled verify never sees the length as a Python number (which would recompile it
  every step); the buffers keep fixed addresses (CUDA graphs replay on them).
- ``dynamic``: transformers' own `DynamicCache`, compacted with an index copy and `crop`.

Both are consumed by the stock modeling code through the public `Cache` API (`update` per layer).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache


class KVCache(Protocol):
    hf_cache: Any
    length: int

    def mask_width(self, n_query: int) -> int: ...
    def advance(self, n: int) -> None: ...
    def keep(self, past: int, nodes: torch.Tensor) -> None: ...


def _static_address(t: torch.Tensor) -> None:
    """On a GPU, tell dynamo `t` keeps its address, so CUDA graphs replay on it (in-place writes
    between replays stay visible). Not on a CPU: there the compiled verify freezes its weights, and
    freezing would fold a static-address tensor into the graph as a constant (a stale cache)."""
    if t.device.type == "cuda" and not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(t)


class _BufferLayer(CacheLayerMixin):
    """One layer's preallocated keys/values; writes at the owner's committed length."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: StaticKV) -> None:
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        cap = self.owner.capacity
        self.keys = key_states.new_zeros(b, h, cap, d)
        self.values = value_states.new_zeros(b, h, cap, value_states.shape[-1])
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True
        if self.owner.full_width:
            _static_address(self.keys)
            _static_address(self.values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.owner.full_width:  # slots from the length tensor; the overflow check is in `advance`
            slots = self.owner.position + torch.arange(key_states.shape[-2], device=self.keys.device)
            self.keys.index_copy_(2, slots, key_states.to(self.keys.dtype))
            self.values.index_copy_(2, slots, value_states.to(self.values.dtype))
            return self.keys, self.values
        pos = self.owner.length
        n = key_states.shape[-2]
        if pos + n > self.owner.capacity:
            raise RuntimeError(f"static KV cache overflow: {pos + n} > capacity {self.owner.capacity}")
        self.keys[:, :, pos : pos + n].copy_(key_states)
        self.values[:, :, pos : pos + n].copy_(value_states)
        return self.keys[:, :, : pos + n], self.values[:, :, : pos + n]

    def get_mask_sizes(self, query: Any = 1, *args: Any, **kwargs: Any) -> tuple[int, int]:
        # `query` is the query length (newer transformers) or the cache positions (older ones)
        n = int(query.shape[0]) if isinstance(query, torch.Tensor) else int(query)
        return (self.owner.capacity if self.owner.full_width else self.owner.length + n), 0

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.capacity


class _Cache(Cache):
    """A transformers `Cache` whose layers are our buffers (so masks and modeling code accept it)."""

    def __init__(self, layers: list[_BufferLayer]) -> None:
        super().__init__(layers=layers)


class StaticKV:
    """Preallocated per-layer buffers of `capacity` positions.

    `length` is the committed length as a Python int (for masks and bookkeeping); with
    `full_width`, `position` mirrors it as a 0-d tensor on the model's device, which is what the
    layers read when they write.
    """

    def __init__(self, num_layers: int, capacity: int, full_width: bool = False,
                 device: torch.device | str = "cpu") -> None:
        self.capacity = capacity
        self.full_width = full_width
        self.length = 0
        self.position = torch.zeros((), dtype=torch.long, device=device)
        if full_width:
            _static_address(self.position)
        self.hf_cache = _Cache([_BufferLayer(self) for _ in range(num_layers)])

    def mask_width(self, n_query: int) -> int:
        return self.capacity if self.full_width else self.length + n_query

    def _set_length(self, length: int) -> None:
        if length > self.capacity:
            raise RuntimeError(f"static KV cache overflow: {length} > capacity {self.capacity}")
        self.length = length
        if self.full_width:
            self.position.fill_(length)

    def advance(self, n: int) -> None:
        self._set_length(self.length + n)

    @torch.no_grad()
    def keep(self, past: int, nodes: torch.Tensor) -> None:
        """Keep entries past+nodes (in order) right after the first `past` entries."""
        src = past + nodes
        for layer in self.hf_cache.layers:
            if not layer.is_initialized:
                continue
            a = nodes.shape[0]
            layer.keys[:, :, past : past + a] = layer.keys.index_select(2, src)
            layer.values[:, :, past : past + a] = layer.values.index_select(2, src)
        self._set_length(past + int(nodes.shape[0]))


class DynamicKV:
    """transformers' DynamicCache, compacted to the kept path after each step."""

    def __init__(self, config: Any) -> None:
        # No config: with one, transformers gives sliding-window layers a cache that keeps only the
        # last window of keys, which compaction and our 4D masks (which carry the window) do not expect.
        del config
        self.hf_cache = DynamicCache()
        self.length = 0

    def mask_width(self, n_query: int) -> int:
        return self.length + n_query

    def advance(self, n: int) -> None:
        self.length += n

    @torch.no_grad()
    def keep(self, past: int, nodes: torch.Tensor) -> None:
        src = past + nodes
        a = int(nodes.shape[0])
        for layer in self.hf_cache.layers:
            # (crop()'s meaning changed across transformers versions, so slice directly)
            layer.keys = torch.cat([layer.keys[:, :, :past], layer.keys.index_select(2, src)], dim=2)
            layer.values = torch.cat([layer.values[:, :, :past], layer.values.index_select(2, src)], dim=2)
            if isinstance(getattr(layer, "cumulative_length", None), int):
                layer.cumulative_length = past + a
        self.length = past + a


def make_cache(kind: str, model: Any, capacity: int, full_width: bool = False) -> KVCache:
    """A fresh cache for one request of at most `capacity` positions."""
    if kind == "dynamic":
        return DynamicKV(model.config)
    device = next(model.parameters()).device
    return StaticKV(int(model.config.num_hidden_layers), capacity, full_width=full_width, device=device)
