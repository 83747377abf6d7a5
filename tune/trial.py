"""The Ray adapter around `trainable.train`: the only place a trial meets Ray."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from trainable.config import TrialConfig
from trainable.train import configure_logging, train
from tune.space import trial_config


def run_trial(sampled: dict[str, Any], base: TrialConfig) -> None:
    """Function trainable: train one sampled config, reporting each epoch with its checkpoint."""
    import logging

    import ray

    configure_logging(verbose=False)
    for noisy in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" per epoch
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    # Ray hands a trial its CPUs but torch inside may still start one thread (or all cores).
    threads = max(1, int(round(cpus)))
    work = Path(tempfile.mkdtemp(prefix=f"trial-{tune.get_context().get_trial_id()}-"))
    cfg = trial_config(base, sampled).replace(output_dir=str(work), threads=threads)

    def report(metrics: dict[str, float], folder: Path) -> None:
        # Copies the epoch folder to the study's storage; Ray keeps the best N by the
        # objective (CheckpointConfig) plus the latest, for restarts.
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            train(cfg, report=report, progress=False)
        else:
            with checkpoint.as_directory() as restored:
                train(cfg, report=report, resume_from=Path(restored), progress=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
