"""MLflow run times from Ray's results."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

def test_a_trial_run_starts_its_time_total_s_before_the_first_report_and_ends_at_the_last():
    from tune.mirror import trial_times

    results = [{"epoch": 1, "timestamp": 1000, "time_total_s": 20.5},
               {"epoch": 2, "timestamp": 1010, "time_total_s": 30.25}]
    assert trial_times(results) == (979_500, 1_010_000)
    # The same start whether the mirror sees the first report alone (live) or all of them.
    assert trial_times(results[:1])[0] == trial_times(list(reversed(results)))[0]
    assert trial_times([]) == (None, None)
    assert trial_times([{"epoch": 1, "val/f1": 0.5}]) == (None, None)
