"""The Ray adapter around `trainable.train`: the only place a trial meets Ray.

A trial is one Tune function trial. With one worker it trains in that process. With N
workers (`DataParallel`) the function trial only coordinates: it starts a Ray Train
`TorchTrainer` whose N workers each run `trainable.train` under Lightning's Ray DDP
strategy, and relays each epoch's report (rank 0's metrics and checkpoint) back to Tune,
so ASHA, Optuna, Tune's checkpoints and the MLflow mirror see the same results either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.train.v2.api.callback import UserCallback  # imported by ray.tune already

from trainable.cli import configure_logging
from trainable.config import TrialConfig
from trainable.memory import GIB, PEAK_RSS, peak_rss, reset_peak_rss
from trainable.train import train
from tune.records import REPORTED_AT
from tune.space import trial_config

# A string field in every result: the Ray node that trained (rank 0's node for data-parallel
# trials). Node IPs cannot tell apart several raylets on one machine; node ids can.
NODE_ID = "node_id"
# Ray Train's run of a data-parallel trial, under the study folder while the trial runs.
TRAIN_RUN_PREFIX = ".ray-train-"


@dataclass(frozen=True)
class DataParallel:
    """How one trial runs on several Ray Train workers."""

    workers: int
    """Data-parallel workers (Lightning DDP ranks) per trial."""
    resources_per_worker: dict[str, float]
    """Ray resources of each worker: the trial's CPUs, GPUs and custom resource, split N ways."""
    use_gpu: bool
    """Workers train on GPUs (NCCL) rather than CPUs (gloo)."""
    storage_path: str
    """The study folder (local or URI): Ray Train keeps each trial's run there, in a hidden
    folder deleted when the trial ends, while Tune copies its checkpoints."""


