"""What training reads, checked before any step runs: distilled data and heads that fit the backbone.

Distilled folders (`medusa.distill`) record the backbone that answered them; data or heads made for
another tokenizer or shape are refused with one line instead of training on nonsense. The summary
of the data used (`data_summary`) goes into the training record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError
from medusa.backbone import Backbone, BackboneIdentity
from medusa.distill import Sample, data_parts, read_run
from medusa.heads import HeadsConfig


def check_data_fits(folder: str, backbone: Backbone) -> None:
    """Refuse distilled data whose run.json names a backbone with another tokenizer or shape."""
    for part in data_parts(folder):
        made_by = read_run(part).get("backbone") if Path(part).is_dir() else None
        if made_by:
            theirs = BackboneIdentity(**made_by)
            if not theirs.matches(backbone.identity):
                raise WorkbenchError(f"{part} was distilled with {theirs.describe()}, not backbone {backbone.identity.describe()}")


def check_heads_fit(config: HeadsConfig, backbone: Backbone) -> None:
    """Refuse a heads config shaped for another backbone."""
    if config.hidden_size and config.hidden_size != backbone.hidden_size:
        raise WorkbenchError(f"heads config has hidden size {config.hidden_size} but backbone {backbone.name} has {backbone.hidden_size}")
    if config.vocab_size and config.vocab_size != backbone.vocab_size:
        raise WorkbenchError(f"heads config has vocab {config.vocab_size} but backbone {backbone.name} has {backbone.vocab_size}")


def data_summary(folder: str, samples: Sequence[Sample]) -> dict[str, Any]:
    """Size, prompt-key hash and distillation settings of the data a run trained on (for its record)."""
    runs = [read_run(part) if Path(part).is_dir() else {} for part in data_parts(folder)]
    keys = sorted(s.key for s in samples)
    return {
        "path": str(folder),
        "samples": len(samples),
        "tokens": int(sum(len(s.ids) for s in samples)),
        "generated_tokens": int(sum(s.generated for s in samples)),
        "prompt_keys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
        "distill_settings": runs[0].get("settings", {}) if runs else {},
        "distill_wall_s": round(sum(float(r.get("wall_s") or 0.0) for r in runs), 1),
    }
