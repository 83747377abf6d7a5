"""Trial records, state derivation, the trial table and plots, from synthetic studies."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import pytest

from analysis.compare import format_table, trial_table
from analysis.study import Study, load_from_ray
from trainable.errors import UserError
from tune.records import (
    COMPLETED,
    FAILED,
    RUNNING,
    STOPPED,
    TrialRecord,
    error_after_last_report,
    trial_state,
)

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("epochs, error_time, last_result, expected", [
    (3, None, 100.0, COMPLETED),
    (3, 150.0, 100.0, COMPLETED),  # failed once, retried, finished every epoch
    (1, None, 100.0, STOPPED),  # ASHA stopped it
    (1, 150.0, 100.0, FAILED),  # the error came after its last report
    (2, 50.0, 100.0, STOPPED),  # the error came before a later report: it recovered
    (0, 10.0, None, FAILED),  # failed before its first epoch
])
def test_state_from_ray_files(epochs, error_time, last_result, expected):
    errored = error_after_last_report(error_time, last_result)
    assert trial_state(epochs, 3, errored) == expected


def test_best_is_over_all_epochs_and_the_earliest_of_ties():
    t = TrialRecord.from_history("a", {}, {1: 0.4, 2: 0.7, 3: 0.6, 4: 0.7})
    assert t.best == (2, 0.7)
    assert TrialRecord("b", {}).best is None


def _study() -> Study:
    trials = [
        TrialRecord.from_history("t-low", {"lr": 1e-3, "lora_rank": 4}, {1: 0.2, 2: 0.3}, state=COMPLETED, seconds=61.0),
        TrialRecord.from_history("t-peak", {"lr": 2e-3, "lora_rank": 8}, {1: 0.5, 2: 0.9}, state=STOPPED, seconds=30.0),
        # The best value of all, but the trial failed: not a candidate for `best`.
        TrialRecord.from_history("t-failed", {"lr": 3e-3, "lora_rank": 8}, {1: 0.95}, state=FAILED,
                                 seconds=12.0, error="RuntimeError: boom"),
        TrialRecord.from_history("t-nothing", {"lr": 5e-3, "lora_rank": 4}, {}, state=FAILED, seconds=None),
        TrialRecord.from_history("t-running", {"lr": 4e-3, "lora_rank": 4}, {1: 0.99}, state=RUNNING, seconds=None),
        TrialRecord.from_history("t-last", {"lr": 1e-4, "lora_rank": 8}, {1: 0.1, 2: 0.8, 3: 0.85},
                                 state=COMPLETED, seconds=90.0),
    ]
    return Study(name="synthetic", trials=trials, searched=("lr", "lora_rank"),
                 settings={"lr_min": 1e-4, "lr_max": 1e-2, "lora_ranks": [4, 8, 16]},
                 base={"epochs": 3})


def test_best_trial_is_finished_and_best_over_epochs():
    best = _study().best_trial()
    assert best.trial_id == "t-peak"  # 0.9 at epoch 2 beats t-last's 0.85 at its last epoch
    assert best.best == (2, 0.9)
    assert Study(name="x", trials=[_study().trials[2]]).best_trial() is None


def test_trial_table_sorts_by_best_value_and_formats():
    table = trial_table(_study())
    assert list(table.columns) == ["trial", "lr", "lora_rank", "best val/f1", "at epoch",
                                   "epochs", "state", "seconds"]
    assert list(table["trial"]) == ["t-running", "t-failed", "t-peak", "t-last", "t-low",
                                    "t-nothing"]
    assert table.loc[2, "at epoch"] == 2
    assert math.isnan(table.loc[5, "best val/f1"])
    text = format_table(table)
    lines = text.splitlines()
    assert "duration" in lines[0] and "seconds" not in lines[0]
    assert "2.00e-03" in lines[3] and "0.9000" in lines[3] and "stopped_early" in lines[3]
    assert "1m01s" in lines[5] and lines[6].split()[-1] == "-"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def test_plots_are_real_pngs(tmp_path):
    from analysis.plots import (
        EPOCHS_PNG,
        IMPORTANCE_PNG,
        PARALLEL_PNG,
        SLICE_PNG,
        plot_epochs,
        plot_search,
    )

    study = _study()
    epochs = plot_epochs(study, tmp_path / EPOCHS_PNG)
    written, skipped = plot_search(study, tmp_path)
    assert {p.name for p in written} == {SLICE_PNG, PARALLEL_PNG, IMPORTANCE_PNG}, skipped
    for path in [epochs, *written]:
        width, height = _png_size(path)
        assert width > 300 and height > 200 and path.stat().st_size > 10_000


def test_search_plots_skip_importance_with_one_finished_trial(tmp_path):
    from analysis.plots import IMPORTANCE_PNG, plot_search

    study = _study()
    study.trials = study.trials[:1]
    written, skipped = plot_search(study, tmp_path)
    assert IMPORTANCE_PNG not in {p.name for p in written}
    assert any("importance" in s for s in skipped)


def test_optuna_study_mirrors_the_records():
    from optuna.trial import TrialState

    from analysis.plots import optuna_study

    opt = optuna_study(_study())
    states = [t.state for t in opt.trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 2
    best = opt.best_trial
    assert best.value == 0.9 and best.user_attrs["trial_id"] == "t-peak"
    assert best.intermediate_values == {1: 0.5, 2: 0.9}
    assert best.distributions["lr"].log


# -- Ray's results folder ---------------------------------------------------------------------

def _write_trial(study_dir: Path, name: str, trial_id: str, sampled: dict, results: list[dict],
                 error_at: float | None = None) -> None:
    folder = study_dir / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(sampled))
    lines = [json.dumps({"epoch": i + 1, "val/f1": v, "trial_id": trial_id, "timestamp": ts,
                         "time_total_s": 10.0 * (i + 1)}) for i, (v, ts) in enumerate(
        (r["f1"], r["ts"]) for r in results)]
    (folder / "result.json").write_text("\n".join(lines) + ("\n" if lines else "") + '{"torn')
    if error_at is not None:
        error = folder / "error.txt"
        error.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n")
        os.utime(error, (error_at, error_at))
    ckpt = folder / "checkpoint_000000"
    ckpt.mkdir()


def _ray_study(root: Path, name: str = "ray-study", parent: str = "f" * 32) -> Path:
    study_dir = root / name
    study_dir.mkdir(parents=True)
    (study_dir / "study.json").write_text(json.dumps({
        "study": {"name": name, "searched": ["lr", "batch_size"], "lr_min": 1e-4, "lr_max": 1e-2,
                  "batch_sizes": [16, 32]},
        "trial": {"epochs": 3, "data": "demo"}, "parent_run_id": parent, "tracking_uri": "x"}))
    _write_trial(study_dir, "run_trial_aaaa0001_1_lr=0.001", "aaaa0001",
                 {"lr": 1e-3, "batch_size": 16, "lora_rank": 4},
                 [{"f1": 0.2, "ts": 1000}, {"f1": 0.6, "ts": 1010}, {"f1": 0.5, "ts": 1020}])
    _write_trial(study_dir, "run_trial_aaaa0002_2_lr=0.002", "aaaa0002",
                 {"lr": 2e-3, "batch_size": 32}, [{"f1": 0.1, "ts": 1000}])
    _write_trial(study_dir, "run_trial_aaaa0003_3_lr=0.003", "aaaa0003",
                 {"lr": 3e-3, "batch_size": 16}, [{"f1": 0.3, "ts": 1000}], error_at=2000)
    _write_trial(study_dir, "run_trial_aaaa0004_4_lr=0.004", "aaaa0004",
                 {"lr": 4e-3, "batch_size": 32}, [], error_at=2000)
    return study_dir


def test_load_from_ray_reads_trials_and_derives_states(tmp_path):
    _ray_study(tmp_path)
    study = load_from_ray(tmp_path, "ray-study")
    assert study.source == "ray" and study.max_epochs == 3
    by_id = {t.trial_id: t for t in study.trials}
    assert set(by_id) == {"aaaa0001", "aaaa0002", "aaaa0003", "aaaa0004"}
    assert by_id["aaaa0001"].state == COMPLETED and by_id["aaaa0001"].history == {1: 0.2, 2: 0.6, 3: 0.5}
    assert by_id["aaaa0001"].sampled == {"lr": 1e-3, "batch_size": 16}  # only searched fields
    assert by_id["aaaa0001"].seconds == 30.0
    assert by_id["aaaa0002"].state == STOPPED
    assert by_id["aaaa0003"].state == FAILED and by_id["aaaa0003"].error == "RuntimeError: out of memory"
    assert by_id["aaaa0004"].state == FAILED and by_id["aaaa0004"].epochs == 0
    assert study.best_trial().trial_id == "aaaa0001"


def test_load_from_ray_finds_studies_by_name_parent_id_or_latest(tmp_path):
    _ray_study(tmp_path, "older", parent="a" * 32)
    newer = _ray_study(tmp_path, "newer", parent="b" * 32)
    os.utime(newer / "study.json", (9_999_999_999, 9_999_999_999))
    assert load_from_ray(tmp_path, None).name == "newer"
    assert load_from_ray(tmp_path, "a" * 32).name == "older"
    assert load_from_ray(tmp_path / "older", None).name == "older"  # the study folder itself
    with pytest.raises(UserError, match="no study 'nope' under"):
        load_from_ray(tmp_path, "nope")
    with pytest.raises(UserError, match="no such folder"):
        load_from_ray(tmp_path / "missing", None)
    with pytest.raises(UserError, match="no study under"):
        load_from_ray(tmp_path / "older" / "run_trial_aaaa0001_1_lr=0.001", None)


def _scores_of(labels: list[int], f1_target: float, seed: int) -> list[float]:
    """P(unfair) per clause whose F1 at 0.5 is near `f1_target`: a share of the unfair
    clauses above 0.5, as many fair ones as false positives."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    scores = rng.uniform(0.0, 0.45, len(y))
    unfair, fair = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    hits = rng.choice(unfair, size=round(f1_target * len(unfair)), replace=False)
    false = rng.choice(fair, size=len(unfair) - len(hits), replace=False)
    scores[hits] = rng.uniform(0.55, 1.0, len(hits))
    scores[false] = rng.uniform(0.55, 1.0, len(false))
    return scores.tolist()


