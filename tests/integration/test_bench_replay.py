"""`python -m bench.replay` on a tiny synthetic recording: real Ray Tune, the driver's own
searcher and scheduler factories, two search seeds per method (tens of seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.synthetic_curves import write_recording

pytestmark = pytest.mark.integration


def test_replay_runs_studies_through_the_driver(tmp_path) -> None:
    curves = write_recording(tmp_path / "curves", epochs=3)
    out = tmp_path / "replay.jsonl"
    cmd = [sys.executable, "-m", "bench.replay", str(curves), "--seeds", "2", "--trials", "4",
           "--methods", "random", "optuna+asha", "optuna+asha ap", "--out", str(out),
           "--plot", str(tmp_path / "replay.png")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    studies = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((s["method"], s["seed"]) for s in studies) == [
        ("optuna+asha", 1), ("optuna+asha", 2), ("optuna+asha ap", 1), ("optuna+asha ap", 2),
        ("random", 1), ("random", 2)]
    for s in studies:
        epochs = {}
        for trial_id, epoch, config in s["events"]:
            assert 0 <= config < 8
            # Each trial reports its epochs in order, one result each.
            assert epoch == epochs.get(trial_id, 0) + 1
            epochs[trial_id] = epoch
        assert len(s["champion"]) == s["trial_epochs"] == len(s["events"])
        if s["method"] == "random":  # no early stopping: 4 trials x 3 epochs
            assert s["trials"] == 4 and s["trial_epochs"] == 12
            assert set(epochs.values()) == {3}
        else:  # ASHA (grace 1, rf 2) stops some after a rung; of its 10 trials, Optuna's
            # repeats are answered without training, so the study ends once it has tried
            # each of the 8 configurations once (tune.repeats)
            assert s["trials"] == s["distinct"] == 8 and min(epochs.values()) < 3
    assert "| random | 2 |" in proc.stdout and "| optuna+asha ap | 2 |" in proc.stdout
    assert (tmp_path / "replay.png").stat().st_size > 0
    # A second run finds every study done and only prints the tables.
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 studies to replay, 6 done" in again.stderr
