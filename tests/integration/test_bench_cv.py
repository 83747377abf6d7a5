"""`python -m bench.cv` at a toy size: the tiny BERT's recording (`tiny_recording`), each of
its configurations trained cross-validated for real, compared with the recorded single split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_cv_trains_each_configuration_over_folds_and_compares_with_the_recording(
        tiny_recording, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "bench.cv", "--curves", str(tiny_recording), "--data-dir",
           str(REPO_ROOT / "trainable" / "demo"), "--folds", "2", "--epochs", "2",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 of 4 configurations to train, 2 at once" in proc.stdout
    results = [json.loads(p.read_text()) for p in sorted(out.glob("lr*_cv2_e2.json"))]
    assert len(results) == 4
    for r in results:
        # Two real fits of two epochs each, and the objective their mean.
        assert len(r["fold_histories"]) == 2 and all(len(h) == 2 for h in r["fold_histories"])
        for e in range(2):
            mean = np.mean([h[e]["val/f1"] for h in r["fold_histories"]])
            assert r["history"][e]["val/f1"] == pytest.approx(mean)
        shipped = r["shipped_test"]
        assert shipped["tp"] + shipped["fn"] > 0 and 0.0 <= shipped["f1"] <= 1.0
    report = json.loads((out / "report_cv2_e2.json").read_text())
    # The single split's side is the recording's: its best val/f1 over the first two epochs.
    recorded = pd.concat(pd.read_parquet(p) for p in (tiny_recording / "runs").glob("*.parquet"))
    for row in report["rows"]:
        run = recorded[(recorded["lr"] == row["config"]["lr"])
                       & (recorded["lora_rank"] == row["config"]["lora_rank"])
                       & (recorded["epoch"] <= 2)]
        assert row["single"]["objective"] == pytest.approx(run["val/f1"].max())
    assert report["cv_pick"]["cv_objective"] == max(r["cv_objective"] for r in report["rows"])
    assert report["subset_size"] == 2 and report["subsets"] == 6  # 4 choose 2
    assert "Spearman with the configurations' final test F1" in proc.stdout
    # A second run trains nothing and prints the same comparison.
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "to train" not in again.stdout, again.stderr[-2000:]
    assert again.stdout.splitlines()[-3:] == proc.stdout.splitlines()[-3:]
