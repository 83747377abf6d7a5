"""Run a study: Ray Tune over `trainable.train`, Optuna TPE proposing, ASHA stopping, MLflow mirroring.

`run_study(study, base)` is the plain function; `tune/run.py` is its command line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from trainable.config import GRAD_ACCUMULATION, OBJECTIVE, TrialConfig
from trainable.errors import UserError, first_line
from trainable.memory import GIB, Calibration
from tune import packing
from tune.callbacks import MirrorCallback, ProgressPrinter
from tune.mirror import Mirror
from tune.preflight import check_storage, make_store_folder
from tune.records import (
    COMPLETED,
    FAILED,
    RUNNING,
    STOPPED,
    TrialRecord,
    best_checkpoint,
    best_trial,
    check_tracking_uri,
    delete_study_json,
    read_trials,
)
from tune.resources import connect, data_parallel, describe_resources, resolve_gpus, trial_resources
from tune.space import search_space, trial_config
from tune.study import StudyConfig, read_study_file, write_study_file

log = logging.getLogger("tune")

OPTUNA_DB = "optuna.db"


@dataclass(frozen=True)
class MemoryPrediction:
    """A trial's predicted and measured peak RSS in bytes."""

    trial_id: str
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        """Relative error of the prediction (positive: it over-predicted)."""
        return self.predicted / self.measured - 1


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
    retried: int = 0
    """Trials that ran out of memory and went on with a smaller micro-batch."""
    memory: list[MemoryPrediction] | None = None
    """With `--packing memory`: each trial's predicted and measured peak memory."""

    @property
    def best_result(self) -> dict[str, Any]:
        """The best trial's best epoch."""
        return self.best.best_result if self.best else {}


def optuna_storage_url(study: StudyConfig) -> str:
    """Optuna's sqlite study, kept beside the Ray study (or under ./runs for remote storage)."""
    folder = Path("runs") / study.name if study.is_remote_storage else Path(study.experiment_path)
    return f"sqlite:///{(folder / OPTUNA_DB).resolve()}"


def make_searcher(study: StudyConfig) -> Any:
    """Optuna TPE (seeded, start-up sized to the budget, sqlite storage, repeats answered
    from their earlier trial unless `skip_repeats` is off) or random search."""
    if study.search == "random":
        from ray.tune.search import BasicVariantGenerator

        # Tune applies max_concurrent_trials to a Searcher only; the generator takes its own.
        return BasicVariantGenerator(random_state=study.search_seed,
                                     max_concurrent=study.max_concurrent)
    import optuna

    from tune.optuna_search import ResumableOptunaSearch

    url = optuna_storage_url(study)
    Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=study.search_seed, n_startup_trials=study.n_startup_trials)
    searcher = ResumableOptunaSearch(sampler=sampler, study_name=study.name,
                                     storage=optuna.storages.RDBStorage(url))
    if not study.skip_repeats:
        return searcher
    from tune.repeats import SkipRepeats

    return SkipRepeats(searcher, space_size=study.space_size)


