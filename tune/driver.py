"""Run a study: Ray Tune over `trainable.train`, Optuna TPE proposing, ASHA stopping, MLflow mirroring.

`run_study(study, base)` is the plain function; `tune/run.py` is its command line.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from trainable.config import OBJECTIVE, TrialConfig
from trainable.errors import UserError
from tune import auth
from tune.mirror import (
    COMPLETED,
    FAILED,
    RUNNING,
    STOPPED,
    Mirror,
    TrialRecord,
    best_checkpoint,
    best_epoch_result,
    check_tracking_uri,
)
from tune.preflight import check_storage, make_store_folder
from tune.results import list_checkpoints, load_records, read_study_file, write_study_file
from tune.space import search_space
from tune.study import SEARCHED, StudyConfig

log = logging.getLogger("tune")

OPTUNA_DB = "optuna.db"


@dataclass
class StudySummary:
    """What a finished (or interrupted) study produced."""

    study: StudyConfig
    records: list[TrialRecord]
    best: TrialRecord | None
    best_adapter: str | None
    parent_run_id: str
    experiment_id: str
    best_run_id: str | None
    seconds: float
    trial_seconds: float
    interrupted: bool = False
    mlflow_synced: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    trial_run_ids: list[str] = field(default_factory=list)
    """The MLflow runs of the study's trials (lost ones left out)."""

    @property
    def best_result(self) -> dict[str, Any]:
        """The best trial's best epoch."""
        return best_epoch_result(self.best.results) if self.best else {}


def optuna_storage_url(study: StudyConfig) -> str:
    """Optuna's sqlite study, kept beside the Ray study (or under ./runs for remote storage)."""
    folder = Path("runs") / study.name if study.is_remote_storage else Path(study.experiment_path)
    return f"sqlite:///{(folder / OPTUNA_DB).resolve()}"


def make_searcher(study: StudyConfig) -> Any:
    """Optuna TPE (seeded, start-up sized to the budget, sqlite storage) or random search."""
    if study.search == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=study.search_seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    url = optuna_storage_url(study)
    Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=study.search_seed, n_startup_trials=study.n_startup_trials)
    return OptunaSearch(sampler=sampler, study_name=study.name,
                        storage=optuna.storages.RDBStorage(url))


def make_scheduler(study: StudyConfig, epochs: int) -> Any:
    """ASHA on the objective, one rung step per epoch; or FIFO (no early stopping)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                         grace_period=study.grace_epochs(epochs),
                         reduction_factor=study.reduction_factor)


# What a data-parallel trial's own Tune process asks for: it only coordinates its Ray Train
# workers, and Ray rejects 0 CPUs. The workers hold the trial's real resources.
COORDINATOR_RESOURCES = {"cpu": 0.01}


def trial_resources(study: StudyConfig, gpus: float) -> dict[str, float]:
    """Ray resources of a trial's Tune process: all of them, or almost none if data-parallel."""
    if study.workers_per_trial > 1:
        return dict(COORDINATOR_RESOURCES)
    resources: dict[str, float] = {"cpu": study.cpus_per_trial, "gpu": gpus}
    if study.trial_resource:
        resources[study.trial_resource] = 1.0
    return resources


def worker_resources(study: StudyConfig, gpus: float) -> dict[str, float]:
    """Ray resources of each data-parallel worker: the trial's CPUs, GPUs and custom resource
    split over workers_per_trial (so a trial takes one unit of trial_resource in all)."""
    n = study.workers_per_trial
    resources = {"CPU": study.cpus_per_trial / n}
    if gpus > 0:
        resources["GPU"] = gpus / n
    if study.trial_resource:
        resources[study.trial_resource] = 1.0 / n
    return resources


def data_parallel(study: StudyConfig, gpus: float) -> Any:
    """How each trial runs on Ray Train workers; None keeps a plain single-process trial."""
    from tune.trial import DataParallel

    if study.workers_per_trial == 1:
        return None
    return DataParallel(workers=study.workers_per_trial,
                        resources_per_worker=worker_resources(study, gpus), use_gpu=gpus > 0,
                        storage_path=study.experiment_path)


def describe_resources(study: StudyConfig, gpus: float) -> str:
    """What one trial holds, for the study's start-up log line."""
    if study.workers_per_trial == 1:
        return f"{trial_resources(study, gpus)} per trial"
    return (f"{study.workers_per_trial} Ray Train workers x {worker_resources(study, gpus)} "
            f"per trial")


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
        record.state = COMPLETED if record.epochs >= self.mirror.base.epochs else STOPPED
        record.checkpoints = list_checkpoints(trial.path)
        self._push(record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info):
        record = self._record(trial)
        record.state = FAILED
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
                            "up when it is back", str(e).splitlines()[0][:200])
            self.offline_since = time.time()


