"""A study's pictures: the objective per epoch, and Optuna's views of the search.

Optuna draws the slice, parallel-coordinate and importance plots from an in-memory Optuna
study rebuilt from the trial records, so the plots look the same whether the records came
from MLflow or from Ray's files (the study's own sqlite db holds only what TPE saw).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from analysis.study import Study
from trainable.config import OBJECTIVE
from trainable.errors import first_line
from tune.records import COMPLETED, FAILED, RUNNING, STOPPED
from tune.space import CHOICE

EPOCHS_PNG = "val_f1_per_epoch.png"
SLICE_PNG = "objective_vs_hyperparameters.png"
PARALLEL_PNG = "parallel_coordinates.png"
IMPORTANCE_PNG = "hyperparameter_importance.png"



def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def distributions(study: Study) -> dict[str, Any]:
    """Optuna distributions of the searched fields: the study's ranges, widened to the values
    the trials actually used (a resumed study may have changed them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {d.name: d for d in study.space()}
    out: dict[str, Any] = {}
    for name in study.searched:
        seen = [t.sampled[name] for t in study.trials if name in t.sampled]
        dim = space.get(name)
        if dim is not None and dim.kind != CHOICE:
            values = [float(v) for v in seen] + [float(dim.low), float(dim.high)]
            out[name] = FloatDistribution(min(values), max(values), log=dim.log)
            continue
        choices = list(dim.choices) if dim is not None else []
        for value in seen:
            if value not in choices:
                choices.append(value)
        if choices:
            out[name] = CategoricalDistribution(sorted(choices, key=str) if not all(
                isinstance(c, (int, float)) for c in choices) else sorted(choices))
    return out


def optuna_study(study: Study) -> Any:
    """An in-memory Optuna study with one trial per record: value = best objective over epochs,
    intermediate values = the objective per epoch; failed trials as FAIL."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    dists = distributions(study)
    opt = optuna.create_study(study_name=study.name, direction=(
        "maximize" if OBJECTIVE.mode == "max" else "minimize"))
    for record in study.trials:
        params = {k: float(v) if isinstance(dists[k], FloatDistribution) else v
                  for k, v in record.sampled.items() if k in dists}
        best = record.best
        if record.state == RUNNING:
            continue
        if record.state == FAILED or best is None:
            trial = create_trial(state=TrialState.FAIL, params=params,
                                 distributions={k: dists[k] for k in params})
        else:
            trial = create_trial(state=TrialState.COMPLETE, value=best[1], params=params,
                                 distributions={k: dists[k] for k in params},
                                 intermediate_values=dict(record.history),
                                 user_attrs={"trial_id": record.trial_id, "state": record.state,
                                             "best_epoch": best[0]})
        opt.add_trial(trial)
    return opt


def plot_epochs(study: Study, path: Path) -> Path:
    """The objective per epoch for every trial: solid completed, dashed stopped early (ending
    in x), dotted failed (ending in a red X); the overall best epoch starred."""
    # Hand-drawn: Optuna's plot_intermediate_values has no notion of how a trial ended.
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab10")
    styles = {COMPLETED: ("-", "o", 5), STOPPED: ("--", "x", 9), FAILED: (":", "X", 10),
              RUNNING: ("-.", ">", 7)}
    best = study.best_trial()
    for i, record in enumerate(sorted(study.trials, key=lambda t: t.trial_id)):
        epochs = sorted(record.history)
        line, marker, size = styles.get(record.state, styles[RUNNING])
        color = cmap(i % 10)
        label = f"{record.trial_id} ({record.state.replace('_', ' ')})"
        if not epochs:
            ax.plot([], [], line, color=color, label=f"{label}, no result")
            continue
        values = [record.history[e] for e in epochs]
        ax.plot(epochs, values, line, color=color, marker="o", markersize=3, label=label)
        ax.plot(epochs[-1], values[-1], marker=marker, markersize=size, linestyle="none",
                color="red" if record.state == FAILED else color, markeredgewidth=2)
    if best is not None and best.best is not None:
        ax.plot(*best.best, marker="*", markersize=18, color="gold", markeredgecolor="black",
                linestyle="none", label=f"best: {best.trial_id} epoch {best.best[0]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(OBJECTIVE.metric)
    ax.set_xticks(range(1, max(study.max_epochs, 1) + 1))
    ax.set_title(f"study {study.name}: {OBJECTIVE.metric} per epoch "
                 f"(dashed + x: stopped early, dotted + red X: failed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_search(study: Study, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's slice, parallel-coordinate and importance plots as PNGs; (written, skipped notes)."""
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    opt = optuna_study(study)
    complete = opt.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = [p for p in study.searched if any(p in t.params for t in complete)]
    written: list[Path] = []
    skipped: list[str] = []
    if not complete or not params:
        return written, ["search plots: no finished trial with hyperparameters"]
    varied = [p for p in params if len({t.params.get(p) for t in complete}) > 1]
    jobs = [(SLICE_PNG, lambda: ovm.plot_slice(opt, params=params)),
            (PARALLEL_PNG, lambda: ovm.plot_parallel_coordinate(opt, params=params))]
    if len(complete) >= 2 and varied:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        jobs.append((IMPORTANCE_PNG, lambda: ovm.plot_param_importances(
            opt, evaluator=evaluator, params=varied)))
    else:
        skipped.append("importance: needs two finished trials and a hyperparameter that varied")
    for name, draw in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna.exceptions.ExperimentalWarning
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                skipped.append(f"{name}: {first_line(e)}")
                continue
        fig = _figure_of(axes)
        _size_for(fig, name, len(params))
        for ax in fig.axes:  # log axes label every minor tick, which overlap at this size
            if ax.get_xscale() == "log":
                ax.xaxis.set_minor_formatter(NullFormatter())
        fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(out_dir / name)
    return written, skipped


def _figure_of(axes: Any) -> Any:
    import numpy as np

    first = np.asarray(axes, dtype=object).ravel()[0] if not hasattr(axes, "figure") else axes
    return first.figure


def _size_for(fig: Any, name: str, n_params: int) -> None:
    if name == SLICE_PNG:
        fig.set_size_inches(max(4.0 * n_params, 5.0), 4.0)
    elif name == PARALLEL_PNG:
        fig.set_size_inches(max(2.2 * (n_params + 1), 6.0), 4.5)
    else:
        fig.set_size_inches(6.5, 1.2 + 0.6 * n_params)


def format_seconds(seconds: float | None) -> str:
    """`1m05s`, `42s`, or `-`."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
