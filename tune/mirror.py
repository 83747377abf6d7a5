"""Mirror a study into MLflow: one parent run per study, one child run per trial.

Every write is idempotent and keyed by (study, trial id), so the mirror can be replayed from
Ray's durable results at any time without duplicating runs, params or metric steps: after a
driver restart (`--resume`), after the tracking server was down (`python -m tune.sync`), or
live from the driver.

Why not `ray.air.integrations.mlflow.MLflowLoggerCallback`: it keeps the trial-to-run map
only in memory (a resumed study gets a second run per trial), re-logs params on restore
("Changing param values is not allowed"), loses whatever was reported while the server was
unreachable, and adds `config/*` metrics. Those are the failure modes this product exists
to survive, so the mirror is written against MLflow's client API directly.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from trainable.adapter import RESUME
from trainable.config import OBJECTIVE, TrialConfig
from trainable.errors import UserError
from tune.records import (
    COMPLETED,
    FAILED,
    LOST,
    REPORTED_AT,
    RUNNING,
    STOPPED,
    TrialRecord,
    best_checkpoint,
    fetch_folder,
    read_study_json,
    report_time,
)
from tune.study import StudyConfig

log = logging.getLogger("tune.mirror")

_RUN_STATUS = {COMPLETED: "FINISHED", STOPPED: "FINISHED", FAILED: "FAILED", LOST: "KILLED"}

BEST_METRIC = f"{OBJECTIVE.metric}_best"  # running best of the objective, for sorting in the UI
ADAPTER_ARTIFACT = "adapter"
# Keys Ray adds to every result, and the report's time (dates the run's metrics instead);
# only the trial's own metrics are mirrored.
_RAY_KEYS = {"epoch", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
             "time_since_restore", "iterations_since_restore", "done", "should_checkpoint",
             "checkpoint_dir_name", "trial_id", "date", "hostname", "node_ip", "pid",
             "experiment_tag", "config", REPORTED_AT}


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own metrics in a Ray result (drops Ray's bookkeeping)."""
    return {k: float(v) for k, v in result.items()
            if k not in _RAY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))}


