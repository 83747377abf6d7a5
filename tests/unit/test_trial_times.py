"""A trial's wall-clock span from Ray's results, as the MLflow mirror and packing read it."""

from __future__ import annotations

import pytest

from tune.records import REPORTED_AT, TrialRecord

pytestmark = pytest.mark.unit


def _span(results):
    return TrialRecord("t", {}, results).span


def test_a_trial_starts_its_time_total_s_before_the_first_report_and_ends_at_the_last():
    results = [{"epoch": 1, "timestamp": 1000, "time_total_s": 20.5},
               {"epoch": 2, "timestamp": 1010, "time_total_s": 30.25}]
    assert _span(results) == (979.5, 1010.0)
    # The same start whether the mirror sees the first report alone (live) or all of them.
    assert _span(results[:1])[0] == _span(list(reversed(results)))[0]
    assert _span([]) is None
    assert _span([{"epoch": 1, "val/f1": 0.5}]) is None


def test_the_trials_own_report_time_wins_over_rays_whole_seconds():
    """Ray's `timestamp` truncates to the second: two trials of a second each, one after
    the other, would seem to overlap."""
    results = [{"epoch": 1, "timestamp": 1000, REPORTED_AT: 1000.75, "time_total_s": 0.5}]
    assert _span(results) == (1000.25, 1000.75)
