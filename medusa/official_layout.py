"""The official Medusa repo's heads files: read (Medusa-1 and Medusa-2 folders) and write (Medusa-1).

Medusa-1 (FasterDecoding/Medusa, also what TensorRT-LLM's Medusa converter reads) is a folder with

- ``config.json`` holding ``medusa_num_heads``, ``medusa_num_layers`` and ``base_model_name_or_path``;
- ``medusa_lm_head.pt`` (a ``torch.save``d state dict) or ``medusa_lm_head.safetensors`` with, for
  head i, ``{i}.{j}.linear.weight`` / ``{i}.{j}.linear.bias`` for its residual block j < n and
  ``{i}.{n}.weight`` for its LM projection (vocab x hidden).

A Medusa-2 folder is a whole model whose weights also carry the heads as ``medusa_head.{i}...``
(same keys behind the prefix); its config may hold ``medusa_num_heads``, else the keys say.

The official quirk: a head is ``nn.Sequential(*([ResBlock(h)] * n), Linear)``, and ``[m] * n``
repeats ONE module, so an n-block head applies one block n times and its file holds that block's
tensors under every index j. Our heads have n *distinct* blocks; copying the one block into all n
of them computes exactly the same function, so that is how such a file is imported. A file whose
blocks differ per index (TensorRT-LLM reads them as distinct blocks) is imported block by block;
the official loader would instead keep the last index's block for all n (load_state_dict's last
write wins) — `OfficialHeads.shared_blocks` says which kind a file is.

The official layout records no tokenizer, so a folder is checked against the backbone by shape
only (hidden size and vocabulary); `to_workbench` then stamps the backbone's identity on it.
`medusa.heads.load_heads` dispatches here, so ``--heads FOLDER`` accepts either layout everywhere;
`medusa.official` converts both ways on the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from common.errors import WorkbenchError
from common.io import atomic_write
from medusa.backbone import Backbone

MEDUSA1_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")  # read in this order
MEDUSA2_PREFIX = "medusa_head."
OUR_WEIGHTS = "heads.safetensors"


@dataclass(frozen=True)
class OfficialHeads:
    """Heads in the official layout's terms: per head, its blocks (weight, bias) and its projection."""

    blocks: tuple[tuple[tuple[torch.Tensor, torch.Tensor], ...], ...]  # [head][block] -> (W (H, H), b (H,))
    projections: tuple[torch.Tensor, ...]  # [head] -> (V, H)
    base_model: str = ""
    source: str = ""  # which file(s) they came from, for messages
    medusa_choices: tuple[tuple[int, ...], ...] | None = None

    @property
    def num_heads(self) -> int:
        return len(self.projections)

    @property
    def num_layers(self) -> int:
        return len(self.blocks[0]) if self.blocks else 0

    @property
    def hidden_size(self) -> int:
        return int(self.projections[0].shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.projections[0].shape[0])

    @property
    def shared_blocks(self) -> bool:
        """Every head's blocks are one block repeated (what the official `[ResBlock] * n` saves)."""
        return all(
            torch.equal(w, head[0][0]) and torch.equal(b, head[0][1]) for head in self.blocks for w, b in head
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The Medusa-1 state dict: ``{i}.{j}.linear.weight/bias`` and ``{i}.{n}.weight``."""
        state: dict[str, torch.Tensor] = {}
        for i, (head, proj) in enumerate(zip(self.blocks, self.projections)):
            for j, (w, b) in enumerate(head):
                state[f"{i}.{j}.linear.weight"] = w
                state[f"{i}.{j}.linear.bias"] = b
            state[f"{i}.{len(head)}.weight"] = proj
        return state

    def to_workbench(self, backbone: Backbone) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(HeadsConfig fields, `MedusaHeads` state dict) for `backbone`; a shape mismatch is one error line.

        The projection is ``shared`` when every head's equals the backbone's LM head (as written by an
        export of shared heads, or by heads trained with a frozen projection), else ``own``.
        """
        mine = backbone.identity
        if (self.hidden_size, self.vocab_size) != (mine.hidden_size, mine.vocab_size):
            raise WorkbenchError(
                f"Medusa heads in {self.source} have hidden size {self.hidden_size} and vocabulary "
                f"{self.vocab_size}, but backbone {mine.name} has hidden size {mine.hidden_size} and vocabulary "
                f"{mine.vocab_size} (they were trained for {self.base_model or 'another model'})"
            )
        lm = backbone.model.get_output_embeddings().weight.detach()
        shared = all(torch.equal(p, lm.to(device="cpu", dtype=p.dtype)) for p in self.projections)
        state: dict[str, torch.Tensor] = {}
        for i, head in enumerate(self.blocks):
            for j, (w, b) in enumerate(head):
                state[f"blocks.{i}.{j}.linear.weight"] = w
                state[f"blocks.{i}.{j}.linear.bias"] = b
            if not shared:
                state[f"lm_heads.{i}.weight"] = self.projections[i]
        fields = {"num_heads": self.num_heads, "num_layers": self.num_layers,
                  "lm_projection": "shared" if shared else "own", "hidden_size": mine.hidden_size,
                  "vocab_size": mine.vocab_size, "backbone": mine.to_dict()}
        return fields, state


# ---- detection ---------------------------------------------------------------------------
def _config(directory: Path) -> dict[str, Any] | None:
    path = directory / "config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkbenchError(f"config {path} is malformed: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise WorkbenchError(f"config {path} is malformed: expected a JSON object")
    return raw


def _medusa1_file(directory: Path) -> Path | None:
    return next((directory / n for n in MEDUSA1_FILES if (directory / n).is_file()), None)


def _model_files(directory: Path) -> list[Path]:
    """The safetensors files of a model folder (shards named by its index when there is one)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return sorted({directory / f for k, f in weight_map.items() if k.startswith(MEDUSA2_PREFIX)})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise WorkbenchError(f"model index {index} is malformed") from None
    return sorted(p for p in directory.glob("*.safetensors") if p.name != OUR_WEIGHTS)


def _has_medusa2_keys(directory: Path) -> bool:
    for path in _model_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                if any(k.startswith(MEDUSA2_PREFIX) for k in f.keys()):
                    return True
        except (SafetensorError, OSError):
            continue  # not readable as safetensors: not ours to judge here; the reader says why
    return False


def is_official_layout(directory: str | os.PathLike) -> bool:
    """True for a folder in the official layout (Medusa-1 files or a Medusa-2 model), not ours."""
    directory = Path(directory)
    if not directory.is_dir() or (directory / OUR_WEIGHTS).is_file():
        return False
    if _medusa1_file(directory) is not None:
        return True
    try:
        config = _config(directory)
    except WorkbenchError:
        return False  # our own reader reports a malformed config.json
    if config is not None and "medusa_num_heads" in config:
        return True
    return config is not None and "model_type" in config and _has_medusa2_keys(directory)


# ---- reading -----------------------------------------------------------------------------
def _unreadable(path: Path, error: BaseException) -> WorkbenchError:
    return WorkbenchError(
        f"Medusa heads weights {path} are unreadable (truncated or not a {path.suffix.lstrip('.')} file: "
        f"{' '.join(str(error).split()) or type(error).__name__})"
    )


def _load_medusa1(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as e:
        raise _unreadable(path, e) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WorkbenchError(f"Medusa heads weights {path} hold no state dict of tensors")
    # a whole MedusaModel's state dict, or the heads' own: keep the heads' keys without the prefix
    if any(str(k).startswith(MEDUSA2_PREFIX) for k in state):
        state = {k[len(MEDUSA2_PREFIX):]: v for k, v in state.items() if k.startswith(MEDUSA2_PREFIX)}
    return state


def _load_medusa2(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    state: dict[str, torch.Tensor] = {}
    files = _model_files(directory)
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(MEDUSA2_PREFIX):
                        state[key[len(MEDUSA2_PREFIX):]] = f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise _unreadable(path, e) from None
    if not state:
        raise WorkbenchError(f"no {MEDUSA2_PREFIX}* weights in the safetensors files of {directory}")
    return state, ", ".join(p.name for p in files)


def _count(config: dict[str, Any], key: str, found: int, where: str) -> int:
    """`config[key]` (a head or block count), else the count the file's keys show."""
    value = config.get(key, found)
    if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "medusa_num_heads" else 0):
        raise WorkbenchError(f"{where}: {key} must be a whole number, got {value!r}")
    return value


