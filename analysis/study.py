"""A finished (or running) study read back as plain records: from MLflow, or from Ray's results.

MLflow holds what the tune driver mirrored (parent run per study, child run per trial). When
the tracking server cannot be reached, the same records come from the Ray results folder
(`<storage>/<study>/`), read as files: `study.json`, and per trial `params.json`,
`result.json` (one JSON line per epoch) and `error.txt`. This module never imports Ray.

Trial states read from Ray's files (MLflow has them as the `state` tag) follow one rule:
- `completed`: the trial reported every configured epoch;
- `failed`: it did not, and it left an `error.txt` written after its last report (a trial
  that failed, was retried from its checkpoint and then reported again is not failed);
- `stopped_early`: otherwise (ASHA stopped it). Ray's files cannot tell a trial that is
  still running from one that was stopped; MLflow's `state` tag can.
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
from tune.states import COMPLETED, FAILED, LOST, RUNNING, STOPPED

FINISHED_STATES = (COMPLETED, STOPPED)
STUDY_FILE, PARAMS_FILE, RESULT_FILE, ERROR_FILE = "study.json", "params.json", "result.json", "error.txt"
# The searched fields when a study does not say (the tune driver's default).
DEFAULT_SEARCHED = ("lr", "lora_rank", "max_length", "batch_size")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class TrialRecord:
    """One trial: sampled hyperparameters, the objective per epoch, state and cost."""

    trial_id: str
    params: dict[str, Any]
    """The searched hyperparameters' values."""
    history: dict[int, float] = field(default_factory=dict)
    """The objective by epoch (1-based)."""
    state: str = RUNNING
    epochs: int = 0
    seconds: float | None = None
    error: str | None = None
    run_id: str | None = None
    """Its MLflow child run (None when read from Ray's files)."""
    folder: str | None = None
    """Its Ray trial folder, when known."""

    @property
    def best(self) -> tuple[int, float] | None:
        """(epoch, value) of the best objective over all epochs; the earliest of ties."""
        best: tuple[int, float] | None = None
        for epoch in sorted(self.history):
            value = self.history[epoch]
            if OBJECTIVE.better(value, None if best is None else best[1]):
                best = (epoch, value)
        return best

    @property
    def finished(self) -> bool:
        """Completed or stopped early (not failed, not running)."""
        return self.state in FINISHED_STATES


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

    def best_trial(self) -> TrialRecord | None:
        """The finished trial with the best objective over all its epochs (ties: earlier epoch,
        then trial id)."""
        ranked = [t for t in self.trials if t.finished and t.best is not None]
        if not ranked:
            return None
        sign = 1 if OBJECTIVE.mode == "max" else -1
        return min(ranked, key=lambda t: (-sign * t.best[1], t.best[0], t.trial_id))


def derive_state(epochs_run: int, max_epochs: int, error_time: float | None,
                 last_result_time: float | None) -> str:
    """A trial's state from its Ray files (the rule is in the module docstring)."""
    if max_epochs and epochs_run >= max_epochs:
        return COMPLETED
    if error_time is not None and (last_result_time is None or error_time >= last_result_time):
        return FAILED
    return STOPPED


# -- MLflow ------------------------------------------------------------------------------------

def check_reachable(uri: str, timeout: float = 5.0) -> bool:
    """Whether an http(s) tracking server answers /health (other stores count as reachable)."""
    if not uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


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
        trials.append(TrialRecord(
            trial_id=run.data.tags.get("trial_id", run.info.run_name),
            params={k: _parse(rp[k]) for k in searched if k in rp},
            history=history, state=run.data.tags.get("state", RUNNING),
            epochs=int(run.data.tags.get("epochs") or max(history, default=0)),
            # The mirror dates a trial's run from Ray's results (tune.mirror.trial_times);
            # studies mirrored before it did started their runs at the first report.
            seconds=(end - run.info.start_time) / 1000 if end else None,
            error=run.data.tags.get("error"), run_id=run.info.run_id))
    if "epochs" in base:
        base["epochs"] = int(base["epochs"])
    study = Study(name=name, trials=sorted(trials, key=lambda t: t.trial_id), searched=searched,
                  settings=settings, base=base, parent_run_id=parent.info.run_id,
                  experiment_id=parent.info.experiment_id, storage=tags.get("storage"))
    _add_ray_durations(study)
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


