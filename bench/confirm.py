"""Confirm the replayed studies on real trials: `python -m bench.confirm`.

    python -m bench.confirm --data-dir ../shared/data/unfair_tos

Two real studies through the driver (`tune.driver.run_study`: the trainable's real trials
under Ray Tune, mirrored into MLflow, experiment `bench-confirm`), one after the other, on
the recording's data (the same stratified train subsample, `bench.curves.prepare_data`)
and with its grid as the search space (`bench.replay.grid_space`):

    defaults  the study's own defaults (Optuna + ASHA ranked on val/soft_f1), --default-trials
    random    random search without early stopping, --trials trials (the replay's baseline)

Each study's reports, in the order the driver received them, are judged as a replayed
study's are (`bench.replay.judge`: the champion the analysis would pick after each
trial-epoch, ranked on the val/f1 the real trials reported, its test F1 looked up in the
recording) and placed in the distribution of the
same method replayed over many search seeds (`bench.replay.replayed`, reusing outcomes
already replayed). Each champion is also evaluated for real on the test split
(`analysis.evaluate.evaluate`, with the TF-IDF baseline beside it), and every live epoch's
val/f1, val/ap and val/soft_f1 are set against the recording's for that configuration and
epoch: how faithful the replay is to real trials. (A recording made before `bench.curves`
forked the random generator around its extra test pass drifts from real trials after the
first epoch: that pass shifted every later dropout mask.)

A finished study's outcome is kept in runs/confirm/<study>.json; a finished study without
one is judged from its files; neither runs again. A study interrupted half way is resumed
(as `tune/run.py --resume` resumes one).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.curves import FIELDS, load_curves, prepare_data
from bench.replay import (
    BASELINE,
    FINAL,
    METHODS,
    TOLERANCE,
    Curves,
    Outcome,
    build_curves,
    grid_space,
    judge,
    quantile,
    replayed,
)
from trainable.adapter import write_json

log = logging.getLogger("bench.confirm")

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = "optuna+asha soft-f1"  # the replayed method that is the study's defaults (checked)
EXPERIMENT = "bench-confirm"


@dataclass
class Live:
    """One real study, judged like a replayed one."""

    method: str
    study: str
    outcome: dict[str, Any]
    """`bench.replay.Outcome` of its events, as a dict."""
    events: list[tuple[str, int, int]]
    seconds: float
    champion: dict[str, Any]
    """The champion's trial, configuration, best epoch, val/f1, its test F1 looked up in the
    recording and measured for real, and the TF-IDF baseline's test F1."""
    fidelity: dict[str, float] = field(default_factory=dict)
    """Mean and largest |live - recorded| of train/loss, val/f1, val/ap and val/soft_f1 over
    its epochs."""


def grid_study(space: tuple[Any, ...], **settings: Any) -> Any:
    """A study over the grid's space. Without a search or scheduler in `settings`, the one
    the user gets without options: then it fails if the replayed DEFAULTS method is not that
    study any more (the confirmation would confirm another)."""
    from tune.study import StudyConfig

    study = StudyConfig(searched=FIELDS, space=space, **settings)
    if {"search", "scheduler"} & set(settings):
        return study
    method = METHODS[DEFAULTS]
    same = {"search": study.search == method.search,
            "scheduler": study.scheduler == method.scheduler,
            "search_metric": study.search_metric == method.signal,
            "grace_period": study.grace_period == method.grace_period,
            "reduction_factor": study.reduction_factor == method.reduction_factor,
            "startup_trials": study.startup_trials == method.startup_trials,
            "skip_repeats": study.skip_repeats == method.skip_repeats}
    if not all(same.values()):
        raise SystemExit(f"bench.confirm: the study's defaults differ from the replayed method "
                         f"{DEFAULTS!r} in {', '.join(k for k, v in same.items() if not v)}")
    return study


