"""Threshold selection and metrics on synthetic probabilities; the TF-IDF baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.evaluate import binary_metrics, f1_optimal_threshold, tfidf_baseline

pytestmark = pytest.mark.unit


def test_threshold_separating_the_classes_gives_f1_one():
    labels = [0, 0, 0, 0, 1, 1]
    probs = [0.05, 0.1, 0.2, 0.3, 0.35, 0.9]  # at 0.5 one unfair clause is missed
    threshold, f1 = f1_optimal_threshold(labels, probs)
    assert f1 == 1.0
    assert 0.3 < threshold <= 0.35
    assert binary_metrics(labels, probs, threshold)["f1"] == 1.0
    assert binary_metrics(labels, probs, 0.5)["recall"] == 0.5


def test_threshold_maximizes_f1_over_every_cut():
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.1).astype(int)
    probs = np.clip(0.3 * labels + rng.normal(0.3, 0.15, 300), 0, 1)
    threshold, f1 = f1_optimal_threshold(labels, probs)
    brute = max(binary_metrics(labels, probs, t)["f1"] for t in np.unique(probs))
    assert f1 == pytest.approx(brute)
    assert binary_metrics(labels, probs, threshold)["f1"] == pytest.approx(f1)


def test_ties_take_the_highest_threshold():
    labels = [0, 1, 0, 1]
    probs = [0.2, 0.8, 0.2, 0.8]
    threshold, f1 = f1_optimal_threshold(labels, probs)
    assert (threshold, f1) == (0.8, 1.0)


def test_no_unfair_clause_keeps_the_default():
    threshold, f1 = f1_optimal_threshold([0, 0, 0], [0.1, 0.7, 0.2], default=0.5)
    assert threshold == 0.5 and math.isnan(f1)


def test_binary_metrics_counts_and_macro_f1():
    m = binary_metrics([1, 1, 0, 0, 0], [0.9, 0.2, 0.6, 0.1, 0.0], 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 2)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["accuracy"] == 0.6
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_nothing_predicted_unfair_scores_zero_not_an_error():
    m = binary_metrics([1, 0], [0.1, 0.2], 0.5)
    assert m["f1"] == 0.0 and m["precision"] == 0.0


def test_tfidf_baseline_picks_c_on_validation():
    import pandas as pd

    unfair = ["we may terminate your account at any time without notice .",
              "we may change these terms at any time in our sole discretion .",
              "we are not liable for any damages whatsoever ."]
    fair = ["you can contact support by email .", "our office is in berlin .",
            "please read these terms carefully .", "you can export your data at any time ."]
    train = pd.DataFrame({"text": unfair * 3 + fair * 3, "label": [1] * 9 + [0] * 12})
    val = pd.DataFrame({"text": ["we may terminate your access without notice .",
                                 "you can contact us by phone ."], "label": [1, 0]})
    result = tfidf_baseline(train, val, val, Cs=(0.1, 1.0))
    assert set(result.val_f1) == {0.1, 1.0}
    assert result.val_f1[result.C] == max(result.val_f1.values())
    assert result.metrics["test"]["f1"] == 1.0
    assert len(result.test_scores) == 2


def test_the_summary_says_how_sure_the_choice_is_and_goes_into_the_description():
    from analysis.bootstrap import choose_threshold, compare_trials, metric_intervals
    from analysis.evaluate import Evaluation
    from analysis.register import description
    from analysis.select import TopTrials
    from analysis.study import Study

    rng = np.random.default_rng(1)
    labels = (rng.random(300) < 0.1).astype(int)
    scores = {t: np.clip(0.3 * labels + rng.normal(0.3 + i / 10, 0.15, 300), 0, 1)
              for i, t in enumerate(("champ", "next"))}
    top = TopTrials(compare_trials(labels, scores, resamples=200), clauses=300,
                    unfair=int(labels.sum()), resamples=200,
                    notes=["trial old: no validation scores saved with its best epoch"])
    choice = choose_threshold(labels, scores["champ"], resamples=200)
    intervals = metric_intervals(labels, scores["champ"], choice.threshold, resamples=200)
    ev = Evaluation(study="s", trial_id="champ", epoch=3, logged_value=0.5, checkpoint_source="x",
                    threshold=choice.threshold, val_tuned_f1=0.6, tuned_threshold=choice.tuned,
                    threshold_rule=choice.to_dict(), top_trials=top.to_dict(),
                    test_intervals={m: {"value": iv.value, "low": iv.low, "high": iv.high}
                                    for m, iv in intervals.items()}, sizes={"test": 300})
    lines = ev.summary()
    champ = next(line for line in lines if "trial champ" in line)
    c = top.by_trial()["champ"]
    assert f"{c.f1.value:.4f} [{c.f1.low:.3f}, {c.f1.high:.3f}]" in champ
    assert champ.endswith("<- champion") and "<- champion" not in "".join(
        line for line in lines if "trial next" in line)
    assert any("no interval for trial old" in line for line in lines)
    rule = next(line for line in lines if line.startswith("threshold "))
    assert f"{choice.support:.0%} of 200 resamples" in rule and f"{choice.tuned:.4f}" in rule
    assert ("moved" in rule) == choice.moved
    test = lines[-1]
    assert test.startswith("test (300 clauses)") and f"F1 {intervals['f1'].value:.3f} [" in test
    assert "macro-F1" in test
    text = description(Study(name="s", trials=[]), ev)
    assert text.startswith("@champion of study s: trial champ, epoch 3")
    assert all(line in text for line in lines)
