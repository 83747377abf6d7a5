"""The driver at scale: `python -m bench.scale` runs 100, 300 and 1,000 replayed trials.

    python -m bench.scale bench/curves --trials 100 300 1000

Each size is one real study of `tune.driver.run_study` (Optuna TPE with its sqlite storage,
ASHA, Ray Tune, the live MLflow mirror and the end-of-study catch-up, the progress lines)
whose trials, instead of training, report the recorded learning curve of the sampled grid
configuration (`bench.replay.replay_trial`), into a real MLflow server with a sqlite
backend that the bench starts. Each size runs in a fresh process with its own Ray runtime
and MLflow server, so its peak memory and database are its own.

Per size: results reported; driver CPU seconds per result (the driver process's CPU time
over the whole `run_study`, fixed costs included, and the marginal cost between sizes);
results per second sustained (first to last result); the mirror's lag (seconds from the
last result until `run_study` returned with MLflow holding every epoch of every trial,
checked afterwards run by run); driver peak RSS; MLflow database size; and the wall time of
`python -m analysis.compare` and `python -m tune.sync` run on the finished study as a user
runs them.

Anchor: Ray's published Tune scalability benchmark ran 10,000 one-second trials on 16 CPUs
in 715 s against 625 s ideal (about 14% overhead) and notes 50-100 results per second with
logging on.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZES = (100, 300, 1000)


def run_size(trials: int, curves_dir: Path, root: Path, concurrent: int) -> dict[str, Any]:
    """One study of `trials` replayed trials; its figures."""
    import contextlib

    from bench.curves import load_curves
    from bench.replay import build_curves, grid_space, replay_trial
    from tests.conftest import MlflowServer
    from trainable.config import OBJECTIVE, TrialConfig
    from tune.driver import run_study
    from tune.records import report_time
    from tune.study import StudyConfig

    curves = build_curves(*load_curves(curves_dir))
    server = MlflowServer(root / "mlflow").start()
    try:
        name = f"scale-{trials}"
        storage = root / "ray"
        study = StudyConfig(
            name=name, num_trials=trials, max_concurrent=concurrent,
            cpus_per_trial=(os.cpu_count() or 2) / concurrent, searched=tuple(curves.grid),
            space=grid_space(curves, snap_lr=True), storage_path=str(storage), mlflow_uri=server.uri,
            experiment=f"bench-scale-{trials}", max_failures=0)
        # lr sampled from the table's log range and replayed at the nearest grid value (a
        # study file holds lr as a range). The replayed trials read no data; the driver's
        # input check loads the demo set.
        base = TrialConfig(epochs=curves.epochs, data="demo")
        trial_fn = functools.partial(replay_trial, curves=str(curves_dir.resolve()))
        cpu, wall = time.process_time(), time.time()
        with open(root / "progress.log", "w") as out, contextlib.redirect_stdout(out):
            summary = run_study(study, base, trial_fn=trial_fn)
        returned = time.time()
        cpu = time.process_time() - cpu
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stamps = sorted(t for rec in summary.records for r in rec.results
                        if (t := report_time(r)) is not None)
        results = len(stamps)
        held = _mlflow_epochs(server.uri, study.experiment, name, OBJECTIVE.metric)
        expected = {rec.trial_id: rec.epochs for rec in summary.records}
        compare_s = _timed([sys.executable, "-m", "analysis.compare", name, "--mlflow-uri",
                            server.uri, "--experiment", study.experiment, "--out",
                            str(root / "analysis")])
        sync_s = _timed([sys.executable, "-m", "tune.sync", "--name", name, "--storage-path",
                         str(storage), "--mlflow-uri", server.uri])
        return {
            "trials": trials, "results": results, "completed": summary.counts.get("completed"),
            "stopped": summary.counts.get("stopped_early"),
            "wall_s": round(returned - wall, 1), "driver_cpu_s": round(cpu, 1),
            "cpu_per_result_s": round(cpu / results, 4),
            "results_per_s": round((results - 1) / max(stamps[-1] - stamps[0], 1e-9), 2),
            "mirror_lag_s": round(returned - stamps[-1], 1),
            "mlflow_complete": held == expected, "mlflow_runs": len(held),
            "driver_peak_mb": round(peak_mb), "mlflow_db_mb": round(
                (root / "mlflow" / "mlflow.db").stat().st_size / 2**20, 1),
            "compare_s": compare_s, "sync_s": sync_s, "concurrent": concurrent}
    finally:
        server.stop()


def _mlflow_epochs(uri: str, experiment: str, study: str, metric: str) -> dict[str, int]:
    """Per trial id, the epochs of `metric` MLflow holds for the study's trial runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    held: dict[str, int] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                                  filter_string=f"tags.study = '{study}' and "
                                                f"tags.run_type = 'trial'")
        for run in page:
            steps = {m.step for m in client.get_metric_history(run.info.run_id, metric)}
            held[run.data.tags["trial_id"]] = len(steps)
        token = page.token
        if not token:
            return held


def _timed(argv: list[str]) -> float:
    """Wall seconds of a command that must succeed."""
    started = time.time()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("MLFLOW_")})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:4])} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-500:]}")
    return round(time.time() - started, 1)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The figures side by side, with growth against the smallest size."""
    first = rows[0]
    lines = ["| trials | results | wall s | driver CPU s | CPU s/result | marginal CPU s/result "
             "| results/s | mirror lag s | MLflow complete | driver peak MB | MLflow DB MB "
             "| compare s | sync s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    previous = None
    for r in rows:
        marginal = "-" if previous is None else f"{(r['driver_cpu_s'] - previous['driver_cpu_s']) / max(r['results'] - previous['results'], 1):.4f}"
        lines.append(
            f"| {r['trials']} | {r['results']} | {r['wall_s']} | {r['driver_cpu_s']} | "
            f"{r['cpu_per_result_s']:.4f} | {marginal} | {r['results_per_s']} | "
            f"{r['mirror_lag_s']} | {'yes' if r['mlflow_complete'] else 'NO'} "
            f"({r['mlflow_runs']} runs) | {r['driver_peak_mb']} | {r['mlflow_db_mb']} | "
            f"{r['compare_s']} | {r['sync_s']} |")
        previous = r
    last = rows[-1]
    if len(rows) > 1:
        k = last["trials"] / first["trials"]
        lines += ["", f"growth {first['trials']} -> {last['trials']} trials ({k:.0f}x): "
                  f"results {last['results'] / first['results']:.1f}x, wall "
                  f"{last['wall_s'] / first['wall_s']:.1f}x, driver CPU "
                  f"{last['driver_cpu_s'] / first['driver_cpu_s']:.1f}x, MLflow DB "
                  f"{last['mlflow_db_mb'] / first['mlflow_db_mb']:.1f}x, compare "
                  f"{last['compare_s'] / first['compare_s']:.1f}x, sync "
                  f"{last['sync_s'] / first['sync_s']:.1f}x"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("curves", type=Path, nargs="?", default=REPO / "bench" / "curves",
                   help="a folder written by `python -m bench.curves`")
    p.add_argument("--trials", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--max-concurrent", type=int, default=4)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:  # the child: one size, figures as JSON on the last line
        print(json.dumps(run_size(args.one, args.curves, args.root, args.max_concurrent)))
        return 0
    rows = []
    for trials in args.trials:
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{trials}-") as root:
            done = subprocess.run(
                [sys.executable, "-m", "bench.scale", str(args.curves), "--one", str(trials),
                 "--root", root, "--max-concurrent", str(args.max_concurrent)],
                cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