def _add_ray_durations(study: Study) -> None:
    """Trial durations from Ray's `time_total_s` where its results folder is readable here."""
    if not study.storage or "://" in study.storage or not Path(study.storage).is_dir():
        return
    by_id = {t.trial_id: t for t in study.trials}
    for folder in trial_folders(Path(study.storage)):
        results = read_results(folder / RESULT_FILE)
        trial_id = _trial_id(folder, results)
        if trial_id in by_id:
            by_id[trial_id].folder = str(folder)
            seconds = max((float(r.get("time_total_s", 0)) for r in results), default=0.0)
            if seconds:
                by_id[trial_id].seconds = seconds


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
    try:
        saved = json.loads((folder / STUDY_FILE).read_text(encoding="utf-8"))
        settings, base = dict(saved["study"]), dict(saved["trial"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder / STUDY_FILE}: not a study file ({e})") from None
    searched = tuple(settings.get("searched") or DEFAULT_SEARCHED)
    max_epochs = int(base.get("epochs", 0))
    trials = []
    for trial_dir in trial_folders(folder):
        results = read_results(trial_dir / RESULT_FILE)
        sampled = _read_json(trial_dir / PARAMS_FILE) or {}
        history = {int(r["epoch"]): float(r[OBJECTIVE.metric]) for r in results
                   if "epoch" in r and isinstance(r.get(OBJECTIVE.metric), (int, float))}
        error_file = trial_dir / ERROR_FILE
        error_time = error_file.stat().st_mtime if error_file.is_file() else None
        last_time = max((float(r["timestamp"]) for r in results if "timestamp" in r), default=None)
        epochs = max(history, default=0)
        state = derive_state(epochs, max_epochs, error_time, last_time)
        trials.append(TrialRecord(
            trial_id=_trial_id(trial_dir, results),
            params={k: sampled[k] for k in searched if k in sampled}, history=history,
            state=state, epochs=epochs,
            seconds=max((float(r.get("time_total_s", 0)) for r in results), default=None),
            error=last_line(error_file) if state == FAILED else None, folder=str(trial_dir)))
    return Study(name=str(settings.get("name", folder.name)),
                 trials=sorted(trials, key=lambda t: t.trial_id), searched=searched,
                 settings=settings, base=base, parent_run_id=saved.get("parent_run_id"),
                 storage=str(folder), source="ray")


def _find_study_folder(root: Path, selector: str | None) -> Path:
    if (root / STUDY_FILE).is_file() and selector in (None, root.name):
        return root  # the study folder itself
    studies = [p.parent for p in root.glob(f"*/{STUDY_FILE}")]
    if selector:
        for folder in studies:
            saved = _read_json(folder / STUDY_FILE) or {}
            if folder.name == selector or saved.get("parent_run_id") == selector:
                return folder
        raise UserError(f"no study {selector!r} under {root}")
    if not studies:
        raise UserError(f"no study under {root} (no */{STUDY_FILE})")
    return max(studies, key=lambda p: (p / STUDY_FILE).stat().st_mtime)


def trial_folders(study_folder: Path) -> list[Path]:
    """Ray's per-trial folders of a study (those holding a params.json)."""
    return sorted(p.parent for p in study_folder.glob(f"*/{PARAMS_FILE}"))


def _trial_id(folder: Path, results: list[dict[str, Any]]) -> str:
    for r in results:
        if r.get("trial_id"):
            return str(r["trial_id"])
    # Ray names trial folders `<trainable>_<trial id>_<index>_<params>_<date>`.
    parts = folder.name.split("_")
    return parts[2] if len(parts) > 3 and parts[0] == "run" else folder.name


def read_results(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a result.json; a torn last line is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    results = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            results.append(item)
    return results


def last_line(path: Path) -> str | None:
    """The last non-empty line of a text file (Ray's error.txt ends with the exception)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8", errors="replace")
                 .splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def study_from_args(mlflow_uri: str | None, experiment: str, selector: str | None,
                    storage_path: str | None, allow_offline: bool) -> tuple[Study, Any | None]:
    """(study, MLflow client or None): MLflow when reachable, else Ray's files if allowed."""
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if check_reachable(uri):
        from mlflow.tracking import MlflowClient

        # The registry too: MLflow's default registry is a sqlite file in the working directory.
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        study = load_from_mlflow(client, experiment, selector)
        if storage_path:
            study.storage = str(_find_study_folder(Path(storage_path).expanduser(), study.name))
            _add_ray_durations(study)
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
