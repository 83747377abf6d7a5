"""Per-clause validation scores go back in split order, whatever order the batches came in."""

from __future__ import annotations

import pytest
import torch

from trainable.module import clause_scores

pytestmark = pytest.mark.unit


def test_scores_come_back_in_split_order_from_any_order_and_repeats():
    labels = torch.tensor([0, 1, 0, 0, 1])
    scores = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8])
    # Length-sorted batches, then a DDP sampler's padding repeats the first clauses.
    order = torch.tensor([3, 1, 4, 0, 2, 3, 1])
    got = clause_scores(order, labels[order], scores[order])
    assert got == {"labels": "01001", "scores": pytest.approx(scores.tolist())}


def test_a_missing_clause_gives_no_scores():
    index = torch.tensor([0, 1, 3])
    assert clause_scores(index, torch.zeros(3), torch.zeros(3)) is None
