"""A trial hands its memory back: Ray Tune runs trial after trial in one reused process.

Before, a study's reused trial process grew by 0.3-0.6 GB per trial (issue 14): glibc kept
what each trial freed, in a different arena each time, and the fit's objects outlived it in
reference cycles, in the traceback of a stopped trial, and in any callback the caller kept.
"""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path

import pytest

from tests.conftest import cli_env
from trainable.config import TrialConfig
from trainable.train import train

pytestmark = pytest.mark.integration

# RSS after each later trial may exceed RSS after trial 2 (when imports, kernels and Ray's
# own state have settled) by at most this fraction.
RSS_GROWTH = 0.15


def _module_watcher():
    import lightning.pytorch as pl

    class WatchModule(pl.Callback):
        """Keeps a weak reference to the LightningModule of the fit."""

        ref: weakref.ref | None = None

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            type(self).ref = weakref.ref(pl_module)

    return WatchModule


def _alive(ref: weakref.ref) -> bool:
    return ref() is not None


def _tiny_cfg(model_dir: Path, out: Path) -> TrialConfig:
    return TrialConfig(model=str(model_dir), data="demo", epochs=2, max_train_samples=32,
                       max_eval_samples=16, max_length=32, output_dir=str(out), threads=1)


def test_a_finished_trial_leaves_its_model_to_no_one(tiny_model_dir, tmp_path):
    watcher = _module_watcher()
    kept = watcher()  # a callback the caller keeps, which Lightning gave the module's `log`
    gc.disable()  # only an explicit collection may free cycles: the one `train` must run
    try:
        train(_tiny_cfg(tiny_model_dir, tmp_path / "out"), callbacks=[kept], progress=False)
        assert watcher.ref is not None
        assert not _alive(watcher.ref), "the finished fit's model is still alive"
    finally:
        gc.enable()


def test_a_trial_stopped_by_its_report_leaves_its_model_to_no_one(tiny_model_dir, tmp_path):
    def stop(metrics: dict[str, float], folder: Path) -> None:
        sys.exit(0)  # what Ray Tune's report does when ASHA stops the trial

    watcher = _module_watcher()
    kept = watcher()
    gc.disable()
    try:
        with pytest.raises(SystemExit) as stopped:
            train(_tiny_cfg(tiny_model_dir, tmp_path / "out"), callbacks=[kept], report=stop,
                  progress=False)
        # Ray holds the exception until its runner thread ends; the model must not wait.
        assert stopped.value.code == 0
        assert watcher.ref is not None
        assert not _alive(watcher.ref), "the stopped fit's model is still alive"
    finally:
        gc.enable()


def test_a_reused_trial_process_keeps_its_size(tmp_path):
    """Eight trials of the packaged MiniLM in one reused Ray trial process (1.5-2 min)."""
    import subprocess

    from trainable.config import PACKAGED_MODEL

    out = tmp_path / "rss.jsonl"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("reused_process_study.py")),
         "--model", PACKAGED_MODEL, "--data", "demo", "--trials", "8",
         "--storage", str(tmp_path / "runs"), "--out", str(out)],
        env=cli_env({"RAY_DEDUP_LOGS": "0"}), cwd=tmp_path, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8
    assert len({r["pid"] for r in rows}) == 1, "Ray did not reuse the trial process"
    rss = [r["rss_mb"] for r in rows]
    ceiling = rss[1] * (1 + RSS_GROWTH)
    assert max(rss[2:]) <= ceiling, (
        f"RSS after each trial (MB): {rss}; after trial 2: {rss[1]}, ceiling {ceiling:.0f}")
