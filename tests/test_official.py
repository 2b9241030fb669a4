"""The official Medusa heads layout, both ways: files made the official code's way load and propose
exactly as the same weights in ours; export -> import is the identity; bad folders are one error line."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from common.cli import run_cli
from common.errors import WorkbenchError
from medusa import official
from medusa.backbone import load_backbone
from medusa.decode import DecodeConfig, generate
from medusa.generate import main as generate_main
from medusa.heads import HeadsConfig, MedusaHeads, heads_fingerprint, load_heads
from medusa.official_layout import is_official_layout, read_official, write_official
from medusa.testing import greedy_reference, save_tiny_model, tiny_backbone
from trees.tree import Tree, preset


# ---- the official code's own module layout, rebuilt with torch alone --------------------------
class OfficialResBlock(nn.Module):
    """FasterDecoding/Medusa's ResBlock: x + SiLU(W x + b)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


def official_medusa_head(hidden, vocab, num_heads, num_layers, lm_weight=None, seed=0):
    """`nn.ModuleList` of `Sequential(*([ResBlock] * n), Linear)`, as in MedusaModel.__init__, randomised."""
    heads = nn.ModuleList(
        nn.Sequential(*([OfficialResBlock(hidden)] * num_layers), nn.Linear(hidden, vocab, bias=False))
        for _ in range(num_heads)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        if lm_weight is not None:
            for head in heads:
                head[-1].weight.copy_(lm_weight)
    return heads


def official_logits(heads, hidden):
    return torch.stack([head(hidden) for head in heads])


def write_medusa1(folder, heads, num_layers, fmt="pt", **config):
    folder.mkdir(parents=True, exist_ok=True)
    state = heads.state_dict()
    if fmt == "pt":
        torch.save(state, folder / "medusa_lm_head.pt")
    else:  # safetensors refuses tensors that share memory (the repeated block): one copy per key
        save_file({k: v.clone().contiguous() for k, v in state.items()}, str(folder / "medusa_lm_head.safetensors"))
    cfg = {"medusa_num_heads": len(heads), "medusa_num_layers": num_layers,
           "base_model_name_or_path": "tiny/llama", **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def assert_same_proposals(ours, theirs_logits_fn, backbone, top_k=5):
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        h = torch.randn(backbone.hidden_size, generator=gen)
        expected = theirs_logits_fn(h)
        torch.testing.assert_close(ours(h), expected, atol=1e-6, rtol=1e-6)
        assert torch.equal(ours.propose(h, [], top_k), torch.topk(expected, top_k, dim=-1).indices)


# ---- official files load into ours -----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_official_medusa1_file_proposes_identically(tmp_path, tiny, fmt, num_layers):
    theirs = official_medusa_head(tiny.hidden_size, tiny.vocab_size, 3, num_layers)
    if num_layers > 1:
        assert theirs[0][0] is theirs[0][1]  # the quirk: one block module, applied n times
    folder = write_medusa1(tmp_path / "m1", theirs, num_layers, fmt)
    assert is_official_layout(folder)
    read = read_official(folder)
    assert read.num_heads == 3 and read.num_layers == num_layers and read.shared_blocks
    ours = load_heads(folder, tiny)
    assert ours.config.num_layers == num_layers and ours.config.lm_projection == "own"
    assert len({id(m) for block in ours.blocks for m in block}) == 3 * num_layers  # ours stay distinct
    assert_same_proposals(ours, lambda h: official_logits(theirs, h), tiny)


def test_official_heads_decode_losslessly(tmp_path):
    bb = tiny_backbone(4, eos_token_id=None)
    theirs = official_medusa_head(bb.hidden_size, bb.vocab_size, 4, 2, seed=5)
    heads = load_heads(write_medusa1(tmp_path / "m1", theirs, 2), bb)
    prompt = [1, 5, 7, 9, 11, 3]
    out = generate(bb, heads, preset("mc_sim_7b_63"), prompt, DecodeConfig(max_new_tokens=24))
    assert out.output_ids == greedy_reference(bb, prompt, 24)


def test_projection_equal_to_lm_head_imports_as_shared(tmp_path, tiny):
    lm = tiny.model.get_output_embeddings().weight
    theirs = official_medusa_head(tiny.hidden_size, tiny.vocab_size, 2, 1, lm_weight=lm)
    ours = load_heads(write_medusa1(tmp_path / "m1", theirs, 1), tiny)
    assert ours.config.lm_projection == "shared" and ours.lm_heads is None
    assert_same_proposals(ours, lambda h: official_logits(theirs, h), tiny)


def test_medusa2_model_folder_loads_its_heads(tmp_path, tiny):
    theirs = official_medusa_head(tiny.hidden_size, tiny.vocab_size, 2, 1, seed=3)
    folder = tmp_path / "m2"
    tiny.model.save_pretrained(folder)
    # a Medusa-2 checkpoint: the model's own tensors plus the heads under medusa_head.*, in shards
    model_state = {k: v.clone().contiguous() for k, v in tiny.model.state_dict().items()}
    heads_state = {f"medusa_head.{k}": v.clone().contiguous() for k, v in theirs.state_dict().items()}
    (folder / "model.safetensors").unlink()
    save_file(model_state, str(folder / "model-00001-of-00002.safetensors"))
    save_file(heads_state, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in model_state},
                  **{k: "model-00002-of-00002.safetensors" for k in heads_state}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert is_official_layout(folder)  # no medusa_num_heads in config.json: the keys say
    ours = load_heads(folder, tiny)
    assert ours.num_heads == 2 and ours.config.num_layers == 1
    assert_same_proposals(ours, lambda h: official_logits(theirs, h), tiny)
    assert len(heads_fingerprint(folder)) == 16


def test_distinct_blocks_per_index_are_imported_as_stored(tmp_path, tiny):
    # a file whose blocks differ per index (TensorRT-LLM's reading): each block as stored
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=2, num_layers=2, lm_projection="own"))
    randomise(heads)
    write_official(tmp_path / "x", official.to_official(heads))
    read = read_official(tmp_path / "x")
    assert not read.shared_blocks
    assert_same_proposals(load_heads(tmp_path / "x", tiny), heads, tiny)