def _scored_study(root: Path, targets: dict[str, float], saved: set[str]) -> Path:
    """A Ray study whose trials' best checkpoints hold validation scores (those in `saved`)."""
    from analysis.bootstrap import f1_score
    from trainable.adapter import METRICS, VALIDATION_SCORES

    study_dir = _ray_study(root, "scored")
    labels = [1 if i % 10 == 0 else 0 for i in range(400)]
    for i, (trial_id, target) in enumerate(targets.items()):
        scores = _scores_of(labels, target, seed=i)
        f1 = f1_score(labels, scores, 0.5)
        name = f"run_trial_{trial_id}_{10 + i}_lr=0.001"
        _write_trial(study_dir, name, trial_id, {"lr": 1e-3, "batch_size": 16},
                     [{"f1": f1 / 2, "ts": 1000}, {"f1": f1, "ts": 1010}, {"f1": f1, "ts": 1020}])
        ckpt = study_dir / name / "checkpoint_000001"
        ckpt.mkdir()
        (ckpt / METRICS).write_text(json.dumps({"epoch": 2, "val/f1": f1}))
        if trial_id in saved:
            (ckpt / VALIDATION_SCORES).write_text(json.dumps(
                {"epoch": 2, "labels": "".join(map(str, labels)), "scores": scores}))
    return study_dir