def make_scheduler(study: StudyConfig, epochs: int) -> Any:
    """ASHA on the study's search metric, one rung step per epoch; or FIFO (no early stopping)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                         grace_period=study.grace_epochs(epochs),
                         reduction_factor=study.reduction_factor)


def check_trial_inputs(study: StudyConfig, base: TrialConfig) -> None:
    """Fail before any trial starts if the model, data or search ranges cannot work."""
    from trainable import data, model

    model_config = model.load_model_config(base)
    tokenizer = model.load_tokenizer(base)
    if "max_length" in study.searched:
        limit = model.position_limit(model_config, tokenizer)
        lengths = study.dimension("max_length").choices
        if limit is not None and max(lengths) > limit:
            raise UserError(f"max_lengths {list(lengths)}: {max(lengths)} exceeds the position "
                            f"limit of model {base.model} ({limit} tokens)")
    else:
        model.check_max_length(base, model_config, tokenizer)
    if "batch_size" in study.searched and base.grad_accumulation > 1:
        uneven = [b for b in study.dimension("batch_size").choices if b % base.grad_accumulation]
        if uneven:
            raise UserError(f"grad_accumulation {base.grad_accumulation} must divide every batch "
                            f"size searched (not {', '.join(map(str, uneven))})")
    data.load_splits(base, with_test=False)


def run_study(study: StudyConfig, base: TrialConfig, resume: bool = False,
              trial_fn: Any = None) -> StudySummary:
    """Run (or resume) a study; return its summary once every trial has ended or it stopped.
    `trial_fn` stands in for `tune.trial.run_trial` (`bench.scale` replays recorded curves
    through the whole driver, MLflow mirror included)."""
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
        resources: Any = trial_resources(study, gpus)
        described = describe_resources(study, gpus)
        calibration = None
        if study.packing == "memory":
            calibration = packing.calibrate(study, base, gpus)
            packing.check_fits(study, base, calibration, gpus)
            resources = packing.resources_per_trial(study, base, calibration, gpus)
            described = packing.describe(study, base, calibration, gpus)
        make_store_folder(study.tracking_uri)
        mirror = Mirror(study, base)
        parent_id = mirror.start(resume=resume)
        try:
            write_study_file(study, base, parent_id)
        except OSError as e:  # storage that passed check_storage but failed (full, revoked)
            raise UserError(f"storage_path {study.storage_path}: cannot write the study file "
                            f"({first_line(e)})") from None
        trials = (f"{study.num_trials} trials" if study.trials_to_run == study.num_trials else
                  f"{study.trials_to_run} trials (every configuration of the space once; "
                  f"{study.num_trials} asked)")
        log.info("study %s: %s, %d at a time, %s; results in %s; MLflow parent run %s",
                 study.name, trials, study.max_concurrent, described, study.experiment_path,
                 parent_id)
        tuner = _tuner(study, base, gpus, restore=resume and tune.Tuner.can_restore(
            study.experiment_path), trial_fn=trial_fn, resources=resources)
        interrupted = False
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        return _summarize(study, mirror, started, interrupted, calibration)
    except BaseException:
        if mirror is not None and not resume:
            _discard_unstarted(study, mirror)
        raise
    finally:
        ray.shutdown()


def _discard_unstarted(study: StudyConfig, mirror: Mirror) -> None:
    """After a failure before the first trial: delete the parent run and the study file this
    call made, so the study leaves nothing behind and a new one of its name may start."""
    try:
        if mirror.discard_unstarted():
            delete_study_json(study.experiment_path)
    except Exception as e:  # the failure being raised matters more than this clean-up
        log.warning("could not remove the unstarted study's MLflow run or study file (%s)",
                    first_line(e, 200))


def _absolute_paths(base: TrialConfig) -> TrialConfig:
    """Local data and model folders as absolute paths: trials run in their own directories."""
    changes = {}
    if base.is_local_data:
        changes["data"] = str(Path(base.data).expanduser().resolve())
    if Path(base.model).expanduser().is_dir():
        changes["model"] = str(Path(base.model).expanduser().resolve())
    return base.replace(**changes)


def _tuner(study: StudyConfig, base: TrialConfig, gpus: float, restore: bool,
           trial_fn: Any = None, callbacks: list[Any] | None = None,
           resources: Any = None) -> Any:
    """The study's Tuner. `trial_fn` stands in for `run_trial` (same arguments) and
    `callbacks` for the MLflow mirror and the progress lines: `bench.replay` runs recorded
    learning curves through the same searcher, scheduler and Tune settings this way.
    `resources`: each trial's, a dict or a function of its sampled values (memory packing);
    None: the study's fixed shares."""
    from tune.trial import run_trial

    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or run_trial, base=base,
                             parallel=data_parallel(study, gpus)),
        trial_resources(study, gpus) if resources is None else resources)
    if restore:
        # Finished trials stay finished (failed ones too); unfinished ones continue from
        # their last checkpoint; the searcher and callbacks come back from the study folder.
        return tune.Tuner.restore(study.experiment_path, trainable, resume_unfinished=True,
                                  resume_errored=False)
    if callbacks is None:
        callbacks = [MirrorCallback(study.experiment_path),
                     ProgressPrinter(base.epochs, study.trials_to_run)]
    return tune.Tuner(
        trainable,
        param_space=search_space(study),
        tune_config=tune.TuneConfig(
            # The searcher and ASHA rank on the study's search metric; the champion is picked
            # by the objective (tune.records.best_trial), as are the checkpoints kept.
            metric=study.search_metric, mode=study.search_mode, search_alg=make_searcher(study),
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


def _summarize(study: StudyConfig, mirror: Mirror, started: float, interrupted: bool,
               calibration: Calibration | None = None) -> StudySummary:
    """Replay Ray's durable results into MLflow (catch-up), pick the best trial, close the parent."""
    records = ray_records(study.experiment_path, max_epochs=mirror.base.epochs)
    best = best_trial(records)
    counts = {s: sum(r.state == s for r in records) for s in (COMPLETED, STOPPED, FAILED, RUNNING)}
    interrupted = interrupted or counts[RUNNING] > 0 or len(records) < study.trials_to_run
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
                    "--storage-path %s` once it is back", first_line(e, 200),
                    study.name, study.storage_path)
    found = best_checkpoint(best.checkpoints) if best else None
    adapter = found[0] if found else None
    trial_seconds = sum(rec.seconds or 0.0 for rec in records)
    return StudySummary(study=study, records=records, best=best, best_adapter=adapter,
                        parent_run_id=mirror.parent_id or "",
                        experiment_id=mirror.experiment_id or "", best_run_id=best_run,
                        seconds=time.time() - started, trial_seconds=trial_seconds,
                        interrupted=interrupted, mlflow_synced=synced, counts=counts,
                        trial_run_ids=run_ids,
                        retried=sum(_retried(r, mirror.base) for r in records),
                        memory=None if calibration is None else _memory_errors(
                            records, mirror.base, calibration))


def _retried(record: TrialRecord, base: TrialConfig) -> bool:
    """Whether the trial ran out of memory and went on in smaller micro-batches."""
    return any(r.get(GRAD_ACCUMULATION, 1) > base.grad_accumulation for r in record.results)


def _memory_errors(records: list[TrialRecord], base: TrialConfig,
                   calibration: Calibration) -> list[MemoryPrediction]:
    """Each measured trial's predicted and measured peak RSS (bytes)."""
    errors = []
    for record in records:
        peak = packing.measured_peak(record)
        if peak is not None:
            cfg = trial_config(base, record.sampled)
            errors.append(MemoryPrediction(record.trial_id, calibration.rss.predict(cfg),
                                           peak * GIB))
    return errors


def ray_records(experiment_path: str, max_epochs: int) -> list[TrialRecord]:
    """Every trial of the study at `experiment_path`, its state as Ray's own records say
    (they alone tell a running trial from a stopped one, and know trials not started yet)."""
    from ray.tune import ExperimentAnalysis

    if not tune.Tuner.can_restore(experiment_path):
        raise UserError(f"no Ray study at {experiment_path}")
    try:
        analysis = ExperimentAnalysis(experiment_path)
    except Exception as e:  # missing or half-written experiment state
        raise UserError(f"cannot read the Ray study at {experiment_path} ({e})") from None
    known = {trial.path.rstrip("/").rsplit("/", 1)[-1]: (trial.trial_id, trial.status)
             for trial in analysis.trials}
    return read_trials(experiment_path, max_epochs, ray_trials=known)
