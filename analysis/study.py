"""A finished (or running) study read back as trial records: from MLflow, or from Ray's results.

MLflow holds what the tune driver mirrored (parent run per study, child run per trial). When
the tracking server cannot be reached, the same records come from the Ray results folder,
read as files by `tune.records` (which also holds the record type, the state rule and the
best rule). This module never imports Ray.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainable.config import OBJECTIVE
from trainable.errors import UserError
from tune.records import (
    LOST,
    RESULT_FILE,
    RUNNING,
    STUDY_FILE,
    TrialRecord,
    best_trial,
    list_checkpoints,
    read_results,
    read_study_json,
    read_trials,
    tracking_problem,
    trial_folders,
    trial_id_of,
)
from tune.space import DEFAULT_SEARCHED, Dimension, space_from_settings

_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Study:
    """A study's identity, settings and trials."""

    name: str
    trials: list[TrialRecord]
    searched: tuple[str, ...] = DEFAULT_SEARCHED
    settings: dict[str, Any] = field(default_factory=dict)
    """The study config's fields (lr_min, lora_ranks, ...), parsed."""
    base: dict[str, Any] = field(default_factory=dict)
    """The base trial config (data, model, epochs, ...), where known."""
    parent_run_id: str | None = None
    experiment_id: str | None = None
    storage: str | None = None
    """The Ray experiment folder (or URI) holding the study's results and checkpoints."""
    source: str = "mlflow"

    @property
    def max_epochs(self) -> int:
        """Epochs each trial was configured for."""
        return int(self.base.get("epochs") or max((t.epochs for t in self.trials), default=0))

    def space(self) -> tuple[Dimension, ...]:
        """The study's search-space table: its recorded ranges and choices, else the defaults."""
        return space_from_settings(self.settings)

    def best_trial(self) -> TrialRecord | None:
        """The finished trial with the best objective over all its epochs (`tune.records`)."""
        return best_trial(self.trials)


# -- MLflow ------------------------------------------------------------------------------------