def live_events(records: Sequence[Any], curves: Curves) -> list[tuple[str, int, int]]:
    """(trial id, epoch, grid index) of every report, in the order reported."""
    from tune.records import report_time

    timed = [(report_time(r) or 0.0, rec.trial_id, int(r["epoch"]), curves.index(rec.sampled))
             for rec in records for r in rec.results if "epoch" in r]
    return [(trial, epoch, config) for _, trial, epoch, config in sorted(timed)]


def fidelity(records: Sequence[Any], curves: Curves, seed: int) -> dict[str, float]:
    """How far each live epoch's training loss, val/f1, val/ap and val/soft_f1 are from the
    recording's. The same training gives the same train/loss to the last digit; val/ap and
    val/soft_f1 are recomputed from the stored probabilities (`bench.replay`), so they also
    check that the replay's rung signals are the ones a real trial logs."""
    gaps: dict[str, list[float]] = {"train/loss": [], "val/f1": [], "val/ap": [],
                                    "val/soft_f1": []}
    for rec in records:
        config = curves.index(rec.sampled)
        for r in rec.results:
            row = curves.table.loc[(config, seed, int(r["epoch"]))]
            for name, found in gaps.items():
                if isinstance(r.get(name), (int, float)):
                    found.append(abs(float(r[name]) - float(row[name])))
    out: dict[str, float] = {"epochs": float(len(gaps["val/f1"]))}
    for name, found in gaps.items():
        out[f"{name} mean"] = float(np.mean(found)) if found else math.nan
        out[f"{name} max"] = float(np.max(found)) if found else math.nan
    return out


def finished(study: Any, epochs: int) -> bool:
    """Whether the study on disk (its study file written) ran all its trials to their end
    (completed or stopped)."""
    from tune.driver import ray_records

    records = ray_records(study.experiment_path, max_epochs=epochs)
    return len(records) >= study.trials_to_run and all(r.finished for r in records)


def judge_live(method: str, study: Any, curves: Curves, seed: int, budget: int,
               out: Path) -> Live:
    """Judge a finished real study from its files: the champion after each trial-epoch as the
    study itself ranks trials (the val/f1 its trials reported), its test F1 looked up in the
    recording, and the final champion evaluated for real."""
    from analysis.evaluate import evaluate
    from tune.driver import ray_records
    from tune.records import best_checkpoint, best_trial

    records = ray_records(study.experiment_path, max_epochs=curves.epochs)
    best = best_trial(records)
    found = best_checkpoint(best.checkpoints) if best is not None else None
    if best is None or best.best is None or found is None:
        raise SystemExit(f"bench.confirm: study {study.name} ended without a champion")
    events = live_events(records, curves)
    scores = {(r.trial_id, e): v for r in records for e, v in r.history.items()}
    spans = [span for r in records if (span := r.span) is not None]
    seconds = max(e for _, e in spans) - min(s for s, _ in spans)
    outcome = judge(method, study.search_seed, events, curves, budget, realization=0,
                    seconds=seconds, scores=scores)
    epoch, value = best.best
    config = curves.index(best.sampled)
    evaluation, _, _ = evaluate(Path(found[0]), data=None)
    champion = {"trial_id": best.trial_id, "config": curves.configs[config],
                "epoch": epoch, "val/f1": value,
                "test/f1 recorded": float(curves.table.loc[(config, seed, epoch), FINAL]),
                "test/f1 measured": evaluation.metrics["test"]["f1"],
                "tfidf test/f1": evaluation.metrics["baseline_test"]["f1"]}
    live = Live(method=method, study=study.name, outcome=asdict(outcome), events=events,
                seconds=round(seconds, 1), champion=champion,
                fidelity=fidelity(records, curves, seed))
    write_json(out / f"{study.name}.json", asdict(live))  # atomic: a kept outcome is whole
    return live


def placement(value: float, others: Sequence[float]) -> str:
    """Where `value` (lower is better; inf: never) falls among replayed studies' values."""
    arr = np.asarray(others, dtype=float)
    better = float(np.mean(arr < value))
    tied = float(np.mean(arr == value))
    return f"{better:.0%} of replays did better, {tied:.0%} the same"