def _heads_from_state(state: dict[str, torch.Tensor], config: dict[str, Any], source: str) -> OfficialHeads:
    """Pick each head's tensors by the layout's key names, checking that they are all there and fit."""
    heads_found = len({k.split(".")[0] for k in state if k.split(".")[0].isdigit()})
    layers_found = len({k.split(".")[1] for k in state if k.startswith("0.") and k.endswith(".linear.weight")})
    num_heads = _count(config, "medusa_num_heads", heads_found, source)
    num_layers = _count(config, "medusa_num_layers", layers_found, source)

    def tensor(key: str, ndim: int) -> torch.Tensor:
        if key not in state:
            raise WorkbenchError(
                f"Medusa heads weights {source} lack {key}: config.json says {num_heads} heads x {num_layers} "
                f"blocks, the file holds {heads_found} heads x {layers_found} blocks"
            )
        t = state[key]
        if t.ndim != ndim:
            raise WorkbenchError(f"Medusa heads weights {source}: {key} has shape {tuple(t.shape)}")
        return t

    blocks, projections = [], []
    for i in range(num_heads):
        head = tuple((tensor(f"{i}.{j}.linear.weight", 2), tensor(f"{i}.{j}.linear.bias", 1)) for j in range(num_layers))
        projections.append(tensor(f"{i}.{num_layers}.weight", 2))
        blocks.append(head)
    hidden = projections[0].shape[1]
    for i, (head, proj) in enumerate(zip(blocks, projections)):
        bad = [f"{i}.{j}" for j, (w, b) in enumerate(head) if w.shape != (hidden, hidden) or b.shape != (hidden,)]
        if bad or proj.shape != projections[0].shape:
            raise WorkbenchError(f"Medusa heads weights {source}: head {i} does not match head 0's shapes "
                                 f"(hidden {hidden}, vocabulary {projections[0].shape[0]})")
    choices = config.get("medusa_choices")
    try:
        choices_t = tuple(tuple(int(x) for x in path) for path in choices) if choices is not None else None
    except (TypeError, ValueError):
        raise WorkbenchError(f"{source}: medusa_choices must be a list of paths (lists of ranks)") from None
    return OfficialHeads(blocks=tuple(blocks), projections=tuple(projections),
                         base_model=str(config.get("base_model_name_or_path", "") or config.get("_name_or_path", "")),
                         source=source, medusa_choices=choices_t)


