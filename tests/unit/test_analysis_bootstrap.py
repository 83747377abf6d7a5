"""Bootstrap intervals by clause and the threshold rule, checked against the plain metrics."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.bootstrap import (
    choose_threshold,
    compare_trials,
    confusion,
    metric_intervals,
    metrics_from_counts,
    optimal_thresholds,
    resample_counts,
)
from analysis.evaluate import binary_metrics, f1_optimal_threshold
from trainable.errors import UserError

pytestmark = pytest.mark.unit


def _split(seed: int, n: int = 400, separation: float = 0.3, shift: float = 0.0):
    """Labels (1 in 10 unfair) and P(unfair) that rank unfair clauses higher, on average."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    y[:2] = 1  # never without unfair clauses
    p = np.clip(separation * y + rng.normal(0.3 + shift, 0.15, n), 0, 1)
    return y, p


def test_a_resample_draws_every_clause_n_times_in_all():
    counts = resample_counts(50, resamples=200, seed=3)
    assert counts.shape == (200, 50)
    assert (counts.sum(axis=1) == 50).all() and (counts >= 0).all()
    assert np.array_equal(counts, resample_counts(50, resamples=200, seed=3))
    assert not np.array_equal(counts, resample_counts(50, resamples=200, seed=4))
    # About 1 - 1/e of the clauses are drawn in a resample, each once on average.
    assert 0.55 < (counts > 0).mean() < 0.72
    assert counts.mean(axis=0) == pytest.approx(np.ones(50), abs=0.3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_on_a_resample_equal_the_metrics_on_its_drawn_clauses(seed):
    y, p = _split(seed)
    counts = resample_counts(len(y), resamples=5, seed=seed)
    got = metrics_from_counts(confusion(y, (p >= 0.4)[None, :], counts))
    for b in range(5):
        drawn = np.repeat(np.arange(len(y)), counts[b])
        expected = binary_metrics(y[drawn], p[drawn], 0.4)
        for name in ("f1", "precision", "recall", "macro_f1"):
            assert got[name][b, 0] == pytest.approx(expected[name]), name


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weighted_optimal_threshold_is_the_optimum_of_the_drawn_clauses(seed):
    y, p = _split(seed)
    p = np.round(p, 2)  # tied scores: a cut never splits them
    assert optimal_thresholds(y, p, np.ones((1, len(y))))[0] == f1_optimal_threshold(y, p)[0]
    counts = resample_counts(len(y), resamples=4, seed=seed)
    got = optimal_thresholds(y, p, counts)
    for b in range(4):
        drawn = np.repeat(np.arange(len(y)), counts[b])
        threshold, f1 = f1_optimal_threshold(y[drawn], p[drawn])
        assert binary_metrics(y[drawn], p[drawn], got[b])["f1"] == pytest.approx(f1)
        assert got[b] == threshold


def test_intervals_hold_the_whole_split_value_and_narrow_with_more_clauses():
    y, p = _split(0, n=3000)
    wide = metric_intervals(y[:300], p[:300], 0.5, resamples=500)
    narrow = metric_intervals(y, p, 0.5, resamples=500)
    for name, iv in narrow.items():
        assert iv.value == pytest.approx(binary_metrics(y, p, 0.5)[name]), name
        assert iv.low <= iv.value <= iv.high, name
        assert iv.high - iv.low < wide[name].high - wide[name].low, name


def test_a_clearly_better_trial_is_best_in_almost_every_resample_and_ties_split_evenly():
    y, p = _split(0)
    _, weak = _split(0, separation=0.05)
    results = compare_trials(y, {"good": p, "twin": p.copy(), "weak": weak}, resamples=400)
    by_id = {r.trial_id: r for r in results}
    assert [r.trial_id for r in results] == ["good", "twin", "weak"]
    assert by_id["good"].f1 == by_id["twin"].f1  # the same resamples for every trial
    assert by_id["good"].best_share == pytest.approx(by_id["twin"].best_share)
    assert by_id["good"].best_share > 0.45 and by_id["weak"].best_share < 0.1
    assert sum(r.best_share for r in results) == pytest.approx(1.0)
    assert by_id["good"].f1.value == pytest.approx(binary_metrics(y, p, 0.5)["f1"])


def test_the_rule_moves_the_threshold_when_every_unfair_clause_scores_below_half():
    y, p = _split(1, separation=0.3)
    p = p * 0.5  # ranks as well, but hardly any clause scores 0.5
    assert binary_metrics(y, p, 0.5)["f1"] < 0.2
    choice = choose_threshold(y, p, resamples=300)
    assert choice.moved and choice.support >= 0.9
    assert choice.threshold == choice.bagged < 0.5
    assert binary_metrics(y, p, choice.threshold)["f1"] > binary_metrics(y, p, 0.5)["f1"] + 0.3
    assert choice.tuned == f1_optimal_threshold(y, p)[0]


def test_the_rule_keeps_half_when_tuning_gains_nothing_reliable():
    # 0.5 separates the classes but for a few clauses on either side: tuned on the clauses
    # drawn, a threshold fits their gap and misses left-out clauses near it more often than
    # it gains.
    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.1).astype(int)
    p = np.where(y == 1, rng.uniform(0.52, 1.0, 400), rng.uniform(0.0, 0.48, 400))
    flip = rng.choice(400, size=6, replace=False)
    p[flip] = 1 - p[flip]
    choice = choose_threshold(y, p, resamples=300)
    assert not choice.moved and choice.threshold == 0.5
    assert choice.support < choice.required
    assert choice.tuned != 0.5  # the whole-split optimum would have moved it


def test_the_required_support_decides():
    y, p = _split(2, shift=0.1)
    choice = choose_threshold(y, p, resamples=200)
    always = choose_threshold(y, p, resamples=200, required=min(choice.support, 1.0) or 1e-9)
    assert always.support == choice.support and always.moved
    never = choose_threshold(y, p, resamples=200, required=1.0)
    assert never.moved == (choice.support == 1.0)


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 1, 1], [0.1, 0.2], "2 scores for 3 labels"),
    ([0, 2], [0.1, 0.2], "labels must be 0 or 1"),
    ([0, 1], [0.1, float("nan")], "finite"),
])
def test_bad_input_is_one_clear_error(labels, scores, message):
    with pytest.raises(UserError, match=message):
        metric_intervals(labels, scores, 0.5)
    with pytest.raises(UserError, match=message):
        choose_threshold(labels, scores)


def test_an_untrusted_split_never_moves_the_threshold():
    y, p = _split(1, separation=0.3)
    p = p * 0.5
    trusted = choose_threshold(y, p, resamples=200)
    untrusted = choose_threshold(y, p, resamples=200, trusted=False)
    assert trusted.moved and not untrusted.moved
    assert untrusted.threshold == 0.5 and untrusted.support == trusted.support
    assert untrusted.to_dict()["trusted"] is False
