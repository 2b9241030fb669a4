"""Tree buffers on hand-built trees, with expected tensors written out."""

import torch

from medusa.tree_attention import causal_mask, tree_buffers, tree_candidates, verify_attention_mask
from trees.tree import Tree


def test_buffers_of_small_tree():
    # nodes: 0 root, 1 [0], 2 [1], 3 [0,0], 4 [0,1], 5 [1,0]
    b = tree_buffers(Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0]]))
    expected_mask = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 0, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(b.ancestor_mask, expected_mask)
    assert b.depth.tolist() == [0, 1, 1, 2, 2, 2]
    assert b.head.tolist() == [0, 1, 1, 2, 2, 2]
    assert b.rank0.tolist() == [0, 0, 1, 0, 1, 0]
    assert b.parent.tolist() == [-1, 0, 0, 1, 1, 2]
    assert b.retrieve_indices.tolist() == [[0, 1, 3], [0, 1, 4], [0, 2, 5]]
    assert b.internal.tolist() == [0, 1, 2]


def test_buffers_of_uneven_tree_pad_retrieve():
    b = tree_buffers(Tree.from_paths([[0], [1], [0, 0]]))
    assert b.retrieve_indices.tolist() == [[0, 2, -1], [0, 1, 3]]


def test_root_only_tree():
    b = tree_buffers(Tree.from_paths([]))
    assert b.ancestor_mask.tolist() == [[True]]
    assert b.retrieve_indices.tolist() == [[0]]
    assert b.internal.tolist() == []


def test_candidates_read_head_and_rank():
    b = tree_buffers(Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0]]))
    head_topk = torch.tensor([[10, 11, 12], [20, 21, 22]])  # (K=2, top_k=3)
    assert tree_candidates(b, 7, head_topk).tolist() == [7, 10, 11, 20, 21, 20]


def test_verify_mask_prefix_and_tail():
    b = tree_buffers(Tree.from_paths([[0], [1]]))
    m = verify_attention_mask(b, past_len=2, dtype=torch.float32, width=6)
    allowed = (m[0, 0] == 0).int().tolist()
    assert allowed == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0]]
    c = causal_mask(3, 4, torch.float32, "cpu")
    assert (c[0, 0] == 0).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
