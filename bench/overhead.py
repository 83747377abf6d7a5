"""Ray's overhead on a study: `python bench/overhead.py`.

    python bench/overhead.py --data-dir ../shared/data/unfair_tos --trials 3 --epochs 2

Runs a study of N trials one at a time (random search, no early stopping, so every trial
trains its full budget), then trains the very same configurations one after another with
`python -m trainable.train` (a fresh process each, as a user without Ray would). Reports the
study's wall time against the sum of its trials' own training time (as Ray measured it) and
against the sequential runs' wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tune.space import DEFAULT_SEARCHED

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "unfair_tos"))
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-overhead")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--data-dir", args.data_dir, "--epochs", str(args.epochs)]
    if args.max_train_samples:
        common += ["--max-train-samples", str(args.max_train_samples)]
    name = f"overhead-{int(time.time())}"

    started = time.time()
    study = subprocess.run(
        [sys.executable, str(REPO / "tune" / "run.py"), "--name", name, "--storage-path",
         str(args.out / "ray"), "--mlflow-uri", f"sqlite:///{args.out / 'mlflow.db'}",
         "--experiment", "bench-overhead", "--num-trials", str(args.trials),
         "--max-concurrent", "1", "--cpus-per-trial", str(args.threads), "--search", "random",
         "--scheduler", "none", *common], capture_output=True, text=True)
    study_wall = time.time() - started
    if study.returncode != 0:
        print(study.stdout[-2000:], study.stderr[-3000:], file=sys.stderr)
        return study.returncode

    trials = []
    for result_file in sorted((args.out / "ray" / name).glob("*/result.json")):
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        params = json.loads((result_file.parent / "params.json").read_text())
        trials.append((params, max(r["time_total_s"] for r in results)))
    trial_time = sum(t for _, t in trials)

    sequential_wall = 0.0
    for i, (params, _) in enumerate(trials):
        cmd = [sys.executable, "-m", "trainable.train", *common, "--threads", str(args.threads),
               "--output-dir", str(args.out / f"{name}-seq-{i}")]
        for key in DEFAULT_SEARCHED:
            cmd += [f"--{key.replace('_', '-')}", str(params[key])]
        started = time.time()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        sequential_wall += time.time() - started
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return run.returncode

    print(f"{len(trials)} trials x {args.epochs} epochs, one at a time, {args.threads} threads:")
    print(f"  study wall time             {study_wall:8.1f} s")
    print(f"  sum of trials' own time     {trial_time:8.1f} s   "
          f"(Ray overhead {100 * (study_wall - trial_time) / trial_time:5.1f}%)")
    print(f"  sequential trainable.train  {sequential_wall:8.1f} s   "
          f"(study / sequential {study_wall / sequential_wall:5.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
