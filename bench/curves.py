"""Record the learning curves of a grid of configurations once: `python -m bench.curves`.

    python -m bench.curves --data-dir ../shared/data/unfair_tos --parallel 2
    python -m bench.replay bench/curves                                  # then, seconds a study

A tabular benchmark (as LCBench, YAHPO Gym and Syne Tune's simulator backend do it): every
configuration of a small grid over the default search space (`tune.space`) trains through
the real trainable (`trainable.train.train`, no Ray) for all its epochs, and each epoch's
validation metrics, train loss, seconds and every validation and test clause's P(unfair)
are stored. `bench.replay` then replays many searches over the recording, so a search
strategy is judged over many seeds instead of one noisy run.

The training split is subsampled once, stratified (`trainable.data.subsample`, the same rows
a study with `--max-train-samples N` and the default seed trains on), and written to a
folder that every configuration reads, so a second training seed changes the initialisation,
dropout and batch order but not the clauses. Validation and test are the full splits.

One parquet file per run (configuration x seed) under `OUT/runs/`, written when the run
ends; a restarted recording skips the runs already there, and one asked for more seeds
(`--seeds 42 43 44 --seed-share 1`) adds only their runs. Each run trains in a fresh worker
process, `--parallel` of them at once (the committed 36 runs, 3 seeds of 12 configurations,
took 3 hours here two at a time, one per core, in two steps: 15 runs in 75 minutes, then 21
in 108). `OUT/meta.json`
holds the grid, the subsample's rows, the labels of the validation and test clauses, the
seeds and the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune.space import DEFAULT_SEARCHED

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "curves"
RUNS_DIR = "runs"
META = "meta.json"
# The searched fields of a recorded configuration: the default space's.
FIELDS = DEFAULT_SEARCHED
# The grid: lr on a log grid spanning the table's default range (1e-4 to 3e-3: the centres
# of three equal log bins), the two ends of the rank and batch-size choices, and max_length
# at the middle choice only: 1.2% of training clauses exceed 128 tokens, 11.5% exceed 64, so
# it moves the curves least, and this machine fits 12 configurations, not 24 (an epoch of
# 800 clauses plus predicting the 2,070 validation and test clauses takes minutes here).
GRID: dict[str, tuple[Any, ...]] = {
    "lr": (1.8e-4, 5.5e-4, 1.7e-3),
    "lora_rank": (4, 32),
    "max_length": (128,),
    "batch_size": (8, 32),
}
SEEDS = (42, 43)  # 42: TrialConfig's default seed (and the subsample's); 43 for a share
PROBA_DTYPE = np.float32

log = logging.getLogger("bench.curves")


# -- the grid ------------------------------------------------------------------------------------

def check_grid(grid: dict[str, Sequence[Any]]) -> dict[str, tuple[Any, ...]]:
    """The grid with each dimension checked against the search-space table: choices must be
    among the table's default choices, learning rates inside its default range."""
    from tune.space import BY_NAME, CHOICE

    checked = {}
    for name in FIELDS:
        values = tuple(sorted(grid[name]))
        dim = BY_NAME[name]
        if not values or len(set(values)) != len(values):
            raise ValueError(f"grid {name}: give distinct values (got {list(grid[name])})")
        if dim.kind == CHOICE:
            outside = [v for v in values if v not in dim.choices]
            if outside:
                raise ValueError(f"grid {name}: {outside} not among the table's choices "
                                 f"{list(dim.choices)}")
        elif not all(dim.low <= v <= dim.high for v in values):
            raise ValueError(f"grid {name}: {list(values)} outside {dim.low:g} to {dim.high:g}")
        checked[name] = tuple(dim.cast(v) for v in values)
    return checked


