"""Shared fixtures: tiny random models (CPU, fp32, seconds) and the real SmolLM2 for `slow` tests."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny():
    from medusa.testing import tiny_backbone

    return tiny_backbone(0)


@pytest.fixture(scope="session")
def smollm2():
    from medusa.backbone import load_backbone

    return load_backbone("smollm2-135m")
