"""Pure functions from a `trees.Tree` to the tensors one verification step needs.

Built once per tree (never cached on the model). Node 0 is the root (the base model's pending
next token); node i reads the token of rank ``rank0[i]`` from head ``head[i]`` (1-based, equal to
its depth). Each node attends to itself and its ancestors only.

The masks are additive 4D masks over KV-cache *slots*, handed to the model as they are (transformers
uses a 4D mask verbatim and skips its own mask builder, so it applies no sliding window itself).
Model families differ only in which windows their layers use; that is handled here and nowhere
else: `mask_layout(config)` reads the layer types once (full attention everywhere: Llama, Phi-3;
one sliding window everywhere: Mistral; a mix keyed by layer type: Gemma 3, Qwen2 with
`use_sliding_window`), and passing it as `layout=` to `causal_mask` / `verify_attention_mask`
narrows the sliding layers' mask to the window, measured in *positions* (a tree node at depth d
sits at position past + d whatever its slot). Without a layout, or for a full-attention model, the
mask is the plain tensor.

`buffers_from_parents` builds the same buffers straight from node arrays (parents, depths, heads,
ranks), vectorised, for trees made per step (`trees.dynamic`, `medusa.hybrid`).

Usage::

    buf = tree_buffers(preset("mc_sim_7b_63"))
    buf.ancestor_mask  # (N, N) bool
    layout = mask_layout(backbone.config)
    verify_attention_mask(buf, past, torch.float32, layout=layout)  # tensor, or {layer type: tensor}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.errors import WorkbenchError
from trees.tree import Tree

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class TreeBuffers:
    """Tensors for verifying `tree` (N = node budget, L = leaves, D = depth)."""

    tree: Tree
    ancestor_mask: torch.Tensor  # (N, N) bool: [i, j] True when j is i or an ancestor of i
    depth: torch.Tensor  # (N,) long: position offset of each node from the root
    head: torch.Tensor  # (N,) long: 1-based head each node reads from (0 for the root)
    rank0: torch.Tensor  # (N,) long: 0-based rank in that head's top-k (0 for the root)
    parent: torch.Tensor  # (N,) long: parent node, -1 for the root
    retrieve_indices: torch.Tensor  # (L, D + 1) long: node indices root..leaf per leaf, -1 padded
    internal: torch.Tensor  # (M,) long: nodes with children (whose logits acceptance needs)

    @property
    def num_nodes(self) -> int:
        return int(self.depth.shape[0])

    def to(self, device: torch.device | str) -> TreeBuffers:
        moved = {
            name: getattr(self, name).to(device)
            for name in ("ancestor_mask", "depth", "head", "rank0", "parent", "retrieve_indices", "internal")
        }
        return TreeBuffers(tree=self.tree, **moved)


def tree_buffers(tree: Tree, device: torch.device | str = "cpu") -> TreeBuffers:
    """Ancestor mask, depths, (head, rank) per node, retrieve indices and internal nodes of `tree`."""
    parents = tree.parents()
    n = tree.node_budget
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    depth = torch.tensor([0] + [len(p) for p in tree.paths], dtype=torch.long)
    head = depth.clone()
    rank0 = torch.tensor([0] + [p[-1] for p in tree.paths], dtype=torch.long)
    leaves = tree.leaves()
    retrieve = torch.full((len(leaves), tree.depth + 1), -1, dtype=torch.long)
    for row, leaf in enumerate(leaves):
        chain_ = []
        j = leaf
        while j >= 0:
            chain_.append(j)
            j = parents[j]
        retrieve[row, : len(chain_)] = torch.tensor(chain_[::-1])
    internal = torch.tensor(sorted(set(parents[1:])), dtype=torch.long)
    return TreeBuffers(
        tree=tree,
        ancestor_mask=mask,
        depth=depth,
        head=head,
        rank0=rank0,
        parent=torch.tensor(parents, dtype=torch.long),
        retrieve_indices=retrieve,
        internal=internal,
    ).to(device)


def tree_candidates(buffers: TreeBuffers, root_token: int | torch.Tensor, head_topk: torch.Tensor) -> torch.Tensor:
    """Token per node: the root token, then head_topk[head-1, rank0] per node. -> (N,) long.

    `head_topk` is (K, top_k) token ids from the heads (K >= tree depth, top_k >= tree top_k).
    Batched: head_topk (B, K, top_k) and root tokens (B,) -> (B, N).
    """
    top_k = head_topk.shape[-1]
    flat = torch.cat([head_topk.new_zeros(*head_topk.shape[:-2], 1), head_topk.flatten(-2)], dim=-1)
    # Root reads slot 0 (overwritten below); node i reads (head-1)*top_k + rank0, shifted by 1.
    index = torch.where(buffers.head > 0, (buffers.head - 1) * top_k + buffers.rank0 + 1, 0)
    tokens = flat[..., index]
    tokens[..., 0] = root_token
    return tokens


def buffers_from_parents(
    parents: Any,
    depth: Any,
    head: Any,
    rank0: Any,
    tree: Tree | None = None,
    device: torch.device | str = "cpu",
) -> TreeBuffers:
    """`TreeBuffers` straight from node arrays, vectorised: for per-step (dynamic or hybrid) trees.

    `parents`, `depth`, `head`, `rank0` are (N,) integer arrays, lists or tensors, root first
    (parent -1, depth 0) and every parent before its children; `head` may be -1 for nodes that
    read no head (prompt lookup). For a tree in canonical order (`Tree.parents()`, or a
    `trees.dynamic.DynamicTree`) the result equals `tree_buffers(tree)` field by field.
    How: the ancestor mask takes one gather per depth level (every node walks up one parent at a
    time), the retrieve indices one scatter of the leaves' mask rows; numpy on the CPU (small
    arrays: far less overhead per op than torch), one copy per field to `device` at the end.
    `tree` is recorded as `buffers.tree` (what the engine reads for name, depth and top-k);
    default: the `Tree` of the nodes' rank paths, which needs every non-root node to read a head.
    """
    par, dep, hd, rk = (_long_array(a) for a in (parents, depth, head, rank0))
    n = par.shape[0]
    if n < 1 or dep.shape[0] != n or hd.shape[0] != n or rk.shape[0] != n or par[0] != -1 or dep[0] != 0:
        raise WorkbenchError(f"tree nodes need the root first (parent -1, depth 0) and one depth, head and rank "
                             f"per node, got {n} parents and {dep.shape[0]} depths")
    idx = np.arange(n)
    child_par = par[1:]
    if n > 1 and ((child_par < 0).any() or (child_par >= idx[1:]).any() or (dep[1:] != dep[child_par] + 1).any()):
        raise WorkbenchError("tree nodes must list every parent before its children, with depth = parent's + 1")
    max_depth = int(dep.max())
    mask = np.eye(n, dtype=bool)
    up = np.maximum(par, 0)  # the root is its own parent from here on
    walk = idx
    for _ in range(max_depth):
        walk = up[walk]
        mask[idx, walk] = True
    has_child = np.zeros(n, dtype=bool)
    has_child[child_par] = True
    leaves = idx[~has_child]
    rows, cols = np.nonzero(mask[leaves])  # each leaf's ancestors (itself included)
    retrieve = np.full((leaves.shape[0], max_depth + 1), -1, dtype=np.int64)
    retrieve[rows, dep[cols]] = cols
    if tree is None:
        tree = _rank_tree(par, hd, rk)
    fields = {"ancestor_mask": mask, "depth": dep, "head": hd, "rank0": rk, "parent": par,
              "retrieve_indices": retrieve, "internal": idx[has_child]}
    return TreeBuffers(tree=tree, **{k: torch.from_numpy(v).to(device) for k, v in fields.items()})


def _long_array(values: Any) -> np.ndarray:
    """A fresh 1-D int64 numpy copy of a list, array or tensor (any device)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.array(values, dtype=np.int64).reshape(-1)


