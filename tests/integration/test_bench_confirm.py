"""`python -m bench.confirm` at a toy size: a real recording of the tiny BERT on the demo set
(`bench.curves`, the `tiny_recording` fixture), then the default study and random search as real trials over its grid,
judged like replays and placed among them (about two minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_confirm_runs_real_studies_that_match_the_recording(tiny_recording, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    demo = REPO_ROOT / "trainable" / "demo"
    curves = tiny_recording
    out = tmp_path / "confirm"
    cmd = [sys.executable, "-m", "bench.confirm", "--curves", str(curves), "--data-dir", str(demo),
           "--trials", "2", "--default-trials", "3", "--replay-seeds", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lives = {p.stem: json.loads(p.read_text()) for p in out.glob("confirm-*.json")}
    assert set(lives) == {"confirm-defaults-s1", "confirm-random-s1"}
    for name, live in lives.items():
        outcome = live["outcome"]
        # Every real trial's reports, in order, each from a configuration of the grid.
        assert outcome["trial_epochs"] == len(live["events"]) > 0
        assert all(0 <= config < 4 and 1 <= epoch <= 3 for _, epoch, config in live["events"])
        # The live trials are the recorded ones: same data, seed and configuration train the
        # same model (the same training loss, to float precision) with the same validation
        # F1 at every epoch, and the champion's test F1 measured for real is the one the
        # recording predicted for it.
        assert live["fidelity"]["epochs"] == outcome["trial_epochs"]
        assert live["fidelity"]["train/loss max"] < 1e-6, (name, live["fidelity"])
        assert live["fidelity"]["val/f1 max"] < 1e-6, (name, live["fidelity"])
        # The replay's rung signals, recomputed from the stored probabilities, are the ones
        # the trials log (float32 probabilities: to 1e-5).
        assert live["fidelity"]["val/ap max"] < 1e-5, (name, live["fidelity"])
        assert live["fidelity"]["val/soft_f1 max"] < 1e-5, (name, live["fidelity"])
        champion = live["champion"]
        assert champion["test/f1 measured"] == pytest.approx(champion["test/f1 recorded"],
                                                              abs=0.02)
    assert lives["confirm-random-s1"]["outcome"]["trial_epochs"] == 6  # 2 trials x 3 epochs
    assert "| optuna+asha soft-f1 (live) | random (live) |" in proc.stdout
    assert "2 replays: reached" in proc.stdout
    # A second run keeps both studies and only prints the table.
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and again.stderr.count("kept from") == 2, again.stderr[-2000:]
    # A kept study made under other defaults is refused at once, in one line, and kept.
    kept = out / "confirm-defaults-s1.json"
    saved = json.loads(kept.read_text())
    kept.write_text(json.dumps({**saved, "method": "optuna+asha ap"}))
    refused = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"bench.confirm: {kept} holds a 'optuna+asha ap' study, not 'optuna+asha soft-f1'; "
        f"move it (and its study folder) away or pass another --search-seed")
    assert "replayed:" not in refused.stderr and "| optuna+asha" not in refused.stdout
    assert json.loads(kept.read_text())["method"] == "optuna+asha ap"
    # So is a kept outcome cut short (one written before writes were atomic).
    kept.write_text(json.dumps(saved)[:100])
    torn = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert torn.returncode != 0 and "Traceback" not in torn.stderr, torn.stderr[-2000:]
    assert torn.stderr.strip().splitlines()[-1].startswith(
        f"bench.confirm: {kept} is not a kept study outcome (not JSON: ")