def run_trial(sampled: dict[str, Any], base: TrialConfig,
              parallel: DataParallel | None = None) -> None:
    """Function trainable: train one sampled config, reporting each epoch with its checkpoint."""
    import ray

    _quiet_logs()
    # Ray Tune hands this process the next trial only once this one's thread has ended, and
    # waits 2 s for that before failing the next trial ("Trainable runner reuse requires
    # reset_config()"). A trial hands its memory back as it ends (trainable.train), which
    # takes about a second, more on a loaded node. Ray reads this in this process, at reuse.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    cfg = trial_config(base, sampled)
    if parallel is not None and parallel.workers > 1:
        _run_data_parallel(cfg, parallel)
        return
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    node_id = ray.get_runtime_context().get_node_id()
    work = Path(tempfile.mkdtemp(prefix=f"trial-{tune.get_context().get_trial_id()}-"))
    # Ray hands a trial its CPUs but torch inside may still start one thread (or all cores).
    cfg = cfg.replace(output_dir=str(work), threads=_threads(cpus))

    def report(metrics: dict[str, float], folder: Path) -> None:
        # Copies the epoch folder to the study's storage; Ray keeps the best N by the
        # objective (CheckpointConfig) plus the latest, for restarts.
        peak = peak_rss() if measured else None
        memory = {} if peak is None else {PEAK_RSS: round(peak / GIB, 4)}
        tune.report({**metrics, **memory, NODE_ID: node_id, REPORTED_AT: time.time()},
                    checkpoint=tune.Checkpoint.from_directory(str(folder)))

    measured = reset_peak_rss()  # a reused process: this trial's peak, not an earlier one's
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            train(cfg, report=report, progress=False)
        else:
            with checkpoint.as_directory() as restored:
                train(cfg, report=report, resume_from=Path(restored), progress=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_data_parallel(cfg: TrialConfig, parallel: DataParallel) -> None:
    """Fit a TorchTrainer on `parallel.workers` workers; relay each epoch's report to Tune.

    Ray Train's own `TuneReportCallback` forwards metrics only (the checkpoint stays in
    Ray Train's storage, invisible to Tune's CheckpointConfig and to `tune.get_checkpoint`
    on a retry), so `_RelayToTune` hands over the persisted checkpoint too and waits until
    this function has passed it to `tune.report`: Tune copies it into the trial folder,
    keeps the best N, and ASHA decides before the next epoch starts.
    """
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    trial_id = tune.get_context().get_trial_id()
    run_name = f"{TRAIN_RUN_PREFIX}{trial_id}"
    reports: Queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    acks: Queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    _delete(parallel.storage_path, run_name)  # a failed attempt's leftovers
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg, "resume": tune.get_checkpoint()},
        scaling_config=ScalingConfig(num_workers=parallel.workers, use_gpu=parallel.use_gpu,
                                     resources_per_worker=dict(parallel.resources_per_worker)),
        run_config=RunConfig(
            name=run_name, storage_path=parallel.storage_path,
            callbacks=[_RelayToTune(reports, acks)],
            # The study prints one line per epoch; Ray Train's INFO lines repeat each report.
            logging_config=LoggingConfig(log_level="WARNING"),
            # Tune retries the trial (from its own checkpoint); Ray Train must not retry inside.
            failure_config=FailureConfig(max_failures=0),
            # Every checkpoint stays until Tune has copied it; the whole run is deleted after.
            checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # re-raised in the trial's thread below
            outcome["error"] = e
        finally:
            # Wakes the loop below; after an ASHA stop the queue may be gone with the trial.
            with contextlib.suppress(Exception):
                reports.put(None)

    runner = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
    runner.start()
    try:
        while (item := reports.get()) is not None:
            metrics, persisted = item
            checkpoint = None if persisted is None else tune.Checkpoint(
                persisted.path, filesystem=persisted.filesystem)
            try:
                tune.report(metrics, checkpoint=checkpoint)
            except BaseException:
                # ASHA stopped the trial (tune.report raises SystemExit): release the Train
                # controller, then Tune ends this actor and, with it, the controller and
                # workers it owns (Ray Train's placement-group cleaner frees their resources).
                with contextlib.suppress(Exception):
                    acks.put(False, timeout=10)
                raise
            acks.put(True)
        runner.join()
        if "error" in outcome:
            raise outcome["error"]
    finally:
        _delete(parallel.storage_path, run_name)


class _RelayToTune(UserCallback):
    """Ray Train callback (runs in the Train controller): pass each report to the Tune trial."""

    def __init__(self, reports: Any, acks: Any):
        self.reports = reports
        self.acks = acks
        self.stopped = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        from ray.exceptions import RayActorError

        if self.stopped:
            return
        try:
            # Rank 0's metrics, as TuneReportCallback forwards them, plus the checkpoint.
            self.reports.put((dict(metrics[0]), checkpoint))
            # True once Tune has copied the checkpoint; False when it stopped the trial.
            self.stopped = not self.acks.get()
        except RayActorError:
            # The trial's queues ended with it; Ray ends this controller (owned by the
            # trial) next. Without this, each ASHA stop logs a controller traceback.
            self.stopped = True


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: `trainable.train` as one DDP rank; every rank reports each epoch."""
    import ray
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    _quiet_logs()
    # Ray Train gives its workers a root logger at INFO with a console handler, which the
    # trial's own INFO lines (and Ray Train's per-report line, logged under a file-path
    # name that its LoggingConfig filter misses) would reach; single-process trials show
    # warnings only.
    logging.getLogger().setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    node_id = ray.get_runtime_context().get_node_id()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    work = Path(tempfile.mkdtemp(prefix=f"trial-rank{rank}-"))
    cfg = config["cfg"].replace(output_dir=str(work), threads=_threads(cpus))

    def report(metrics: dict[str, float], folder: Path) -> None:
        # Every rank reports (Ray Train waits for all); only rank 0 wrote the folder.
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if rank == 0 else None
        ray.train.report({**metrics, NODE_ID: node_id, REPORTED_AT: time.time()},
                         checkpoint=checkpoint)

    # Lightning's DDP with Ray's process group (gloo on CPU, NCCL on GPU), world size and
    # ranks; `_PrepareTrainer` checks that wiring before the fit.
    parallel_args = {"strategy": RayDDPStrategy(), "plugins": [RayLightningEnvironment()],
                     "devices": "auto", "callbacks": [_prepare_trainer_callback()]}
    try:
        resume = config["resume"]
        if resume is None:
            train(cfg, report=report, progress=False, **parallel_args)
        else:
            with resume.as_directory() as restored:
                train(cfg, report=report, resume_from=Path(restored), progress=False,
                      **parallel_args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare_trainer_callback() -> Any:
    """A Lightning callback that runs Ray's `prepare_trainer` checks when the fit starts."""
    import lightning.pytorch as pl
    from ray.train.lightning import prepare_trainer

    class _PrepareTrainer(pl.Callback):
        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            prepare_trainer(trainer)

    return _PrepareTrainer()


def _threads(cpus: float) -> int:
    return max(1, int(round(cpus)))


def _delete(storage_path: str, name: str) -> None:
    """Remove Ray Train's run folder `storage_path/name` (best effort, local or URI)."""
    import pyarrow.fs as pafs

    location = f"{storage_path.rstrip('/')}/{name}"
    try:
        fs, path = (pafs.FileSystem.from_uri(location) if "://" in location
                    else (pafs.LocalFileSystem(), location))
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)
    except OSError:
        pass


def _quiet_logs() -> None:
    configure_logging(verbose=False)
    for noisy in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" per epoch
        logging.getLogger(noisy).setLevel(logging.WARNING)
