"""How far Medusa-2 moved the backbone: the tuned model against the original on held-out answers.

Greedy decoding with Medusa-2 heads is lossless with respect to the *tuned* backbone, so its
distance from the original is part of the result (`drift.json`): teacher-forced top-1 agreement,
mean KL(original || tuned), mean log-likelihood of the original's greedy tokens under both models,
and greedy-generation token agreement on a few held-out prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medusa.backbone import Backbone
from medusa.distill import Sample
from medusa.train.config import Stage2Config
from medusa.train.stage2_model import make_batch


@torch.no_grad()
def teacher_forced_drift(original: Backbone, tuned_model: nn.Module, samples: Sequence[Sample],
                         config: Stage2Config) -> dict[str, Any]:
    """Agreement, KL and log-likelihoods over every generated position of `samples`."""
    agree = total = 0
    kl_sum = ll_orig = ll_tuned = 0.0
    for s in samples:
        b = make_batch([s], config.num_heads, config.max_length, original.device)
        rows = b["next_rows"]
        target = b["ids"][rows[:, 0], rows[:, 1] + 1]
        lo = F.log_softmax(original.model(input_ids=b["ids"]).logits[rows[:, 0], rows[:, 1]].float(), -1)
        lt = F.log_softmax(tuned_model(input_ids=b["ids"]).logits[rows[:, 0], rows[:, 1]].float(), -1)
        agree += int((lo.argmax(-1) == lt.argmax(-1)).sum())
        total += rows.shape[0]
        kl_sum += float((lo.exp() * (lo - lt)).sum())
        ll_orig += float(lo.gather(1, target[:, None]).sum())
        ll_tuned += float(lt.gather(1, target[:, None]).sum())
    return {
        "positions": total,
        "teacher_forced_top1_agreement": agree / total,
        "mean_kl_original_to_tuned": kl_sum / total,
        "mean_loglik_original_greedy_tokens": {"original": ll_orig / total, "tuned": ll_tuned / total},
    }


@torch.no_grad()
def generation_drift(original: Backbone, tuned_model: nn.Module, samples: Sequence[Sample],
                     config: Stage2Config) -> dict[str, Any]:
    """Greedy continuations of the first `drift_prompts` prompts by both models, compared token by token."""
    agree = total = identical = 0
    for s in samples[: config.drift_prompts]:
        start = s.spans[0][0]
        prompt = torch.tensor([s.ids[:start]], device=original.device)
        kw = dict(max_new_tokens=config.drift_tokens, do_sample=False, attention_mask=torch.ones_like(prompt),
                  pad_token_id=original.config.pad_token_id)
        a = original.model.generate(prompt, **kw)[0, start:].tolist()
        b = tuned_model.generate(prompt, **kw)[0, start:].tolist()
        n = min(len(a), len(b))
        agree += sum(x == y for x, y in zip(a[:n], b[:n]))
        total += n
        identical += int(a == b)
    return {"prompts": min(len(samples), config.drift_prompts), "max_new_tokens": config.drift_tokens,
            "positional_token_agreement": agree / total if total else float("nan"),
            "identical_outputs": identical}


def measure_drift(original: Backbone, tuned_model: nn.Module, samples: Sequence[Sample], config: Stage2Config) -> dict[str, Any]:
    """How far the tuned backbone's outputs moved from the original's on held-out distilled answers."""
    return {**teacher_forced_drift(original, tuned_model, samples, config),
            "greedy_generation": generation_drift(original, tuned_model, samples, config)}
