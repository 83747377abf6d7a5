"""The top trials of a study as one model: the mean P(unfair) of their best adapters, evaluated
beside the champion by `analysis.best` (`--ensemble K`, 3 by default; 1 turns it off).

With 33 unfair validation clauses the champion is one draw among trials that validation cannot
tell apart (their bootstrap intervals overlap); averaging the top few trades that draw for
their consensus. The members are the top K finished trials by the one best rule
(`tune.records.ranked_trials`), each at its best epoch, the champion first. The ensemble's
threshold follows the same rule as the champion's (`analysis.bootstrap.choose_threshold`) on
its own validation scores. It is measured, not exported: serving stays one adapter.

Members are loaded and scored one at a time. peft can hold several adapters on one base
model, but members may differ in quantization and targets, and scoring dominates loading for
an encoder; one at a time keeps memory at one model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainable.config import OBJECTIVE
from trainable.errors import UserError

DEFAULT_MEMBERS = 3


@dataclass
class Ensemble:
    """What the ensemble of the top trials scored; `members` best first."""

    members: list[dict[str, Any]] = field(default_factory=list)
    """trial_id, epoch, the objective as logged, and where its adapter came from."""
    threshold: float = 0.5
    threshold_rule: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """`val` and `test` at 0.5, `test_chosen` at `threshold`."""
    test_intervals: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Top trials left out, and why."""


def combine(labels: dict[str, np.ndarray], member_probs: list[dict[str, np.ndarray]],
            trusted: bool = True) -> Ensemble:
    """The mean of the members' P(unfair), scored like the champion: metrics at 0.5, the
    threshold rule on validation, and test metrics with intervals at the threshold it picks."""
    from analysis.bootstrap import DEFAULT_THRESHOLD, choose_threshold, metric_intervals
    from analysis.evaluate import binary_metrics

    if len(member_probs) < 2:
        raise ValueError("an ensemble needs at least two members")
    mean = {split: np.mean([p[split] for p in member_probs], axis=0) for split in ("val", "test")}
    choice = choose_threshold(labels["val"], mean["val"], trusted=trusted)
    intervals = metric_intervals(labels["test"], mean["test"], choice.threshold)
    return Ensemble(
        threshold=choice.threshold, threshold_rule=choice.to_dict(),
        metrics={"val": binary_metrics(labels["val"], mean["val"], DEFAULT_THRESHOLD),
                 "test": binary_metrics(labels["test"], mean["test"], DEFAULT_THRESHOLD),
                 "test_chosen": binary_metrics(labels["test"], mean["test"], choice.threshold)},
        test_intervals={m: {"value": iv.value, "low": iv.low, "high": iv.high}
                        for m, iv in intervals.items()})


def evaluate_ensemble(study: Any, size: int, champion: dict[str, Any], data: str, tmp: Path,
                      tracking_uri: str | None, trusted: bool = True) -> Ensemble | None:
    """The ensemble of the study's top `size` trials, the champion's scores reused.

    `champion`: trial_id, epoch, value, source, and its `probs` and `labels` by split. None
    when fewer than two of the top trials have a checkpoint to score.
    """
    from analysis.evaluate import score_adapter
    from analysis.select import fetch_checkpoint
    from trainable.train import release_memory
    from tune.records import ranked_trials

    members = [{k: champion[k] for k in ("trial_id", "epoch", "value", "source")}]
    probs, notes = [champion["probs"]], []
    for trial in ranked_trials(study.trials):
        if len(members) == size:
            break
        if trial.trial_id == champion["trial_id"] or trial.best is None:
            continue
        try:
            folder, epoch, source = fetch_checkpoint(study, trial, sorted(trial.best_epochs),
                                                     tmp / f"ensemble-{trial.trial_id}",
                                                     tracking_uri)
            scored = score_adapter(folder, data)
        except UserError as e:
            notes.append(f"trial {trial.trial_id}: {e}")
            continue
        finally:
            release_memory()  # the member's model, before the next one loads
        if any(not np.array_equal(scored.labels[s], champion["labels"][s]) for s in scored.labels):
            notes.append(f"trial {trial.trial_id}: scored other clauses than the champion")
            continue
        members.append({"trial_id": trial.trial_id, "epoch": epoch, "value": trial.best[1],
                        "source": source})
        probs.append(scored.probs)
    if len(members) < 2:
        return None
    ensemble = combine(champion["labels"], probs, trusted=trusted)
    ensemble.members, ensemble.notes = members, notes
    return ensemble


def describe(ensemble: Ensemble) -> list[str]:
    """The ensemble in lines, for the console and the registered model's description."""
    from analysis.bootstrap import format_intervals

    shown = format_intervals(ensemble.test_intervals)
    who = ", ".join(f"{m['trial_id']} epoch {m['epoch']}" for m in ensemble.members)
    return [f"ensemble of the top {len(ensemble.members)} trials (mean P(unfair) of {who}; "
            f"measured, not exported): {OBJECTIVE.metric} {ensemble.metrics['val']['f1']:.4f}; "
            f"test at threshold {ensemble.threshold:.4f}: {shown}",
            *(f"  left out of the ensemble: {note}" for note in ensemble.notes)]
