"""How sure a small split makes us: bootstrap intervals by clause, and the threshold rule.

Validation holds 463 clauses, 33 of them unfair: one clause moves unfair-class F1 by about
0.03, so a study's top trials are often not told apart by it, and a threshold tuned on it
often loses on test (BENCHMARKS.md, issue 7.1). Everything here resamples clauses with
replacement; a resample is a row of counts (how often each clause was drawn), so one
matrix of counts serves every trial, every threshold and every metric, and trials are
compared on the very same resamples.

Written with numpy rather than `scipy.stats.bootstrap`: the rule and the comparison need
the resamples themselves (shared by several trials, split into drawn and undrawn clauses),
which scipy draws inside and does not hand back. Intervals are percentile intervals.

Light on purpose (numpy only): `analysis.compare` imports it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trainable.errors import UserError

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0
DEFAULT_THRESHOLD = 0.5
# The threshold moves off 0.5 only when tuning it beat 0.5 on the clauses left out of at
# least this share of validation resamples (see choose_threshold).
SUPPORT = 0.9
METRICS = ("f1", "precision", "recall", "macro_f1")


@dataclass(frozen=True)
class Interval:
    """A metric on the whole split and its bootstrap percentile interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class TrialComparison:
    """One trial's validation F1 with its interval, and the share of resamples it wins."""

    trial_id: str
    f1: Interval
    best_share: float
    """Share of resamples in which this trial has the highest F1 (ties split evenly)."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The decision threshold to use, and the evidence for it."""

    threshold: float
    """The threshold to use: `bagged` when tuning was supported, else `default`."""
    tuned: float
    """The F1-optimal threshold on the whole validation split."""
    bagged: float
    """The median, over resamples, of the F1-optimal threshold on the clauses drawn."""
    support: float
    """Share of resamples in which the threshold tuned on the clauses drawn beat `default` on
    the clauses left out."""
    required: float
    default: float
    resamples: int
    trusted: bool = True
    """False when the model trained on these clauses: the default stays, whatever they say."""

    @property
    def moved(self) -> bool:
        """Whether the evidence moved the threshold off the default."""
        return self.trusted and self.support >= self.required

    def to_dict(self) -> dict[str, float | int | bool | str]:
        """Plain JSON-able dict (as threshold.json records it)."""
        return {"threshold": self.threshold, "tuned": self.tuned, "bagged": self.bagged,
                "support": self.support, "required": self.required, "default": self.default,
                "resamples": self.resamples, "moved": self.moved, "trusted": self.trusted,
                "rule": "bagged F1-optimal threshold when tuning beats the default out of bag "
                        "in at least `required` of validation resamples, else the default"}


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) counts: row b says how often each of `n` clauses was drawn in resample b
    (n draws with replacement)."""
    if n < 1 or resamples < 1:
        raise UserError(f"bootstrap: need at least one clause and one resample (got n={n}, "
                        f"resamples={resamples})")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n))
    flat = drawn + n * np.arange(resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * n).reshape(resamples, n)


def confusion(labels: Sequence[int], predicted: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """tp/fp/fn/tn per resample: `predicted` is one 0/1 row per model (k, n), or one per
    resample and model (r, k, n); `weights` (r, n) counts each clause per resample.
    Returns arrays of shape (r, k)."""
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(predicted, dtype=bool)
    w = np.asarray(weights, dtype=float)
    if pred.ndim == 2:
        def count(mask: np.ndarray) -> np.ndarray:
            return w @ mask.T.astype(float)
    else:
        def count(mask: np.ndarray) -> np.ndarray:
            return np.einsum("rn,rkn->rk", w, mask.astype(float))
    return {"tp": count(pred & y), "fp": count(pred & ~y), "fn": count(~pred & y),
            "tn": count(~pred & ~y)}


def metrics_from_counts(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Unfair-class F1, precision, recall and macro-F1 from confusion counts (0 where undefined,
    as `analysis.evaluate.binary_metrics` with zero_division=0)."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)

    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {"f1": f1, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "macro_f1": (f1 + ratio(2 * tn, 2 * tn + fn + fp)) / 2}


def interval(value: float, distribution: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The percentile interval of a bootstrap distribution around the whole-split `value`."""
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(distribution, dtype=float), [alpha, 1 - alpha])
    return Interval(float(value), float(low), float(high))


def f1_score(labels: Sequence[int], scores: Sequence[float], threshold: float) -> float:
    """Unfair-class F1 at `threshold` on the whole split (as `binary_metrics`, without sklearn)."""
    y, s = _checked(labels, scores)
    return float(metrics_from_counts(confusion(y, (s >= threshold)[None, :],
                                               np.ones((1, len(y)))))["f1"][0, 0])


