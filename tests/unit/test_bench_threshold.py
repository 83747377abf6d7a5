"""bench.threshold on a small synthetic recording: each way's threshold scored as it says."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.bootstrap import choose_threshold
from analysis.evaluate import binary_metrics, f1_optimal_threshold
from bench import threshold
from bench.curves import labels, load_curves
from tests.synthetic_curves import write_recording

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return write_recording(tmp_path_factory.mktemp("curves"), n_val=120, n_test=200)


def test_each_model_is_scored_on_test_at_each_way_s_threshold(recording):
    frame, meta = load_curves(recording)
    table = threshold.thresholds(frame, meta, resamples=100)
    assert len(table) == len(frame)
    y_val, y_test = labels(meta, "validation"), labels(meta, "test")
    for (_, row), (_, model) in zip(table.iterrows(), frame.iterrows(), strict=True):
        val, test = np.asarray(model["val_proba"]), np.asarray(model["test_proba"])
        assert row["t 0.5"] == 0.5
        assert row["t tuned"] == f1_optimal_threshold(y_val, val)[0]
        choice = choose_threshold(y_val, val, resamples=100)
        assert (row["t rule"], row["moved"]) == (choice.threshold, choice.moved)
        assert row["t rule"] == (choice.bagged if choice.moved else 0.5)
        for way in threshold.WAYS:
            assert row[f"test {way}"] == binary_metrics(y_test, test, row[f"t {way}"])["f1"]
    summary = threshold.summary(table)
    assert summary.loc["tuned", "test F1"] == pytest.approx(table["test tuned"].mean())
    diff = table["test rule"] - table["test 0.5"]
    assert summary.loc["rule", "vs 0.5"] == f"{diff.mean():+.4f}"
    assert summary.loc["rule", "won/lost vs 0.5"] == f"{(diff > 0).sum()}/{(diff < 0).sum()}"


def test_the_command_prints_both_tables_and_the_top_models(recording, capsys):
    assert threshold.main([str(recording), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "all models:" in out and "the models a study would pick" in out
    assert "the top 5 models by validation F1 at 0.5" in out
    assert out.count("%") >= 5
