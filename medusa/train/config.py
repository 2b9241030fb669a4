"""Training settings: the options both stages share, Medusa-1's and Medusa-2's, each default set once.

The CLI (`medusa.train.cli`) reads its defaults from these classes and passes every flag whose name
matches a field (`--num-heads` -> `num_heads`, `--dtype` -> `dtype`), so a default changes here only.
Each class checks its own values on construction (one `WorkbenchError` line for a bad one). Process
settings (`--threads`) are not training settings: the CLI applies them and the training record's
`provenance` block says what they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import WorkbenchError
from common.paths import CACHE_ROOT
from medusa.backbone import DEFAULT_BACKBONE

TRAIN_VOCABS = ("full", "seen")
LOSSES = ("hard", "soft", "mix")
BACKBONE_LOSSES = ("kl", "ce")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _at_least_one(config: object, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise WorkbenchError(f"{name} must be >= 1, got {getattr(config, name)}")


@dataclass(frozen=True)
class CommonTrainConfig:
    """Options both stages share: data, backbone, heads shape, optimiser basics."""

    data: str = ""
    eval_data: str = ""
    out: str = ""
    backbone: str = DEFAULT_BACKBONE
    dtype: str = "auto"
    device: str = "cpu"
    init_heads: str = ""
    num_heads: int = 4
    num_layers: int = 1
    lm_projection: str = "shared"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    decay: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_ratio < 1:
            raise WorkbenchError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True)
class TrainConfig(CommonTrainConfig):
    """Medusa-1 (frozen backbone, heads on cached hidden states)."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    proj_dtype: str = "float32"
    train_vocab: str = "full"
    negatives: int = 4096
    eval_every: int = 250
    eval_rows: int = 8192
    final_eval_rows: int | None = None
    save_every: int = 250
    cache_root: str = str(CACHE_ROOT)
    max_samples: int | None = None
    cache_only: bool = False
    loss: str = "hard"
    soft_weight: float = 0.5
    on_path: bool = False
    # Stop taking steps once this many seconds have passed since the run started (backbone load and
    # caches included), then evaluate and save as at the end: a lent GPU's call ends at a hard limit,
    # and heads trained for fewer steps beat none. None: always run `steps`.
    max_wall_s: float | None = None

    @property
    def effective_soft_weight(self) -> float:
        """The soft CE's share of each head's loss: 0 (hard), 1 (soft) or soft_weight (mix)."""
        return {"hard": 0.0, "soft": 1.0}.get(self.loss, self.soft_weight)

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one(self, ("batch_size", "eval_every", "save_every", "eval_rows"))
        if self.steps < 0 or (self.steps == 0 and not (self.init_heads and self.eval_data)):
            raise WorkbenchError(f"steps must be >= 1 (0 only evaluates --init-heads on --eval-data), got {self.steps}")
        if self.lr <= 0:
            raise WorkbenchError(f"lr must be > 0, got {self.lr}")
        if self.max_wall_s is not None and self.max_wall_s <= 0:
            raise WorkbenchError(f"max_wall_s must be > 0, got {self.max_wall_s}")
        if self.train_vocab not in TRAIN_VOCABS:
            raise WorkbenchError(f"train_vocab must be one of {TRAIN_VOCABS}, got {self.train_vocab!r}")
        if self.loss not in LOSSES:
            raise WorkbenchError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0 <= self.soft_weight <= 1:
            raise WorkbenchError(f"soft_weight must be in [0, 1], got {self.soft_weight}")
        if self.loss != "hard" and self.train_vocab != "full":
            raise WorkbenchError("--loss soft/mix needs --train-vocab full (the teacher's top-k may fall outside the seen tokens)")


@dataclass(frozen=True)
class Stage2Config(CommonTrainConfig):
    """Medusa-2 (backbone through LoRA or in full, trained with the heads)."""

    steps: int = 200
    batch_size: int = 4
    max_length: int = 384
    lr: float = 5e-5
    heads_lr_mult: float = 4.0
    lambda0: float = 0.2
    heads_warmup: int = 20
    lambda_ramp: int = 20
    backbone_loss: str = "kl"
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS)
    eval_samples: int = 24
    drift_prompts: int = 4
    drift_tokens: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone_loss not in BACKBONE_LOSSES:
            raise WorkbenchError(f"backbone_loss must be one of {BACKBONE_LOSSES}, got {self.backbone_loss!r}")
        _at_least_one(self, ("steps", "batch_size", "max_length"))
        if self.heads_lr_mult <= 0 or self.lr <= 0:
            raise WorkbenchError("lr and heads_lr_mult must be > 0")