# ---- ours -> official -> ours --------------------------------------------------------------
def randomise(heads, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return heads


@pytest.mark.parametrize("formats", [("pt",), ("safetensors",), ("pt", "safetensors")])
@pytest.mark.parametrize("projection,num_layers", [("shared", 1), ("own", 1), ("shared", 2), ("own", 0)])
def test_export_import_round_trip(tmp_path, tiny, projection, num_layers, formats):
    heads = randomise(MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=3, num_layers=num_layers,
                                                                 lm_projection=projection)))
    tree = preset("mc_sim_7b_63")
    out = tmp_path / "official"
    write_official(out, official.to_official(heads, "tiny/llama", Tree.from_paths(
        [p for p in tree.paths if len(p) <= 3])), formats)
    state = torch.load(out / "medusa_lm_head.pt", weights_only=True) if "pt" in formats else None
    if state is not None:  # the official key names, and the projection written out in full
        assert set(state) == {f"{i}.{j}.linear.{w}" for i in range(3) for j in range(num_layers)
                              for w in ("weight", "bias")} | {f"{i}.{num_layers}.weight" for i in range(3)}
        assert state[f"0.{num_layers}.weight"].shape == (tiny.vocab_size, tiny.hidden_size)
    back = load_heads(out, tiny)  # --heads accepts the official folder as it is
    assert back.config.lm_projection == projection and back.config.num_layers == num_layers
    assert_same_proposals(back, heads, tiny)
    imported = official.from_official(read_official(out), tiny)
    imported.save(tmp_path / "ours")
    again = load_heads(tmp_path / "ours", tiny)
    assert again.config == heads.config
    for k, v in heads.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert read_official(out).medusa_choices == tuple(tuple(p) for p in tree.paths if len(p) <= 3)


@pytest.mark.parametrize("projection", ["shared", "own"])
def test_export_loads_into_the_official_module(tmp_path, tiny, projection):
    """What MedusaModel.from_pretrained does with our export: load_state_dict into its ModuleList."""
    heads = randomise(MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=3, lm_projection=projection)))
    write_official(tmp_path / "o", official.to_official(heads, "tiny/llama", preset("chain_2")))
    theirs = official_medusa_head(tiny.hidden_size, tiny.vocab_size, 3, 1, seed=9)
    theirs.load_state_dict(torch.load(tmp_path / "o" / "medusa_lm_head.pt", weights_only=True), strict=True)
    assert_same_proposals(heads, lambda h: official_logits(theirs, h), tiny)


# ---- the command line ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", "llama")


@pytest.fixture(scope="module")
def folder_backbone(tiny_folder):
    return load_backbone(str(tiny_folder))


