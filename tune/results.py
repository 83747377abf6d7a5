"""Read a study back from Ray's durable results (local folder or s3://), without Ray running.

This is the source of truth the MLflow mirror replays from, and what `analysis` falls back
to when MLflow is unreachable.
"""

from __future__ import annotations

import json
from typing import Any

from trainable.config import TrialConfig
from trainable.errors import UserError
from tune.mirror import FAILED, TrialRecord, trial_state
from tune.study import StudyConfig

RESULT_FILE = "result.json"  # ray.air.constants.EXPR_RESULT_FILE
ERROR_FILE = "error.txt"  # ray.air.constants.EXPR_ERROR_FILE


def _fs(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def load_records(experiment_path: str, max_epochs: int) -> list[TrialRecord]:
    """Every trial of the study at `experiment_path`, with its results, state and checkpoints."""
    from ray import tune
    from ray.tune import ExperimentAnalysis

    if not tune.Tuner.can_restore(experiment_path):
        raise UserError(f"no Ray study at {experiment_path}")
    try:
        analysis = ExperimentAnalysis(experiment_path)
    except Exception as e:  # missing or half-written experiment state
        raise UserError(f"cannot read the Ray study at {experiment_path} ({e})") from None
    records = []
    for trial in analysis.trials:
        results = read_results(f"{trial.path}/{RESULT_FILE}")
        epochs = max((int(r.get("epoch", 0)) for r in results), default=0)
        error = last_error(f"{trial.path}/{ERROR_FILE}") if trial.status == "ERROR" else None
        state = trial_state(trial.status, epochs, max_epochs)
        if state == FAILED and not error:
            error = "failed (no error file)"
        records.append(TrialRecord(
            trial_id=trial.trial_id, sampled=dict(trial.config), results=results, state=state,
            error=error, checkpoints=list_checkpoints(trial.path)))
    return records


def read_results(location: str) -> list[dict[str, Any]]:
    """Results in a trial's result.json, one per report; a torn last line is skipped."""
    fs, path = _fs(location)
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8")
    except (FileNotFoundError, OSError):
        return []
    results = []
    for line in text.splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:
            continue
    return results


def list_checkpoints(trial_path: str) -> list[str]:
    """The trial's checkpoint folders (Ray keeps the best N plus the latest)."""
    import pyarrow.fs as pafs

    fs, path = _fs(trial_path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    prefix = trial_path.rstrip("/")
    return sorted(f"{prefix}/{i.base_name}" for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))


def last_error(location: str) -> str | None:
    """The final line of the last traceback in Ray's error.txt (the exception and message)."""
    fs, path = _fs(location)
    try:
        with fs.open_input_stream(path) as f:
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
    except (FileNotFoundError, OSError):
        return None
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else None


STUDY_FILE = "study.json"


def write_study_file(study: StudyConfig, base: TrialConfig, parent_run_id: str) -> None:
    """Record the study's settings beside Ray's results (read back by --resume and analysis)."""
    fs, path = _fs(study.experiment_path)
    fs.create_dir(path, recursive=True)
    data = {"study": study.to_dict(), "trial": base.to_dict(), "parent_run_id": parent_run_id,
            "tracking_uri": study.tracking_uri}
    tmp = f"{path}/.{STUDY_FILE}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    fs.move(tmp, f"{path}/{STUDY_FILE}")


def read_study_file(experiment_path: str) -> tuple[StudyConfig, TrialConfig, str] | None:
    """The (study, trial base, MLflow parent run id) saved with a study; None if absent."""
    fs, path = _fs(f"{experiment_path.rstrip('/')}/{STUDY_FILE}")
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{experiment_path}/{STUDY_FILE}: unreadable ({e})") from None
    try:
        return (StudyConfig(**data["study"]), TrialConfig.from_dict(data["trial"]),
                str(data["parent_run_id"]))
    except (KeyError, TypeError) as e:
        raise UserError(f"{experiment_path}/{STUDY_FILE}: not a study file ({e})") from None
