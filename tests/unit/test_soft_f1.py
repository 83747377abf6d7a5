"""The soft F1 a trial logs (trainable.module.SoftF1) is the one the replay computes from
stored probabilities (bench.replay.soft_f1), whatever the batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.replay import soft_f1
from trainable.module import SoftF1

pytestmark = pytest.mark.unit


def test_batched_soft_f1_equals_the_whole_split_formula() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(463) < 0.07).astype(int)
    p = rng.random(463) * 0.5 + 0.4 * y
    metric = SoftF1()
    for start in range(0, len(y), 32):  # as validation batches arrive
        metric.update(torch.tensor(p[start:start + 32], dtype=torch.float32),
                      torch.tensor(y[start:start + 32]))
    assert metric.compute().item() == pytest.approx(soft_f1(y, p.astype(np.float32)), abs=1e-6)
    # Confident and right scores 1; the same clauses with P(unfair) halved score less.
    sure = SoftF1()
    sure.update(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1, 0, 0]))
    half = SoftF1()
    half.update(torch.tensor([0.5, 0.0, 0.0]), torch.tensor([1, 0, 0]))
    assert sure.compute().item() == 1.0 and half.compute().item() == pytest.approx(2 / 3)


def test_no_unfair_clause_and_no_probability_gives_zero_not_nan() -> None:
    metric = SoftF1()
    metric.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    assert metric.compute().item() == 0.0
