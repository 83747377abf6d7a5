"""Which checkpoint is the study's best: the best trial by the one best rule, its best epoch,
and that epoch's adapter, from the trial's MLflow artifact or else its Ray checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from analysis.study import Study
from trainable.adapter import METRICS, RESUME
from trainable.config import OBJECTIVE
from trainable.errors import UserError, first_line
from tune.records import (
    RESULT_FILE,
    TrialRecord,
    list_checkpoints,
    read_results,
    trial_folders,
    trial_id_of,
)

ADAPTER_ARTIFACT = "adapter"  # the tune mirror's artifact folder on each trial run


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