class Mirror:
    """Writes a study's parent run and its trials' child runs, idempotently."""

    def __init__(self, study: StudyConfig, base: TrialConfig):
        from mlflow.tracking import MlflowClient

        self.study = study
        self.base = base
        self.client = MlflowClient(tracking_uri=study.tracking_uri)
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._runs: dict[str, str] = {}
        self._uploaded: dict[str, int] = {}
        self.created_parent = False
        """Whether start() created the parent run (rather than finding it)."""

    # -- study --------------------------------------------------------------------------------
    def start(self, resume: bool, start_time: int | None = None) -> str:
        """Find or create the experiment and the study's parent run; return the parent run id.

        `start_time` (ms) dates a parent run created late (tune.sync); None: now."""
        exp = self.client.get_experiment_by_name(self.study.experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            self.study.experiment)
        self._label_experiment()
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.study = '{self.study.name}' and tags.run_type = 'study'")
        if not resume:
            found = [run for run in found if not self._discard_if_never_started(run)]
        if found and not resume:
            raise UserError(f"MLflow experiment {self.study.experiment!r} already has a study "
                            f"named {self.study.name!r}; pass --resume or another --name")
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=self.study.name,
                                     start_time=start_time, tags={
            "study": self.study.name, "run_type": "study",
            "storage": self.study.experiment_path, "objective": OBJECTIVE.metric,
            "objective_mode": OBJECTIVE.mode})
        self.parent_id = run.info.run_id
        self.created_parent = True
        self._log_params(self.parent_id, {f"study.{k}": v for k, v in self.study.to_dict().items()
                                          if k not in ("address", "mlflow_uri")})
        return self.parent_id

    def _label_experiment(self) -> None:
        """Make MLflow's UI open the experiment as model training, with the study's view."""
        from tune.mlflow_ui import label_experiment

        assert self.experiment_id is not None
        label_experiment(self.client, self.experiment_id, self.study.name, self.study.searched)

    def _discard_if_never_started(self, run: Any) -> bool:
        """Delete a parent run left by a study that never started, so that it does not block a
        new study of that name: no trial run under it, and no study file where it pointed."""
        if self.trial_run_ids(run.info.run_id):
            return False
        storage = run.data.tags.get("storage")
        if storage and read_study_json(storage) is not None:
            return False
        log.warning("MLflow run %s of study %s never started a trial; deleting it",
                    run.info.run_id, self.study.name)
        self.client.delete_run(run.info.run_id)
        return True

    def trial_run_ids(self, parent_id: str | None = None) -> list[str]:
        """The trial runs under the study's parent run (this mirror's, unless given)."""
        parent_id = parent_id or self.parent_id
        assert self.experiment_id is not None
        runs = self.client.search_runs(
            [self.experiment_id], max_results=5000,
            filter_string=f"tags.study = '{self.study.name}' and tags.run_type = 'trial'")
        return [r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]

    def discard_unstarted(self) -> bool:
        """Delete the parent run this mirror created if no trial ran under it (a study that
        failed before its first trial leaves no MLflow run behind); True if deleted."""
        if not self.created_parent or self.parent_id is None or self.trial_run_ids():
            return False
        self.client.delete_run(self.parent_id)
        return True

    def attach(self, parent_id: str) -> None:
        """Use an existing parent run (the study was started before)."""
        self.parent_id = parent_id
        self.experiment_id = self.client.get_run(parent_id).info.experiment_id

    def finish(self, best: TrialRecord | None, status: str = "FINISHED",
               optuna_db: Path | None = None, counts: dict[str, int] | None = None,
               end_time: int | None = None) -> None:
        """Record the best trial and the Optuna study on the parent run, then close it (at
        `end_time`, ms; None: now)."""
        assert self.parent_id is not None
        tags = {f"trials_{k}": str(v) for k, v in (counts or {}).items()}
        if best is not None:
            best_result = best.best_result
            # Tags, not params: a resumed study may find a better trial, and MLflow params
            # cannot change once logged.
            tags |= {"best_trial_id": best.trial_id,
                     "best_epoch": str(int(best_result.get("epoch", 0)))}
            tags |= {f"best.{k}": _param_value(v) for k, v in best.sampled.items()}
            metrics = epoch_metrics(best_result)
            self.client.log_batch(self.parent_id, metrics=_metrics(metrics, step=0))
        self.client.log_batch(self.parent_id, tags=_tags(tags))
        if optuna_db is not None and optuna_db.is_file():
            self.client.log_artifact(self.parent_id, str(optuna_db), "optuna")
        self.client.set_terminated(self.parent_id, status, end_time=end_time)

    # -- trials -------------------------------------------------------------------------------
    def apply(self, record: TrialRecord) -> str:
        """Make the trial's child run match `record`; safe to repeat. Returns the run id."""
        span = record.span
        started, ended = (None, None) if span is None else (milliseconds(span[0]), milliseconds(span[1]))
        run_id = self._child_run(record.trial_id, start_time=started)
        run = self.client.get_run(run_id)
        if not run.data.params:
            cfg = self._trial_config(record)
            params = cfg.to_dict()
            params["searched"] = ",".join(self.study.searched)
            self._log_params(run_id, params)
        logged = {int(m.step) for m in self.client.get_metric_history(run_id, OBJECTIVE.metric)}
        best = None
        metrics = []
        for result in sorted(record.results, key=lambda r: int(r.get("epoch", 0))):
            epoch = int(result.get("epoch", result.get("training_iteration", 0)))
            values = epoch_metrics(result)
            score = values.get(OBJECTIVE.metric)
            if score is not None and OBJECTIVE.better(score, best):
                best = score
            if epoch in logged or score is None:
                continue
            values[BEST_METRIC] = best
            stamp = milliseconds(report_time(result) or time.time())
            metrics += _metrics(values, step=epoch, timestamp=stamp)
            logged.add(epoch)
        for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=metrics[i:i + 900])
        tags = {"state": record.state, "epochs": str(record.epochs)}
        if record.last.get("node_ip"):  # the node that ran its latest epoch
            tags["node"] = str(record.last["node_ip"])
            tags["hostname"] = str(record.last.get("hostname", ""))
        if record.last.get("node_id"):
            # Ray's node id (tune.trial reports it): raylets sharing one machine share its IP.
            tags["node_id"] = str(record.last["node_id"])
        if record.error:
            tags["error"] = record.error[:4000]
        self.client.log_batch(run_id, tags=_tags(tags))
        if record.state != RUNNING:
            self._upload_best_adapter(run_id, record)
            if run.info.status != _RUN_STATUS.get(record.state) or (
                    ended is not None and run.info.end_time != ended):
                self.client.set_terminated(run_id, _RUN_STATUS[record.state], end_time=ended)
        return run_id

    def mark_lost(self, known: set[str]) -> list[str]:
        """Mark the study's open trial runs whose trial Ray does not know (see LOST); returns
        their trial ids."""
        assert self.experiment_id is not None
        lost = []
        for run in self.client.search_runs(
                [self.experiment_id], max_results=1000,
                filter_string=f"tags.study = '{self.study.name}' and tags.run_type = 'trial' "
                              f"and tags.state = '{RUNNING}'"):
            trial_id = run.data.tags.get("trial_id", "")
            if trial_id in known:
                continue
            self.client.log_batch(run.info.run_id, tags=_tags({
                "state": LOST, "error": "the study's driver was killed before Ray recorded "
                                        "this trial; the resumed study ran its configuration "
                                        "again as a new trial"}))
            self.client.set_terminated(run.info.run_id, _RUN_STATUS[LOST])
            lost.append(trial_id)
        return lost

    def _child_run(self, trial_id: str, start_time: int | None = None) -> str:
        if trial_id in self._runs:
            return self._runs[trial_id]
        assert self.experiment_id is not None and self.parent_id is not None
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.study = '{self.study.name}' and tags.trial_id = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}",
                                            start_time=start_time, tags={
                "mlflow.parentRunId": self.parent_id, "study": self.study.name,
                "trial_id": trial_id, "run_type": "trial", "state": RUNNING}).info.run_id
        self._runs[trial_id] = run_id
        return run_id

    def _trial_config(self, record: TrialRecord) -> TrialConfig:
        from tune.space import trial_config

        return trial_config(self.base, record.sampled)

    def _upload_best_adapter(self, run_id: str, record: TrialRecord) -> None:
        best = best_checkpoint(record.checkpoints)
        if best is None:
            return
        folder, metrics = best
        epoch = int(metrics.get("epoch", 0))
        tags = self.client.get_run(run_id).data.tags
        if tags.get("adapter_epoch") == str(epoch):
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = fetch_folder(folder, Path(tmp) / ADAPTER_ARTIFACT, skip=(RESUME,))
            self.client.log_artifacts(run_id, str(local), ADAPTER_ARTIFACT)
        self.client.set_tag(run_id, "adapter_epoch", str(epoch))

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 90):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 90])


def milliseconds(seconds: float) -> int:
    """MLflow's times: whole milliseconds since the epoch."""
    return int(seconds * 1000)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:6000]


def _metrics(values: dict[str, float], step: int, timestamp: int | None = None) -> list[Any]:
    from mlflow.entities import Metric

    stamp = timestamp if timestamp is not None else milliseconds(time.time())
    return [Metric(k, float(v), stamp, step) for k, v in sorted(values.items(), key=_metric_order)]


def _metric_order(item: tuple[str, float]) -> tuple[bool, bool, str]:
    # The objective first, then its running best: MLflow lists a run's metrics in the order
    # they were first logged, and its compare page plots the first one (see tune.mlflow_ui).
    return item[0] != OBJECTIVE.metric, item[0] != BEST_METRIC, item[0]


def _tags(values: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in sorted(values.items())]
