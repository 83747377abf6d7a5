"""Wall time of a small study on a local multi-node Ray cluster and in a Ray of its own.

    python bench/multinode.py                          # 4 trials x 2 epochs, 2 at a time
    python bench/multinode.py --trials 2 --epochs 1 --json runs/multinode.json

Starts an MLflow server and a head (no trials) plus two worker raylets on this machine with
`ray start` (tests/localcluster.py: free ports, its own token, ends only its own processes).
Runs the study of tests/integration/test_cluster.py (tiny BERT with a briefly trained
encoder, the demo set) on that cluster (`--address`, trials need `fake_gpu` and half a
pretend GPU), stops the cluster, then runs the same study in a Ray the driver starts itself,
so the two never compete for the CPUs. Prints both wall times side by side, and the
cluster's start-up, paid once and not counted in the multi-node figure. On one machine the
cluster cannot be faster: the difference is what scheduling across raylets costs.

The helpers come from tests/ (the cluster, the tiny model, the study flags) so that this
measures the very study the placement tests run; pytest must be installed (`.[dev]`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-multinode")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args()

    sys.path.insert(0, str(REPO))  # `tests` is a folder of the repository, not installed
    from tests.conftest import MlflowServer, save_tiny_model
    from tests.localcluster import TRIAL_RESOURCE, LocalCluster

    work = args.out / time.strftime("%Y%m%d-%H%M%S")
    model = save_tiny_model(work / "model", warm=True)
    study = {"num_trials": args.trials, "max_concurrent": args.max_concurrent,
             "epochs": args.epochs, "search_seed": 0}
    server = MlflowServer(work / "mlflow").start()
    rows = []
    try:
        cluster = LocalCluster()
        try:
            cluster.start()
            # The driver finds the token file but no RAY_AUTH_MODE, as in the placement test.
            rows.append(_study("multi-node", model, work, server.uri, study,
                               env={"RAY_AUTH_TOKEN_PATH": str(cluster.token_path)},
                               address=cluster.address, trial_resource=TRIAL_RESOURCE,
                               gpus_per_trial=0.5))
        finally:
            cluster.stop()
        rows.append(_study("single-node", model, work, server.uri, study, gpus_per_trial=0))
    finally:
        server.stop()

    print(f"\n{args.trials} trials x {args.epochs} epochs, {args.max_concurrent} at a time, "
          f"tiny BERT on the demo set")
    print(f"{'study':<12} {'wall s':>8} {'driver min':>11} {'trials':>7}")
    for row in rows:
        minutes = "-" if row["driver_min"] is None else f"{row['driver_min']:.1f}"
        print(f"{row['study']:<12} {row['wall_s']:>8.1f} {minutes:>11} {row['trials']:>7}")
    print(f"cluster start-up: {cluster.start_s:.1f} s, once (not in the multi-node wall time)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"study": study, "studies": rows,
                                         "cluster_start_s": cluster.start_s}, indent=2) + "\n")
    return 0


def _study(name: str, model: Path, work: Path, uri: str, study: dict,
           env: dict[str, str] | None = None, **flags: object) -> dict:
    """Run one study to its end; its wall time, the driver's own figure and its trial count."""
    from tests.conftest import run_study_cli, study_runs, tiny_study_args

    folder = work / name
    folder.mkdir(parents=True)
    experiment = f"bench-{name}"
    started = time.perf_counter()
    proc = run_study_cli(*tiny_study_args(model, folder / "runs", uri, name, experiment,
                                          **(study | flags)), cwd=folder, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"study {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-4000:]}")
    _, _, trials = study_runs(uri, experiment, name)
    if len(trials) != study["num_trials"]:  # else the two figures time different work
        raise SystemExit(f"study {name}: {len(trials)} trial runs in MLflow, expected "
                         f"{study['num_trials']}")
    minutes = re.search(r"in ([0-9.]+) min", proc.stdout)
    return {"study": name, "wall_s": round(wall, 1), "trials": len(trials),
            "driver_min": float(minutes.group(1)) if minutes else None}


if __name__ == "__main__":
    sys.exit(main())
