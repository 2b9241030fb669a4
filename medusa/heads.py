"""Medusa heads: K small residual heads on the backbone's last hidden state.

At position t, head k (1-based) predicts token t+k+1, i.e. k places past the base model's own next
token: ``p_k = softmax(W2_k (h + SiLU(W1_k h)))`` with W1 zero-initialised (bias too), so an
untrained head starts as the base LM head. Each head has `num_layers` *distinct* residual blocks
(the official repo's ``[ResBlock] * n`` repeats one module by mistake).

The LM projection W2 is either
- ``own``: a trainable copy of the base LM head per head (the paper; 28M params each for SmolLM2), or
- ``shared``: the backbone's frozen LM head itself (files hold only the blocks: ~1.3 MB per head).

Saved as ``heads.safetensors`` + ``config.json``; the config records the backbone's identity and
loading onto a different backbone is refused.

Usage::

    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=4))
    heads.save("results/heads/mine"); heads = load_heads("results/heads/mine", bb)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from common.errors import WorkbenchError
from common.io import atomic_write, ensure_writable
from medusa.backbone import Backbone, BackboneIdentity
from medusa.official_layout import is_official_layout, official_fingerprint, read_official

# The heads every command loads by default (trained by `make heads`, committed under results/).
LM_PROJECTIONS = ("shared", "own")


@dataclass(frozen=True)
class HeadsConfig:
    """Shape of a set of heads. `hidden_size`/`vocab_size`/`backbone` are filled from the backbone."""

    num_heads: int = 4
    num_layers: int = 1
    lm_projection: str = "shared"
    hidden_size: int = 0
    vocab_size: int = 0
    backbone: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_heads < 1:
            raise WorkbenchError(f"num_heads must be >= 1, got {self.num_heads}")
        if self.num_layers < 0:
            raise WorkbenchError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.lm_projection not in LM_PROJECTIONS:
            raise WorkbenchError(f"lm_projection must be one of {LM_PROJECTIONS}, got {self.lm_projection!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResBlock(nn.Module):
    """x + SiLU(W1 x + b1), W1 and b1 zero-initialised so the block starts as the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    """K heads. `forward(h)` -> logits (K, ..., V); `propose(h, ids, top_k)` -> tokens (K, top_k)."""

    def __init__(self, config: HeadsConfig, base_lm_head: nn.Linear) -> None:
        super().__init__()
        if base_lm_head.weight.shape != (config.vocab_size, config.hidden_size):
            raise WorkbenchError(
                f"LM head shape {tuple(base_lm_head.weight.shape)} does not match heads config "
                f"(vocab {config.vocab_size}, hidden {config.hidden_size})"
            )
        self.config = config
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(config.hidden_size) for _ in range(config.num_layers)])
            for _ in range(config.num_heads)
        )
        if config.lm_projection == "own":
            self.lm_heads = nn.ModuleList()
            for _ in range(config.num_heads):
                proj = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
                proj.weight.data.copy_(base_lm_head.weight.data)
                self.lm_heads.append(proj)
        else:
            self.lm_heads = None
        # Held in a tuple so the frozen base head is neither saved nor trained with the heads.
        self._base_lm_head = (base_lm_head,)
        ref = base_lm_head.weight
        self.to(device=ref.device, dtype=ref.dtype)

    @classmethod
    def for_backbone(cls, backbone: Backbone, config: HeadsConfig | None = None) -> MedusaHeads:
        """Fresh (untrained) heads shaped for `backbone`."""
        config = replace(
            config or HeadsConfig(),
            hidden_size=backbone.hidden_size,
            vocab_size=backbone.vocab_size,
            backbone=backbone.identity.to_dict(),
        )
        return cls(config, backbone.model.get_output_embeddings())

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    def projection(self, k: int) -> nn.Linear:
        """The LM projection of head k (0-based module index)."""
        return self.lm_heads[k] if self.lm_heads is not None else self._base_lm_head[0]

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """Residual-block outputs per head: (..., H) -> (K, ..., H)."""
        return torch.stack([block(hidden) for block in self.blocks])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits per head: (..., H) -> (K, ..., V)."""
        feats = self.features(hidden)
        if self.lm_heads is None:
            return self._base_lm_head[0](feats)
        return torch.stack([self.lm_heads[k](feats[k]) for k in range(self.num_heads)])

    @torch.no_grad()
    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        """Top-`top_k` token ids of each head from one hidden state (H,) -> (K, top_k)."""
        del token_ids  # heads look only at the hidden state
        return torch.topk(self(hidden), top_k, dim=-1).indices

    @torch.no_grad()
    def propose_scored(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`top_k` token ids (K, top_k) and their softmax probabilities (K, top_k), for per-step trees."""
        del token_ids
        top = torch.topk(torch.softmax(self(hidden).float(), dim=-1), top_k, dim=-1)
        return top.indices, top.values

    @torch.no_grad()
    def propose_batch(self, hidden: torch.Tensor, top_k: int) -> torch.Tensor:
        """`propose` for a batch of rows in one call: hidden (A, H) -> token ids (A, K, top_k)."""
        return torch.topk(self(hidden), top_k, dim=-1).indices.transpose(0, 1)

    # ---- persistence -------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write heads.safetensors + config.json into `directory` (each file replaced atomically)."""
        directory = ensure_writable(directory, "heads")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / "heads.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        atomic_write(directory / "config.json", json.dumps({**self.config.to_dict(), **(extra or {})}, indent=1) + "\n")
        return directory