def report(lives: Sequence[Live], replays: Sequence[Outcome], curves: Curves,
           budget: int) -> str:
    """The confirmation pair side by side, each placed among its method's replays."""
    grid_best = float(curves.champion_test(0).max())
    lines = [f"grid: {len(curves.configs)} configurations x {curves.epochs} epochs; best test "
             f"F1 of a configuration's champion {grid_best:.4f}; target: within {TOLERANCE}; "
             f"baseline budget {budget} trial-epochs", "",
             "| | " + " | ".join(f"{live.method} (live)" for live in lives) + " |",
             "|---|" + "---:|" * len(lives)]

    def row(name: str, cells: Sequence[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def never(value: float) -> str:
        return "never" if not math.isfinite(value) else f"{value:.0f}"

    by_method = {m: [o for o in replays if o.method == m] for m in {lv.method for lv in lives}}
    row("trials (trial-epochs)", [f"{lv.outcome['trials']} ({lv.outcome['trial_epochs']})"
                                  for lv in lives])
    row("wall minutes", [f"{lv.seconds / 60:.1f}" for lv in lives])
    row("trial-epochs to target", [never(lv.outcome["epochs_to_target"]) for lv in lives])
    for lv in lives:
        reps = np.array([o.epochs_to_target for o in by_method[lv.method]], dtype=float)
        q = [quantile(reps, f) for f in (0.25, 0.5, 0.75)]
        lv.outcome["placement"] = (
            f"{len(reps)} replays: reached {np.mean(np.isfinite(reps)):.0%}, median "
            f"{never(q[1])} [{never(q[0])}, {never(q[2])}]; "
            f"{placement(lv.outcome['epochs_to_target'], reps)}")
    row("... among replays", [lv.outcome["placement"] for lv in lives])
    row("champion test F1 @25/50/100% of budget (as recorded)",
        [" / ".join("-" if math.isnan(v) else f"{v:.3f}" for v in lv.outcome["champion_test"])
         for lv in lives])
    row("... replayed medians", [" / ".join(
        f"{np.nanmedian([o.champion_test[i] for o in by_method[lv.method]]):.3f}"
        for i in range(len(lv.outcome["champion_test"]))) for lv in lives])
    row("champion (lr, rank, batch; epoch)", [
        f"{lv.champion['config']['lr']:g}, {lv.champion['config']['lora_rank']}, "
        f"{lv.champion['config']['batch_size']}; {lv.champion['epoch']}" for lv in lives])
    row("champion val F1", [f"{lv.champion['val/f1']:.4f}" for lv in lives])
    row("champion test F1 measured (recorded)", [
        f"{lv.champion['test/f1 measured']:.4f} ({lv.champion['test/f1 recorded']:.4f})"
        for lv in lives])
    row("TF-IDF test F1", [f"{lv.champion['tfidf test/f1']:.4f}" for lv in lives])
    row("top-5 / best configurations stopped early", [
        f"{lv.outcome['top_killed']}/{lv.outcome['top_started']} / "
        f"{lv.outcome['best_killed']}/{lv.outcome['best_started']}" for lv in lives])
    row("live vs recorded train/loss: mean (max) gap", [
        f"{lv.fidelity['train/loss mean']:.2g} ({lv.fidelity['train/loss max']:.2g})"
        for lv in lives])
    row("live vs recorded val/f1: mean (max) gap", [
        f"{lv.fidelity['val/f1 mean']:.4f} ({lv.fidelity['val/f1 max']:.4f})" for lv in lives])
    row("live vs recorded val/ap: mean (max) gap", [
        f"{lv.fidelity['val/ap mean']:.4f} ({lv.fidelity['val/ap max']:.4f})" for lv in lives])
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.confirm",
                                description=__doc__.split("\n")[0])
    p.add_argument("--curves", type=Path, default=REPO / "bench" / "curves",
                   help="a folder written by `python -m bench.curves` (default: the committed one)")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "unfair_tos",
                   help="the data the curves were recorded on")
    p.add_argument("--trials", type=int, default=12,
                   help="random search's trials: the replay's baseline (its budget: trials x "
                        "the recorded epochs)")
    p.add_argument("--default-trials", type=int, default=16,
                   help="the default study's trials (ASHA stops some early)")
    p.add_argument("--search-seed", type=int, default=1)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--replay-seeds", type=int, default=50,
                   help="search seeds of each method's replayed distribution")
    p.add_argument("--out", type=Path, default=Path("runs") / "confirm")
    return p.parse_args(argv)