def test_compare_bootstraps_the_top_trials_on_the_same_clauses(tmp_path):
    from analysis.select import compare_top

    _scored_study(tmp_path, {"bbbb0001": 0.8, "bbbb0002": 0.78, "bbbb0003": 0.65,
                             "bbbb0004": 0.75}, saved={"bbbb0001", "bbbb0002", "bbbb0003"})
    study = load_from_ray(tmp_path, "scored")
    top = compare_top(study, tracking_uri=None, k=4, resamples=300)
    by_id = top.by_trial()
    # bbbb0004 ranks among the top 4 but saved no scores; the Ray study's own trials rank lower.
    assert set(by_id) == {"bbbb0001", "bbbb0002", "bbbb0003"}
    assert top.notes == ["trial bbbb0004: no validation scores saved with its best epoch"]
    assert (top.clauses, top.unfair) == (400, 40)
    for trial in study.trials:
        if trial.trial_id in by_id:
            c = by_id[trial.trial_id]
            assert c.f1.value == pytest.approx(trial.best[1])
            assert c.f1.low < c.f1.value < c.f1.high
    # 0.8 and 0.78 are one unfair clause apart: neither is sure to be best; 0.65 hardly ever.
    assert 0.2 < by_id["bbbb0002"].best_share < by_id["bbbb0001"].best_share < 0.8
    assert by_id["bbbb0003"].best_share < 0.05
    table = trial_table(study, top)
    assert list(table.columns[3:7]) == ["best val/f1", "low", "high", "best in"]
    text = format_table(table, study.space()).splitlines()
    assert "interval" in text[0] and "best in" in text[0]
    assert f"{by_id['bbbb0001'].f1.low:.3f}-{by_id['bbbb0001'].f1.high:.3f}" in text[1]