def deepen(heads: MedusaHeads, num_layers: int) -> MedusaHeads:
    """The same function with `num_layers` blocks per head: the trained blocks first, then new
    zero-initialised blocks, which are the identity (`ResBlock`), so training can start from
    trained shallower heads."""
    if num_layers < heads.config.num_layers:
        raise WorkbenchError(f"cannot deepen {heads.config.num_layers}-block heads to {num_layers} blocks")
    deeper = MedusaHeads(replace(heads.config, num_layers=num_layers), heads._base_lm_head[0])
    state = deeper.state_dict()
    state.update(heads.state_dict())  # block i of head k keeps its name blocks.k.i
    deeper.load_state_dict(state)
    return deeper


def heads_fingerprint(directory: str | os.PathLike) -> str:
    """First 16 hex digits of the sha256 of ``heads.safetensors``: which trained weights a result used."""
    if is_official_layout(directory):  # the official layout's weights (medusa/official_layout.py)
        return official_fingerprint(directory)
    h = hashlib.sha256()
    with open(Path(directory) / "heads.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_heads_config(directory: str | os.PathLike) -> HeadsConfig:
    """The `HeadsConfig` in ``directory/config.json``; a missing or malformed file is one error line."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise WorkbenchError(f"no heads config at {cfg_path} (train heads with `python -m medusa.train`)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError("expected a JSON object")
        known = {f for f in HeadsConfig.__dataclass_fields__}
        config = HeadsConfig(**{k: v for k, v in raw.items() if k in known})
        if config.backbone:
            BackboneIdentity(**config.backbone)
        return config
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise WorkbenchError(f"heads config {cfg_path} is malformed: {_one_line(e)}") from None


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def _layout(keys: Sequence[str]) -> str:
    """`2 heads x 1 layer, shared projection`: what a heads state dict holds, from its key names."""
    heads = {k.split(".")[1] for k in keys if k.startswith("blocks.")}
    layers = {k.split(".")[2] for k in keys if k.startswith("blocks.")}
    projections = {k.split(".")[1] for k in keys if k.startswith("lm_heads.")}
    projection = f"{_count(len(projections), 'own projection')}" if projections else "shared projection"
    return f"{_count(len(heads), 'head')} x {_count(len(layers), 'layer')}, {projection}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_state(state: dict[str, torch.Tensor], heads: MedusaHeads, weights: Path) -> None:
    """Raise one `WorkbenchError` line, with the details, unless `state` fits `heads` exactly."""
    expected = heads.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        cfg = heads.config
        names = missing or unexpected
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        raise WorkbenchError(
            f"heads weights {weights} do not match their config: config.json says {_count(cfg.num_heads, 'head')} x "
            f"{_count(cfg.num_layers, 'layer')}, {cfg.lm_projection} projection; the weights hold {_layout(list(state))} "
            f"({'missing' if missing else 'unexpected'} {names[0]}{more})"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise WorkbenchError(
                f"heads weights {weights} do not match their config: {name} has shape {tuple(tensor.shape)}, "
                f"the config needs {tuple(expected[name].shape)}"
            )


def read_weights(weights: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a heads.safetensors; a missing, truncated or foreign file is one error line."""
    if not weights.is_file():
        raise WorkbenchError(f"no heads weights at {weights}")
    try:
        return load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise WorkbenchError(
            f"heads weights {weights} are unreadable (truncated or not a safetensors file: {_one_line(e)}); "
            "copy or train them again"
        ) from None


def load_heads(directory: str | os.PathLike, backbone: Backbone) -> MedusaHeads:
    """Load heads saved by `MedusaHeads.save`, refusing a backbone other than the one they fit.

    A folder in the official Medusa layout is converted in memory (medusa/official_layout.py).
    """
    directory = Path(directory)
    if is_official_layout(directory):
        fields, state = read_official(directory).to_workbench(backbone)
        heads = MedusaHeads(HeadsConfig(**fields), backbone.model.get_output_embeddings())
        heads.load_state_dict(state)
        return heads.to(dtype=backbone.dtype).eval()
    config = read_heads_config(directory)
    mine = backbone.identity
    theirs = BackboneIdentity(**config.backbone) if config.backbone else None
    if theirs is None or not theirs.matches(mine) or config.hidden_size != mine.hidden_size:
        described = theirs.describe() if theirs else f"hidden {config.hidden_size}, vocab {config.vocab_size}"
        raise WorkbenchError(f"heads in {directory} were trained for {described}, not for backbone {mine.describe()}")
    weights = directory / "heads.safetensors"
    state = read_weights(weights, backbone.device)
    heads = MedusaHeads(config, backbone.model.get_output_embeddings())
    check_state(state, heads, weights)
    heads.load_state_dict(state)
    heads.to(dtype=backbone.dtype)
    heads.eval()
    return heads