class ProgressPrinter(tune.Callback):
    """One line per epoch and per trial outcome, instead of Ray's large tables."""

    def __init__(self, max_epochs: int, num_trials: int):
        self.max_epochs = max_epochs
        self.num_trials = num_trials
        self.started = time.time()
        self.best: tuple[float, str] | None = None
        self.done = 0

    def _stamp(self) -> str:
        return time.strftime("%H:%M:%S", time.gmtime(time.time() - self.started))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info):
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.config.items() if k in SEARCHED)
        print(f"[{self._stamp()}] trial {trial.trial_id} started: {params}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        score = result.get(OBJECTIVE.metric)
        if score is None:
            return
        if self.best is None or OBJECTIVE.better(score, self.best[0]):
            self.best = (score, trial.trial_id)
        print(f"[{self._stamp()}] trial {trial.trial_id} epoch {result.get('epoch')}/"
              f"{self.max_epochs}  {OBJECTIVE.metric} {score:.4f}  "
              f"(study best {self.best[0]:.4f}, trial {self.best[1]})", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info):
        self.done += 1
        epochs = trial.last_result.get("epoch", 0)
        how = "completed" if epochs >= self.max_epochs else "stopped early by ASHA"
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
    from tune.results import ERROR_FILE, last_error

    # When Ray calls on_trial_error, the error file is in the driver's staging folder
    # (`trial.error_file`); it reaches the study's storage (`trial.path`) later.
    for location in (getattr(trial, "error_file", None), f"{trial.path}/{ERROR_FILE}"):
        line = last_error(location) if location else None
        if line:
            return line
    return "unknown error"


def connect(study: StudyConfig) -> None:
    """Start Ray in-process, or join the cluster at study.address or $RAY_ADDRESS (`auto`,
    `host:port`); fails fast if unreachable. Token auth: see `tune.auth`."""
    import os

    import ray

    address = study.address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise UserError(f"Ray address {address} is unreachable ({e})") from None
    token = auth.token_auth_on()
    # Ray Train cleans up a data-parallel trial's placement group through the State API,
    # which the dashboard serves; a plain local study does without it.
    dashboard = None if address or study.workers_per_trial > 1 else False
    try:
        ray.init(address=address, include_dashboard=dashboard,
                 logging_level=logging.WARNING, log_to_driver=True,
                 runtime_env=None, ignore_reinit_error=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        if token:
            hint = "; token auth is on: is this machine's token the cluster's?"
        elif auth.has_token():
            hint = ("; this machine has a Ray auth token: if the cluster uses token auth, "
                    "export RAY_AUTH_MODE=token before starting Python")
        else:
            hint = f"; if the cluster uses token auth, put its token in {auth.TOKEN_SOURCES}"
        raise UserError(f"cannot connect to Ray at {address} ({str(e).splitlines()[0]}){hint}"
                        ) from None


def resolve_gpus(study: StudyConfig) -> float:
    """GPUs per trial: as asked, or one per worker where the cluster has GPUs; checked so that
    one trial (or one of its data-parallel workers) fits on some node of the cluster."""
    import ray

    cluster = ray.cluster_resources()
    have = cluster.get("GPU", 0.0)
    workers = study.workers_per_trial
    if study.gpus_per_trial is None:
        gpus = float(workers) if have > 0 else 0.0
    else:
        gpus = float(study.gpus_per_trial)
    autoscaled = _autoscaler_node_types()
    if gpus > 0 and have == 0 and not any(t.get("GPU", 0) > 0 for t in autoscaled):
        raise UserError(f"gpus_per_trial {study.gpus_per_trial} asked but the Ray cluster has no "
                        f"GPUs (resources: {_describe(cluster)})")
    if workers > 1 and gpus > 0 and (gpus < workers or gpus % workers):
        raise UserError(f"gpus_per_trial {gpus:g} over {workers} workers_per_trial: each "
                        f"data-parallel worker needs whole GPUs of its own (NCCL runs one rank "
                        f"per GPU); use a multiple of {workers}, or 0 for CPU workers")
    check_placement(study, gpus, autoscaled)
    return gpus


def check_placement(study: StudyConfig, gpus: float,
                    autoscaled: list[dict[str, float]] | None = None) -> None:
    """Fail when no node (up, or startable by the autoscaler) can hold one trial's bundle.

    Ray places a single-process trial, or each worker of a data-parallel one, on one node;
    a bundle that fits on no node waits forever. On a multi-node cluster the cluster's total
    says nothing about that: two 1-GPU workers do not make room for a 2-GPU trial.
    """
    import ray

    if study.workers_per_trial > 1:
        bundle, what = worker_resources(study, gpus), "one data-parallel worker"
    else:
        bundle = {k.upper() if k in ("cpu", "gpu") else k: v
                  for k, v in trial_resources(study, gpus).items()}
        what = "one trial"
    bundle = {k: v for k, v in bundle.items() if v > 0}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    candidates = nodes + list(_autoscaler_node_types() if autoscaled is None else autoscaled)
    if any(all(node.get(k, 0.0) >= v - 1e-9 for k, v in bundle.items()) for node in candidates):
        return
    offered = "; ".join(_describe(node) for node in nodes) or "none"
    message = (f"no node of the Ray cluster can hold {what} ({_describe(bundle)}); nodes "
               f"offer: {offered}")
    if study.trial_resource and not any(study.trial_resource in node for node in candidates):
        message += (f"; trial_resource {study.trial_resource!r} must be advertised by the worker "
                    f"nodes (ray start --resources '{{\"{study.trial_resource}\": 2}}')")
    raise UserError(message)


def _autoscaler_node_types(bootstrap: Path = Path("~/ray_bootstrap_config.yaml")
                           ) -> list[dict[str, float]]:
    """Resources of the worker node types this cluster's autoscaler can start on demand.

    A cluster launched with `ray up` may have no GPU worker yet (min_workers 0); `ray up`
    writes the cluster config to the head as ~/ray_bootstrap_config.yaml, which lists the
    node types the autoscaler starts on demand.
    """
    import yaml

    path = bootstrap.expanduser()
    if not path.is_file():
        return []
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    head = config.get("head_node_type")
    return [dict(spec.get("resources") or {})
            for name, spec in (config.get("available_node_types") or {}).items()
            if name != head and isinstance(spec, dict) and spec.get("max_workers", 0) > 0]


def _describe(resources: dict[str, float]) -> str:
    keys = ["CPU", "GPU", *sorted(k for k in resources if k not in ("CPU", "GPU", "memory",
            "object_store_memory") and not k.startswith("node:"))]
    return ", ".join(f"{k} {resources.get(k, 0):g}" for k in keys)


def check_trial_inputs(study: StudyConfig, base: TrialConfig) -> None:
    """Fail before any trial starts if the model, data or search ranges cannot work."""
    from trainable import data, model

    model_config = model.load_model_config(base)
    tokenizer = model.load_tokenizer(base)
    if "max_length" in study.searched:
        limit = model.position_limit(model_config, tokenizer)
        if limit is not None and max(study.max_lengths) > limit:
            raise UserError(f"max_lengths {list(study.max_lengths)}: {max(study.max_lengths)} "
                            f"exceeds the position limit of model {base.model} ({limit} tokens)")
    else:
        model.check_max_length(base, model_config, tokenizer)
    data.load_splits(base, with_test=False)


def run_study(study: StudyConfig, base: TrialConfig, resume: bool = False) -> StudySummary:
    """Run (or resume) a study; return its summary once every trial has ended or it stopped."""
    import ray

    started = time.time()
    base = _absolute_paths(base)
    # Pin the default sqlite store to an absolute path: a resume or sync from another working
    # directory must reach the same store.
    study = study.replace(mlflow_uri=study.tracking_uri)
    check_tracking_uri(study.tracking_uri)
    check_storage(study.storage_uri)
    check_trial_inputs(study, base)
    stored = read_study_file(study.experiment_path)
    if stored is not None and not resume:
        raise UserError(f"study {study.experiment_path} exists; pass --resume to continue it or "
                        f"--name for a new one")
    if resume and stored is None:
        raise UserError(f"--resume: no study at {study.experiment_path}")
    connect(study)
    mirror: Mirror | None = None
    try:
        gpus = resolve_gpus(study)
        make_store_folder(study.tracking_uri)
        mirror = Mirror(study, base)
        parent_id = mirror.start(resume=resume)
        try:
            write_study_file(study, base, parent_id)
        except OSError as e:  # storage that passed check_storage but failed (full, revoked)
            raise UserError(f"storage_path {study.storage_path}: cannot write the study file "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        log.info("study %s: %d trials, %d at a time, %s; results in %s; MLflow parent "
                 "run %s", study.name, study.num_trials, study.max_concurrent,
                 describe_resources(study, gpus), study.experiment_path, parent_id)
        tuner = _tuner(study, base, gpus, restore=resume and tune.Tuner.can_restore(
            study.experiment_path))
        interrupted = False
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        return _summarize(study, mirror, started, interrupted)
    except BaseException:
        if mirror is not None and not resume:
            _discard_unstarted(study, mirror)
        raise
    finally:
        ray.shutdown()


def _discard_unstarted(study: StudyConfig, mirror: Mirror) -> None:
    """After a failure before the first trial: delete the parent run and the study file this
    call made, so the study leaves nothing behind and a new one of its name may start."""
    import pyarrow.fs as pafs

    from tune.results import STUDY_FILE

    location = f"{study.experiment_path}/{STUDY_FILE}"
    try:
        if not mirror.discard_unstarted():
            return
        fs, path = (pafs.FileSystem.from_uri(location) if study.is_remote_storage
                    else (pafs.LocalFileSystem(), location))
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)
    except Exception as e:  # the failure being raised matters more than this clean-up
        log.warning("could not remove the unstarted study's MLflow run or study file (%s)",
                    str(e).splitlines()[0][:200] if str(e) else type(e).__name__)


def _absolute_paths(base: TrialConfig) -> TrialConfig:
    """Local data and model folders as absolute paths: trials run in their own directories."""
    changes = {}
    if base.is_local_data:
        changes["data"] = str(Path(base.data).expanduser().resolve())
    if Path(base.model).expanduser().is_dir():
        changes["model"] = str(Path(base.model).expanduser().resolve())
    return base.replace(**changes)


def _tuner(study: StudyConfig, base: TrialConfig, gpus: float, restore: bool) -> Any:
    from tune.trial import run_trial

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, parallel=data_parallel(study, gpus)),
        trial_resources(study, gpus))
    if restore:
        # Finished trials stay finished (failed ones too); unfinished ones continue from
        # their last checkpoint; the searcher and callbacks come back from the study folder.
        return tune.Tuner.restore(study.experiment_path, trainable, resume_unfinished=True,
                                  resume_errored=False)
    callbacks = [MirrorCallback(study.experiment_path),
                 ProgressPrinter(base.epochs, study.num_trials)]
    return tune.Tuner(
        trainable,
        param_space=search_space(study),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE.metric, mode=OBJECTIVE.mode, search_alg=make_searcher(study),
            scheduler=make_scheduler(study, base.epochs), num_samples=study.num_trials,
            max_concurrent_trials=study.max_concurrent,
            # Reusing a trial process skips ~10 s of importing torch, Lightning and transformers.
            # Not for data-parallel trials: a stopped trial's process must end, taking the Ray
            # Train controller and workers it owns with it.
            reuse_actors=study.workers_per_trial == 1),
        run_config=tune.RunConfig(
            name=study.name, storage_path=study.storage_uri, callbacks=callbacks, verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=study.checkpoints_per_trial,
                checkpoint_score_attribute=OBJECTIVE.metric,
                checkpoint_score_order=OBJECTIVE.mode),
            failure_config=tune.FailureConfig(max_failures=study.max_failures)),
    )


