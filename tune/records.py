"""A study's trials as records: one type, one reader of Ray's files, one state rule, one best rule.

Imports neither Ray nor torch (pyarrow reads a local folder and an s3:// URI alike), so the
driver, the MLflow mirror, `tune.sync`, `analysis` and `bench` read a study the same way.

Ray keeps a study under `<storage>/<name>/`: the driver's `study.json`, and per trial a
folder holding `params.json` (the sampled values), `result.json` (one JSON line per report,
here one per epoch), `error.txt` (the traceback of each failed attempt) and its
`checkpoint_*` folders (each an adapter folder, `trainable.adapter`, with that epoch's
validation scores).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainable.adapter import METRICS, VALIDATION_SCORES
from trainable.config import OBJECTIVE
from trainable.errors import UserError

# Trial states, as tagged in MLflow (tag `state`).
RUNNING, COMPLETED, STOPPED, FAILED = "running", "completed", "stopped_early", "failed"
# A run whose trial Ray never recorded: the driver died before Ray's next snapshot of the
# study (Ray takes one every 10 s or more), and the resumed study ran that configuration
# again as a new trial. Kept, marked, and left out of analysis.
LOST = "lost"
FINISHED_STATES = (COMPLETED, STOPPED)

STUDY_FILE = "study.json"  # written by the driver beside Ray's results
PARAMS_FILE = "params.json"  # ray.air.constants.EXPR_PARAM_FILE
RESULT_FILE = "result.json"  # ray.air.constants.EXPR_RESULT_FILE
ERROR_FILE = "error.txt"  # ray.air.constants.EXPR_ERROR_FILE
CHECKPOINT_PREFIX = "checkpoint_"
# Wall-clock time (float seconds) of a report, set by the trial (tune.trial): Ray's own
# `timestamp` is whole seconds, too coarse to tell which trials of a few seconds overlapped.
REPORTED_AT = "reported_at"


@dataclass
class TrialRecord:
    """One trial: its sampled values, one result per reported epoch, its state and files."""

    trial_id: str
    sampled: dict[str, Any]
    """The searched fields' sampled values."""
    results: list[dict[str, Any]] = field(default_factory=list)
    """One result per reported epoch (Ray's result dicts: the trial's metrics, `epoch`,
    `timestamp`, `time_total_s`, ...), in the order reported."""
    state: str = RUNNING
    error: str | None = None
    """The last line of the last failure, when it failed."""
    checkpoints: list[str] = field(default_factory=list)
    """Checkpoint folders of the trial (local paths or URIs), any order."""
    folder: str | None = None
    """Its Ray trial folder (local path or URI), when known."""
    run_id: str | None = None
    """Its MLflow run, when read from MLflow."""

    @classmethod
    def from_history(cls, trial_id: str, sampled: dict[str, Any], history: dict[int, float],
                     seconds: float | None = None, **fields: Any) -> TrialRecord:
        """A record from the objective per epoch alone (as MLflow's metric history gives it);
        `seconds` is the trial's time, put on its last result."""
        results = [{"epoch": e, OBJECTIVE.metric: v} for e, v in sorted(history.items())]
        if results and seconds is not None:
            results[-1]["time_total_s"] = seconds
        return cls(trial_id, sampled, results, **fields)

    @property
    def epochs(self) -> int:
        """Epochs reported so far."""
        return max((_epoch(r) for r in self.results), default=0)

    @property
    def history(self) -> dict[int, float]:
        """The objective by epoch (1-based)."""
        return {_epoch(r): float(r[OBJECTIVE.metric]) for r in self.results
                if isinstance(r.get(OBJECTIVE.metric), (int, float))}

    @property
    def best_result(self) -> dict[str, Any]:
        """The result of the best epoch by the objective (the earliest of ties); {} if none."""
        best: dict[str, Any] = {}
        for r in sorted(self.results, key=_epoch):
            score = r.get(OBJECTIVE.metric)
            if isinstance(score, (int, float)) and OBJECTIVE.better(
                    float(score), best.get(OBJECTIVE.metric)):
                best = r
        return best

    @property
    def best(self) -> tuple[int, float] | None:
        """(epoch, value) of the best objective over all epochs; the earliest of ties."""
        result = self.best_result
        return (_epoch(result), float(result[OBJECTIVE.metric])) if result else None

    @property
    def best_epochs(self) -> set[int]:
        """Every epoch whose objective ties the best (its saved scores may be any of them)."""
        best = self.best
        return set() if best is None else {e for e, v in self.history.items() if v == best[1]}

    @property
    def seconds(self) -> float | None:
        """The trial's own training time (Ray's `time_total_s`), when reported."""
        times = [float(r["time_total_s"]) for r in self.results if "time_total_s" in r]
        return max(times) if times else None

    @property
    def span(self) -> tuple[float, float] | None:
        """(start, end) of the trial in wall-clock seconds, from its results; None without.

        Each result has its report's time (`report_time`) and `time_total_s` (the trial's
        time up to it, set-up included): the trial started `time_total_s` before its first
        epoch's report and ends with its last report. A trial retried after a failure counts
        from its first start. The first epoch decides the start whether a reader sees one
        result (the live mirror) or all of them (catch-up, `tune.sync`), so both date it alike.
        """
        stamped = [(r, t) for r in self.results if (t := report_time(r)) is not None]
        if not stamped:
            return None
        first, at = min(stamped, key=lambda rt: (_epoch(rt[0]), rt[1]))
        return at - float(first.get("time_total_s") or 0.0), max(t for _, t in stamped)

    @property
    def finished(self) -> bool:
        """Completed or stopped early (not failed, not running)."""
        return self.state in FINISHED_STATES

    @property
    def last(self) -> dict[str, Any]:
        """The latest result ({} before the first)."""
        return self.results[-1] if self.results else {}


