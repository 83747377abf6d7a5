"""Test-split metrics, the decision threshold, and the TF-IDF + LinearSVC baseline.

The threshold the champion uses is the rule's (`analysis.bootstrap.choose_threshold`): 0.5
unless tuning on validation holds up on left-out validation clauses; the plain F1-optimal
threshold on validation is reported beside it, as is 0.5.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainable.config import OBJECTIVE
from trainable.errors import UserError

# C values tried for the baseline (LinearSVC's default is 1.0); chosen by validation F1.
BASELINE_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float]:
    """Unfair-class F1/precision/recall, accuracy, macro-F1 and the confusion counts at `threshold`."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y = np.asarray(labels, dtype=int)
    pred = (np.asarray(scores, dtype=float) >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, average="binary", pos_label=1, zero_division=0)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall),
            "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)),
            "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def f1_optimal_threshold(labels: Sequence[int], scores: Sequence[float],
                         default: float = 0.5) -> tuple[float, float]:
    """(threshold, F1) maximizing unfair-class F1 over `scores` (predict unfair when score >= it).

    Ties go to the highest threshold (fewer clauses flagged for the same F1). Without any
    unfair clause there is nothing to tune: (`default`, nan).
    """
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(labels, dtype=int)
    if y.sum() == 0:
        return default, math.nan
    precision, recall, thresholds = precision_recall_curve(y, np.asarray(scores, dtype=float))
    # The curve's last point (precision 1, recall 0) has no threshold.
    p, r = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds ascend: the last tie is the highest
    return float(thresholds[best]), float(f1[best])


@dataclass
class BaselineResult:
    """The TF-IDF + LinearSVC baseline: chosen C, validation F1 per C, and its scores."""

    C: float
    val_f1: dict[float, float]
    val_scores: np.ndarray
    test_scores: np.ndarray
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """`validation` and `test` metrics at the SVM's own decision boundary (score >= 0)."""