def read_kept(path: Path) -> dict[str, Any]:
    """A finished study's kept outcome; an unreadable one is a one-line error."""
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        saved, reason = None, f"not JSON: {e}"
    else:
        reason = "no method named"
    if not isinstance(saved, dict) or "method" not in saved:
        raise SystemExit(f"bench.confirm: {path} is not a kept study outcome ({reason}); "
                         f"move it away to run that study again")
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from trainable.config import TrialConfig
    from tune.driver import run_study
    from tune.study import read_study_file

    frame, meta = load_curves(args.curves)
    seed = int(meta["seeds"][0])  # the trials' seed, as in the recording's first seed
    only = {"seed": (seed,)}
    curves = build_curves(frame, meta, only=only)
    budget = args.trials * curves.epochs
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    prepared = prepare_data(args.data_dir, int(meta["train_samples"]), seed, data)
    if prepared["train_rows"] != meta["train_rows"] or prepared["labels"] != meta["labels"]:
        raise SystemExit(f"bench.confirm: {args.data_dir} is not the data {args.curves} was "
                         f"recorded on (other train rows or labels)")
    base = TrialConfig.from_dict(meta["trial"]).replace(data=str(data.resolve()), seed=seed,
                                                       epochs=curves.epochs)
    space = grid_space(curves)
    common = {"max_concurrent": args.max_concurrent, "cpus_per_trial": 1.0,
              "search_seed": args.search_seed, "experiment": EXPERIMENT}
    studies = {
        DEFAULTS: grid_study(space, name=f"confirm-defaults-s{args.search_seed}",
                             num_trials=args.default_trials, **common),
        BASELINE: grid_study(space, name=f"confirm-random-s{args.search_seed}",
                             num_trials=args.trials, search="random", scheduler="none",
                             **common),
    }
    # Each study's kept outcome, if any; one made under other defaults is refused before
    # anything runs.
    kept = {method: args.out / f"{study.name}.json" for method, study in studies.items()}
    saved = {method: read_kept(path) for method, path in kept.items() if path.is_file()}
    for method, outcome in saved.items():
        if outcome["method"] != method:
            raise SystemExit(f"bench.confirm: {kept[method]} holds a {outcome['method']!r} "
                             f"study, not {method!r}; move it (and its study folder) away or "
                             f"pass another --search-seed")
    # The replayed distributions first: a few minutes, and a fresh checkout has none yet.
    # Each method replayed with the trials its real study runs.
    replays = replayed(args.curves, curves, list(studies), args.replay_seeds, args.trials,
                       args.max_concurrent, only,
                       method_trials={m: s.num_trials for m, s in studies.items()})
    log.info("replayed: %s", ", ".join(
        f"{sum(o.method == m for o in replays)} x {m} ({s.num_trials} trials)"
        for m, s in studies.items()))
    lives = []
    for method, study in studies.items():
        if method in saved:
            lives.append(Live(**saved[method]))
            log.info("%s: kept from %s", study.name, kept[method])
            continue
        started = read_study_file(study.experiment_path) is not None
        if not (started and finished(study, curves.epochs)):
            log.info("%s: %d real trials, %s%s", study.name, study.trials_to_run, method,
                     " (resumed)" if started else "")
            run_study(study, base, resume=started)
        lives.append(judge_live(method, study, curves, seed, budget, args.out))
    print(report(lives, replays, curves, budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
