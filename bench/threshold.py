"""Which decision threshold holds up on test: 0.5, the validation-optimal one, or the rule;
and how far apart the top models of a recording really are.

    python -m bench.threshold                        # the recording in bench/curves
    python -m bench.threshold /path/to/curves --resamples 1000

Every recorded (run, epoch) model of a `bench.curves` recording has each validation and test
clause's P(unfair); for each model this picks a threshold three ways on validation and
scores it on test:

- `0.5`: the fixed default;
- `tuned`: the F1-optimal threshold on the whole validation split (`analysis.evaluate`);
- `rule`: `analysis.bootstrap.choose_threshold`, what `analysis.best` exports: the median
  of thresholds tuned on validation resamples, used only when tuning beat 0.5 on the left-out
  clauses in at least 90% of resamples, else 0.5.

Printed: mean test F1 of each way, and its paired difference to 0.5 and to `tuned` (the
mean, how many models it wins and loses, the worst loss), over every model and over the
models a study would pick (the top quarter by the objective, validation F1 at 0.5). The
models are not independent (epochs of one run, runs of one grid): read the counts as
counts, not as a test.

Then the top models by the objective, bootstrapped as `analysis.compare` does it (each
one's validation F1 with its interval, and the share of resamples in which it is the best,
on the same resamples), beside their test F1 with its interval.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.bootstrap import (
    RESAMPLES,
    SUPPORT,
    choose_threshold,
    compare_trials,
    format_share,
    metric_intervals,
)
from analysis.evaluate import binary_metrics, f1_optimal_threshold
from bench.curves import DEFAULT_OUT, FIELDS, labels, load_curves

WAYS = ("0.5", "tuned", "rule")


def thresholds(frame: pd.DataFrame, meta: dict[str, Any], resamples: int = RESAMPLES,
               required: float = SUPPORT) -> pd.DataFrame:
    """One row per recorded (run, epoch): each way's threshold, its validation and test F1."""
    y_val, y_test = labels(meta, "validation"), labels(meta, "test")
    rows = []
    for _, r in frame.iterrows():
        val, test = np.asarray(r["val_proba"], float), np.asarray(r["test_proba"], float)
        choice = choose_threshold(y_val, val, required=required, resamples=resamples)
        tuned, _ = f1_optimal_threshold(y_val, val)
        row = {**{f: r[f] for f in FIELDS}, "seed": r["seed"], "epoch": r["epoch"],
               "support": choice.support, "moved": choice.moved}
        for way, t in zip(WAYS, (0.5, tuned, choice.threshold), strict=True):
            row[f"t {way}"] = t
            row[f"val {way}"] = binary_metrics(y_val, val, t)["f1"]
            row[f"test {way}"] = binary_metrics(y_test, test, t)["f1"]
        rows.append(row)
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per way: mean test F1, and its paired difference to 0.5 and to `tuned` (mean, models
    won/lost, the worst loss)."""
    rows = []
    for way in WAYS:
        row: dict[str, Any] = {"threshold": way, "test F1": table[f"test {way}"].mean()}
        for other in ("0.5", "tuned"):
            diff = table[f"test {way}"] - table[f"test {other}"]
            same = other == way
            row[f"vs {other}"] = "-" if same else f"{diff.mean():+.4f}"
            row[f"won/lost vs {other}"] = "-" if same else (
                f"{int((diff > 0).sum())}/{int((diff < 0).sum())}")
            row[f"worst vs {other}"] = "-" if same else f"{diff.min():+.4f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("threshold")


def picked(table: pd.DataFrame, share: float = 0.25) -> pd.DataFrame:
    """The models a study would pick: the top `share` by the objective (validation F1 at 0.5)."""
    return table[table["val 0.5"] >= table["val 0.5"].quantile(1 - share)]


def top_models(frame: pd.DataFrame, meta: dict[str, Any], k: int = 5,
               resamples: int = RESAMPLES) -> pd.DataFrame:
    """The top `k` (run, epoch) models by validation F1 at 0.5: its interval and best-in share
    over validation resamples shared by all of them, and test F1 with its interval."""
    y_val, y_test = labels(meta, "validation"), labels(meta, "test")
    top = frame.sort_values("val/f1", ascending=False, kind="stable").head(k)
    names = [f"lr {r['lr']:.1e} r{r['lora_rank']} bs{r['batch_size']} s{r['seed']} epoch "
             f"{r['epoch']}" for _, r in top.iterrows()]
    compared = compare_trials(y_val, {n: np.asarray(p, float) for n, p in zip(
        names, top["val_proba"], strict=True)}, resamples=resamples)
    rows = []
    for c, test in zip(compared, top["test_proba"], strict=True):
        t = metric_intervals(y_test, np.asarray(test, float), 0.5, resamples)["f1"]
        rows.append({"model": c.trial_id, "val F1": c.f1.value,
                     "val interval": f"{c.f1.low:.3f}-{c.f1.high:.3f}",
                     "best in": format_share(c.best_share), "test F1": t.value,
                     "test interval": f"{t.low:.3f}-{t.high:.3f}"})
    return pd.DataFrame(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.threshold", description=__doc__.split("\n")[0])
    p.add_argument("curves", nargs="?", type=Path, default=DEFAULT_OUT,
                   help="a bench.curves recording (default: bench/curves)")
    p.add_argument("--resamples", type=int, default=RESAMPLES)
    p.add_argument("--required", type=float, default=SUPPORT,
                   help="share of resamples in which tuning must win to move off 0.5")
    p.add_argument("--csv", type=Path, help="also write the per-model table here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison."""
    args = parse_args(argv)
    frame, meta = load_curves(args.curves)
    table = thresholds(frame, meta, args.resamples, args.required)
    if args.csv:
        table.to_csv(args.csv, index=False)
    runs = table.groupby([*FIELDS, "seed"]).ngroups
    moved = int(table["moved"].sum())
    print(f"{len(table)} models ({runs} runs x their epochs) from {args.curves}; validation "
          f"{len(labels(meta, 'validation'))} clauses, test {len(labels(meta, 'test'))}; "
          f"the rule moved the threshold off 0.5 for {moved} of them")
    pd.set_option("display.width", 200)
    pd.set_option("display.float_format", "{:.4f}".format)
    print("\nall models:")
    print(summary(table).to_string())
    top = picked(table)
    print(f"\nthe models a study would pick ({len(top)}: the top quarter by validation F1 "
          f"at 0.5):")
    print(summary(top).to_string())
    print(f"\nthe top 5 models by validation F1 at 0.5: 95% intervals from {args.resamples} "
          f"resamples by clause (validation: the same resamples for every model); best in: "
          f"share of validation resamples in which the model has the highest F1")
    print(top_models(frame, meta, resamples=args.resamples).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