def grid_configs(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every configuration of the grid (its Cartesian product), in a fixed order."""
    import itertools

    names = list(FIELDS)
    return [dict(zip(names, values, strict=True))
            for values in itertools.product(*(grid[n] for n in names))]


def planned_runs(configs: list[dict[str, Any]], seeds: Sequence[int], share: float,
                 order_seed: int = 0, first: str = "lora_rank") -> list[tuple[dict[str, Any], int]]:
    """(configuration, seed) runs: every configuration with the first seed, then `share` of
    them, spread over the grid, with each further seed. Configurations come in a shuffled
    order, grouped by their value of `first` (in grid order), so that a partial recording
    holds whole sub-grids (first every configuration with the lowest rank) that
    `bench.replay --only` can replay."""
    rng = np.random.default_rng(order_seed)
    shuffled = [configs[i] for i in rng.permutation(len(configs))]
    values = sorted({c[first] for c in configs})
    order = sorted(shuffled, key=lambda c: values.index(c[first]))  # stable: shuffled within
    runs = [(c, seeds[0]) for c in order]
    if len(seeds) > 1:
        extra = shuffled[:math.ceil(share * len(configs))]
        extra = sorted(extra, key=lambda c: values.index(c[first]))
        for seed in seeds[1:]:
            runs += [(c, seed) for c in extra]
    return runs


def run_key(config: dict[str, Any], seed: int) -> str:
    """A run's file name stem: its configuration and seed."""
    return (f"lr{config['lr']:.1e}_r{config['lora_rank']}_len{config['max_length']}"
            f"_bs{config['batch_size']}_s{seed}")


# -- reading a recording -------------------------------------------------------------------------

def load_curves(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(one row per run and epoch, the recording's metadata) of a curves folder.

    Columns: the searched fields, `seed`, `epoch`, the reported metrics (`train/loss`,
    `val/f1`, `val/loss`, ...), `fit_seconds` (the epoch's training and validation),
    `eval_seconds` (the extra forward over validation and test), and `val_proba` /
    `test_proba` (P(unfair) per clause, in split order; labels are in the metadata).
    """
    folder = Path(folder)
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    files = sorted((folder / RUNS_DIR).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no recorded runs under {RUNS_DIR}/")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.sort_values([*FIELDS, "seed", "epoch"]).reset_index(drop=True), meta


def labels(meta: dict[str, Any], split: str) -> np.ndarray:
    """The 0/1 labels of a split's clauses, in the order of the stored probabilities."""
    return np.frombuffer(meta["labels"][split].encode("ascii"), dtype=np.uint8) - ord("0")


# -- data ----------------------------------------------------------------------------------------

def prepare_data(data_dir: Path, train_samples: int, seed: int, dest: Path) -> dict[str, Any]:
    """Write the stratified train subsample and the full validation and test splits to
    `dest` (parquet, as `trainable.data` reads them); return what the metadata records."""
    from trainable.data import find_split_file, read_split_file, subsample

    frames = {s: read_split_file(find_split_file(data_dir, s))
              for s in ("train", "validation", "test")}
    train = frames["train"].assign(row=range(len(frames["train"])))
    train = subsample(train, train_samples, seed)
    frames["train"] = train.drop(columns="row")
    dest.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        frame.to_parquet(dest / f"{split}.parquet", index=False)
    return {"train_rows": train["row"].tolist(),
            "train_unfair": int(frames["train"]["label"].sum()),
            "labels": {s: "".join(map(str, frames[s]["label"].tolist()))
                       for s in ("validation", "test")}}


# -- recording one run ---------------------------------------------------------------------------

def _probability_callback(cfg: Any, eval_batch_size: int = 64) -> Any:
    """A Lightning callback that keeps every validation clause's P(unfair) as the epoch's
    validation computes it, then predicts every test clause with the model as it stands (the
    epoch's adapter); it also times the epoch."""
    import lightning.pytorch as pl
    import torch

    from trainable import data, model

    tokenizer = model.load_tokenizer(cfg)
    frames = {s: data.read_split_file(data.find_split_file(Path(cfg.data), s))
              for s in ("validation", "test")}
    # Validation's order as `trainable.train` batches it (longest first), to put the logits
    # that its batches produce back in split order.
    val_order = list(data.make_loader(data.ClauseDataset(frames["validation"], tokenizer,
                                                         cfg.max_length), tokenizer, cfg,
                                      train=False).sampler)
    test_loader = data.make_loader(data.ClauseDataset(frames["test"], tokenizer, cfg.max_length),
                                   tokenizer, cfg.replace(batch_size=eval_batch_size), train=False)

    class ClauseProbabilities(pl.Callback):
        def __init__(self) -> None:
            self.epochs: dict[int, dict[str, Any]] = {}
            self.started = 0.0
            self.batches: list[tuple[Any, Any]] = []
            self.hook: Any = None

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            self.started = time.perf_counter()

        def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            self.batches = []

            def keep(module: Any, args: tuple[Any, ...], logits: Any) -> None:
                self.batches.append((logits.detach().float(), args[0]["labels"].detach()))

            self.hook = pl_module.register_forward_hook(keep)

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            self.hook.remove()
            logits = torch.cat([b[0] for b in self.batches])
            seen = torch.cat([b[1] for b in self.batches]).cpu().numpy()
            self.val_proba = _in_split_order(logits, seen, val_order,
                                             frames["validation"]["label"].to_numpy())

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            # Runs after this epoch's validation and before the epoch checkpoint (Lightning
            # calls checkpoint callbacks last), so fit_seconds is training plus validation.
            fit_seconds = time.perf_counter() - self.started
            started = time.perf_counter()
            was_training = pl_module.training
            pl_module.eval()
            # Iterating a DataLoader draws its base seed from torch's global generator: without
            # the fork, this extra pass would shift every later dropout mask, and the recorded
            # epochs after the first would not be the ones a real trial of the same seed trains.
            device = pl_module.device
            rng = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda"
                                        else [])
            try:
                logits, seen = [], []
                with rng, torch.inference_mode(), trainer.precision_plugin.forward_context():
                    for batch in test_loader:
                        batch = {k: v.to(pl_module.device) for k, v in batch.items()}
                        logits.append(pl_module(batch).float())
                        seen.append(batch["labels"])
                test_proba = _in_split_order(torch.cat(logits), torch.cat(seen).cpu().numpy(),
                                             list(test_loader.sampler),
                                             frames["test"]["label"].to_numpy())
            finally:
                pl_module.train(was_training)
            self.epochs[trainer.current_epoch + 1] = {
                "fit_seconds": fit_seconds, "eval_seconds": time.perf_counter() - started,
                "validation_proba": self.val_proba, "test_proba": test_proba}

    def _in_split_order(logits: Any, seen: np.ndarray, order: list[int],
                        expected: np.ndarray) -> np.ndarray:
        if len(order) != len(seen) or not np.array_equal(seen, expected[order]):
            raise RuntimeError("per-clause predictions are out of order with the split")
        probs = np.empty(len(order), dtype=PROBA_DTYPE)
        probs[order] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        return probs

    return ClauseProbabilities()


def record_run(base: Any, config: dict[str, Any], seed: int, work: Path) -> pd.DataFrame:
    """Train one configuration for all epochs through `trainable.train.train`; its rows."""
    from trainable.train import train

    cfg = base.replace(**config, seed=seed, output_dir=str(work))
    reported: dict[int, dict[str, float]] = {}

    def report(metrics: dict[str, float], folder: Path) -> None:
        reported[int(metrics["epoch"])] = dict(metrics)

    callback = _probability_callback(cfg)
    started = time.perf_counter()
    train(cfg, callbacks=[callback], report=report, progress=False)
    run_seconds = time.perf_counter() - started
    rows = []
    for epoch in sorted(reported):
        extra = callback.epochs[epoch]
        rows.append({**config, "seed": seed, **reported[epoch],
                     "epoch": epoch, "fit_seconds": extra["fit_seconds"],
                     "eval_seconds": extra["eval_seconds"], "run_seconds": run_seconds,
                     "val_proba": extra["validation_proba"], "test_proba": extra["test_proba"]})
    return pd.DataFrame(rows)


def _record_to_file(base: dict[str, Any], config: dict[str, Any], seed: int,
                    path: Path) -> pd.DataFrame:
    """Record one run and write its parquet file; runs in a worker process."""
    from trainable.cli import configure_logging
    from trainable.config import TrialConfig

    configure_logging(verbose=False)
    with tempfile.TemporaryDirectory(prefix="bench-curves-") as work:
        frame = record_run(TrialConfig.from_dict(base), config, seed, Path(work))
    _write_run(frame, path)
    return frame


def _write_run(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# -- command line --------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.curves",
                                description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "unfair_tos")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--model", default=None,
                   help="the Hugging Face encoder to record (default: the trial config's)")
    p.add_argument("--lrs", type=float, nargs="+", default=list(GRID["lr"]))
    p.add_argument("--lora-ranks", type=int, nargs="+", default=list(GRID["lora_rank"]))
    p.add_argument("--max-lengths", type=int, nargs="+", default=list(GRID["max_length"]))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(GRID["batch_size"]))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-samples", type=int, default=800)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                   help="training seeds: all configurations get the first; --seed-share of "
                        "them get the others too")
    p.add_argument("--seed-share", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; on this shared machine one thread trained 2.3x faster "
                        "than two (two threads wait on each other when either is descheduled)")
    p.add_argument("--limit", type=int, default=None, help="record at most N runs, then stop")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs recorded at once, each in its own process (2 on a quiet 2-core "
                        "machine: one thread each)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Record every planned run not recorded yet."""
    from trainable.cli import configure_logging
    from trainable.config import TrialConfig

    configure_logging(verbose=False)
    log.setLevel(logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    grid = check_grid({"lr": args.lrs, "lora_rank": args.lora_ranks,
                       "max_length": args.max_lengths, "batch_size": args.batch_sizes})
    runs = planned_runs(grid_configs(grid), args.seeds, args.seed_share)
    out, runs_dir = args.out, args.out / RUNS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.gettempdir()) / f"bench-curves-data-{args.train_samples}-{args.seeds[0]}"
    data_meta = prepare_data(args.data_dir, args.train_samples, args.seeds[0], data_dir)
    base = TrialConfig(data=str(data_dir), epochs=args.epochs, threads=args.threads,
                       eval_test=False)
    if args.model:
        base = base.replace(model=args.model)
    meta = {"grid": {k: list(v) for k, v in grid.items()}, "epochs": args.epochs,
            "seeds": list(args.seeds), "seed_share": args.seed_share,
            "runs": [run_key(c, s) for c, s in runs],
            "data": str(args.data_dir), "train_samples": args.train_samples,
            "subsample": f"trainable.data.subsample(train, {args.train_samples}, "
                         f"seed={args.seeds[0]}): stratified by label", **data_meta,
            "trial": {k: v for k, v in base.to_dict().items() if k not in ("data", "output_dir")},
            "command": "python -m bench.curves " + " ".join(argv)}
    previous = json.loads((out / META).read_text()) if (out / META).is_file() else None
    if previous is not None:
        same = ("grid", "epochs", "train_rows", "labels", "trial")
        changed = [k for k in same if previous.get(k) != meta[k]]
        if changed:
            print(f"error: {out} holds a recording with another {', '.join(changed)}; pass "
                  f"another --out", file=sys.stderr)
            return 2
        meta["started"] = previous.get("started")
        meta["commits"] = previous.get("commits", [])
    meta.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    meta["commits"] = sorted({*(meta.get("commits") or []), _git_commit() or "unknown"})
    (out / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    todo = [(c, s) for c, s in runs if not (runs_dir / f"{run_key(c, s)}.parquet").is_file()]
    log.info("%d runs planned, %d recorded, %d to go; %d epochs each, %d train clauses",
             len(runs), len(runs) - len(todo), len(todo), args.epochs, args.train_samples)
    started = time.time()
    todo = todo[:args.limit]
    # Each run in a fresh worker process (max_tasks_per_child=1): nothing a fit leaves in
    # memory carries over to the next, and --parallel runs train side by side, one torch
    # thread each (spawn: each worker starts torch afresh).
    with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = {pool.submit(_record_to_file, base.to_dict(), config, seed,
                               runs_dir / f"{run_key(config, seed)}.parquet"): (config, seed)
                   for config, seed in todo}
        for i, future in enumerate(as_completed(futures)):
            config, seed = futures[future]
            try:
                frame = future.result()
            except BaseException:
                for other in futures:  # the runs not started yet; finished ones are kept
                    other.cancel()
                raise
            done = time.time() - started
            last = frame.iloc[-1]
            log.info("[%d/%d] %s: %.0f s (epochs %s s, extra eval %.0f s); val/f1 %s; "
                     "%.0f min so far, about %.0f min to go", i + 1, len(todo),
                     run_key(config, seed), last["run_seconds"],
                     "/".join(f"{s:.0f}" for s in frame["fit_seconds"]),
                     frame["eval_seconds"].sum(), "/".join(f"{v:.3f}" for v in frame["val/f1"]),
                     done / 60, done / (i + 1) * (len(todo) - i - 1) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
