"""A Ray Tune study whose trials share one reused process and log its memory after each.

    python tests/integration/reused_process_study.py --model DIR --data demo --out rss.jsonl

Trials run as the driver runs them (`tune.trial.run_trial` as a function trainable with
`reuse_actors=True`, one at a time, a different configuration each), wrapped so that each
appends {"sampled", "pid", "rss_mb"} to `--out` once `run_trial` has returned. Run by
tests/integration/test_memory.py in its own interpreter: Ray pickles the wrapper below by
value, so the trial process needs nothing from the tests package.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    """This process's resident memory, in MB."""
    from trainable.memory import status_bytes

    rss = status_bytes("VmRSS")
    if rss is None:
        raise RuntimeError("no VmRSS in /proc/self/status")
    return rss / 1024**2


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="demo")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--storage", required=True)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()

    import ray
    from ray import tune

    from trainable.config import OBJECTIVE, TrialConfig
    from tune.trial import run_trial

    base = TrialConfig(model=args.model, data=args.data, epochs=1, max_train_samples=48,
                       max_eval_samples=16, lr=1e-3)
    # A study's trials differ in shapes (rank, tokens, batch): the allocator sees a new mix
    # of block sizes every trial, as it does in a real study.
    grid = itertools.cycle(itertools.product((4, 8), (64, 128), (8, 16)))
    configs = [dict(zip(("lora_rank", "max_length", "batch_size"), next(grid), strict=True))
               for _ in range(args.trials)]
    out = str(args.out.resolve())  # trials run in folders of their own

    def measured_trial(config: dict[str, Any], base: TrialConfig) -> None:
        try:
            run_trial(config["sampled"], base)
        finally:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps({"sampled": config["sampled"], "pid": os.getpid(),
                                    "rss_mb": round(rss_mb(), 1)}) + "\n")

    # "local": a cluster of its own, never one that `ray start` left on this machine.
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(measured_trial, base=base), {"cpu": 1}),
            param_space={"sampled": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(metric=OBJECTIVE.metric, mode=OBJECTIVE.mode,
                                        max_concurrent_trials=1, reuse_actors=True),
            run_config=tune.RunConfig(name="memory", storage_path=args.storage, verbose=0),
        )
        results = tuner.fit()
        if results.errors:
            raise SystemExit(f"{len(results.errors)} trial(s) failed: {results.errors[0]}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
