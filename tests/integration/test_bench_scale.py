"""`python -m bench.scale` at a toy size: replayed trials through the whole driver, MLflow
mirror included, into a real MLflow server (about a minute)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.synthetic_curves import write_recording

pytestmark = pytest.mark.integration


def test_scale_bench_mirrors_every_epoch_and_reports_its_figures(tmp_path) -> None:
    curves = write_recording(tmp_path / "curves", epochs=3)
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, "-m", "bench.scale", str(curves), "--trials", "6",
                           "--max-concurrent", "2", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    # Every trial reported at least ASHA's first rung and at most every epoch, and MLflow
    # holds each trial's epochs exactly as Ray recorded them.
    assert row["trials"] == 6 and 6 <= row["results"] <= 18
    assert row["completed"] + row["stopped"] == 6
    assert row["mlflow_complete"] and row["mlflow_runs"] == 6
    assert row["driver_cpu_s"] > 0 and row["mirror_lag_s"] >= 0
    assert row["compare_s"] > 0 and row["sync_s"] > 0 and row["mlflow_db_mb"] > 0
    assert "| 6 | " in proc.stdout
