"""Replay many searches over recorded learning curves: `python -m bench.replay bench/curves`.

    python -m bench.curves                       # once: record the grid (about an hour here)
    python -m bench.replay bench/curves --seeds 50 --plot docs/benchmarks/replay.png

Each replayed study is a real study of the driver (`tune.driver._tuner`: the same
StudyConfig, `make_searcher`, `make_scheduler`, Tune settings and Ray runtime, started once
for all studies) whose trial function, instead of training, reports the recorded curve of
the sampled configuration epoch by epoch. The study's space is the grid's own (every
dimension a choice over the grid's values, lr included: `tune.space` dimensions built as
choices, the table itself unchanged), so each sampled configuration was recorded; the
`lr-log` variant instead samples lr from the table's log range and replays the nearest grid
value. Compute is counted in trial-epochs: the epochs reported before the study ends or
ASHA stops a trial. MLflow stays out (no mirror callback).

Per method and search seed it computes: the trial-epochs until the champion the analysis
would pick (`tune.records.best_trial`: best val/f1 over epochs) has a test F1 within 0.01
of the grid's best; the champion's test F1 at 25%, 50% and 100% of the baseline's budget
(random search, every trial run to the end); and how often ASHA stopped a configuration of
the grid's top 5. Over the recording alone: the Spearman correlation of each rung signal at
each epoch with the final test F1.

Noise-aware variants rank rungs on a signal other than val/f1, computed from the recorded
probabilities (validation loss, average precision, soft F1): the replay reports that signal
under the objective's name, so ASHA and Optuna both see it, while the champion is still
picked by val/f1, as the analysis picks it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.curves import FIELDS, labels, load_curves, run_key

log = logging.getLogger("bench.replay")

TOLERANCE = 0.01
TOP = 5
BUDGET_FRACTIONS = (0.25, 0.5, 1.0)
# Rung signals, higher is better (the validation loss is negated). `val/f1` and `val/loss`
# are what the trial logged; the others come from the recorded probabilities.
SIGNALS = ("val/f1", "val/loss", "val/ap", "val/soft_f1")
FINAL = "test/f1"  # the final test F1 a configuration reaches: at its last epoch


# -- scores from probabilities -------------------------------------------------------------------

def f1_score(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    """Unfair-class F1 of P(unfair) > threshold (the argmax of two logits); 0 without any
    true positive, as torchmetrics' BinaryF1Score gives it."""
    pred = p > threshold
    tp = float(np.sum(pred & (y == 1)))
    wrong = float(np.sum(pred != (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + wrong)


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision as the trial logs it (torchmetrics' BinaryAveragePrecision): one
    precision-recall step per distinct score, so tied clauses count together; 0 without any
    unfair clause (sklearn warns and returns NaN or 0 there)."""
    from sklearn.metrics import average_precision_score

    return 0.0 if not np.any(y == 1) else float(average_precision_score(y == 1, p))


def soft_f1(y: np.ndarray, p: np.ndarray) -> float:
    """F1 with probabilities as fractional predictions: no threshold, so one clause moves it
    by its probability rather than by a whole count."""
    return float(2 * np.sum(p * y) / (np.sum(p) + np.sum(y)))


# -- the recording as a lookup table -------------------------------------------------------------

@dataclass
class Curves:
    """Per configuration (grid index), seed and epoch: the rung signals and the test F1."""

    grid: dict[str, tuple[Any, ...]]
    epochs: int
    seeds: dict[int, tuple[int, ...]]
    """The recorded seeds of each configuration."""
    table: pd.DataFrame
    """Index (config, seed, epoch); columns SIGNALS (val/f1 as the trial logged it),
    `val/f1_proba` (recomputed from the probabilities), FINAL, `test/ap`, `train/loss`,
    `fit_seconds`, `eval_seconds`."""
    configs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = {tuple(c[f] for f in FIELDS): i for i, c in enumerate(self.configs)}

    def index(self, sampled: dict[str, Any]) -> int:
        """The grid index of a sampled configuration (values cast as the table casts them)."""
        from tune.space import BY_NAME

        key = tuple(BY_NAME[f].cast(sampled[f]) for f in FIELDS)
        found = self.keys.get(key)
        if found is None:  # an lr off the grid by float formatting: the nearest grid value
            lr = min(self.grid["lr"], key=lambda v: abs(math.log(v / key[0])))
            found = self.keys[(lr, *key[1:])]
        return found

    def seed(self, config: int, realization: int) -> int:
        """The training seed whose curve a study replays for `config`. Realization 0 is the
        first seed everywhere; others draw per configuration among those recorded, so the
        seed noise of the recording shows across studies."""
        seeds = self.seeds[config]
        if realization == 0 or len(seeds) == 1:
            return seeds[0]
        return seeds[int(np.random.default_rng([realization, config]).integers(len(seeds)))]

    def curve(self, config: int, seed: int) -> pd.DataFrame:
        """One run's rows, by epoch."""
        return self.table.loc[(config, seed)]

    def final(self, realization: int, column: str = FINAL) -> np.ndarray:
        """Per configuration, `column` at the last epoch of the realization's curve."""
        return np.array([self.table.loc[(c, self.seed(c, realization), self.epochs), column]
                         for c in range(len(self.configs))])

    def champion_test(self, realization: int) -> np.ndarray:
        """Per configuration, the test F1 at its best val/f1 epoch (the earliest of ties):
        what that configuration's trial, run to the end, gives as a champion."""
        out = []
        for c in range(len(self.configs)):
            rows = self.curve(c, self.seed(c, realization))
            best = rows["val/f1"].to_numpy().argmax()
            out.append(float(rows[FINAL].to_numpy()[best]))
        return np.array(out)


def build_curves(frame: pd.DataFrame, meta: dict[str, Any],
                 only: dict[str, tuple[Any, ...]] | None = None) -> Curves:
    """The lookup table of a recording (`bench.curves.load_curves`); with `only`, of the
    sub-grid that keeps just those values of some dimensions (e.g. a partial recording's
    first half, `{"lora_rank": (4,)}`), and with `only["seed"]` just those training seeds'
    runs."""
    from bench.curves import grid_configs

    y_val, y_test = labels(meta, "validation"), labels(meta, "test")
    grid = {k: tuple(v) for k, v in meta["grid"].items()}
    only = dict(only or {})
    if "seed" in only:
        frame = frame[frame["seed"].isin(only.pop("seed"))]
    for name, values in only.items():
        kept = tuple(v for v in grid[name] if v in values)
        if not kept:
            raise ValueError(f"--only {name}: none of {list(values)} is on the grid "
                             f"({list(grid[name])})")
        grid[name] = kept
    configs = grid_configs(grid)
    index = {tuple(c[f] for f in FIELDS): i for i, c in enumerate(configs)}
    frame = frame[[tuple(r) in index for r in frame[list(FIELDS)].itertuples(index=False)]]
    records = []
    for _, r in frame.iterrows():
        pv = np.asarray(r["val_proba"], dtype=np.float64)
        pt = np.asarray(r["test_proba"], dtype=np.float64)
        key = tuple(r[f] for f in FIELDS)
        records.append({
            "config": index[key], "seed": int(r["seed"]), "epoch": int(r["epoch"]),
            "val/f1": float(r["val/f1"]), "val/f1_proba": f1_score(y_val, pv),
            "val/loss": -float(r["val/loss"]), "val/ap": average_precision(y_val, pv),
            "val/soft_f1": soft_f1(y_val, pv), FINAL: f1_score(y_test, pt),
            "test/ap": average_precision(y_test, pt), "train/loss": float(r["train/loss"]),
            "fit_seconds": float(r["fit_seconds"]), "eval_seconds": float(r["eval_seconds"])})
    table = pd.DataFrame(records).set_index(["config", "seed", "epoch"]).sort_index()
    epochs = int(meta["epochs"])
    seeds: dict[int, tuple[int, ...]] = {}
    for (c, s), rows in table.groupby(level=[0, 1]):
        if len(rows) == epochs:  # only whole curves
            seeds.setdefault(int(c), ())
            seeds[int(c)] += (int(s),)
    missing = [run_key(configs[c], meta["seeds"][0]) for c in range(len(configs))
               if c not in seeds]
    if missing:
        raise ValueError(f"the recording lacks {len(missing)} of {len(configs)} grid "
                         f"configurations (e.g. {missing[0]}); finish it with bench.curves")
    seeds = {c: tuple(sorted(s, key=lambda v: (v != meta["seeds"][0], v)))
             for c, s in seeds.items()}
    return Curves(grid=grid, epochs=epochs, seeds=seeds, table=table, configs=configs)


# -- one replayed study, from its events ---------------------------------------------------------

@dataclass
class Outcome:
    """What one replayed study gave, judged against its realization of the grid."""

    method: str
    seed: int
    trial_epochs: int
    trials: int
    distinct: int
    """Distinct configurations tried."""
    epochs_to_target: float
    """Trial-epochs until the champion's test F1 came within TOLERANCE of the grid's best
    (inf: never)."""
    epochs_to_exhaustive: float
    """Trial-epochs until the champion's test F1 came within TOLERANCE of (or above) what
    running every configuration to the end gives (`replay_exhaustive`; inf: never)."""
    champion_test: list[float]
    """The champion's test F1 at each of BUDGET_FRACTIONS of the baseline's budget (nan:
    no champion yet)."""
    grid_best: float
    exhaustive: float
    top_started: int
    top_killed: int
    best_started: int
    best_killed: int
    seconds: float = 0.0
    champion: list[float] = field(default_factory=list)
    """The champion's test F1 after each trial-epoch (see `champion_curve`)."""
    asked: int = 0
    """Trials the study was given (`trials` counts those that ran: fewer when the space ran
    out of untried configurations)."""
    spec: str = ""
    """`Method.spec` of the method replayed: a cached outcome of a method since redefined
    (another default, a new setting) is replayed again."""


def champion_curve(events: Sequence[tuple[str, int, int]], curves: Curves,
                   realization: int, scores: dict[tuple[str, int], float] | None = None
                   ) -> list[float]:
    """The champion's test F1 after each reported trial-epoch, in arrival order.

    `events`: (trial id, epoch, grid index) per report. The champion is the one best rule of
    the analysis (`tune.records.best_trial`) over every trial reported so far, running ones
    included (their best epoch's checkpoint is on disk), ranked on the recorded val/f1 or, for
    real trials, on `scores`, the val/f1 each (trial id, epoch) reported.
    """
    from tune.records import COMPLETED, RUNNING, TrialRecord, best_trial

    records: dict[str, TrialRecord] = {}
    configs: dict[str, int] = {}
    out = []
    for trial_id, epoch, config in events:
        seed = curves.seed(config, realization)
        record = records.setdefault(trial_id, TrialRecord(trial_id, {}, state=RUNNING))
        configs[trial_id] = config
        record.results.append({"epoch": epoch, "val/f1": float(
            curves.table.loc[(config, seed, epoch), "val/f1"] if scores is None
            else scores[(trial_id, epoch)])})
        if epoch >= curves.epochs:
            record.state = COMPLETED
        best = best_trial(records.values(), finished_only=False)
        assert best is not None and best.best is not None
        c = configs[best.trial_id]
        out.append(float(curves.table.loc[(c, curves.seed(c, realization), best.best[0]),
                                          FINAL]))
    return out


def judge(method: str, seed: int, events: Sequence[tuple[str, int, int]], curves: Curves,
          budget: int, realization: int, seconds: float = 0.0,
          scores: dict[tuple[str, int], float] | None = None, spec: str = "",
          asked: int = 0) -> Outcome:
    """An Outcome from a study's events (see `champion_curve`, `scores` included) and the
    baseline's budget."""
    grid = curves.champion_test(realization)
    grid_best = float(grid.max())
    # The grid's top configurations by what each gives as a champion when run to the end.
    top = set(np.argsort(-grid, kind="stable")[:TOP].tolist())
    best = int(np.argmax(grid))
    champion = champion_curve(events, curves, realization, scores)
    exhaustive = replay_exhaustive(curves, realization)

    def first(target: float) -> float:
        return next((float(i + 1) for i, v in enumerate(champion)
                     if v >= target - TOLERANCE - 1e-12), math.inf)

    at = []
    for fraction in BUDGET_FRACTIONS:
        n = min(int(round(fraction * budget)), len(champion))
        at.append(champion[n - 1] if n > 0 else float("nan"))
    last: dict[str, tuple[int, int]] = {}
    for trial_id, epoch, config in events:
        last[trial_id] = (config, max(epoch, last.get(trial_id, (config, 0))[1]))
    started = [c for c, _ in last.values()]
    killed = [c for c, e in last.values() if e < curves.epochs]
    return Outcome(method=method, seed=seed, trial_epochs=len(events), trials=len(last),
                   distinct=len(set(started)),
                   epochs_to_target=first(grid_best), epochs_to_exhaustive=first(exhaustive),
                   champion_test=at, grid_best=grid_best, exhaustive=exhaustive,
                   top_started=sum(c in top for c in started),
                   top_killed=sum(c in top for c in killed),
                   best_started=started.count(best), best_killed=killed.count(best),
                   seconds=round(seconds, 2), champion=[round(v, 5) for v in champion],
                   asked=asked, spec=spec)


def summarize(outcomes: Sequence[Outcome], baseline: str) -> pd.DataFrame:
    """Per method: medians and quartiles over seeds (see the module docstring)."""
    rows = []
    by_method: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_method.setdefault(o.method, []).append(o)
    base = by_method.get(baseline, [])
    for method, items in by_method.items():
        row = {"method": method, "studies": len(items),
               "seconds": float(np.median([o.seconds for o in items])),
               "trial_epochs": float(np.median([o.trial_epochs for o in items])),
               "distinct": float(np.median([o.distinct for o in items]))}
        for name in ("to_target", "to_exhaustive"):
            steps = np.array([getattr(o, f"epochs_{name}") for o in items])
            base_median = quantile(np.array([getattr(o, f"epochs_{name}") for o in base]), 0.5)
            row |= {f"{name}_reached": float(np.mean(np.isfinite(steps))),
                    f"{name}_q1": quantile(steps, 0.25), name: quantile(steps, 0.5),
                    f"{name}_q3": quantile(steps, 0.75),
                    # Undefined when the baseline's median study never reached the target.
                    f"{name}_ratio": (quantile(steps, 0.5) / base_median
                                      if math.isfinite(base_median) else float("nan"))}
        for i, fraction in enumerate(BUDGET_FRACTIONS):
            values = np.array([o.champion_test[i] for o in items], dtype=float)
            row[f"test@{fraction:g}"] = float(np.nanmedian(values))
            row[f"test@{fraction:g}_q1"] = float(np.nanquantile(values, 0.25))
            row[f"test@{fraction:g}_q3"] = float(np.nanquantile(values, 0.75))
        started = sum(o.top_started for o in items)
        row["top_killed"] = sum(o.top_killed for o in items) / started if started else float("nan")
        started = sum(o.best_started for o in items)
        row["best_killed"] = sum(o.best_killed for o in items) / started if started else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def quantile(values: np.ndarray, q: float) -> float:
    """A quantile where never (inf) counts as later than any finite value: a quantile that
    falls on or next to a never is never."""
    if len(values) == 0:
        return float("nan")
    big = 1e12
    found = float(np.quantile(np.where(np.isfinite(values), values, big), q))
    return math.inf if found > big / 10 else found


def replay_exhaustive(curves: Curves, realization: int) -> float:
    """Test F1 of the champion of running every configuration to the end (one trial each)."""
    events = [(str(c), e, c) for c in range(len(curves.configs))
              for e in range(1, curves.epochs + 1)]
    return champion_curve(events, curves, realization)[-1]


def correlations(curves: Curves, realization: int | None = 0) -> pd.DataFrame:
    """Spearman correlation, over the grid's configurations, of each signal at each epoch
    with the final test F1 (realization 0: the first seed's curves; None: every run)."""
    from scipy.stats import spearmanr

    table = curves.table.reset_index()
    if realization is not None:
        table = table[[s == curves.seed(c, realization)
                       for c, s in zip(table["config"], table["seed"], strict=True)]]
    final = table[table["epoch"] == curves.epochs].set_index(["config", "seed"])[FINAL]
    rows = []
    for signal in (*SIGNALS, "train/loss"):
        row = {"signal": signal}
        for epoch in range(1, curves.epochs + 1):
            at = table[table["epoch"] == epoch].set_index(["config", "seed"])[signal]
            values = -at if signal == "train/loss" else at
            row[f"epoch {epoch}"] = float(spearmanr(values, final.loc[at.index]).statistic)
        rows.append(row)
    return pd.DataFrame(rows)


def seed_noise(curves: Curves) -> dict[str, float]:
    """Between two training seeds of the same configuration (every pair of its seeds): the
    mean absolute difference of the final test F1 and the final val/f1; the configurations
    with several seeds."""
    import itertools

    pairs = [(c, a, b) for c, s in curves.seeds.items() for a, b in itertools.combinations(s, 2)]
    out: dict[str, float] = {"pairs": float(sum(len(s) > 1 for s in curves.seeds.values()))}
    for name, column, epoch in (("final test/f1", FINAL, curves.epochs),
                                ("final val/f1", "val/f1", curves.epochs)):
        diffs = [abs(curves.table.loc[(c, a, epoch), column]
                     - curves.table.loc[(c, b, epoch), column]) for c, a, b in pairs]
        out[name] = float(np.mean(diffs)) if diffs else float("nan")
    return out


def best_configurations(curves: Curves, realizations: int) -> list[tuple[int, float]]:
    """(configuration, share of realizations 1..N in which it is the grid's best), most often
    best first: with several seeds a configuration, which configuration is the target moves
    with the seeds drawn."""
    best = [int(np.argmax(curves.champion_test(r))) for r in range(1, realizations + 1)]
    counts = pd.Series(best).value_counts()
    return [(int(c), float(n) / realizations) for c, n in counts.items()]


# -- methods -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One search strategy: StudyConfig settings plus the signal its rungs are ranked on."""

    name: str
    search: str = "optuna"
    scheduler: str = "asha"
    signal: str = "val/f1"
    grace_period: int | None = None
    reduction_factor: float = 2.0
    startup_trials: int | None = None
    skip_repeats: bool = True
    """Answer a configuration Optuna proposes again from its earlier trial (the study's
    default, `tune.repeats`); False trains it again, as studies did before."""
    snap_lr: bool = False
    """Sample lr from the table's own log-uniform range and replay the nearest grid value
    (the grid's lr points are the centres of equal log bins of that range), instead of a
    choice over the grid's values: TPE then models lr as the real study does."""

    @property
    def stops_early(self) -> bool:
        return self.scheduler == "asha"

    @property
    def spec(self) -> str:
        """A digest of every setting, with the study defaults it leaves to StudyConfig (the
        search metric aside: a replay reports its signal under the objective's name)."""
        import hashlib

        from tune.study import StudyConfig

        defaults = {k: v for k, v in StudyConfig().to_dict().items() if k != "search_metric"}
        text = json.dumps({**asdict(self), "defaults": defaults}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


BASELINE = "random"
PLOTTED = ("random", "optuna", "random+asha", "optuna+asha", "optuna+asha ap",
           "optuna+asha ap repeats", "optuna+asha soft-f1")
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("random", search="random", scheduler="none"),
    Method("random+asha", search="random"),
    Method("optuna", scheduler="none"),
    Method("optuna repeats", scheduler="none", skip_repeats=False),
    Method("optuna+asha"),
    Method("optuna+asha loss", signal="val/loss"),
    Method("optuna+asha ap", signal="val/ap"),
    Method("optuna+asha ap repeats", signal="val/ap", skip_repeats=False),
    Method("optuna+asha soft-f1", signal="val/soft_f1"),
    Method("optuna+asha grace 2", grace_period=2),
    Method("optuna+asha rf 3", reduction_factor=3.0),
    Method("optuna+asha ap grace 2", signal="val/ap", grace_period=2),
    Method("optuna+asha startup 4", startup_trials=4),
    Method("optuna+asha lr-log", snap_lr=True),
)}


# -- running studies through the driver ----------------------------------------------------------

_CACHE: dict[tuple[str, str], Curves] = {}


def _cached(folder: str, only: dict[str, tuple[Any, ...]] | None) -> Curves:
    key = (folder, json.dumps(only, sort_keys=True))
    if key not in _CACHE:  # once per trial process: Tune reuses it for the study's trials
        _CACHE[key] = build_curves(*load_curves(folder), only=only)
    return _CACHE[key]


def replay_trial(sampled: dict[str, Any], base: Any, parallel: Any = None, curves: str = "",
                 only: dict[str, tuple[Any, ...]] | None = None, signal: str = "val/f1",
                 realization: int = 0) -> None:
    """Function trainable: report the recorded curve of the sampled configuration, one result
    per epoch, with `signal` under the objective's name (the logged val/f1 then moves to
    `val/f1_logged`)."""
    from ray import tune

    from trainable.config import OBJECTIVE
    from tune.records import REPORTED_AT

    table = _cached(curves, only)
    config = table.index(sampled)
    seed = table.seed(config, realization)
    rows = table.curve(config, seed)
    for epoch in range(1, min(base.epochs, table.epochs) + 1):
        row = rows.loc[epoch]
        metrics = {k: float(v) for k, v in row.items() if k.startswith(("val/", "test/", "train/"))}
        metrics["val/f1_logged"] = metrics["val/f1"]
        # The table negates the loss (every signal higher-is-better); a study reads it as
        # logged (`--search-metric val/loss` minimizes it, the mirror shows it).
        metrics["val/loss"] = -metrics["val/loss"]
        tune.report({**metrics, OBJECTIVE.metric: float(row[signal]), "epoch": epoch,
                     "grid_config": config, "curve_seed": seed, REPORTED_AT: time.time()})


def _arrival_log() -> Any:
    from ray import tune

    class ArrivalLog(tune.Callback):
        """(trial id, epoch, grid index) of every result, in the order the driver saw them
        (the order ASHA's rungs saw them)."""

        def __init__(self) -> None:
            self.events: list[tuple[str, int, int]] = []

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            self.events.append((trial.trial_id, int(result["epoch"]),
                                int(result["grid_config"])))

    return ArrivalLog()


def grid_space(curves: Curves, snap_lr: bool = False) -> tuple[Any, ...]:
    """The grid's own search space: the `tune.space` table with every recorded dimension a
    choice over the recorded values (lr kept log-uniform with `snap_lr`)."""
    from tune.space import CHOICE, DIMENSIONS, Dimension

    return tuple(d if d.name not in curves.grid or snap_lr and d.name == "lr" else
                 Dimension(d.name, CHOICE, choices=curves.grid[d.name], type=d.type,
                           key=d.key or f"{d.name}s") for d in DIMENSIONS)


def replay_study(curves_dir: Path, curves: Curves, method: Method, seed: int, num_trials: int,
                 storage: Path, max_concurrent: int = 2, realization: int | None = None,
                 only: dict[str, tuple[Any, ...]] | None = None
                 ) -> tuple[list[tuple[str, int, int]], float]:
    """Run one study of `method` over the recording through the driver; (events, seconds)."""
    from trainable.config import OBJECTIVE, TrialConfig
    from tune.driver import _tuner
    from tune.study import StudyConfig

    started = time.time()
    space = grid_space(curves, snap_lr=method.snap_lr)
    study = StudyConfig(
        name=f"replay-{method.name.replace(' ', '-').replace('+', '-')}-{seed}",
        num_trials=num_trials, max_concurrent=max_concurrent, cpus_per_trial=1.0,
        searched=FIELDS, space=space, search=method.search, scheduler=method.scheduler,
        startup_trials=method.startup_trials, grace_period=method.grace_period,
        reduction_factor=method.reduction_factor, search_seed=seed,
        skip_repeats=method.skip_repeats,
        storage_path=str(storage), max_failures=0,
        # The replay reports the method's signal under the objective's name, so the searcher
        # and ASHA rank on the objective's key ("optuna+asha soft-f1" is the default study).
        search_metric=OBJECTIVE.metric)
    base = TrialConfig(epochs=curves.epochs)
    trial_fn = functools.partial(replay_trial, curves=str(curves_dir.resolve()), only=only,
                                 signal=method.signal,
                                 realization=seed if realization is None else realization)
    arrivals = _arrival_log()
    tuner = _tuner(study, base, gpus=0.0, restore=False, trial_fn=trial_fn, callbacks=[arrivals])
    try:
        tuner.fit()
    finally:
        shutil.rmtree(study.experiment_path, ignore_errors=True)
    return arrivals.events, time.time() - started


def trials_for(method: Method, budget_trials: int, epochs: int) -> int:
    """Trials a method gets: the baseline's count without early stopping; with ASHA, enough
    that its stopped trials can spend the baseline's budget of trial-epochs."""
    if not method.stops_early:
        return budget_trials
    return int(math.ceil(budget_trials * 2.5))


# -- command line --------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n")[0])
    p.add_argument("curves", type=Path, help="a folder written by `python -m bench.curves`")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   metavar="METHOD", help=f"from: {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=50, help="search seeds per method (1..N)")
    p.add_argument("--trials", type=int, default=12,
                   help="the baseline's trials (its budget: trials x the recorded epochs)")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--out", type=Path, default=None,
                   help="a JSON-lines file of per-study outcomes and their events (default: "
                        "runs/replay/<CURVES folder name>-<digest of its runs>.jsonl); studies "
                        "already in it are not run again")
    p.add_argument("--plot", type=Path, default=None, help="write a plot here (png)")
    p.add_argument("--only", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="replay the sub-grid with just these values (a partial recording's "
                        "first half: --only lora_rank=4), or just one training seed's curves "
                        "(--only seed=42)")
    return p.parse_args(argv)


def parse_only(items: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """`lora_rank=4 lr=1.8e-4 seed=42` to {"lora_rank": (4,), "lr": (0.00018,), "seed": (42,)}
    (values cast as the search-space table casts them; a field named twice keeps both)."""
    from tune.space import BY_NAME

    only: dict[str, tuple[Any, ...]] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in (*FIELDS, "seed") or not value:
            raise SystemExit(f"--only {item}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(FIELDS)}, seed")
        cast = int if name == "seed" else BY_NAME[name].cast
        only[name] = (*only.get(name, ()), cast(float(value)))
    return only


def main(argv: Sequence[str] | None = None) -> int:
    """Replay every (method, seed) study not replayed yet; print the tables."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    only = parse_only(args.only)
    curves = build_curves(*load_curves(args.curves), only=only)
    budget = args.trials * curves.epochs
    outcomes = replayed(args.curves, curves, args.methods, args.seeds, args.trials,
                        args.max_concurrent, only, args.out)
    # Seed noise needs both training seeds, also when the replays use one.
    full = curves if "seed" not in only else build_curves(
        *load_curves(args.curves), only={k: v for k, v in only.items() if k != "seed"})
    print(report(curves, outcomes, budget, noise=seed_noise(full)))
    if args.plot:
        plot(curves, outcomes, budget, args.plot)
        print(f"plot: {args.plot}")
    return 0


def outcomes_path(curves_dir: Path, only: dict[str, tuple[Any, ...]]) -> Path:
    """Where the outcomes of a recording's replays are kept:
    runs/replay/<folder>-<digest>[-<only>].jsonl. The digest is of the recorded runs' bytes,
    so outcomes replayed over one recording are never read back for another made into the
    same folder (a re-recording, a resumed one with more runs)."""
    import hashlib

    from bench.curves import RUNS_DIR

    digest = hashlib.sha256()
    for f in sorted((curves_dir / RUNS_DIR).glob("*.parquet")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return Path("runs") / "replay" / (
        f"{curves_dir.resolve().name}-{digest.hexdigest()[:10]}" + "".join(
            f"-{k}{'+'.join(map(str, v))}" for k, v in only.items()) + ".jsonl")


def replayed(curves_dir: Path, curves: Curves, methods: Sequence[str], seeds: int, trials: int,
             max_concurrent: int, only: dict[str, tuple[Any, ...]], out: Path | None = None,
             method_trials: dict[str, int] | None = None) -> list[Outcome]:
    """The outcomes of `methods` x search seeds 1..`seeds`, replaying only the studies not in
    `out` yet (default `outcomes_path`); `trials` is the baseline's. Each method runs
    `trials_for` trials, or those `method_trials` gives it (a real study's own count): a
    study is known by its method (and its `spec`), seed and trials given."""
    out = out or outcomes_path(curves_dir, only)
    out.parent.mkdir(parents=True, exist_ok=True)
    budget = trials * curves.epochs
    counts = {m: (method_trials or {}).get(m) or trials_for(METHODS[m], trials, curves.epochs)
              for m in methods}
    specs = {m: METHODS[m].spec for m in methods}
    done = {(o.method, o.spec, o.seed, o.asked) for o in _read_outcomes(out)}
    todo = [(m, s) for m in methods for s in range(1, seeds + 1)
            if (m, specs[m], s, counts[m]) not in done]
    log.info("%d configurations x %d epochs; baseline budget %d trial-epochs (%d trials); "
             "%d studies to replay, %d done", len(curves.configs), curves.epochs, budget,
             trials, len(todo), len(done))
    if todo:
        _replay_all(curves_dir, curves, todo, counts, trials, max_concurrent, out, only)
    return [o for o in _read_outcomes(out) if o.method in methods and o.seed <= seeds
            and o.asked == counts[o.method] and o.spec == specs[o.method]]


def _replay_all(curves_dir: Path, curves: Curves, todo: list[tuple[str, int]],
                counts: dict[str, int], trials: int, max_concurrent: int, out: Path,
                only: dict[str, tuple[Any, ...]]) -> None:
    import os

    import ray

    from tune.resources import connect
    from tune.study import StudyConfig

    # Replays read their results from the ArrivalLog callback, not from Ray's result files,
    # so Tune's JSON/CSV/TensorBoard loggers are left out; Ray's idle worker processes import
    # Tune ahead, so each study's fresh trial actors start at once (about 12 s a study here
    # instead of 40).
    # Both are put back afterwards: real studies run later in this process (bench.confirm)
    # need Tune's result files.
    settings = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_preload_python_modules": "ray.tune"}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update({k: v for k, v in settings.items() if before[k] is None})
    connect(StudyConfig())  # one Ray runtime for every study
    # Tune's end-of-study summary looks for the result files left out above.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    started = time.time()
    try:
        for i, (name, seed) in enumerate(todo):
            method = METHODS[name]
            events, seconds = replay_study(curves_dir, curves, method, seed, counts[name],
                                           storage, max_concurrent, only=only)
            outcome = judge(name, seed, events, curves, trials * curves.epochs,
                            realization=seed, seconds=seconds, spec=method.spec,
                            asked=counts[name])
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps({**asdict(outcome), "events": events}) + "\n")
            elapsed = time.time() - started
            log.info("[%d/%d] %s seed %d: %d trial-epochs, %.1f s; about %.0f min to go",
                     i + 1, len(todo), name, seed, outcome.trial_epochs, seconds,
                     elapsed / (i + 1) * (len(todo) - i - 1) / 60)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
        ray.shutdown()


def _read_outcomes(path: Path) -> list[Outcome]:
    if not path.is_file():
        return []
    names = set(Outcome.__dataclass_fields__)
    outcomes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            outcomes.append(Outcome(**{k: v for k, v in data.items() if k in names}))
    return outcomes


def report(curves: Curves, outcomes: Sequence[Outcome], budget: int,
           noise: dict[str, float] | None = None) -> str:
    """The replay table, the correlation table and the seed noise (default: `curves`'s), as
    markdown."""
    lines = []
    grid0 = curves.champion_test(0)
    exhaustive = replay_exhaustive(curves, 0)
    lines.append(f"grid: {len(curves.configs)} configurations x {curves.epochs} epochs "
                 f"(first seed): best test F1 of a configuration's champion {grid0.max():.4f}, "
                 f"median {np.median(grid0):.4f}; the champion of running them all "
                 f"({len(curves.configs) * curves.epochs} trial-epochs) has test F1 "
                 f"{exhaustive:.4f}; baseline budget {budget} trial-epochs")
    table = summarize(outcomes, BASELINE)
    if len(table):
        lines += ["", f"Compute: trial-epochs until the champion's test F1 is within {TOLERANCE} "
                  f"of (A) the grid's best, (B) the exhaustive grid's champion; median [IQR] "
                  f"over seeds, never counted as the longest; ratio to {BASELINE}'s median.", "",
                  "| method | studies | s/study | trial-epochs | configs tried | A reached | "
                  "A: trial-epochs | A: / random | B reached | B: trial-epochs | B: / random |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|"]
        for _, r in table.iterrows():
            cells = []
            for name in ("to_target", "to_exhaustive"):
                cells += [f"{r[f'{name}_reached']:.0%}",
                          f"{_n(r[name])} [{_n(r[f'{name}_q1'])}, {_n(r[f'{name}_q3'])}]",
                          _r(r[f"{name}_ratio"])]
            lines.append(f"| {r['method']} | {r['studies']} | {r['seconds']:.1f} | "
                         f"{r['trial_epochs']:.0f} | {r['distinct']:.0f} | " + " | ".join(cells)
                         + " |")
        lines += ["", f"Quality and kills: the champion's test F1 at 25/50/100% of the "
                  f"baseline's budget ({budget} trial-epochs), median [IQR]; the share of "
                  f"started trials of a top-{TOP} (best) configuration that ASHA stopped.", "",
                  "| method | test F1 @25% | @50% | @100% | top-5 killed | best killed |",
                  "|---|---:|---:|---:|---:|---:|"]
        for _, r in table.iterrows():
            lines.append(
                f"| {r['method']} | "
                + " | ".join(f"{r[f'test@{f:g}']:.3f} [{r[f'test@{f:g}_q1']:.3f}, "
                             f"{r[f'test@{f:g}_q3']:.3f}]" for f in BUDGET_FRACTIONS)
                + f" | {_p(r['top_killed'])} | {_p(r['best_killed'])} |")
    several = sum(len(s) > 1 for s in curves.seeds.values())
    for realization, title in ((0, "over configurations (first seed)"),
                               (None, f"over every recorded run ({len(curves.table) // curves.epochs}"
                                      f" runs)")):
        if realization is None and not several:
            continue
        corr = correlations(curves, realization)
        lines += ["", f"Spearman correlation with the final test F1, {title}:",
                  "", "| signal | " + " | ".join(corr.columns[1:]) + " |",
                  "|---|" + "---:|" * (len(corr.columns) - 1)]
        for _, r in corr.iterrows():
            lines.append(f"| {r['signal']} | " + " | ".join(f"{v:.2f}" for v in r.iloc[1:])
                         + " |")
    if several and outcomes:
        n = max(o.seed for o in outcomes)
        lines += ["", f"The grid's best configuration over realizations 1..{n} (one recorded "
                  f"seed drawn per configuration, as the studies replay them): " + ", ".join(
                      f"{run_key(curves.configs[c], 0)[:-3]} {share:.0%}"
                      for c, share in best_configurations(curves, n))]
    noise = noise or seed_noise(curves)
    lines += ["", f"seed noise over {noise['pairs']:.0f} configurations with several seeds "
              f"(every pair): mean |difference| final test F1 {noise['final test/f1']:.3f}, "
              f"final val F1 {noise['final val/f1']:.3f}"]
    return "\n".join(lines)


def _n(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:.0f}"


def _r(value: Any) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.0%}"


def plot(curves: Curves, outcomes: Sequence[Outcome], budget: int, path: Path) -> None:
    """Left: the median champion test F1 against trial-epochs per method (quartiles shaded
    for the baseline and Optuna + ASHA). Right: each rung signal's Spearman correlation with
    the final test F1, by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    methods = [m for m in dict.fromkeys(o.method for o in outcomes) if m in PLOTTED]
    length = max([budget, *(len(o.champion) for o in outcomes)])
    for i, method in enumerate(methods):
        rows = []
        for o in outcomes:
            if o.method == method and o.champion:
                c = np.array(o.champion, dtype=float)
                # After its last trial-epoch a study's champion stays what it was.
                rows.append(np.concatenate([c, np.full(length - len(c), c[-1])]))
        if not rows:
            continue
        stack = np.array(rows)
        x = np.arange(1, length + 1)
        style = "-" if METHODS.get(method, Method(method)).stops_early else "--"
        (line,) = ax.plot(x, np.nanmedian(stack, axis=0), style, lw=1.4,
                          label=f"{method} ({len(rows)} seeds)", color=f"C{i % 10}")
        if method in (BASELINE, "optuna+asha"):
            ax.fill_between(x, np.nanquantile(stack, 0.25, axis=0),
                            np.nanquantile(stack, 0.75, axis=0), color=line.get_color(),
                            alpha=0.15, lw=0)
    best = np.median([o.grid_best for o in outcomes]) if outcomes else curves.champion_test(0).max()
    ax.axhline(best, color="k", lw=0.8, ls=":", label="A: grid's best test F1 (median)")
    exhaustive = np.median([o.exhaustive for o in outcomes]) if outcomes else best
    ax.axhline(exhaustive, color="k", lw=0.8, ls="--",
               label="B: the exhaustive grid's champion (median)")
    ax.axvline(budget, color="grey", lw=0.8, ls="-.", label="baseline's budget")
    ax.set_xlim(1, min(length, 2 * budget))
    ax.set_xlabel("cumulative trial-epochs")
    ax.set_ylabel("champion's test F1 (median over seeds)")
    ax.set_title(f"{len(curves.configs)}-configuration grid x {curves.epochs} epochs, replayed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    corr = correlations(curves)
    epochs = np.arange(1, curves.epochs + 1)
    for _, r in corr.iterrows():
        bx.plot(epochs, r.iloc[1:].to_numpy(dtype=float), "o-", label=r["signal"])
    bx.set_xticks(epochs)
    bx.set_xlabel("epoch (rung)")
    bx.set_ylabel("Spearman with final test F1")
    bx.set_title("rung signals")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
