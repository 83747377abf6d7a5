"""The search space: a pure function of the study config (no I/O, no Ray start-up)."""

from __future__ import annotations

from typing import Any

from ray import tune

from trainable.config import TrialConfig
from tune.study import SEARCHED, StudyConfig


def search_space(study: StudyConfig) -> dict[str, Any]:
    """Ray Tune domains for the searched trial-config fields, keyed by field name."""
    domains = {
        "lr": tune.loguniform(study.lr_min, study.lr_max),
        "lora_rank": tune.choice(list(study.lora_ranks)),
        "max_length": tune.choice(list(study.max_lengths)),
        "batch_size": tune.choice(list(study.batch_sizes)),
    }
    return {k: v for k, v in domains.items() if k in study.searched}


def trial_config(base: TrialConfig, sampled: dict[str, Any]) -> TrialConfig:
    """The base trial config with the sampled values in place; other fields pass through."""
    values = {k: sampled[k] for k in SEARCHED if k in sampled}
    # Optuna and Ray hand back numpy scalars; the frozen config wants plain numbers.
    values = {k: (float(v) if k == "lr" else int(v)) for k, v in values.items()}
    return base.replace(**values)