def metric_intervals(labels: Sequence[int], scores: Sequence[float], threshold: float,
                     resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """F1, precision, recall and macro-F1 at `threshold` with intervals, clauses resampled."""
    y, s = _checked(labels, scores)
    pred = (s >= threshold)[None, :]
    whole = metrics_from_counts(confusion(y, pred, np.ones((1, len(y)))))
    boot = metrics_from_counts(confusion(y, pred, resample_counts(len(y), resamples, seed)))
    return {m: interval(whole[m][0, 0], boot[m][:, 0], confidence) for m in METRICS}


def compare_trials(labels: Sequence[int], scores: Mapping[str, Sequence[float]],
                   threshold: float = DEFAULT_THRESHOLD, resamples: int = RESAMPLES,
                   seed: int = SEED, confidence: float = CONFIDENCE) -> list[TrialComparison]:
    """Each trial's F1 at `threshold` with its interval, and how often it is the best, every
    trial scored on the same resamples of the same clauses; in the order of `scores`."""
    if not scores:
        return []
    ids = list(scores)
    y, _ = _checked(labels, scores[ids[0]])
    s = np.stack([_checked(y, scores[t])[1] for t in ids])
    pred = s >= threshold
    whole = metrics_from_counts(confusion(y, pred, np.ones((1, len(y)))))["f1"][0]
    boot = metrics_from_counts(confusion(y, pred, resample_counts(len(y), resamples, seed)))["f1"]
    top = boot == boot.max(axis=1, keepdims=True)
    shares = (top / top.sum(axis=1, keepdims=True)).mean(axis=0)
    return [TrialComparison(t, interval(whole[i], boot[:, i], confidence), float(shares[i]))
            for i, t in enumerate(ids)]


def optimal_thresholds(labels: Sequence[int], scores: Sequence[float],
                       weights: np.ndarray) -> np.ndarray:
    """Per row of `weights` (r, n): the threshold maximizing F1 on the clauses so weighted
    (predict unfair when score >= it); ties go to the highest, as in
    `analysis.evaluate.f1_optimal_threshold`."""
    y, s = _checked(labels, scores)
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    w = np.asarray(weights, dtype=float)[:, order]
    tp = np.cumsum(w * y_desc, axis=1)
    flagged = np.cumsum(w, axis=1)
    positives = tp[:, -1:]
    f1 = np.divide(2 * tp, flagged + positives, out=np.zeros_like(tp), where=flagged + positives > 0)
    # A cut only between distinct scores: all clauses of one score fall on the same side.
    cut = np.append(s_desc[:-1] != s_desc[1:], True)
    f1[:, ~cut] = -1.0
    return s_desc[np.argmax(f1, axis=1)]  # the first maximum is the highest threshold


def choose_threshold(labels: Sequence[int], scores: Sequence[float],
                     default: float = DEFAULT_THRESHOLD, required: float = SUPPORT,
                     resamples: int = RESAMPLES, seed: int = SEED,
                     trusted: bool = True) -> ThresholdChoice:
    """The rule: move the threshold off `default` only when the validation evidence holds.

    In each resample the F1-optimal threshold is tuned on the clauses drawn and judged on the
    clauses left out (about 37%), against `default` on those same clauses: that measures
    tuning as it will be used, on clauses it did not see. When tuning wins (strictly) in at
    least `required` of the resamples, the threshold is the median of the tuned ones (more
    stable than the single optimum of the whole split); otherwise it stays at `default`. With
    `trusted` False (a model that trained on these clauses) it stays there in any case.
    """
    y, s = _checked(labels, scores)
    if not 0 < required <= 1:
        raise UserError(f"threshold rule: required support must be in (0, 1] (got {required})")
    tuned = float(optimal_thresholds(y, s, np.ones((1, len(y))))[0])
    counts = resample_counts(len(y), resamples, seed)
    in_bag = optimal_thresholds(y, s, counts)
    left_out = (counts == 0).astype(float)
    both = np.stack([s[None, :] >= in_bag[:, None], np.broadcast_to(s >= default, counts.shape)],
                    axis=1)
    f1 = metrics_from_counts(confusion(y, both, left_out))["f1"]
    support = float(np.mean(f1[:, 0] > f1[:, 1]))
    bagged = float(np.median(in_bag))
    choice = ThresholdChoice(threshold=float(default), tuned=tuned, bagged=bagged,
                             support=support, required=float(required), default=float(default),
                             resamples=resamples, trusted=trusted)
    return dataclasses.replace(choice, threshold=bagged) if choice.moved else choice


def _checked(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.shape != y.shape:
        raise UserError(f"bootstrap: {len(s)} scores for {len(y)} labels")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise UserError("bootstrap: labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise UserError("bootstrap: scores must be finite numbers")
    return y, s


def format_intervals(intervals: dict[str, dict[str, float]]) -> str:
    """Metrics with their intervals (`{name: {value, low, high}}`) in one line:
    `F1 0.700 [0.642, 0.753], precision ...`."""
    names = {"f1": "F1", "macro_f1": "macro-F1"}
    return ", ".join(f"{names.get(name, name)} {iv['value']:.3f} [{iv['low']:.3f}, "
                     f"{iv['high']:.3f}]" for name, iv in intervals.items())


def format_share(share: float) -> str:
    """A share of resamples as a percentage (`<1%` rather than a misleading 0%)."""
    if math.isnan(share):
        return "-"
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"