def report_time(result: dict[str, Any]) -> float | None:
    """When a result was reported (wall-clock seconds): the trial's own `REPORTED_AT`, else
    Ray's whole-second `timestamp` (results of studies run before trials reported it)."""
    at = result.get(REPORTED_AT, result.get("timestamp"))
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None


def _epoch(result: dict[str, Any]) -> int:
    return int(result.get("epoch", result.get("training_iteration", 0)))


def trial_state(epochs: int, max_epochs: int, errored: bool, ended: bool = True) -> str:
    """The one rule for a trial's state.

    `errored`: its last attempt ended in an error (Ray's status ERROR; from files alone,
    `error_after_last_report`). `ended`: False while Ray still runs or queues it; Ray's files
    alone cannot tell a running trial from one ASHA stopped, so readers without Ray count it
    as ended.
    """
    if max_epochs and epochs >= max_epochs:
        return COMPLETED  # every epoch reported: whatever failed after, its results are whole
    if errored:
        return FAILED
    return STOPPED if ended else RUNNING


def error_after_last_report(error_time: float | None, last_report_time: float | None) -> bool:
    """From Ray's files alone: whether a trial's last attempt failed (its error.txt was written
    after its last report; one that failed, was retried and reported again has recovered)."""
    return error_time is not None and (last_report_time is None or error_time >= last_report_time)


def rank_key(record: TrialRecord) -> tuple[float, int, str]:
    """Sort key of the best rule: the best objective over all epochs first, then the earlier
    epoch, then the trial id (so ties are broken the same way everywhere)."""
    best = record.best
    if best is None:
        return (float("inf"), 0, record.trial_id)
    sign = 1 if OBJECTIVE.mode == "max" else -1
    return (-sign * best[1], best[0], record.trial_id)


def ranked_trials(records: Iterable[TrialRecord], finished_only: bool = True) -> list[TrialRecord]:
    """Trials best first by the one best rule (see rank_key), among finished trials (failed
    and running ones are not candidates) unless told otherwise; trials without a result
    are left out."""
    return sorted((r for r in records if r.best is not None and (r.finished or not finished_only)),
                  key=rank_key)


def best_trial(records: Iterable[TrialRecord], finished_only: bool = True) -> TrialRecord | None:
    """The one best rule: the first of `ranked_trials`."""
    ranked = ranked_trials(records, finished_only)
    return ranked[0] if ranked else None


# -- files (local folder or storage URI) ---------------------------------------------------------