def _rank_tree(parents: np.ndarray, head: np.ndarray, rank0: np.ndarray) -> Tree:
    """The `Tree` of every non-root node's rank path (nodes must all read heads)."""
    if (head[1:] < 1).any():
        raise WorkbenchError("nodes that read no head (head < 1) have no rank path: pass the buffers' tree explicitly")
    paths: list[tuple[int, ...]] = [()]
    for p, r in zip(parents[1:].tolist(), rank0[1:].tolist()):
        paths.append(paths[p] + (r,))
    return Tree.from_paths(paths[1:], name="per-step")

@dataclass(frozen=True)
class MaskLayout:
    """Which attention each layer of a model uses, read once from its config by `mask_layout`.

    `window` is the sliding window in tokens (a query at position q sees keys at positions
    q - window < k <= q, transformers' convention); `mixed` is True when some layers slide and some
    do not, so the model takes one mask per layer type (a dict keyed by `FULL` / `SLIDING`).
    """

    window: int | None = None
    mixed: bool = False


def mask_layout(config: Any) -> MaskLayout:
    """The `MaskLayout` of a transformers config; other attention kinds (chunked, linear) are refused."""
    if hasattr(config, "get_text_config"):  # a multimodal config keeps its decoder's settings apart
        config = config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    types = getattr(config, "layer_types", None) or [SLIDING if window else FULL] * layers
    unknown = sorted(set(types) - {FULL, SLIDING})
    if unknown:
        raise WorkbenchError(
            f"model type {getattr(config, 'model_type', '?')!r} has {', '.join(unknown)} layers; tree verification "
            "supports full and sliding-window attention only"
        )
    if SLIDING not in types or not window:
        return MaskLayout()
    return MaskLayout(window=int(window), mixed=FULL in types)