def read_official(directory: str | os.PathLike) -> OfficialHeads:
    """Heads from an official-layout folder; anything missing, truncated or inconsistent is one error line."""
    directory = Path(directory)
    config = _config(directory)
    weights = _medusa1_file(directory)
    if weights is not None:
        if config is None:
            raise WorkbenchError(f"{weights} has no config.json beside it (the official layout keeps "
                                 "medusa_num_heads and medusa_num_layers there)")
        if "medusa_num_heads" not in config:
            raise WorkbenchError(f"config {directory / 'config.json'} has no medusa_num_heads: not a Medusa heads "
                                 "config (the official layout needs medusa_num_heads and medusa_num_layers)")
        return _heads_from_state(_load_medusa1(weights), config, str(weights))
    if config is None:
        raise WorkbenchError(f"no config.json in {directory}")
    state, names = _load_medusa2(directory)
    return _heads_from_state(state, config, f"{directory} ({names})")


def official_fingerprint(directory: str | os.PathLike) -> str:
    """16 hex digits naming the weights: sha256 of the Medusa-1 file, or of a Medusa-2 model's head tensors."""
    directory = Path(directory)
    h = hashlib.sha256()
    weights = _medusa1_file(directory)
    if weights is not None:
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        state, _ = _load_medusa2(directory)
        for key in sorted(state):
            h.update(key.encode())
            h.update(state[key].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---- writing -----------------------------------------------------------------------------
WRITE_FORMATS = ("pt", "safetensors")


def write_official(directory: str | os.PathLike, heads: OfficialHeads, formats: tuple[str, ...] = ("pt",),
                   extra_config: dict[str, Any] | None = None) -> list[Path]:
    """Write a Medusa-1 folder (config.json + medusa_lm_head.<format> for each format); the files written.

    ``.pt`` is what the official loader and every TensorRT-LLM version read; it stores a tensor
    written under several keys once. ``.safetensors`` (newer loaders) stores each key's own copy.
    """
    directory = Path(directory)
    unknown = sorted(set(formats) - set(WRITE_FORMATS))
    if unknown or not formats:
        raise WorkbenchError(f"unknown weights format {', '.join(unknown) or '(none)'} (use {', '.join(WRITE_FORMATS)})")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkbenchError(f"cannot write to {directory}: {e.strerror}") from None
    state = {k: v.detach().cpu() for k, v in heads.state_dict().items()}
    written = []
    if "pt" in formats:
        written.append(atomic_write(directory / "medusa_lm_head.pt", lambda tmp: torch.save(state, str(tmp))))
    if "safetensors" in formats:
        owned = {k: v.clone().contiguous() for k, v in state.items()}  # safetensors refuses shared tensors
        written.append(atomic_write(directory / "medusa_lm_head.safetensors",
                                    lambda tmp: save_file(owned, str(tmp), metadata={"format": "pt"})))
    config = {"medusa_num_heads": heads.num_heads, "medusa_num_layers": heads.num_layers,
              "base_model_name_or_path": heads.base_model, "hidden_size": heads.hidden_size,
              "vocab_size": heads.vocab_size}
    if heads.medusa_choices is not None:
        config["medusa_choices"] = [list(p) for p in heads.medusa_choices]
    config.update(extra_config or {})
    written.append(atomic_write(directory / "config.json", json.dumps(config, indent=1) + "\n"))
    return written