def _fs(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(location)


def _read_text(location: str) -> str | None:
    try:
        fs, path = _fs(str(location))
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


def read_json(location: str | Path) -> Any | None:
    """A JSON file from a local path or a storage URI (None when absent or unreadable)."""
    text = _read_text(str(location))
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def read_results(location: str | Path) -> list[dict[str, Any]]:
    """The results in a trial's result.json, one per report; a torn last line is skipped."""
    results = []
    for line in (_read_text(str(location)) or "").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            results.append(item)
    return results


def last_error(location: str | Path) -> str | None:
    """The final line of the last traceback in Ray's error.txt (the exception and message)."""
    lines = [ln.strip() for ln in (_read_text(str(location)) or "").splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _children(location: str, directories: bool) -> list[Any]:
    import pyarrow.fs as pafs

    fs, path = _fs(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    kind = pafs.FileType.Directory if directories else pafs.FileType.File
    return [i for i in infos if i.type == kind]


def list_checkpoints(trial_path: str) -> list[str]:
    """The trial's checkpoint folders (Ray keeps the best N plus the latest)."""
    prefix = str(trial_path).rstrip("/")
    return sorted(f"{prefix}/{i.base_name}" for i in _children(prefix, directories=True)
                  if i.base_name.startswith(CHECKPOINT_PREFIX))


def best_checkpoint(folders: list[str]) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint folder whose metrics.json has the best objective."""
    best: tuple[str, dict[str, Any]] | None = None
    for folder in folders:
        metrics = read_json(f"{folder.rstrip('/')}/{METRICS}")
        if not isinstance(metrics, dict) or OBJECTIVE.metric not in metrics:
            continue
        if best is None or OBJECTIVE.better(metrics[OBJECTIVE.metric], best[1][OBJECTIVE.metric]):
            best = (folder, metrics)
    return best


def check_validation_scores(data: Any) -> dict[str, Any] | None:
    """Validation scores as `trainable.adapter.save_adapter` writes them (`epoch`, `labels` as
    a 0/1 string, `scores` one finite number per label), or None when `data` is not that."""
    if not isinstance(data, dict):
        return None
    labels, scores = data.get("labels"), data.get("scores")
    if not (isinstance(labels, str) and labels and set(labels) <= {"0", "1"}
            and isinstance(scores, list) and len(scores) == len(labels)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in scores)
            and isinstance(data.get("epoch"), (int, float))):
        return None
    return {"epoch": int(data["epoch"]), "labels": labels, "scores": [float(v) for v in scores]}


def best_validation_scores(record: TrialRecord) -> dict[str, Any] | None:
    """The validation scores saved with the trial's best epoch (any of tied epochs), from its
    checkpoint folders; None when none of them holds that epoch's scores."""
    epochs = record.best_epochs
    if not epochs:
        return None
    folders = record.checkpoints or (list_checkpoints(record.folder) if record.folder else [])
    for folder in sorted(folders):
        scores = check_validation_scores(read_json(f"{folder.rstrip('/')}/{VALIDATION_SCORES}"))
        if scores is not None and scores["epoch"] in epochs:
            return scores
    return None


def fetch_folder(location: str, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy a folder from a local path or storage URI to `dest`, leaving out `skip` names."""
    import pyarrow.fs as pafs

    if "://" not in location:
        shutil.copytree(location, dest, ignore=shutil.ignore_patterns(*skip))
        return dest
    fs, _ = _fs(location)
    dest.mkdir(parents=True, exist_ok=True)
    for info in _children(location, directories=False):
        if info.base_name not in skip:
            pafs.copy_files(info.path, str(dest / info.base_name), source_filesystem=fs)
    return dest


def trial_folders(study_path: str | Path) -> list[str]:
    """Ray's per-trial folders of a study (those holding a params.json)."""
    prefix = str(study_path).rstrip("/")
    folders = []
    for info in _children(prefix, directories=True):
        if read_json(f"{prefix}/{info.base_name}/{PARAMS_FILE}") is not None:
            folders.append(f"{prefix}/{info.base_name}")
    return sorted(folders)


def trial_id_of(folder: str, results: list[dict[str, Any]]) -> str:
    """A trial's id: from its results, else from its folder name, which Ray writes as
    `<trainable>_<trial id>_<index>_<params>_<date>` (the trainable here is `run_trial`)."""
    for r in results:
        if r.get("trial_id"):
            return str(r["trial_id"])
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    parts = name.split("_")
    return parts[2] if len(parts) > 3 and parts[0] == "run" else name


def read_trial(folder: str, max_epochs: int, trial_id: str | None = None,
               ray_status: str | None = None) -> TrialRecord:
    """One trial from its Ray folder. With `ray_status` (what Ray's own records say), its
    state follows Ray; without, the files alone (see `trial_state`)."""
    folder = folder.rstrip("/")
    results = read_results(f"{folder}/{RESULT_FILE}")
    sampled = read_json(f"{folder}/{PARAMS_FILE}")
    epochs = max((_epoch(r) for r in results), default=0)
    error_file = f"{folder}/{ERROR_FILE}"
    if ray_status is not None:
        errored, ended = ray_status == "ERROR", ray_status in ("TERMINATED", "ERROR")
    else:
        last_time = max((t for r in results if (t := report_time(r)) is not None), default=None)
        errored, ended = error_after_last_report(_mtime(error_file), last_time), True
    state = trial_state(epochs, max_epochs, errored, ended)
    error = (last_error(error_file) or "failed (no error file)") if state == FAILED else None
    return TrialRecord(trial_id=trial_id or trial_id_of(folder, results),
                       sampled=sampled if isinstance(sampled, dict) else {}, results=results,
                       state=state, error=error, checkpoints=list_checkpoints(folder),
                       folder=folder)


def read_trials(study_path: str, max_epochs: int,
                ray_trials: dict[str, tuple[str, str]] | None = None) -> list[TrialRecord]:
    """Every trial of the study at `study_path`, sorted by trial id. `ray_trials` maps a
    trial folder's name to Ray's (trial id, status), where Ray's records are at hand (they
    also know trials that have no folder yet)."""
    prefix = str(study_path).rstrip("/")
    names = {f.rsplit("/", 1)[-1] for f in trial_folders(prefix)} | set(ray_trials or {})
    records = []
    for name in sorted(names):
        trial_id, status = (ray_trials or {}).get(name, (None, None))
        records.append(read_trial(f"{prefix}/{name}", max_epochs, trial_id, status))
    return sorted(records, key=lambda r: r.trial_id)


def _mtime(location: str) -> float | None:
    if "://" in location:
        import pyarrow.fs as pafs

        fs, path = _fs(location)
        info = fs.get_file_info(path)
        return None if info.type != pafs.FileType.File or info.mtime is None else (
            info.mtime.timestamp())
    try:
        return os.stat(location).st_mtime
    except OSError:
        return None


# -- the study file ------------------------------------------------------------------------------

def read_study_json(study_path: str) -> dict[str, Any] | None:
    """The driver's study.json of a study (`study`, `trial`, `parent_run_id`, ...); None when
    there is none, a one-line error when it is not one."""
    location = f"{str(study_path).rstrip('/')}/{STUDY_FILE}"
    text = _read_text(location)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{location}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{location}: not a study file")
    return data


def write_study_json(study_path: str, data: dict[str, Any]) -> None:
    """Write study.json atomically (a temporary file, then a move)."""
    fs, path = _fs(str(study_path).rstrip("/"))
    fs.create_dir(path, recursive=True)
    tmp = f"{path}/.{STUDY_FILE}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    fs.move(tmp, f"{path}/{STUDY_FILE}")


def delete_study_json(study_path: str) -> None:
    """Remove a study's study.json (a study that never started leaves nothing behind)."""
    import pyarrow.fs as pafs

    fs, path = _fs(f"{str(study_path).rstrip('/')}/{STUDY_FILE}")
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


# -- the tracking server -------------------------------------------------------------------------

def tracking_problem(uri: str, writing: bool = True, timeout: float = 5.0) -> str | None:
    """Why MLflow at `uri` cannot be used (None when it can): an http(s) server must answer
    /health; a sqlite store's folder must exist and be writable (when `writing`)."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    return f"MLflow tracking server {uri} answered {r.status} on /health"
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)})"
        return None
    if uri.startswith("sqlite:///"):
        from tune.preflight import folder_problem

        # A missing folder is fine if it can be made: the driver makes it (tune.preflight).
        parent = Path(uri[len("sqlite:///"):]).parent
        problem = folder_problem(parent) if writing else None
        return f"MLflow store {uri}: folder {parent}: {problem}" if problem else None
    if uri.startswith("file:") or "://" not in uri:
        return (f"MLflow tracking URI {uri}: use http(s)://host:port or sqlite:///path "
                f"(MLflow 3 no longer writes file stores)")
    return None


def check_tracking_uri(uri: str) -> None:
    """Fail fast, in one line, when MLflow at `uri` cannot be written (see tracking_problem)."""
    problem = tracking_problem(uri)
    if problem:
        raise UserError(problem)
