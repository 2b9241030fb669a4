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


class _BatchLayer(CacheLayerMixin):
    """One layer's keys/values for all rows of a batch: (A, h, C, d), written at each row's tree slots."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: BatchKV) -> None:
        super().__init__()
        self.owner = owner

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        slots = self.owner.write_slots(key_states.shape[-2])  # (A, n)
        if self.owner.kind == "dynamic":  # transformers-style growth: append, rows' slots all at the end
            self.keys = torch.cat([self.keys, key_states], dim=2)
            self.values = torch.cat([self.values, value_states], dim=2)
        else:
            self.keys.scatter_(2, _expand(slots, self.keys), key_states.to(self.keys.dtype))
            self.values.scatter_(2, _expand(slots, self.values), value_states.to(self.values.dtype))
        width = self.owner.mask_width(key_states.shape[-2])
        return self.keys[:, :, :width], self.values[:, :, :width]

    def get_mask_sizes(self, query: Any = 1, *args: Any, **kwargs: Any) -> tuple[int, int]:
        n = int(query.shape[0]) if isinstance(query, torch.Tensor) else int(query)
        return self.owner.mask_width(n), 0

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return self.owner.width

    def get_max_length(self) -> int:
        return self.owner.capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a batch cache's rows come from prefilled requests (BatchKV.join), never from a forward")


def _expand(slots: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Slot indices (A, n) as a gather/scatter index for (A, h, C, d) tensors."""
    return slots[:, None, :, None].expand(like.shape[0], like.shape[1], slots.shape[1], like.shape[3])


