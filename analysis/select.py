"""Which checkpoint is the study's best: the best trial by the one best rule, its best epoch,
and that epoch's adapter, from the trial's MLflow artifact or else its Ray checkpoint; and how
sure that choice is: the top trials' objective bootstrapped over the validation clauses."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.bootstrap import (
    CONFIDENCE,
    DEFAULT_THRESHOLD,
    RESAMPLES,
    SEED,
    TrialComparison,
    compare_trials,
    f1_score,
)
from analysis.study import Study
from trainable.adapter import METRICS, RESUME, VALIDATION_SCORES
from trainable.config import OBJECTIVE
from trainable.errors import UserError, first_line
from tune.records import (
    RESULT_FILE,
    TrialRecord,
    best_validation_scores,
    check_validation_scores,
    list_checkpoints,
    ranked_trials,
    read_results,
    trial_folders,
    trial_id_of,
)

ADAPTER_ARTIFACT = "adapter"  # the tune mirror's artifact folder on each trial run
TOP_K = 5  # trials whose objective is bootstrapped side by side


def choose(study: Study) -> tuple[TrialRecord, list[int], float]:
    """(trial, epochs, value): the finished trial whose best epoch is best over the study, and
    every epoch of it that reached that value (any of them is the best checkpoint)."""
    best = study.best_trial()
    if best is None or best.best is None:
        states = ", ".join(sorted({t.state for t in study.trials})) or "no trials"
        raise UserError(f"study {study.name} has no finished trial with a {OBJECTIVE.metric} "
                        f"result ({states})")
    value = best.best[1]
    return best, sorted(e for e, v in best.history.items() if v == value), value


def fetch_checkpoint(study: Study, trial: TrialRecord, epochs: list[int], dest: Path,
                     tracking_uri: str | None) -> tuple[Path, int, str]:
    """(adapter folder, its epoch, where it came from) of `trial` at one of `epochs`.

    Tied epochs are all the best; Ray may have kept only some of their checkpoints (it keeps
    the best N by the objective and breaks ties by recency), so any of them will do.
    """
    why: list[str] = []
    shown = "/".join(map(str, epochs))
    if trial.run_id and tracking_uri:
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=trial.run_id, artifact_path=ADAPTER_ARTIFACT, dst_path=str(dest / "mlflow"),
                tracking_uri=tracking_uri))
        except Exception as e:  # MlflowException when the artifact is absent
            why.append(f"no MLflow artifact {ADAPTER_ARTIFACT}/ on run {trial.run_id} "
                       f"({first_line(e, 120)})")
        else:
            found = _epoch_of(local)
            if found in epochs:
                return local, found, f"MLflow run {trial.run_id} artifact {ADAPTER_ARTIFACT}/"
            why.append(f"MLflow artifact {ADAPTER_ARTIFACT}/ holds epoch {found}")
    found_ray = _ray_checkpoint(study, trial, epochs)
    if found_ray is not None:
        folder, epoch = found_ray
        local = dest / "ray"
        shutil.copytree(folder, local, ignore=shutil.ignore_patterns(RESUME))
        return local, epoch, f"Ray checkpoint {folder}"
    where = study.storage or "(no storage recorded)"
    why.append(f"no Ray checkpoint of that epoch under {where}")
    raise UserError(f"trial {trial.trial_id} epoch {shown}: no checkpoint ({'; '.join(why)})")


def _epoch_of(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / METRICS).read_text(encoding="utf-8"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ray_checkpoint(study: Study, trial: TrialRecord, epochs: list[int]) -> tuple[Path, int] | None:
    """The trial's Ray checkpoint folder of one of `epochs` (earliest first), when the study's
    storage is a local folder."""
    if not study.storage or "://" in study.storage or not Path(study.storage).is_dir():
        return None
    folders = [trial.folder] if trial.folder else [
        f for f in trial_folders(study.storage)
        if trial_id_of(f, read_results(f"{f}/{RESULT_FILE}")) == trial.trial_id]
    found = [(epoch, Path(checkpoint)) for trial_dir in folders
             for checkpoint in list_checkpoints(trial_dir)
             if (epoch := _epoch_of(Path(checkpoint))) in epochs]
    if not found:
        return None
    epoch, checkpoint = min(found)
    return checkpoint, epoch


# -- how sure the choice is ----------------------------------------------------------------------

@dataclass
class TopTrials:
    """The top trials' objective (validation F1 at 0.5) with bootstrap intervals, all trials
    scored on the same resamples of the same validation clauses; best first."""

    comparisons: list[TrialComparison] = field(default_factory=list)
    clauses: int = 0
    unfair: int = 0
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE
    notes: list[str] = field(default_factory=list)
    """Top trials left out, and why."""

    def by_trial(self) -> dict[str, TrialComparison]:
        """The comparisons by trial id."""
        return {c.trial_id: c for c in self.comparisons}

    def describe(self) -> str:
        """What the intervals and shares mean, in one line."""
        return (f"{self.confidence:.0%} intervals of {OBJECTIVE.metric} from {self.resamples} "
                f"resamples of the {self.clauses} validation clauses ({self.unfair} unfair), the "
                f"same resamples for every trial; 'best in': share of resamples in which the "
                f"trial has the highest {OBJECTIVE.metric} of the trials with an interval")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"clauses": self.clauses, "unfair": self.unfair, "resamples": self.resamples,
                "confidence": self.confidence, "notes": self.notes,
                "trials": [{"trial_id": c.trial_id, OBJECTIVE.metric: c.f1.value, "low": c.f1.low,
                            "high": c.f1.high, "best_share": c.best_share}
                           for c in self.comparisons]}


def compare_top(study: Study, tracking_uri: str | None, k: int = TOP_K,
                resamples: int = RESAMPLES, seed: int = SEED) -> TopTrials:
    """The top `k` finished trials by the best rule, bootstrapped from the validation scores
    saved with each one's best epoch (Ray checkpoint, else MLflow artifact)."""
    found: dict[str, list[float]] = {}
    labels: str | None = None
    notes = []
    for trial in ranked_trials(study.trials)[:k]:
        scores = validation_scores(trial, tracking_uri)
        if scores is None:
            notes.append(f"trial {trial.trial_id}: no validation scores saved with its best epoch")
            continue
        if labels is not None and scores["labels"] != labels:
            notes.append(f"trial {trial.trial_id}: validated on other clauses than the top trial")
            continue
        assert trial.best is not None
        f1 = f1_score([int(c) for c in scores["labels"]], scores["scores"], DEFAULT_THRESHOLD)
        if abs(f1 - trial.best[1]) > 1e-4:  # one clause moves F1 by far more
            notes.append(f"trial {trial.trial_id}: its saved scores give F1 {f1:.4f}, not the "
                         f"logged {OBJECTIVE.metric} {trial.best[1]:.4f}")
            continue
        labels = labels or scores["labels"]
        found[trial.trial_id] = scores["scores"]
    if labels is None:
        return TopTrials(resamples=resamples, notes=notes)
    y = [int(c) for c in labels]
    return TopTrials(compare_trials(y, found, DEFAULT_THRESHOLD, resamples, seed),
                     clauses=len(y), unfair=sum(y), resamples=resamples, notes=notes)


def validation_scores(trial: TrialRecord, tracking_uri: str | None) -> dict[str, Any] | None:
    """The validation scores of the trial's best epoch: from its Ray checkpoints, else from
    its MLflow run's adapter artifact (which the mirror uploads from the best checkpoint)."""
    scores = best_validation_scores(trial)
    if scores is not None or not (trial.run_id and tracking_uri):
        return scores
    import mlflow

    with tempfile.TemporaryDirectory(prefix="analysis-scores-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=trial.run_id, artifact_path=f"{ADAPTER_ARTIFACT}/{VALIDATION_SCORES}",
                dst_path=tmp, tracking_uri=tracking_uri)
            scores = check_validation_scores(json.loads(Path(local).read_text(encoding="utf-8")))
        except Exception:  # MlflowException when absent (a study from before scores were kept)
            return None
    return scores if scores is not None and scores["epoch"] in trial.best_epochs else None