def find_parent_run(client: Any, experiment: str, selector: str | None) -> Any:
    """The study's parent run: by run id, by study name, or the latest study in `experiment`."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment {experiment!r} not found")
    if selector and _RUN_ID.fullmatch(selector):
        try:
            run = client.get_run(selector)
        except MlflowException:
            run = None
        if run is not None:
            if run.data.tags.get("run_type") != "study":
                raise UserError(f"MLflow run {selector} is not a study's parent run "
                                f"(run_type {run.data.tags.get('run_type')!r})")
            return run
    query = "tags.run_type = 'study'"
    if selector:
        if "'" in selector or "\\" in selector:
            raise UserError(f"no study {selector!r} in MLflow experiment {experiment!r}")
        query += f" and tags.study = '{selector}'"
    runs = client.search_runs([exp.experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        what = f"no study {selector!r}" if selector else "no study"
        raise UserError(f"{what} in MLflow experiment {experiment!r}")
    return runs[0]


def load_from_mlflow(client: Any, experiment: str, selector: str | None) -> Study:
    """The study and its trials as the tune driver mirrored them into MLflow."""
    parent = find_parent_run(client, experiment, selector)
    tags, params = parent.data.tags, parent.data.params
    name = tags.get("study", parent.info.run_name)
    settings = {k[len("study."):]: _parse(v) for k, v in params.items() if k.startswith("study.")}
    searched = tuple(settings.get("searched") or DEFAULT_SEARCHED)
    trials, base = [], {}
    for run in _search_all(client, parent.info.experiment_id,
                           f"tags.study = '{name}' and tags.run_type = 'trial'"):
        if run.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
            continue  # a study of the same name elsewhere in the experiment
        if run.data.tags.get("state") == LOST:
            continue  # a trial Ray never recorded; its configuration ran again (tune.mirror)
        rp = run.data.params
        if not base:
            base = {k: _parse(v) for k, v in rp.items() if k != "searched"}
        history = {int(m.step): float(m.value)
                   for m in client.get_metric_history(run.info.run_id, OBJECTIVE.metric)
                   if not math.isnan(m.value)}
        end = run.info.end_time
        trials.append(TrialRecord.from_history(
            run.data.tags.get("trial_id", run.info.run_name),
            {k: _parse(rp[k]) for k in searched if k in rp}, history,
            # The mirror dates a trial's run from Ray's results (tune.records.TrialRecord.span);
            # studies mirrored before it did started their runs at the first report.
            seconds=(end - run.info.start_time) / 1000 if end else None,
            state=run.data.tags.get("state", RUNNING), error=run.data.tags.get("error"),
            run_id=run.info.run_id))
    if "epochs" in base:
        base["epochs"] = int(base["epochs"])
    study = Study(name=name, trials=sorted(trials, key=lambda t: t.trial_id), searched=searched,
                  settings=settings, base=base, parent_run_id=parent.info.run_id,
                  experiment_id=parent.info.experiment_id, storage=tags.get("storage"))
    _add_ray_results(study)
    return study


def _search_all(client: Any, experiment_id: str, query: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _add_ray_results(study: Study) -> None:
    """Each trial's full Ray results (durations from `time_total_s` included) where its results
    folder is readable here."""
    if not study.storage or "://" in study.storage or not Path(study.storage).is_dir():
        return
    by_id = {t.trial_id: t for t in study.trials}
    for folder in trial_folders(study.storage):
        results = read_results(f"{folder}/{RESULT_FILE}")
        record = by_id.get(trial_id_of(folder, results))
        if record is not None and results:
            record.folder, record.results = folder, results
            record.checkpoints = list_checkpoints(folder)


def _parse(value: str) -> Any:
    """An MLflow param string back to a number, list, bool or None where it is one."""
    try:
        return json.loads(value)
    except ValueError:
        pass
    return {"None": None, "True": True, "False": False}.get(value, value)


# -- Ray results folder ------------------------------------------------------------------------

def load_from_ray(storage_path: str | Path, selector: str | None) -> Study:
    """The study from Ray's results under `storage_path` (a study name, a parent run id that a
    study.json records, or the latest study there)."""
    root = Path(storage_path).expanduser()
    if not root.is_dir():
        raise UserError(f"storage path {root}: no such folder")
    folder = _find_study_folder(root, selector)
    saved = read_study_json(str(folder)) or {}
    try:
        settings, base = dict(saved["study"]), dict(saved["trial"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder / STUDY_FILE}: not a study file ({e})") from None
    searched = tuple(settings.get("searched") or DEFAULT_SEARCHED)
    trials = read_trials(str(folder), max_epochs=int(base.get("epochs", 0)))
    for record in trials:
        record.sampled = {k: record.sampled[k] for k in searched if k in record.sampled}
    return Study(name=str(settings.get("name", folder.name)), trials=trials, searched=searched,
                 settings=settings, base=base, parent_run_id=saved.get("parent_run_id"),
                 storage=str(folder), source="ray")


def _find_study_folder(root: Path, selector: str | None) -> Path:
    if (root / STUDY_FILE).is_file() and selector in (None, root.name):
        return root  # the study folder itself
    studies = [p.parent for p in root.glob(f"*/{STUDY_FILE}")]
    if selector:
        for folder in studies:
            saved = read_study_json(str(folder)) or {}
            if folder.name == selector or saved.get("parent_run_id") == selector:
                return folder
        raise UserError(f"no study {selector!r} under {root}")
    if not studies:
        raise UserError(f"no study under {root} (no */{STUDY_FILE})")
    return max(studies, key=lambda p: (p / STUDY_FILE).stat().st_mtime)


def study_from_args(mlflow_uri: str | None, experiment: str, selector: str | None,
                    storage_path: str | None, allow_offline: bool) -> tuple[Study, Any | None]:
    """(study, MLflow client or None): MLflow when reachable, else Ray's files if allowed."""
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if tracking_problem(uri, writing=False) is None:
        from mlflow.tracking import MlflowClient

        # The registry too: MLflow's default registry is a sqlite file in the working directory.
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        study = load_from_mlflow(client, experiment, selector)
        if storage_path:
            study.storage = str(_find_study_folder(Path(storage_path).expanduser(), study.name))
            _add_ray_results(study)
        return study, client
    if not allow_offline:
        raise UserError(f"MLflow tracking server {uri} is unreachable")
    if not storage_path:
        raise UserError(f"MLflow tracking server {uri} is unreachable; pass --storage-path DIR "
                        f"(and the study name) to read Ray's results instead")
    return load_from_ray(storage_path, selector), None


def add_study_arguments(p: Any) -> None:
    """The flags that pick a study, shared by `compare` and `best`."""
    p.add_argument("study", nargs="?", metavar="STUDY_OR_RUN_ID",
                   help="study name or its MLflow parent run id (default: the latest study)")
    p.add_argument("--mlflow-uri", metavar="URI",
                   help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="qlora-unfair-tos", help="MLflow experiment name")
