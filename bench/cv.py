"""Does the cross-validated objective pick better champions per unit of compute? `python -m bench.cv`

    python -m bench.curves --data-dir ../shared/data/unfair_tos     # the recording it compares with
    python -m bench.cv --data-dir ../shared/data/unfair_tos         # about 50 min here

`--cv-folds K` (issue 11, item 3) makes a trial fit K times over train and validation pooled
and report the folds' mean: with 109 unfair clauses behind its objective instead of 33, it
should rank configurations more like the test split does, at K times the compute. This bench
measures that on the `bench.curves` recording's own configurations, data and trial config:
each configuration of the grid (by default those with batch size 8) is trained
cross-validated through the real trainable (`trainable.train.train`, no Ray), two at a time,
and the adapter the trial ships (its first fold's, at the best mean epoch) is scored on test.

It prints, per configuration, the single-split objective and test F1 the recording holds and
the cross-validated objective and shipped test F1 measured here; the rank correlation of each
objective with the configurations' test F1; and the test F1 of the champion each objective
picks at equal configurations (K times the compute for CV) and at equal compute (CV over every
subset of 1/K of the configurations, the single split over all). One JSON file per
configuration under `OUT/` (default bench/cv/), written when it ends: rerunning resumes, and
`--report` prints the tables from the files alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from bench.curves import (
    DEFAULT_OUT as CURVES,
)
from bench.curves import (
    grid_configs,
    labels,
    load_curves,
    prepare_data,
    run_key,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "cv"
SEED = 42  # the recording's first seed: every configuration has a run with it


def run_config(base: dict[str, Any], config: dict[str, Any], folds: int, epochs: int,
               data_dir: str) -> dict[str, Any]:
    """Train one configuration cross-validated; its folds' histories and its shipped
    adapter's test F1 at 0.5. Runs in a worker process."""
    from analysis.evaluate import binary_metrics
    from trainable.cli import configure_logging
    from trainable.config import TrialConfig
    from trainable.data import load_splits
    from trainable.inference import load_trained, predict_proba
    from trainable.train import train

    configure_logging(verbose=False)  # the libraries' start-up chatter off, as in bench.curves
    with tempfile.TemporaryDirectory(prefix="bench-cv-") as work:
        cfg = TrialConfig.from_dict(base).replace(
            **config, seed=SEED, cv_folds=folds, epochs=epochs, data=data_dir,
            output_dir=work, eval_test=False)
        started = time.perf_counter()
        result = train(cfg, progress=False)
        seconds = time.perf_counter() - started
        model, tokenizer, trained = load_trained(result.adapter_dir)
        test = load_splits(trained, with_test=True).test
        probs = predict_proba(model, tokenizer, test["text"].tolist(), trained.max_length,
                              batch_size=64)
    return {"config": config, "folds": folds, "epochs": epochs, "seconds": round(seconds, 1),
            "history": result.history, "fold_histories": result.folds,
            "best_epoch": result.best_epoch,
            "shipped_test": binary_metrics(test["label"].to_numpy(), probs, 0.5)}


# -- the comparison ------------------------------------------------------------------------------

def single_split(curves: Any, meta: dict[str, Any], config: dict[str, Any],
                 epochs: int) -> dict[str, Any]:
    """What the recording says of a configuration trained on the single split, over its first
    `epochs` epochs: the best val/f1, its epoch, and the test F1 at that epoch and the last."""
    from analysis.evaluate import binary_metrics

    run = curves[(curves["seed"] == SEED) & (curves["epoch"] <= epochs)]
    for name, value in config.items():
        run = run[np.isclose(run[name], value)] if name == "lr" else run[run[name] == value]
    if len(run) != epochs:
        raise ValueError(f"the recording lacks {run_key(config, SEED)} epochs 1-{epochs}")
    y = labels(meta, "test")
    test_f1 = {int(r.epoch): binary_metrics(y, np.asarray(r.test_proba), 0.5)["f1"]
               for r in run.itertuples()}
    values = run["val/f1"].to_numpy()
    best = int(run["epoch"].to_numpy()[np.flatnonzero(values == values.max())[0]])
    return {"objective": float(values.max()), "epoch": best, "test_f1": test_f1[best],
            "last_test_f1": test_f1[epochs]}


def compare(results: list[dict[str, Any]], curves: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Per configuration both objectives; rank correlations; the champions each picks."""
    from scipy.stats import spearmanr

    rows = []
    for r in results:
        single = single_split(curves, meta, r["config"], r["epochs"])
        cv_best = max(h["val/f1"] for h in r["history"])
        rows.append({"config": r["config"], "single": single, "cv_objective": cv_best,
                     "cv_epoch": r["best_epoch"], "shipped_test_f1": r["shipped_test"]["f1"],
                     "seconds": r["seconds"]})
    quality = [row["single"]["last_test_f1"] for row in rows]  # the configuration's test F1
    correlation = {
        "single": float(spearmanr([r["single"]["objective"] for r in rows], quality).statistic),
        "cv": float(spearmanr([r["cv_objective"] for r in rows], quality).statistic)}

    def pick(subset: Sequence[dict[str, Any]], key: Any) -> dict[str, Any]:
        return max(subset, key=key)  # ties: the first in grid order

    single_pick = pick(rows, lambda r: r["single"]["objective"])
    cv_pick = pick(rows, lambda r: r["cv_objective"])
    folds, n = results[0]["folds"], len(rows)
    size = max(1, n // folds)
    subsets = list(itertools.combinations(rows, size))
    equal_compute = [pick(s, lambda r: r["cv_objective"]) for s in subsets]
    return {"rows": rows, "correlation": correlation, "folds": folds, "epochs": results[0]["epochs"],
            "single_pick": single_pick, "cv_pick": cv_pick, "subset_size": size,
            "subsets": len(subsets),
            "equal_compute_test_f1": float(np.mean([p["single"]["last_test_f1"]
                                                    for p in equal_compute])),
            "equal_compute_shipped_f1": float(np.mean([p["shipped_test_f1"]
                                                       for p in equal_compute])),
            "best_test_f1": max(quality)}


def print_report(c: dict[str, Any]) -> None:
    k, e = c["folds"], c["epochs"]
    print(f"{len(c['rows'])} configurations, {e} epochs; single split: the recording (800 train "
          f"clauses, 463 validation); cross-validated: {k} folds over the 800 + 463 pooled")
    print(f"{'configuration':28s} {'val F1':>7s} {'ep':>3s} {'test F1':>8s} {'final':>6s}   "
          f"{'CV F1':>6s} {'ep':>3s} {'shipped':>8s} {'min':>5s}")
    for r in c["rows"]:
        s, cfg = r["single"], r["config"]
        name = f"lr {cfg['lr']:.1e} r{cfg['lora_rank']} b{cfg['batch_size']}"
        print(f"{name:28s} {s['objective']:7.3f} {s['epoch']:3d} {s['test_f1']:8.3f} "
              f"{s['last_test_f1']:6.3f}   {r['cv_objective']:6.3f} {r['cv_epoch']:3d} "
              f"{r['shipped_test_f1']:8.3f} {r['seconds'] / 60:5.1f}")
    corr = c["correlation"]
    print(f"Spearman with the configurations' final test F1: single split {corr['single']:+.2f}, "
          f"cross-validated {corr['cv']:+.2f}")
    sp, cp = c["single_pick"], c["cv_pick"]
    print(f"champion, all {len(c['rows'])} configurations: the single split picks "
          f"{run_key(sp['config'], SEED)} at epoch {sp['single']['epoch']} (test F1 of that "
          f"model, which its study ships, {sp['single']['test_f1']:.3f}; of its last epoch "
          f"{sp['single']['last_test_f1']:.3f}; {len(c['rows']) * e} trial-epochs); "
          f"cross-validated picks {run_key(cp['config'], SEED)} (its shipped first-fold adapter "
          f"{cp['shipped_test_f1']:.3f}; single-split last epoch "
          f"{cp['single']['last_test_f1']:.3f}; {len(c['rows']) * e * k} fold-epochs); the "
          f"grid's best last epoch {c['best_test_f1']:.3f}")
    print(f"at equal compute ({len(c['rows']) * e} epochs): cross-validated over each of the "
          f"{c['subsets']} subsets of {c['subset_size']} configurations ships, on average, test "
          f"F1 {c['equal_compute_shipped_f1']:.3f} (single-split last epoch of its pick "
          f"{c['equal_compute_test_f1']:.3f}), against the single split's "
          f"{sp['single']['test_f1']:.3f} over all")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cv", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "unfair_tos")
    p.add_argument("--curves", type=Path, default=CURVES)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8],
                   help="the recording's configurations with these batch sizes")
    p.add_argument("--parallel", type=int, default=2, help="configurations trained at once")
    p.add_argument("--report", action="store_true", help="print the tables from OUT only")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    curves, meta = load_curves(args.curves)
    configs = [c for c in grid_configs(meta["grid"]) if c["batch_size"] in args.batch_sizes]
    if not configs:
        print(f"error: --batch-sizes: the recording's grid has none of {args.batch_sizes}",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = {run_key(c, SEED): args.out / f"{run_key(c, SEED)}_cv{args.folds}_e{args.epochs}.json"
            for c in configs}
    todo = [c for c in configs if not path[run_key(c, SEED)].is_file()]
    if todo and not args.report:
        data_dir = Path(tempfile.gettempdir()) / f"bench-cv-data-{meta['train_samples']}"
        data = prepare_data(args.data_dir, meta["train_samples"], SEED, data_dir)
        if data["train_rows"] != meta["train_rows"] or data["labels"] != meta["labels"]:
            print(f"error: {args.data_dir} gives other clauses than the recording's",
                  file=sys.stderr)
            return 2
        print(f"{len(todo)} of {len(configs)} configurations to train, {args.parallel} at once",
              flush=True)
        # spawn: each worker starts torch afresh, with the recording's one thread
        with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_config, meta["trial"], c, args.folds, args.epochs,
                                   str(data_dir)): run_key(c, SEED) for c in todo}
            for future in as_completed(futures):  # each kept as soon as it ends
                key, result = futures[future], future.result()
                tmp = path[key].with_suffix(".tmp")
                tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
                os.replace(tmp, path[key])
                by_epoch = "/".join(f"{h['val/f1']:.3f}" for h in result["history"])
                print(f"{key}: {result['seconds'] / 60:.1f} min, CV val/f1 by epoch {by_epoch}, "
                      f"shipped test F1 {result['shipped_test']['f1']:.3f}", flush=True)
    results = [json.loads(p.read_text()) for p in path.values() if p.is_file()]
    if len(results) < 2:
        print(f"error: {args.out} holds {len(results)} results; run without --report",
              file=sys.stderr)
        return 2
    report = compare(results, curves, meta)
    (args.out / f"report_cv{args.folds}_e{args.epochs}.json").write_text(
        json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
