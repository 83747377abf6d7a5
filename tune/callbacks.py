"""The driver's Ray Tune callbacks: the live MLflow mirror, and one console line per event."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import tune

from trainable.config import OBJECTIVE
from trainable.errors import UserError, first_line
from tune.mirror import Mirror
from tune.records import (
    COMPLETED,
    ERROR_FILE,
    TrialRecord,
    last_error,
    list_checkpoints,
    rank_key,
    trial_state,
)
from tune.study import read_study_file

log = logging.getLogger("tune")


class MirrorCallback(tune.Callback):
    """Mirrors every result into MLflow as it arrives; survives a tracking server outage.

    While the server is unreachable, trials keep training and their results stay in memory
    (and in Ray's durable results); the next successful contact replays what was missed.
    Ray pickles callbacks with the study, so this holds only the study's path and reads the
    current settings (tracking URI, parent run) from its study file when the run starts.
    """

    RETRY_SECONDS = 15.0

    def __init__(self, experiment_path: str):
        self.experiment_path = experiment_path
        self._reset()

    def _reset(self) -> None:
        self.mirror: Mirror | None = None
        self.records: dict[str, TrialRecord] = {}
        self.pending: set[str] = set()
        self.offline_since: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"experiment_path": self.experiment_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.experiment_path = state["experiment_path"]
        self._reset()

    def setup(self, **info: Any) -> None:
        stored = read_study_file(self.experiment_path)
        if stored is None:
            raise UserError(f"study file missing under {self.experiment_path}")
        study, base, parent_id = stored
        self.mirror = Mirror(study, base)
        self.mirror.attach(parent_id)

    def _record(self, trial: Any) -> TrialRecord:
        if trial.trial_id not in self.records:
            self.records[trial.trial_id] = TrialRecord(trial.trial_id, dict(trial.config))
        return self.records[trial.trial_id]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        record = self._record(trial)
        epoch = result.get("epoch")
        record.results = [r for r in record.results if r.get("epoch") != epoch] + [dict(result)]
        self._push(record)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info):
        record = self._record(trial)
        assert self.mirror is not None
        record.state = trial_state(record.epochs, self.mirror.base.epochs, errored=False)
        record.checkpoints = list_checkpoints(trial.path)
        self._push(record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info):
        record = self._record(trial)
        assert self.mirror is not None
        record.state = trial_state(record.epochs, self.mirror.base.epochs, errored=True)
        record.error = _error_line(trial)
        record.checkpoints = list_checkpoints(trial.path)
        self._push(record)

    def _push(self, record: TrialRecord) -> None:
        self.pending.add(record.trial_id)
        if self.offline_since is not None and time.time() - self.offline_since < self.RETRY_SECONDS:
            return
        assert self.mirror is not None
        try:
            for trial_id in sorted(self.pending):
                self.mirror.apply(self.records[trial_id])
                self.pending.discard(trial_id)
            if self.offline_since is not None:
                log.warning("MLflow is reachable again; the mirror caught up")
            self.offline_since = None
        except Exception as e:  # the tracking server's outage must not stop the study
            if self.offline_since is None:
                log.warning("MLflow unreachable (%s); trials keep training, the mirror catches "
                            "up when it is back", first_line(e, 200))
            self.offline_since = time.time()


class ProgressPrinter(tune.Callback):
    """One line per epoch and per trial outcome, instead of Ray's large tables."""

    def __init__(self, max_epochs: int, num_trials: int):
        self.max_epochs = max_epochs
        self.num_trials = num_trials
        self.started = time.time()
        self.records: dict[str, TrialRecord] = {}
        self.best: TrialRecord | None = None
        self.done = 0

    def _stamp(self) -> str:
        return time.strftime("%H:%M:%S", time.gmtime(time.time() - self.started))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info):
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        print(f"[{self._stamp()}] trial {trial.trial_id} started: {params}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        score = result.get(OBJECTIVE.metric)
        if score is None:
            return
        record = self.records.setdefault(trial.trial_id, TrialRecord(trial.trial_id, {}))
        record.results.append({"epoch": result.get("epoch"), OBJECTIVE.metric: score})
        # The study's best so far by the one best rule, running trials included.
        if self.best is None or rank_key(record) < rank_key(self.best):
            self.best = record
        assert self.best.best is not None
        print(f"[{self._stamp()}] trial {trial.trial_id} epoch {result.get('epoch')}/"
              f"{self.max_epochs}  {OBJECTIVE.metric} {score:.4f}  "
              f"(study best {self.best.best[1]:.4f}, trial {self.best.trial_id})", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info):
        self.done += 1
        epochs = trial.last_result.get("epoch", 0)
        state = trial_state(epochs, self.max_epochs, errored=False)
        how = "completed" if state == COMPLETED else "stopped early by ASHA"
        print(f"[{self._stamp()}] trial {trial.trial_id} {how} after {epochs} epoch(s) "
              f"[{self.done}/{self.num_trials} done]", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info):
        self.done += 1
        print(f"[{self._stamp()}] trial {trial.trial_id} failed: {_error_line(trial)} "
              f"(traceback: {trial.path}/error.txt) [{self.done}/{self.num_trials} done]",
              flush=True)


def _short(value: Any) -> str:
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def _error_line(trial: Any) -> str:
    # When Ray calls on_trial_error, the error file is in the driver's staging folder
    # (`trial.error_file`); it reaches the study's storage (`trial.path`) later.
    for location in (getattr(trial, "error_file", None), f"{trial.path}/{ERROR_FILE}"):
        line = last_error(location) if location else None
        if line:
            return line
    return "unknown error"
