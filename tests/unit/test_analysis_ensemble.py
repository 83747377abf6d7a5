"""The ensemble of a study's top trials: the members' mean P(unfair), scored like the champion."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.ensemble import Ensemble, combine, describe
from analysis.evaluate import binary_metrics

pytestmark = pytest.mark.unit


def _members(seed: int, n: int = 600, k: int = 3):
    """Labels (1 in 10 unfair) and k members that each score the truth plus their own noise."""
    rng = np.random.default_rng(seed)
    labels = {s: (rng.random(n) < 0.1).astype(int) for s in ("val", "test")}
    members = [{s: np.clip(0.25 + 0.3 * labels[s] + rng.normal(0, 0.15, n), 0, 1)
                for s in ("val", "test")} for _ in range(k)]
    return labels, members


def test_the_ensemble_scores_the_members_mean_at_half_and_at_the_rules_threshold():
    labels, members = _members(0)
    ensemble = combine(labels, members)
    mean = (members[0]["test"] + members[1]["test"] + members[2]["test"]) / 3
    assert ensemble.metrics["test"] == binary_metrics(labels["test"], mean, 0.5)
    assert ensemble.metrics["test_chosen"] == binary_metrics(labels["test"], mean,
                                                             ensemble.threshold)
    iv = ensemble.test_intervals["f1"]
    assert iv["value"] == ensemble.metrics["test_chosen"]["f1"] and iv["low"] < iv["value"] < iv["high"]
    assert ensemble.threshold_rule["moved"] == (ensemble.threshold != 0.5)


def test_averaging_members_with_independent_errors_beats_each_of_them():
    labels, members = _members(1)
    ensemble = combine(labels, members)
    alone = [binary_metrics(labels["test"], m["test"], 0.5)["f1"] for m in members]
    assert ensemble.metrics["test"]["f1"] > max(alone)


def test_an_untrusted_validation_split_keeps_the_threshold_at_half():
    labels, members = _members(2)
    # Members scoring far below 0.5: tuning wins on validation, but the models trained on it.
    low = [{s: p[s] * 0.5 for s in p} for p in members]
    assert combine(labels, low).threshold != 0.5
    assert combine(labels, low, trusted=False).threshold == 0.5


def test_one_member_is_not_an_ensemble():
    labels, members = _members(3)
    with pytest.raises(ValueError, match="at least two members"):
        combine(labels, members[:1])


def test_the_description_names_every_member_and_the_test_interval():
    labels, members = _members(4)
    ensemble = combine(labels, members)
    ensemble.members = [{"trial_id": t, "epoch": e} for t, e in (("a1", 3), ("b2", 2), ("c3", 4))]
    line = describe(Ensemble(**vars(ensemble)))[0]
    assert "top 3 trials" in line and "a1 epoch 3, b2 epoch 2, c3 epoch 4" in line
    assert f"F1 {ensemble.test_intervals['f1']['value']:.3f} [" in line


@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_an_ensemble_of_fewer_than_one_trial_is_a_one_line_error(value, capsys):
    from analysis.best import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--export-dir", "out", "--ensemble", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--ensemble" in err[0], err