def test_scores_that_do_not_give_the_logged_objective_are_left_out(tmp_path):
    from analysis.select import compare_top
    from trainable.adapter import VALIDATION_SCORES

    study_dir = _scored_study(tmp_path, {"bbbb0001": 0.8, "bbbb0002": 0.6},
                              saved={"bbbb0001", "bbbb0002"})
    path = study_dir / "run_trial_bbbb0002_11_lr=0.001" / "checkpoint_000001" / VALIDATION_SCORES
    saved = json.loads(path.read_text())
    saved["scores"] = [1.0 - s for s in saved["scores"]]
    path.write_text(json.dumps(saved))
    top = compare_top(load_from_ray(tmp_path, "scored"), tracking_uri=None, resamples=100)
    assert list(top.by_trial()) == ["bbbb0001"]
    assert any("bbbb0002: its saved scores give F1" in note for note in top.notes), top.notes


def test_compare_and_its_bootstrap_import_neither_torch_nor_lightning_nor_ray():
    import subprocess
    import sys

    code = ("import sys, analysis.compare, analysis.select, analysis.bootstrap; "
            "print(sorted(m for m in ('torch', 'lightning', 'ray', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("data", [
    None, [], {"epoch": 2, "labels": "01", "scores": [0.1]},
    {"epoch": 2, "labels": "02", "scores": [0.1, 0.2]},
    {"epoch": 2, "labels": "01", "scores": [0.1, float("nan")]},
    {"epoch": 2, "labels": "01", "scores": [0.1, True]},
    {"labels": "01", "scores": [0.1, 0.2]}, {"epoch": 2, "labels": "", "scores": []},
])
def test_malformed_validation_scores_are_not_read(data):
    from tune.records import check_validation_scores

    assert check_validation_scores(data) is None
    assert check_validation_scores({"epoch": 2, "labels": "01", "scores": [0.1, 1]}) == {
        "epoch": 2, "labels": "01", "scores": [0.1, 1.0]}
