"""Everything the search needs, in one frozen dataclass validated on construction.

The trial config (`trainable.config.TrialConfig`) says how one trial trains; this says which
trials run, where, and where their results go. The two never mix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainable.config import replace_checked
from trainable.errors import UserError

# The four searched trial-config fields; also their MLflow param names.
SEARCHED = ("lr", "lora_rank", "max_length", "batch_size")


@dataclass(frozen=True)
class StudyConfig:
    """A tuning study: search space, budget, resources, scheduler, storage and tracking."""

    name: str = "qlora-unfair-tos"
    """Study name: the Ray experiment folder under storage_path and the MLflow parent run."""
    num_trials: int = 8
    """Trials to run in all."""
    max_concurrent: int = 2
    """Trials running at once (also bounded by the cluster's resources)."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial; torch in the trial uses this many threads (at least 1)."""
    gpus_per_trial: float | None = None
    """GPUs per trial, fractions allowed (0.5: two QLoRA trials share one GPU); None: 1 if
    the cluster has GPUs, else 0."""
    workers_per_trial: int = 1
    """Data-parallel workers per trial (Ray Train); 1 keeps a plain single-process trial."""
    trial_resource: str | None = None
    """A custom Ray resource each trial needs one unit of (e.g. to keep trials off the head)."""
    searched: tuple[str, ...] = SEARCHED
    """Trial-config fields the search samples; the others keep the trial config's value."""
    lr_min: float = 1e-4
    """Lower bound of the log-uniform learning-rate range."""
    lr_max: float = 3e-3
    """Upper bound of the log-uniform learning-rate range."""
    lora_ranks: tuple[int, ...] = (4, 8, 16, 32)
    """LoRA ranks to choose from."""
    max_lengths: tuple[int, ...] = (64, 128, 256)
    """Token limits to choose from (most clauses are far shorter than 128 tokens)."""
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    """Batch sizes to choose from."""
    search: Literal["optuna", "random"] = "optuna"
    """Optuna TPE, or random sampling (the baseline for benchmarks)."""
    startup_trials: int | None = None
    """Random trials before TPE takes over; None sizes it to the budget (a third, 2 to 10)."""
    scheduler: Literal["asha", "none"] = "asha"
    """ASHA early stopping on the objective, or every trial runs all its epochs."""
    grace_period: int | None = None
    """Epochs every trial gets before ASHA may stop it; None: a quarter of the epochs (at
    least 1), since first-epoch F1 on a rare class says little about the last."""
    reduction_factor: float = 2.0
    """ASHA keeps 1/reduction_factor of the trials at each rung."""
    search_seed: int = 0
    """Seed of the sampler (each trial's own seed stays in the trial config)."""
    checkpoints_per_trial: int = 2
    """Best adapter checkpoints kept per trial by the objective (plus the latest, for resume)."""
    max_failures: int = 2
    """Retries of a failed trial from its last checkpoint."""
    storage_path: str = "runs"
    """Folder (or s3:// URI) for results and checkpoints; the study is storage_path/name."""
    address: str | None = None
    """Ray cluster address (`auto`, `host:port`); None starts Ray in this process."""
    mlflow_uri: str | None = None
    """MLflow tracking URI; None means a sqlite store `mlflow.db` in the working directory."""
    experiment: str = "qlora-unfair-tos"
    """MLflow experiment holding the study's parent run and one child run per trial."""

    def __post_init__(self) -> None:
        for name in ("searched", "lora_ranks", "max_lengths", "batch_sizes"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", str(self.name)):
            raise UserError(f"study name {self.name!r} must be letters, digits, '_', '.', '-' "
                            f"(a folder and run name)")
        _positive_int("num_trials", self.num_trials)
        _positive_int("max_concurrent", self.max_concurrent)
        _positive_int("workers_per_trial", self.workers_per_trial)
        if not _number(self.cpus_per_trial) or self.cpus_per_trial <= 0:
            raise UserError(f"cpus_per_trial must be > 0 (got {self.cpus_per_trial!r})")
        if self.gpus_per_trial is not None and (
                not _number(self.gpus_per_trial) or self.gpus_per_trial < 0
                or self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial)):
            raise UserError(f"gpus_per_trial must be 0, a fraction of one GPU, or a whole number "
                            f"(got {self.gpus_per_trial!r})")
        if not (_number(self.lr_min) and _number(self.lr_max) and self.lr_min > 0
                and math.isfinite(self.lr_max)):
            raise UserError(f"lr_min and lr_max must be positive numbers "
                            f"(got {self.lr_min!r} to {self.lr_max!r})")
        if self.lr_min >= self.lr_max:
            raise UserError(f"learning-rate range is empty or reversed: lr_min {self.lr_min} must "
                            f"be below lr_max {self.lr_max}")
        unknown = [f for f in self.searched if f not in SEARCHED]
        if unknown or len(set(self.searched)) != len(self.searched):
            raise UserError(f"searched must name some of {', '.join(SEARCHED)} once each "
                            f"(got {list(self.searched)})")
        _choices("lora_ranks", self.lora_ranks, minimum=1)
        _choices("max_lengths", self.max_lengths, minimum=8)
        _choices("batch_sizes", self.batch_sizes, minimum=1)
        if self.search not in ("optuna", "random"):
            raise UserError(f"search must be optuna or random (got {self.search!r})")
        if self.scheduler not in ("asha", "none"):
            raise UserError(f"scheduler must be asha or none (got {self.scheduler!r})")
        if self.startup_trials is not None:
            _positive_int("startup_trials", self.startup_trials)
        if self.grace_period is not None:
            _positive_int("grace_period", self.grace_period)
        if not _number(self.reduction_factor) or self.reduction_factor < 1.5:
            raise UserError(f"reduction_factor must be >= 1.5 (got {self.reduction_factor!r})")
        _positive_int("search_seed", self.search_seed, minimum=0)
        _positive_int("checkpoints_per_trial", self.checkpoints_per_trial)
        _positive_int("max_failures", self.max_failures, minimum=0)
        if not str(self.storage_path).strip():
            raise UserError("storage_path must be a folder or an s3:// URI")
        if not str(self.experiment).strip():
            raise UserError("experiment must be a non-empty MLflow experiment name")

    @property
    def n_startup_trials(self) -> int:
        """Random trials before TPE: a third of the budget, between 2 and 10."""
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.num_trials // 3))

    def grace_epochs(self, epochs: int) -> int:
        """ASHA's grace period for trials of `epochs` epochs."""
        grace = self.grace_period if self.grace_period is not None else max(1, epochs // 4)
        return min(grace, epochs)

    @property
    def is_remote_storage(self) -> bool:
        """Whether results go to a URI (s3://, gs://) rather than a local folder."""
        return "://" in self.storage_path

    @property
    def storage_uri(self) -> str:
        """storage_path as Ray wants it: an absolute local path or the URI itself."""
        if self.is_remote_storage:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())

    @property
    def experiment_path(self) -> str:
        """Where Ray keeps this study: storage_uri/name."""
        return f"{self.storage_uri.rstrip('/')}/{self.name}"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI, defaulting to a sqlite store in the working directory."""
        if self.mlflow_uri:
            return self.mlflow_uri
        return f"sqlite:///{Path('mlflow.db').resolve()}"

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some fields changed, validated again."""
        return replace_checked(self, "study", changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum} (got {value!r})")


def _choices(name: str, values: Any, minimum: int) -> None:
    if not isinstance(values, tuple) or not values:
        raise UserError(f"{name} must be a non-empty list (got {values!r})")
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < minimum]
    if bad:
        raise UserError(f"{name}: {bad[0]!r} is not an integer >= {minimum}")
    if len(set(values)) != len(values):
        raise UserError(f"{name} lists a value twice ({list(values)})")
