"""A small synthetic recording in `bench.curves`' format, for the replay's tests.

Each configuration has a hidden quality; its predicted P(unfair) separates the classes more
with quality and epoch, plus noise, so the signals and the test F1 behave like a (tidy)
real recording. The reported val/f1 and val/loss are computed from the same probabilities,
as the trial's own logging computes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GRID = {"lr": (3e-4, 1e-3), "lora_rank": (4, 32), "max_length": (64,), "batch_size": (8, 32)}


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    pred = p > 0.5
    tp = float(np.sum(pred & (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + float(np.sum(pred != (y == 1))))


def write_recording(folder: Path, grid: dict[str, tuple[Any, ...]] = GRID, epochs: int = 3,
                    seeds: tuple[int, ...] = (42, 43), n_val: int = 60, n_test: int = 90,
                    rng_seed: int = 0) -> Path:
    """Write meta.json and runs/*.parquet under `folder`; every configuration gets the first
    seed, the first two configurations every seed. Returns `folder`."""
    from bench.curves import FIELDS, RUNS_DIR, grid_configs, run_key

    rng = np.random.default_rng(rng_seed)
    y = {"validation": (rng.random(n_val) < 0.2).astype(int),
         "test": (rng.random(n_test) < 0.2).astype(int)}
    y["validation"][:2], y["test"][:2] = 1, 1
    folder = Path(folder)
    (folder / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    configs = grid_configs(grid)
    for i, config in enumerate(configs):
        quality = 0.5 + rng.random() * 2.5
        for seed in seeds if i < 2 else seeds[:1]:
            noise = np.random.default_rng([rng_seed, i, seed])
            rows = []
            for epoch in range(1, epochs + 1):
                probs = {}
                for split, labels in y.items():
                    margin = quality * epoch / epochs * (2 * labels - 1)
                    logit = margin + noise.normal(0, 1.0, len(labels)) - 0.5
                    probs[split] = (1 / (1 + np.exp(-logit))).astype(np.float32)
                pv, yv = probs["validation"].astype(float), y["validation"]
                loss = float(-np.mean(yv * np.log(pv) + (1 - yv) * np.log(1 - pv)))
                rows.append({**config, "seed": seed, "epoch": epoch,
                             "train/loss": 1.0 / (epoch * quality), "val/loss": loss,
                             "val/f1": _f1(yv, pv), "fit_seconds": 10.0, "eval_seconds": 2.0,
                             "run_seconds": 12.0 * epochs, "val_proba": probs["validation"],
                             "test_proba": probs["test"]})
            pd.DataFrame(rows).to_parquet(folder / RUNS_DIR / f"{run_key(config, seed)}.parquet",
                                          index=False)
    meta = {"grid": {k: list(grid[k]) for k in FIELDS}, "epochs": epochs, "seeds": list(seeds),
            "labels": {s: "".join(map(str, v.tolist())) for s, v in y.items()},
            "command": "tests/synthetic_curves.py"}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder
