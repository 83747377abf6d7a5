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

from trainable.config import OBJECTIVE, TrialConfig, replace_checked
from trainable.errors import UserError
from tune.records import read_study_json, write_study_json
from tune.space import (
    BY_NAME,
    CHOICE,
    DEFAULT_SEARCHED,
    DIMENSIONS,
    SETTING_KEYS,
    Dimension,
    space_from_settings,
)

# What a study may rank trials on while it runs (StudyConfig.search_metric), and the
# direction of each: metrics every trial logs for its validation split.
SEARCH_METRICS = {OBJECTIVE.metric: OBJECTIVE.mode, "val/ap": "max", "val/soft_f1": "max",
                  "val/loss": "min"}
# The same names as a type, for StudyConfig's annotation (the CLI's --search-metric choices):
# Literal flattens a tuple of values, so the names are written once, above.
SearchMetric = Literal[tuple(SEARCH_METRICS)]  # type: ignore[valid-type]


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
    packing: Literal["fixed", "memory"] = "fixed"
    """How trials share a node: fixed shares (cpus_per_trial, gpus_per_trial) for every trial,
    or memory-aware: a probe at study start fits a memory model (trainable.memory) and each
    trial asks Ray for its predicted memory (a GPU fraction on GPU nodes), so small trials
    share a node and large ones get more."""
    trial_resource: str | None = None
    """A custom Ray resource each trial needs one unit of (e.g. to keep trials off the head)."""
    searched: tuple[str, ...] = DEFAULT_SEARCHED
    """Trial-config fields the search samples; the others keep the trial config's value."""
    space: tuple[Dimension, ...] = DIMENSIONS
    """Every dimension's range or choices (`tune.space`); set through its study keys
    (`lr_min`, `lora_ranks`, ...) or a config file's `space:` section."""
    search: Literal["optuna", "random"] = "optuna"
    """Optuna TPE, or random sampling (the baseline for benchmarks)."""
    skip_repeats: bool = True
    """Optuna: a configuration proposed again is answered from its earlier trial instead of
    trained again (trials are seeded, so a repeat retrains the same curve; `tune.repeats`),
    and the study ends early once every configuration of a space of choices was tried.
    Random search samples independently, repeats included (the benchmarks' baseline)."""
    search_metric: SearchMetric = "val/soft_f1"
    """What Optuna and ASHA rank trials on while the study runs: a steadier signal from the
    same validation clauses than the objective (val/soft_f1, F1 with P(unfair) as
    fractional predictions; val/ap, the average precision of P(unfair)), val/f1 itself, or
    val/loss. BENCHMARKS.md, replayed studies, has the evidence for each and why val/soft_f1
    is the default. The champion is picked by the objective either way."""
    startup_trials: int | None = None
    """Random trials before TPE takes over; None sizes it to the budget (a third, 2 to 10)."""
    scheduler: Literal["asha", "none"] = "asha"
    """ASHA early stopping on the search metric, or every trial runs all its epochs."""
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
        if isinstance(self.searched, list):
            object.__setattr__(self, "searched", tuple(self.searched))
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
        known = [d.name for d in self.space]
        unknown = [f for f in self.searched if f not in known]
        if unknown or len(set(self.searched)) != len(self.searched):
            raise UserError(f"searched must name some of {', '.join(known)} once each "
                            f"(got {list(self.searched)})")
        if self.packing not in ("fixed", "memory"):
            raise UserError(f"packing must be fixed or memory (got {self.packing!r})")
        if self.packing == "memory" and self.workers_per_trial > 1:
            raise UserError(f"packing memory sizes single-process trials; use packing fixed "
                            f"with workers_per_trial {self.workers_per_trial}")
        if self.search not in ("optuna", "random"):
            raise UserError(f"search must be optuna or random (got {self.search!r})")
        if not isinstance(self.skip_repeats, bool):
            raise UserError(f"skip_repeats must be true or false (got {self.skip_repeats!r})")
        if self.search_metric not in SEARCH_METRICS:
            raise UserError(f"search_metric must be one of {', '.join(SEARCH_METRICS)} (got "
                            f"{self.search_metric!r})")
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
    def search_mode(self) -> str:
        """Whether a higher or lower `search_metric` is better."""
        return SEARCH_METRICS[self.search_metric]

    @property
    def space_size(self) -> int | None:
        """How many distinct configurations the searched space holds; None if a searched
        dimension is a range."""
        if any(d.kind != CHOICE for d in self.searched_dimensions):
            return None
        return math.prod(len(d.choices) for d in self.searched_dimensions)

    @property
    def trials_to_run(self) -> int:
        """Trials the study runs: num_trials, or every configuration of a smaller space of
        choices when repeats are skipped."""
        size = self.space_size if self.search == "optuna" and self.skip_repeats else None
        return self.num_trials if size is None else min(self.num_trials, size)

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

    def dimension(self, name: str) -> Dimension:
        """The dimension of trial-config field `name`, with this study's range or choices."""
        return next(d for d in self.space if d.name == name)

    @property
    def searched_dimensions(self) -> tuple[Dimension, ...]:
        """The dimensions the search samples, in `searched` order."""
        return tuple(self.dimension(name) for name in self.searched)

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some fields (or dimension keys such as `lr_min`) changed, validated again.
        Choices for a float dimension (`lrs`) replace its range and a bound replaces its
        choices; both at once is an error."""
        current = self.to_dict()
        for key in changes:
            dim = BY_NAME.get(SETTING_KEYS.get(key, ""))
            if dim is not None and dim.key and dim.kind != CHOICE:
                for other in dim.keys if key == dim.key else (dim.key,):
                    current.pop(other, None)
        return StudyConfig.from_dict(current | changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: the fields, with the space as its dimensions' study keys."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "space"}
        for dim in self.space:
            d |= dim.settings()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudyConfig:
        """Build from fields and dimension keys (flags, a config file, study.json)."""
        values = dict(values)
        settings = {k: values.pop(k) for k in list(values) if k in SETTING_KEYS}
        if "space" in values:
            raise UserError("space: set it through its keys (lr_min, lora_ranks, ...) or a "
                            "config file's `space:` section")
        return replace_checked(cls(), "study", values | {"space": space_from_settings(settings)})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum} (got {value!r})")


def write_study_file(study: StudyConfig, base: TrialConfig, parent_run_id: str) -> None:
    """Record the study's settings beside Ray's results (read back by --resume and analysis)."""
    write_study_json(study.experiment_path, {
        "study": study.to_dict(), "trial": base.to_dict(), "parent_run_id": parent_run_id,
        "tracking_uri": study.tracking_uri})


def read_study_file(experiment_path: str) -> tuple[StudyConfig, TrialConfig, str] | None:
    """The (study, trial base, MLflow parent run id) saved with a study; None if absent."""
    data = read_study_json(experiment_path)
    if data is None:
        return None
    try:
        return (StudyConfig.from_dict(data["study"]), TrialConfig.from_dict(data["trial"]),
                str(data["parent_run_id"]))
    except (KeyError, TypeError) as e:
        raise UserError(f"{experiment_path}/study.json: not a study file ({e})") from None
