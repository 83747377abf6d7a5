"""Optuna + ASHA vs random search without early stopping: `python bench/search_efficiency.py`.

    python bench/search_efficiency.py --data-dir ../shared/data/unfair_tos --seeds 0 1 2

Both searches get the same number of trials, the same per-trial budget (epochs) and the same
data; each runs once per seed as a real study (`tune/run.py`, Ray in-process, MLflow sqlite
under --out). From Ray's results it rebuilds, in the order results arrived, the best
`val/f1` so far against cumulative trial-epochs; it plots the curves and reports, per seed,
the trial-epochs each search needed to come within 0.01 of the better final best, and the
ratio ASHA+Optuna / random.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trainable.config import OBJECTIVE
from tune.records import read_trials, report_time

REPO = Path(__file__).resolve().parents[1]
SEARCHES = {
    "optuna+asha": ["--search", "optuna", "--scheduler", "asha"],
    "random": ["--search", "random", "--scheduler", "none"],
}
TOLERANCE = 0.01


def curve(experiment: Path) -> list[tuple[int, float]]:
    """(cumulative trial-epochs, best objective so far) after each reported epoch, by arrival."""
    results = [r for record in read_trials(str(experiment), max_epochs=0)
               for r in record.results if OBJECTIVE.metric in r]
    results.sort(key=lambda r: report_time(r) or 0.0)
    best, out = None, []
    for i, r in enumerate(results, start=1):
        if OBJECTIVE.better(float(r[OBJECTIVE.metric]), best):
            best = float(r[OBJECTIVE.metric])
        out.append((i, best))
    return out


def epochs_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    """Trial-epochs spent when the best so far first reached `target`."""
    return next((n for n, best in points if best >= target - 1e-12), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "unfair_tos"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--max-train-samples", type=int, default=600)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-search")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="more tune/run.py flags for both searches")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {s: {} for s in SEARCHES}
    walls: dict[str, list[float]] = {s: [] for s in SEARCHES}
    for seed in args.seeds:
        for search, flags in SEARCHES.items():
            name = f"{search.replace('+', '-')}-seed{seed}"
            experiment = args.out / "ray" / name
            if not (experiment / "study.json").is_file():
                started = time.time()
                cmd = [sys.executable, str(REPO / "tune" / "run.py"), "--name", name,
                       "--storage-path", str(args.out / "ray"), "--mlflow-uri",
                       f"sqlite:///{args.out / 'mlflow.db'}", "--experiment", "bench-search",
                       "--data-dir", args.data_dir, "--num-trials", str(args.num_trials),
                       "--epochs", str(args.epochs), "--max-concurrent",
                       str(args.max_concurrent), "--max-train-samples",
                       str(args.max_train_samples), "--search-seed", str(seed),
                       "--startup-trials", "3", *flags, *args.extra]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                    return proc.returncode
                walls[search].append(time.time() - started)
            curves[search][seed] = curve(experiment)
            final = curves[search][seed][-1]
            print(f"seed {seed} {search:12s} trial-epochs {final[0]:3d} best val/f1 "
                  f"{final[1]:.4f}", flush=True)

    print(f"\n{args.num_trials} trials x {args.epochs} epochs max, {args.max_train_samples} "
          f"train clauses, tolerance {TOLERANCE}:")
    print(f"{'seed':>4s} {'target':>7s} " + " ".join(f"{s + ' epochs':>18s}" for s in SEARCHES)
          + f" {'ratio':>6s}")
    ratios = []
    for seed in args.seeds:
        target = max(curves[s][seed][-1][1] for s in SEARCHES) - TOLERANCE
        needed = {s: epochs_to_reach(curves[s][seed], target) for s in SEARCHES}
        a, r = needed["optuna+asha"], needed["random"]
        ratio = (a / r) if a and r else float("nan")
        ratios.append(ratio)
        print(f"{seed:4d} {target:7.4f} " + " ".join(f"{str(needed[s]):>18s}" for s in SEARCHES)
              + f" {ratio:6.2f}")
    finals = {s: [curves[s][seed][-1] for seed in args.seeds] for s in SEARCHES}
    for s in SEARCHES:
        print(f"{s:12s}: final best val/f1 median {statistics.median(f[1] for f in finals[s]):.4f},"
              f" trial-epochs median {statistics.median(f[0] for f in finals[s])}"
              + (f", wall median {statistics.median(walls[s]) / 60:.1f} min" if walls[s] else ""))
    valid = [r for r in ratios if r == r]
    if valid:
        print(f"compute ratio (optuna+asha / random) to reach the better best - {TOLERANCE}: "
              f"median {statistics.median(valid):.2f}")
    _plot(curves, args.out / "search_efficiency.png", args)
    print(f"plot: {args.out / 'search_efficiency.png'}")
    return 0


def _plot(curves: dict, path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"optuna+asha": "tab:blue", "random": "tab:orange"}
    for search, by_seed in curves.items():
        for i, (seed, points) in enumerate(sorted(by_seed.items())):
            xs, ys = zip(*points, strict=True)
            ax.step(xs, ys, where="post", color=colors[search], alpha=0.8,
                    linestyle=["-", "--", ":"][i % 3],
                    label=f"{search} (seed {seed})")
    ax.set_xlabel("cumulative trial-epochs")
    ax.set_ylabel("best val/f1 so far")
    ax.set_title(f"{args.num_trials} trials, up to {args.epochs} epochs each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