class BatchKV:
    """KV cache of a batch whose rows have different lengths; rows join and leave between steps.

    Row b holds its committed tokens in slots [0, lengths[b]) (slot j = position j, so no position
    shift for padding); a verify writes the row's N tree tokens at `tree_start()[b]`, the mask
    (`tree_attention.batch_verify_mask`) hides every other slot, and `keep` moves the kept nodes
    down to lengths[b]. Two kinds, as for one request:
    - ``static``: preallocated (A, h, `capacity`, d) buffers; tree tokens go right after each row's
      own length (a scatter), so nothing is allocated per step.
    - ``dynamic``: the tensors grow as transformers' `DynamicCache` grows them (the step's tokens
      appended after the longest row) and are cut back to the longest row after each step.
    A request is prefilled alone (`medusa.decode` phases, a one-request cache) and `join`ed, which
    appends its row; `leave` drops finished rows. Both copy the cache once per request, not per step.

    With `slots=B` (static kind; the compiled verify) the shapes never change: B rows of `capacity`
    slots, every forward sees all of them, a request joins into a free row (`join(..., row=b)`) and
    a finished one frees its row (`free`, length 0); the lengths live in a tensor too
    (`lengths_t`), which is what the layers read when they write, so a compiled verify never sees
    them as Python numbers.
    """

    def __init__(self, kind: str, num_layers: int, capacity: int, device: torch.device | str = "cpu",
                 slots: int | None = None) -> None:
        if kind not in ("static", "dynamic"):
            raise ValueError(f"cache must be 'static' or 'dynamic', got {kind!r}")
        if slots is not None and kind != "static":
            raise ValueError("fixed rows (slots) need the static kind")
        self.kind = kind
        self.capacity = capacity
        self.device = torch.device(device)
        self.slots = slots
        self.lengths: list[int] = [0] * slots if slots else []
        self.lengths_t = torch.zeros(slots or 0, dtype=torch.long, device=self.device)
        if slots:
            _static_address(self.lengths_t)
        self.hf_cache = _Cache([_BatchLayer(self) for _ in range(num_layers)])

    @property
    def full_width(self) -> bool:
        return self.slots is not None

    def mask_width(self, n_query: int) -> int:
        """Slots a forward of `n_query` tokens per row attends over (all of them with fixed rows)."""
        return self.capacity if self.full_width else self.width + n_query

    def _set_lengths(self, lengths: list[int]) -> None:
        if max(lengths, default=0) > self.capacity:
            raise RuntimeError(f"batch KV cache overflow: {max(lengths)} > capacity {self.capacity}")
        self.lengths = lengths
        if self.full_width:
            self.lengths_t.copy_(torch.tensor(lengths, dtype=torch.long))

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Slots every row's forward sees before this step's tokens: the longest row."""
        return max(self.lengths, default=0)

    def lengths_tensor(self) -> torch.Tensor:
        if self.full_width:
            return self.lengths_t
        return torch.tensor(self.lengths, dtype=torch.long, device=self.device)

    def tree_start(self) -> torch.Tensor:
        """(A,) the slot of each row's first tree token this step."""
        if self.kind == "dynamic":
            return torch.full((self.rows,), self.width, dtype=torch.long, device=self.device)
        return self.lengths_tensor()

    def write_slots(self, n: int) -> torch.Tensor:
        return self.tree_start()[:, None] + torch.arange(n, device=self.device)

    @torch.no_grad()
    def join(self, single: KVCache, row: int | None = None) -> None:
        """Append one prefilled request (a `StaticKV` or `DynamicKV` of one row) as the last row, or
        with fixed rows copy it into free row `row`."""
        n = single.length
        if self.full_width:
            if row is None or not 0 <= row < self.rows or self.lengths[row] != 0:
                raise ValueError(f"fixed rows: join needs a free row, got {row}")
            for layer, one in zip(self.hf_cache.layers, single.hf_cache.layers):
                if not layer.is_initialized:
                    shape = (self.rows, one.keys.shape[1], self.capacity)
                    layer.keys = one.keys.new_zeros(*shape, one.keys.shape[-1])
                    layer.values = one.values.new_zeros(*shape, one.values.shape[-1])
                    layer.is_initialized = True
                    _static_address(layer.keys)
                    _static_address(layer.values)
                layer.keys[row, :, :n] = one.keys[0, :, :n]
                layer.values[row, :, :n] = one.values[0, :, :n]
            self._set_lengths([n if r == row else length for r, length in enumerate(self.lengths)])
            return
        for layer, one in zip(self.hf_cache.layers, single.hf_cache.layers):
            keys, values = one.keys[:, :, :n], one.values[:, :, :n]
            size = self.capacity if self.kind == "static" else max(self.width, n)
            keys, values = _pad_slots(keys, size), _pad_slots(values, size)
            if self.rows == 0:
                layer.keys, layer.values = keys.contiguous(), values.contiguous()
                layer.is_initialized = True
            else:
                layer.keys = torch.cat([_pad_slots(layer.keys, size), keys])
                layer.values = torch.cat([_pad_slots(layer.values, size), values])
        self.lengths.append(n)

    def free(self, row: int) -> None:
        """Fixed rows: row `row` holds nothing from now on (length 0) until a request joins into it."""
        self._set_lengths([0 if r == row else length for r, length in enumerate(self.lengths)])

    @torch.no_grad()
    def leave(self, keep_rows: list[int]) -> None:
        """Keep only `keep_rows` (indices into the current rows, in order)."""
        if self.full_width:
            raise ValueError("fixed rows never leave: free them")
        index = torch.tensor(keep_rows, dtype=torch.long, device=self.device)
        self.lengths = [self.lengths[r] for r in keep_rows]
        for layer in self.hf_cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self._cut()

    @torch.no_grad()
    def keep(self, past: list[int], tree_start: torch.Tensor, nodes: list[torch.Tensor]) -> None:
        """Row b keeps its tree nodes `nodes[b]` (root first), moved to slots past[b] onwards."""
        longest = max(int(a.shape[0]) for a in nodes)
        # pad each row's path by repeating its last node: the copies land past the row's new length
        padded = torch.stack([torch.cat([a, a[-1:].expand(longest - a.shape[0])]) for a in nodes])
        src = tree_start[:, None] + padded.to(self.device)  # (A, longest)
        dst = torch.tensor(past, dtype=torch.long, device=self.device)[:, None] + torch.arange(longest, device=self.device)
        for layer in self.hf_cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                t.scatter_(2, _expand(dst, t), t.gather(2, _expand(src, t)))
        self._set_lengths([p + int(a.shape[0]) for p, a in zip(past, nodes)])
        self._cut()

    def _cut(self) -> None:
        """Dynamic kind: cut the tensors back to the longest row (what the next step appends after)."""
        if self.kind != "dynamic":
            return
        for layer in self.hf_cache.layers:
            layer.keys, layer.values = layer.keys[:, :, : self.width], layer.values[:, :, : self.width]


def _pad_slots(t: torch.Tensor, size: int) -> torch.Tensor:
    """(A, h, S, d) zero-padded (or cut) to `size` slots."""
    if t.shape[2] >= size:
        return t[:, :, :size]
    return torch.nn.functional.pad(t, (0, 0, 0, size - t.shape[2]))
