"""Heads: zero-init start, distinct blocks, save/load round trip, refusal on a mismatched backbone."""

import pytest
import torch

from common.errors import WorkbenchError
from medusa.heads import HeadsConfig, MedusaHeads, load_heads
from medusa.testing import tiny_backbone


def test_untrained_heads_equal_base_lm_head(tiny):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=3, num_layers=2))
    h = torch.randn(5, tiny.hidden_size)
    logits = heads(h)
    assert logits.shape == (3, 5, tiny.vocab_size)
    base = tiny.model.get_output_embeddings()(h)
    for k in range(3):
        torch.testing.assert_close(logits[k], base)


def test_blocks_are_distinct_modules(tiny):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=2, num_layers=3))
    ids = {id(m) for block in heads.blocks for m in block}
    assert len(ids) == 6


@pytest.mark.parametrize("projection", ["shared", "own"])
def test_save_load_round_trip(tmp_path, tiny, projection):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=2, lm_projection=projection))
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    heads.save(tmp_path / "h")
    back = load_heads(tmp_path / "h", tiny)
    h = torch.randn(3, tiny.hidden_size)
    torch.testing.assert_close(back(h), heads(h))
    keys = set(back.state_dict())
    assert any("lm_heads" in k for k in keys) == (projection == "own")


def test_load_refuses_other_backbone(tmp_path, tiny):
    MedusaHeads.for_backbone(tiny).save(tmp_path / "h")
    other = tiny_backbone(0, hidden_size=48)
    with pytest.raises(WorkbenchError, match="trained for .* not for backbone"):
        load_heads(tmp_path / "h", other)


def test_load_bad_files(tmp_path, tiny):
    with pytest.raises(WorkbenchError, match="no heads config"):
        load_heads(tmp_path, tiny)
    MedusaHeads.for_backbone(tiny).save(tmp_path / "h")
    (tmp_path / "h" / "config.json").write_text("{broken")
    with pytest.raises(WorkbenchError, match="malformed"):
        load_heads(tmp_path / "h", tiny)


def test_bad_config_values():
    with pytest.raises(WorkbenchError):
        HeadsConfig(num_heads=0)
    with pytest.raises(WorkbenchError):
        HeadsConfig(lm_projection="tied")


def test_deepened_heads_compute_the_same_function_and_keep_their_blocks():
    from medusa.heads import deepen
    from medusa.testing import tiny_backbone

    bb = tiny_backbone()
    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=3, num_layers=1))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.1)
    deeper = deepen(heads, 3)
    h = torch.randn(5, bb.hidden_size)
    assert deeper.config.num_layers == 3 and len(deeper.blocks[0]) == 3
    assert torch.allclose(deeper(h), heads(h), atol=1e-6)
    assert torch.equal(deeper.blocks[1][0].linear.weight, heads.blocks[1][0].linear.weight)
    assert not deeper.blocks[1][2].linear.weight.any()
    with pytest.raises(WorkbenchError, match="deepen"):
        deepen(deeper, 2)