def _for_layout(
    mask: torch.Tensor, layout: MaskLayout | None, query_pos: torch.Tensor, key_pos: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The mask `layout`'s model takes: `mask` itself, its sliding-window version, or both by layer type."""
    if layout is None or layout.window is None:
        return mask
    too_far = (query_pos[:, None] - key_pos[None, :]) >= layout.window  # (n, width)
    sliding = mask.masked_fill(too_far[None, None], torch.finfo(mask.dtype).min)
    return {FULL: mask, SLIDING: sliding} if layout.mixed else sliding


def verify_attention_mask(
    buffers: TreeBuffers,
    past_len: int,
    dtype: torch.dtype,
    width: int | None = None,
    layout: MaskLayout | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive 4D mask (1, 1, N, width): the whole cached prefix, then ancestors only.

    `width` defaults to past_len + N; a larger width (a fixed-shape static cache) masks the tail.
    With a sliding-window `layout`, keys more than the window behind a node's position are hidden
    too (slot j < past_len holds position j; tree slot past_len + i holds position past_len + depth[i]).
    """
    n = buffers.num_nodes
    width = past_len + n if width is None else width
    device = buffers.depth.device
    allowed = torch.zeros(n, width, dtype=torch.bool, device=device)
    allowed[:, :past_len] = True
    allowed[:, past_len : past_len + n] = buffers.ancestor_mask
    mask = torch.zeros(n, width, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    if layout is None or layout.window is None:
        return mask[None, None]
    key_pos = torch.arange(width, device=device)
    key_pos[past_len : past_len + n] = past_len + buffers.depth
    return _for_layout(mask[None, None], layout, past_len + buffers.depth, key_pos)


def batch_verify_mask(
    buffers: TreeBuffers,
    lengths: torch.Tensor,
    tree_start: torch.Tensor,
    dtype: torch.dtype,
    width: int,
    layout: MaskLayout | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive 4D mask (A, 1, N, width) for A rows verifying the same tree shape (batched decoding).

    Row b's cache holds its committed tokens in slots [0, lengths[b]) (slot j = position j) and this
    step's N tree tokens in slots tree_start[b] + i (at position lengths[b] + depth[i]); every other
    slot (padding, stale entries) is hidden. With one row and tree_start == lengths this is
    `verify_attention_mask` row for row.
    """
    n = buffers.num_nodes
    device = buffers.depth.device
    lengths, tree_start = lengths.to(device), tree_start.to(device)
    slot = torch.arange(width, device=device)
    rel = slot[None, :] - tree_start[:, None]  # (A, W): tree node held by the slot, if 0 <= rel < n
    in_tree = (rel >= 0) & (rel < n)
    node = rel.clamp(0, n - 1)
    ancestors = buffers.ancestor_mask[:, node].permute(1, 0, 2)  # (A, N, W): slot's node is an ancestor
    allowed = (slot[None, None, :] < lengths[:, None, None]) | (in_tree[:, None, :] & ancestors)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    mask = mask[:, None]  # (A, 1, N, W)
    if layout is None or layout.window is None:
        return mask
    key_pos = torch.where(in_tree, lengths[:, None] + buffers.depth[node], slot[None, :])  # (A, W)
    query_pos = lengths[:, None] + buffers.depth[None, :]  # (A, N)
    too_far = (query_pos[:, :, None] - key_pos[:, None, :]) >= layout.window  # (A, N, W)
    sliding = mask.masked_fill(too_far[:, None], torch.finfo(dtype).min)
    return {FULL: mask, SLIDING: sliding} if layout.mixed else sliding


def causal_mask(
    n: int, width: int, dtype: torch.dtype, device: torch.device | str, layout: MaskLayout | None = None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive 4D causal mask (1, 1, n, width) for a prefill starting at position 0 (windowed per `layout`)."""
    allowed = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    mask = torch.full((n, width), torch.finfo(dtype).min, dtype=dtype, device=device)
    mask[:, :n].masked_fill_(allowed, 0.0)
    positions = torch.arange(width, device=device)
    return _for_layout(mask[None, None], layout, positions[:n], positions)
