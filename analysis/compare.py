"""Compare a study's trials: a table and plots, saved and logged to the study's parent run.

    python -m analysis.compare --mlflow-uri http://127.0.0.1:5000 --experiment qlora-unfair-tos
    python -m analysis.compare smoke --storage-path runs      # MLflow down: Ray's results

Picks the latest study in the experiment unless a study name or parent run id is given. The
top trials' objective comes with a bootstrap interval over the validation clauses and the
share of resamples in which each is the best (`analysis.select.compare_top`): with 33 unfair
clauses in validation, the top of the table is often a tie.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.bootstrap import format_share
from analysis.select import TopTrials, compare_top
from analysis.study import Study, add_study_arguments, study_from_args
from trainable.cli import ArgumentParser, command
from trainable.config import OBJECTIVE
from trainable.errors import UserError
from tune.space import DIMENSIONS, Dimension

ANALYSIS_ARTIFACTS = "analysis"  # folder of the plots and table on the parent run
TABLE_CSV = "trials.csv"


def trial_table(study: Study, top: TopTrials | None = None) -> Any:
    """One row per trial, best objective first: id, searched hyperparameters, best value and
    its epoch, with `top` its bootstrap interval (low, high) and the share of resamples it is
    best in (top trials only), epochs run, state, duration (seconds)."""
    import pandas as pd

    metric = f"best {OBJECTIVE.metric}"
    boot = top.by_trial() if top is not None else {}
    rows = []
    for t in study.trials:
        best = t.best
        c = boot.get(t.trial_id)
        rows.append({"trial": t.trial_id, **{p: t.sampled.get(p) for p in study.searched},
                     metric: best[1] if best else math.nan,
                     **({"low": c.f1.low if c else math.nan, "high": c.f1.high if c else math.nan,
                         "best in": c.best_share if c else math.nan} if boot else {}),
                     "at epoch": best[0] if best else None, "epochs": t.epochs,
                     "state": t.state, "seconds": t.seconds})
    columns = ["trial", *study.searched, metric, *(["low", "high", "best in"] if boot else []),
               "at epoch", "epochs", "state", "seconds"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(metric, ascending=OBJECTIVE.mode == "min",
                             na_position="last", kind="stable").reset_index(drop=True)


def format_table(table: Any, space: tuple[Dimension, ...] = DIMENSIONS) -> str:
    """The table as aligned text (log-scaled dimensions such as lr in scientific notation,
    intervals as low-high, shares in percent, durations as 1m05s)."""
    from analysis.plots import format_seconds

    shown = table.copy()
    for dim in space:
        if dim.log and dim.name in shown:
            shown[dim.name] = shown[dim.name].map(
                lambda v: "-" if v is None or v != v else f"{float(v):.2e}")
    metric = f"best {OBJECTIVE.metric}"
    shown[metric] = shown[metric].map(lambda v: "-" if math.isnan(v) else f"{v:.4f}")
    if "low" in shown:
        low, high = shown.pop("low"), shown.pop("high")
        interval = [("-" if math.isnan(lo) else f"{lo:.3f}-{hi:.3f}") for lo, hi in zip(
            low, high, strict=True)]
        shown.insert(shown.columns.get_loc(metric) + 1, "interval", interval)
        shown["best in"] = shown["best in"].map(format_share)
    shown["at epoch"] = shown["at epoch"].map(lambda v: "-" if v is None or v != v else str(int(v)))
    shown["duration"] = shown.pop("seconds").map(format_seconds)
    return shown.to_string(index=False)


def default_out_dir(study: Study) -> Path:
    """runs/<study>/analysis"""
    return Path("runs") / study.name / "analysis"


def compare(study: Study, out_dir: Path, client: Any | None = None) -> dict[str, Any]:
    """Write the table (CSV) and the plots into `out_dir`; log them to the parent run when a
    client is given. Returns {"table", "top", "plots", "skipped", "logged"}."""
    from analysis.plots import EPOCHS_PNG, plot_epochs, plot_search

    out_dir.mkdir(parents=True, exist_ok=True)
    top = compare_top(study, client.tracking_uri if client is not None else None)
    table = trial_table(study, top if top.comparisons else None)
    table.to_csv(out_dir / TABLE_CSV, index=False)
    plots = [plot_epochs(study, out_dir / EPOCHS_PNG)]
    search_plots, skipped = plot_search(study, out_dir)
    plots += search_plots
    logged = False
    if client is not None and study.parent_run_id:
        for path in [out_dir / TABLE_CSV, *plots]:
            client.log_artifact(study.parent_run_id, str(path), ANALYSIS_ARTIFACTS)
        logged = True
    return {"table": table, "top": top, "plots": plots, "skipped": skipped, "logged": logged}


def parse_args(argv: Sequence[str] | None = None) -> Any:
    """The command line."""
    p = ArgumentParser(prog="python -m analysis.compare",
                       description="Compare a study's trials: table and plots.")
    add_study_arguments(p)
    p.add_argument("--storage-path", metavar="DIR",
                   help="Ray results folder: read when MLflow is unreachable (durations too)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="where PNGs and trials.csv go (default: runs/<study>/analysis)")
    return p.parse_args(argv)


@command()
def main(argv: Sequence[str] | None = None) -> int:
    """Print the trial table; save the plots and log them to the study's parent run."""
    args = parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, client = study_from_args(args.mlflow_uri, args.experiment, args.study,
                                    args.storage_path, allow_offline=True)
    if not study.trials:
        raise UserError(f"study {study.name} has no trials yet")
    out = args.out or default_out_dir(study)
    result = compare(study, out, client)
    source = ("MLflow" if study.source == "mlflow" else f"Ray results {study.storage} "
              f"(MLflow unreachable)")
    counts = result["table"]["state"].value_counts().to_dict()
    print(f"study {study.name}: {len(study.trials)} trials ("
          + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
          + f"), from {source}")
    print(format_table(result["table"], study.space()))
    top = result["top"]
    if top.comparisons:
        print(f"interval, best in: {top.describe()}")
    for note in top.notes:
        print(f"no interval for {note}")
    best = study.best_trial()
    if best is not None and best.best is not None:
        c = top.by_trial().get(best.trial_id)
        sure = (f" ({c.f1.low:.3f}-{c.f1.high:.3f}), best in {format_share(c.best_share)} of "
                f"resamples") if c else ""
        print(f"best: trial {best.trial_id}, {OBJECTIVE.metric} {best.best[1]:.4f}{sure} at "
              f"epoch {best.best[0]}")
    if study.source == "mlflow" and any(t.seconds is not None for t in study.trials) and not (
            study.storage and Path(study.storage).is_dir()):
        print("durations: MLflow run times (pass --storage-path for Ray's trial times)")
    for t in study.trials:
        if t.error:
            print(f"trial {t.trial_id} failed: {t.error[:300]}")
    for note in result["skipped"]:
        print(f"skipped {note}")
    print(f"plots in {out}:")
    for path in result["plots"]:
        print(f"  {path}")
    if result["logged"]:
        print(f"logged to MLflow run {study.parent_run_id} under {ANALYSIS_ARTIFACTS}/")
    if client is not None:
        print("\n".join(study_links_lines(client, study)))
    return 0


def study_links_lines(client: Any, study: Study) -> list[str]:
    """Lines with links to the study in MLflow's UI (model-training view); saves the study's
    view on the experiment first, for studies mirrored before it existed."""
    from tune.mlflow_ui import describe_links, label_experiment, study_links

    if not study.experiment_id:
        return []
    label_experiment(client, study.experiment_id, study.name, study.searched)
    best = study.best_trial()
    links = study_links(client.tracking_uri, study.experiment_id, study.name,
                        [t.run_id for t in study.trials if t.run_id],
                        best.run_id if best is not None else None)
    return ["MLflow:", *describe_links(client.tracking_uri, links)]


if __name__ == "__main__":
    sys.exit(main())