def _summarize(study: StudyConfig, mirror: Mirror, started: float,
               interrupted: bool) -> StudySummary:
    """Replay Ray's durable results into MLflow (catch-up), pick the best trial, close the parent."""
    records = load_records(study.experiment_path, max_epochs=mirror.base.epochs)
    best = None
    for record in records:
        score = best_epoch_result(record.results).get(OBJECTIVE.metric)
        if score is not None and (best is None or OBJECTIVE.better(
                score, best_epoch_result(best.results)[OBJECTIVE.metric])):
            best = record
    counts = {s: sum(r.state == s for r in records) for s in (COMPLETED, STOPPED, FAILED, RUNNING)}
    interrupted = interrupted or counts[RUNNING] > 0 or len(records) < study.num_trials
    synced, best_run, run_ids = True, None, []
    try:
        for record in records:
            run_id = mirror.apply(record)
            run_ids.append(run_id)
            if best is not None and record.trial_id == best.trial_id:
                best_run = run_id
        for trial_id in mirror.mark_lost({r.trial_id for r in records}):
            log.warning("trial %s: its driver was killed before Ray recorded it; its MLflow "
                        "run is marked lost", trial_id)
        db = Path(optuna_storage_url(study)[len("sqlite:///"):])
        mirror.finish(best, status="KILLED" if interrupted else "FINISHED",
                      optuna_db=db if study.search == "optuna" else None, counts=counts)
    except Exception as e:
        synced = False
        log.warning("MLflow could not be updated (%s); run `python -m tune.sync --name %s "
                    "--storage-path %s` once it is back", str(e).splitlines()[0][:200],
                    study.name, study.storage_path)
    found = best_checkpoint(best.checkpoints) if best else None
    adapter = found[0] if found else None
    trial_seconds = sum(max((r.get("time_total_s", 0.0) for r in rec.results), default=0.0)
                        for rec in records)
    return StudySummary(study=study, records=records, best=best, best_adapter=adapter,
                        parent_run_id=mirror.parent_id or "",
                        experiment_id=mirror.experiment_id or "", best_run_id=best_run,
                        seconds=time.time() - started, trial_seconds=trial_seconds,
                        interrupted=interrupted, mlflow_synced=synced, counts=counts,
                        trial_run_ids=run_ids)