def tfidf_baseline(train: Any, validation: Any, test: Any,
                   Cs: Sequence[float] = BASELINE_CS, seed: int = 0) -> BaselineResult:
    """TF-IDF (1-2 grams, sublinear tf) + LinearSVC trained on `train`, C tuned on validation F1.

    The frames have `text` and `label` columns (already LexGLUE-normalized text).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    # sklearn's default word pattern (2+ word characters), as in the reference figure of the
    # data's README (test F1 0.586); splitting on the data's spaces instead scores 0.573.
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform(train["text"])
    x_val, x_test = vectorizer.transform(validation["text"]), vectorizer.transform(test["text"])
    y_train, y_val = train["label"].to_numpy(), validation["label"].to_numpy()
    scores: dict[float, float] = {}
    best: tuple[float, Any] | None = None
    for C in Cs:
        svm = LinearSVC(C=C, random_state=seed).fit(x_train, y_train)
        scores[C] = binary_metrics(y_val, svm.decision_function(x_val), 0.0)["f1"]
        if best is None or scores[C] > scores[best[0]]:
            best = (C, svm)
    assert best is not None
    C, svm = best
    result = BaselineResult(C=C, val_f1=scores, val_scores=svm.decision_function(x_val),
                            test_scores=svm.decision_function(x_test))
    result.metrics = {"validation": binary_metrics(y_val, result.val_scores, 0.0),
                      "test": binary_metrics(test["label"], result.test_scores, 0.0)}
    return result


def plot_confusion_matrices(panels: dict[str, dict[str, float]], path: Any) -> None:
    """One confusion matrix per named set of metrics (with tn/fp/fn/tp), side by side, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, m) in zip(axes[0], panels.items(), strict=True):
        matrix = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
        ConfusionMatrixDisplay(matrix, display_labels=["fair", "unfair"]).plot(
            ax=ax, colorbar=False, values_format="d", cmap="Blues")
        ax.set_title(f"{title}\nF1 {m['f1']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}",
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_precision_recall(curves: dict[str, tuple[Sequence[int], Sequence[float]]],
                          marks: dict[str, tuple[float, float]], path: Any) -> None:
    """Precision-recall curves (test split) with the operating points in `marks` (recall, precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (labels, scores) in curves.items():
        PrecisionRecallDisplay.from_predictions(labels, scores, name=name, ax=ax)
    for name, (recall, precision) in marks.items():
        ax.plot([recall], [precision], "o", label=name)
    ax.set_title("test split: unfair class")
    ax.set_xlabel("recall (unfair)")
    ax.set_ylabel("precision (unfair)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the champion's evaluation -------------------------------------------------------------------

CONFUSION_PNG = "confusion_matrix.png"
PR_PNG = "precision_recall.png"


@dataclass
class Evaluation:
    """Everything `best` measured, as logged and exported."""

    study: str
    trial_id: str
    epoch: int
    logged_value: float
    """The objective MLflow (or Ray) recorded for that epoch."""
    checkpoint_source: str
    threshold: float
    """The threshold the model uses: the rule's (see `threshold_rule`)."""
    val_tuned_f1: float
    """Validation F1 at `tuned_threshold`."""
    tuned_threshold: float = 0.5
    """The F1-optimal threshold on the whole validation split (reported, not used)."""
    threshold_rule: dict[str, Any] = field(default_factory=dict)
    """`analysis.bootstrap.ThresholdChoice.to_dict()`: the evidence behind `threshold`."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """`val`, `test` (threshold 0.5), `val_tuned`, `test_tuned` (the F1-optimal threshold on
    validation), `val_chosen`, `test_chosen` (the threshold used), `baseline_val`,
    `baseline_test`."""
    test_intervals: dict[str, dict[str, float]] = field(default_factory=dict)
    """Test F1, precision, recall and macro-F1 at the threshold used: `value`, `low`, `high`
    (bootstrap over the test clauses, `analysis.bootstrap`)."""
    top_trials: dict[str, Any] = field(default_factory=dict)
    """The study's top trials' objective with intervals (`analysis.select.TopTrials`)."""
    ensemble: dict[str, Any] = field(default_factory=dict)
    """The top trials' mean, measured beside the champion (`analysis.ensemble.Ensemble`, as
    a dict); empty when not asked for or fewer than two trials could be scored."""
    baseline_C: float = 1.0
    data: str = ""
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        from dataclasses import asdict

        return asdict(self)

    def summary(self) -> list[str]:
        """How sure the choice is, in lines: the top trials' validation intervals, the
        threshold and why, and the test metrics at it with intervals (printed by
        `analysis.best` and written into the registered model's description)."""
        from analysis.bootstrap import CONFIDENCE, RESAMPLES, format_intervals, format_share

        lines = []
        top = self.top_trials
        if top.get("trials"):
            lines.append(f"validation: {OBJECTIVE.metric} of the top trials, "
                         f"{top['confidence']:.0%} intervals from {top['resamples']} resamples "
                         f"of the {top['clauses']} clauses ({top['unfair']} unfair), the same "
                         f"resamples for every trial; best in: share of resamples it wins")
            for t in top["trials"]:
                mark = "  <- champion" if t["trial_id"] == self.trial_id else ""
                lines.append(f"  trial {t['trial_id']}  {t[OBJECTIVE.metric]:.4f} "
                             f"[{t['low']:.3f}, {t['high']:.3f}]  best in "
                             f"{format_share(t['best_share'])}{mark}")
        for note in top.get("notes", []):
            lines.append(f"  no interval for {note}")
        rule = self.threshold_rule
        if rule:
            verdict = ("moved to the resamples' median" if rule["moved"] else
                       f"kept at {rule['default']:g}" + ("" if rule.get("trusted", True) else
                                                          ", as the model trained on most "
                                                          "validation clauses (cv_folds)"))
            lines.append(f"threshold {self.threshold:.4f}: {verdict} (tuning beat "
                         f"{rule['default']:g} on left-out validation clauses in "
                         f"{rule['support']:.0%} of {rule['resamples']} resamples, "
                         f"{rule['required']:.0%} required; F1-optimal on all of validation: "
                         f"{self.tuned_threshold:.4f})")
        if self.test_intervals:
            shown = format_intervals(self.test_intervals)
            lines.append(f"test ({self.sizes.get('test', '?')} clauses) at threshold "
                         f"{self.threshold:.4f}: {shown} ({CONFIDENCE:.0%} intervals, "
                         f"{RESAMPLES} resamples of the test clauses)")
        if self.ensemble:
            from analysis.ensemble import Ensemble, describe

            lines.extend(describe(Ensemble(**self.ensemble)))
        return lines


def evaluate(adapter_dir: Path, data: str | None) -> tuple[Evaluation, Any, Any]:
    """Test metrics at 0.5, at the validation-optimal threshold and at the rule's threshold
    (with bootstrap intervals), plus the baseline.

    Returns (evaluation without study fields, tokenizer, probabilities by split). The train
    split is the one the trial trained on (same subsample); validation and test are whole.
    Scoring shows a progress bar on a terminal.
    """
    from analysis.bootstrap import DEFAULT_THRESHOLD, choose_threshold, metric_intervals
    from analysis.evaluate import binary_metrics, f1_optimal_threshold, tfidf_baseline

    scored = score_adapter(adapter_dir, data, "evaluating on validation and test")
    probs, labels, splits, cfg = scored.probs, scored.labels, scored.splits, scored.cfg
    tuned, tuned_f1 = f1_optimal_threshold(labels["val"], probs["val"])
    # A cross-validated adapter trained on most validation clauses: no tuning on them.
    choice = choose_threshold(labels["val"], probs["val"], trusted=not cfg.cv_folds)
    baseline = tfidf_baseline(splits.train, splits.validation, splits.test, seed=cfg.seed)
    metrics = {"val": binary_metrics(labels["val"], probs["val"], DEFAULT_THRESHOLD),
               "test": binary_metrics(labels["test"], probs["test"], DEFAULT_THRESHOLD),
               "val_tuned": binary_metrics(labels["val"], probs["val"], tuned),
               "test_tuned": binary_metrics(labels["test"], probs["test"], tuned),
               "val_chosen": binary_metrics(labels["val"], probs["val"], choice.threshold),
               "test_chosen": binary_metrics(labels["test"], probs["test"], choice.threshold),
               "baseline_val": baseline.metrics["validation"],
               "baseline_test": baseline.metrics["test"]}
    intervals = metric_intervals(labels["test"], probs["test"], choice.threshold)
    evaluation = Evaluation(study="", trial_id="", epoch=0, logged_value=float("nan"),
                            checkpoint_source="", threshold=choice.threshold,
                            val_tuned_f1=tuned_f1, tuned_threshold=tuned,
                            threshold_rule=choice.to_dict(),
                            test_intervals={m: {"value": iv.value, "low": iv.low, "high": iv.high}
                                            for m, iv in intervals.items()},
                            metrics=metrics, baseline_C=baseline.C, data=data or cfg.data,
                            sizes={"train": len(splits.train), "validation": len(splits.validation),
                                   "test": len(splits.test)})
    curves = {"labels": labels, "probs": probs, "baseline_test": baseline.test_scores,
              "val_texts": splits.validation["text"].tolist()}
    return evaluation, scored.tokenizer, curves


@dataclass
class Scored:
    """An adapter's P(unfair) and the labels of the whole validation and test splits (`val`,
    `test`), with the splits, tokenizer and trial config they came from."""

    probs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    splits: Any
    tokenizer: Any
    cfg: Any


def score_adapter(adapter_dir: Path, data: str | None, progress: str | None = None) -> Scored:
    """Load an adapter folder and score the whole validation and test splits of `data` (the
    data it trained on when None); `progress`: the text of a bar shown on a terminal."""
    from trainable.cli import progress_bar
    from trainable.data import load_splits
    from trainable.inference import inference_precision, load_trained, predict_proba

    model, tokenizer, cfg = load_trained(adapter_dir)
    splits = load_splits(cfg.replace(data=data or cfg.data, max_eval_samples=None),
                         with_test=True)
    precision = inference_precision(cfg, next(model.parameters()).device.type)
    frames = {"val": splits.validation, "test": splits.test}
    with progress_bar(sum(len(f) for f in frames.values()), progress or "", "clause",
                      quiet=progress is None) as bar:
        probs = {name: predict_proba(model, tokenizer, frame["text"].tolist(), cfg.max_length,
                                     batch_size=max(32, cfg.batch_size), precision=precision,
                                     progress=bar.update)
                 for name, frame in frames.items()}
    return Scored(probs=probs, labels={n: f["label"].to_numpy() for n, f in frames.items()},
                  splits=splits, tokenizer=tokenizer, cfg=cfg)


def write_plots(evaluation: Evaluation, curves: dict[str, Any], out_dir: Path) -> list[Path]:
    """Confusion matrices (model at 0.5, at the validation-optimal threshold and at the one
    used when it is neither; baseline) and test precision-recall curves."""
    from analysis.bootstrap import DEFAULT_THRESHOLD
    from analysis.evaluate import plot_confusion_matrices, plot_precision_recall

    m = evaluation.metrics
    panels = {"model @ 0.5": m["test"],
              f"model @ {evaluation.tuned_threshold:.3f} (F1-optimal on val)": m["test_tuned"]}
    marks = {"model @ 0.5": (m["test"]["recall"], m["test"]["precision"]),
             "model @ F1-optimal on val": (m["test_tuned"]["recall"], m["test_tuned"]["precision"])}
    if evaluation.threshold not in (DEFAULT_THRESHOLD, evaluation.tuned_threshold):
        panels[f"model @ {evaluation.threshold:.3f} (used)"] = m["test_chosen"]
        marks["model @ threshold used"] = (m["test_chosen"]["recall"],
                                           m["test_chosen"]["precision"])
    plot_confusion_matrices({**panels, "TF-IDF + LinearSVC": m["baseline_test"]},
                            out_dir / CONFUSION_PNG)
    labels = curves["labels"]["test"]
    plot_precision_recall(
        {"QLoRA model": (labels, curves["probs"]["test"]),
         "TF-IDF + LinearSVC": (labels, curves["baseline_test"])}, marks, out_dir / PR_PNG)
    return [out_dir / CONFUSION_PNG, out_dir / PR_PNG]


def check_export(export_dir: Path, texts: list[str], expected: Any) -> None:
    """Reload the export on its own and check that it scores as the evaluated model did."""
    import numpy as np

    from trainable.inference import inference_precision, load_trained, predict_proba

    model, tokenizer, cfg = load_trained(export_dir)
    precision = inference_precision(cfg, next(model.parameters()).device.type)
    got = predict_proba(model, tokenizer, texts, cfg.max_length, precision=precision)
    # bf16 autocast gives slightly different logits when a clause is padded to another batch
    # length; a wrong adapter, head or tokenizer moves probabilities far more than this.
    if not np.allclose(got, expected, atol=0.02):
        # A wrong model must not stay behind under the export's name.
        shutil.rmtree(export_dir, ignore_errors=True)
        raise UserError(f"the export in {export_dir} scores differently from the evaluated "
                        f"checkpoint (max difference {np.abs(got - expected).max():.4f}); "
                        f"it was removed")