def error_line(capsys, argv, main=official.main):
    assert run_cli(main, argv) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_export_then_import(tmp_path, capsys, tiny_folder, folder_backbone):
    heads = randomise(MedusaHeads.for_backbone(folder_backbone, HeadsConfig(num_heads=2, num_layers=2)))
    heads.save(tmp_path / "ours")
    args = ["export", "--heads", str(tmp_path / "ours"), "--out", str(tmp_path / "off"), "--preset", "chain_2",
            "--backbone", str(tiny_folder), "--format", "pt,safetensors"]
    assert run_cli(official.main, args) == 0
    err = capsys.readouterr().err
    assert "distinct blocks" in err  # two blocks: the official code would keep only the last
    cfg = json.loads((tmp_path / "off" / "config.json").read_text())
    assert cfg["medusa_num_heads"] == 2 and cfg["medusa_num_layers"] == 2
    assert cfg["medusa_choices"] == [[0], [0, 0]] and cfg["base_model_name_or_path"] == str(tiny_folder)
    assert json.loads((tmp_path / "off" / "medusa_choices.json").read_text()) == [[0], [0, 0]]
    assert run_cli(official.main, ["import", "--from", str(tmp_path / "off"), "--out", str(tmp_path / "back"),
                                   "--backbone", str(tiny_folder)]) == 0
    back = load_heads(tmp_path / "back", folder_backbone)
    assert_same_proposals(back, heads, folder_backbone)
    assert Tree.load(tmp_path / "back" / "tree.json").paths == preset("chain_2").paths


def test_generate_decodes_with_an_official_folder(tmp_path, tiny_folder, folder_backbone):
    theirs = official_medusa_head(folder_backbone.hidden_size, folder_backbone.vocab_size, 2, 1)
    folder = write_medusa1(tmp_path / "m1", theirs, 1)
    proc = subprocess.run([sys.executable, "-m", "medusa.generate", "--backbone", str(tiny_folder), "--heads",
                           str(folder), "--preset", "chain_2", "--prompt", "w1 w2 w3", "--max-new-tokens", "6",
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["new_tokens"] == 6


@pytest.mark.parametrize("hidden,vocab,what", [(16, 96, "hidden size 16"), (32, 80, "vocabulary 80")])
def test_heads_for_another_shape_are_refused(tmp_path, capsys, tiny_folder, hidden, vocab, what):
    folder = write_medusa1(tmp_path / "m1", official_medusa_head(hidden, vocab, 2, 1), 1)
    line = error_line(capsys, ["import", "--from", str(folder), "--out", str(tmp_path / "o"), "--backbone",
                               str(tiny_folder)])
    assert what in line and "hidden size 32 and vocabulary 96" in line
    with pytest.raises(WorkbenchError, match=what):
        load_heads(folder, tiny_backbone(0))


def test_config_without_medusa_num_heads(tmp_path, capsys, tiny_folder):
    folder = write_medusa1(tmp_path / "m1", official_medusa_head(32, 96, 2, 1), 1)
    (folder / "config.json").write_text(json.dumps({"medusa_num_layers": 1}))
    line = error_line(capsys, ["import", "--from", str(folder), "--out", str(tmp_path / "o"),
                               "--backbone", str(tiny_folder)])
    assert "no medusa_num_heads" in line
    # the same through a decoding command's --heads
    line = error_line(capsys, ["--backbone", str(tiny_folder), "--heads", str(folder), "--preset", "chain_2",
                               "--prompt", "w1"], main=generate_main)
    assert "no medusa_num_heads" in line


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_truncated_weights(tmp_path, capsys, tiny_folder, fmt):
    folder = write_medusa1(tmp_path / "m1", official_medusa_head(32, 96, 2, 1), 1, fmt)
    weights = folder / f"medusa_lm_head.{fmt}"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = error_line(capsys, ["import", "--from", str(folder), "--out", str(tmp_path / "o"),
                               "--backbone", str(tiny_folder)])
    assert "unreadable" in line and weights.name in line


def test_missing_head_and_not_official(tmp_path, capsys, tiny_folder):
    folder = write_medusa1(tmp_path / "m1", official_medusa_head(32, 96, 2, 1), 1)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "medusa_num_heads": 4}))
    line = error_line(capsys, ["import", "--from", str(folder), "--out", str(tmp_path / "o"),
                               "--backbone", str(tiny_folder)])
    assert "lack 2.0.linear.weight" in line and "holds 2 heads" in line
    (tmp_path / "empty").mkdir()
    assert "not in the official Medusa layout" in error_line(
        capsys, ["import", "--from", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
