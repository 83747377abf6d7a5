"""Memory-aware packing, measured: `python -m bench.packing`.

    python -m bench.packing --data-dir ../shared/data/unfair_tos --budget-gb 8 --cpus 4 --trials 8

1. The memory model against measured peaks: the probe a `--packing memory` study runs, then
   3 padded training steps at every corner of the default space (batch 8/32, 64/256 tokens,
   rank 4/32; `--batch-sizes` etc. for another) and its centre, each measured in one process
   as a reused trial process would.
2. The same study twice on a Ray node declaring `--budget-gb` of memory, random search with
   one seed (so the same configurations): with fixed shares, the node offers as many trial
   slots as the largest trial's predicted peak (+ margin) fits in the budget, since a fixed
   share must hold any trial; with memory packing it offers `--cpus` slots and each trial
   asks for its own predicted memory. Printed side by side: trials at once, memory they held
   at once (sum of measured peaks), wall time, failures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from trainable.config import PACKAGED_MODEL, TrialConfig
from trainable.memory import GIB, corner_configs
from tune.space import BY_NAME

REPO = Path(__file__).resolve().parents[1]
# The default space's size fields, each a study key (`batch_sizes`) and a flag.
SIZE_KEYS = {"batch_size": "batch_sizes", "max_length": "max_lengths", "lora_rank": "lora_ranks"}


def _corners_and_centre(base: TrialConfig, sizes: dict[str, list[int]]) -> list[TrialConfig]:
    lo = {k: min(v) for k, v in sizes.items()}
    hi = {k: max(v) for k, v in sizes.items()}
    corners = [base.replace(batch_size=b, max_length=n, lora_rank=r)
               for b in (lo["batch_size"], hi["batch_size"])
               for n in (lo["max_length"], hi["max_length"])
               for r in (lo["lora_rank"], hi["lora_rank"])]
    mid = {k: sorted(v)[len(v) // 2] for k, v in sizes.items()}
    return corners + [base.replace(**mid)]


def _probe_and_measure(base: TrialConfig, sizes: dict[str, list[int]]
                       ) -> tuple[Any, list[tuple[TrialConfig, int]], float]:
    """In one fresh process (a Ray worker): the probe, then every corner and the centre."""
    from trainable.memory import measure, probe

    started = time.time()
    calibration = probe(corner_configs(base, sizes))
    seconds = time.time() - started
    return (calibration, [(c, measure(c, steps=3).rss) for c in _corners_and_centre(base, sizes)],
            seconds)


def _study(packing: str, base: TrialConfig, args: argparse.Namespace, cpus: int,
           sizes: dict[str, list[int]]) -> Any:
    import ray

    from tune.driver import run_study
    from tune.study import StudyConfig

    study = StudyConfig(name=f"packing-{packing}-{int(time.time())}", num_trials=args.trials,
                        max_concurrent=args.trials, packing=packing, search="random",
                        search_seed=args.seed, scheduler="none",
                        storage_path=str(args.out / "ray"),
                        mlflow_uri=f"sqlite:///{(args.out / 'mlflow.db').resolve()}",
                        experiment="bench-packing").replace(
        **{SIZE_KEYS[k]: v for k, v in sizes.items()})
    ray.init(num_cpus=cpus, _memory=int(args.budget_gb * GIB), include_dashboard=False,
             object_store_memory=200 * 1024**2)
    return run_study(study, base)  # ends with ray.shutdown()


def _mean_at_once(records: list[Any]) -> float:
    """Trials running at once on average while any ran: their summed time over the span."""
    spans = [span for r in records if (span := r.span) is not None]
    if not spans:
        return 0.0
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    return sum(e - s for s, e in spans) / span if span > 0 else float(len(spans))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "unfair_tos"))
    p.add_argument("--model", default=PACKAGED_MODEL)
    p.add_argument("--budget-gb", type=float, default=8.0, help="the node's declared memory")
    p.add_argument("--cpus", type=int, default=4, help="the node's CPUs (trial slots)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-samples", type=int, default=64)
    p.add_argument("--max-eval-samples", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-packing")
    for name, key in SIZE_KEYS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, nargs="+",
                       default=list(BY_NAME[name].choices), help="default: the default space's")
    args = p.parse_args()
    sizes = {name: getattr(args, key) for name, key in SIZE_KEYS.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    import ray

    from tune.packing import MARGIN, overlap
    from tune.records import COMPLETED, FAILED

    base = TrialConfig(model=args.model, data=str(Path(args.data_dir).resolve()), epochs=1,
                       threads=1,
                       max_train_samples=args.max_train_samples,
                       max_eval_samples=args.max_eval_samples)

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=200 * 1024**2)
    task = ray.remote(max_calls=1, max_retries=0)(_probe_and_measure)
    calibration, measured, probe_s = ray.get(task.remote(base, sizes))
    ray.shutdown()
    print(f"\n1. memory model (probe: {len(calibration.probes)} configurations, 3 steps each, "
          f"plus the smallest again: {probe_s:.0f} s)")
    print(f"   fixed {calibration.rss.coefficients[0] / GIB:.3f} GiB, "
          f"{calibration.rss.coefficients[1]:.1f} B per token x layer x hidden, "
          f"{calibration.rss.coefficients[2]:.2f} B per attention score")
    print("   batch  tokens  rank  predicted GiB  measured GiB  error")
    errors = []
    for cfg, rss in measured:
        predicted = calibration.rss.predict(cfg)
        errors.append(predicted / rss - 1)
        print(f"   {cfg.batch_size:5d}  {cfg.max_length:6d}  {cfg.lora_rank:4d}  "
              f"{predicted / GIB:13.3f}  {rss / GIB:12.3f}  {errors[-1]:+6.1%}")
    print(f"   worst error {max(errors, key=abs):+.1%}, mean |error| "
          f"{sum(map(abs, errors)) / len(errors):.1%}")

    largest = corner_configs(base, sizes)[-1]
    share = calibration.rss.predict(largest) * (1 + MARGIN)
    slots = max(1, math.floor(args.budget_gb * GIB / share))
    print(f"\n2. a node of {args.budget_gb:g} GiB: a fixed share holds the largest trial's "
          f"{share / GIB:.2f} GiB, so {slots} slot(s); memory packing: {args.cpus} slots")
    fixed = _study("fixed", base, args, cpus=slots, sizes=sizes)
    packed = _study("memory", base, args, cpus=args.cpus, sizes=sizes)
    rows = []
    for label, summary in (("fixed shares", fixed), ("memory packing", packed)):
        at_once, held = overlap(summary.records)
        failed = sum(r.state == FAILED for r in summary.records)
        done = sum(r.state == COMPLETED for r in summary.records)
        rows.append((label, at_once, _mean_at_once(summary.records), held, summary.seconds,
                     done, failed, summary.retried))
    print("\n   packing         trials at once (mean)  held GiB (budget)  wall s  completed  "
          "failed  retried")
    for label, at_once, mean, held, wall, done, failed, retried in rows:
        print(f"   {label:14s}  {at_once:14d} ({mean:4.2f})  {held:8.2f} ({args.budget_gb:g})  "
              f"{wall:6.0f}  {done:9d}  {failed:6d}  {retried:7d}")
    print(f"   trials at once: {rows[1][1] / max(1, rows[0][1]):.2f}x those of fixed shares "
          f"(mean {rows[1][2] / max(1e-9, rows[0][2]):.2f}x); wall time {rows[0][4] / rows[1][4]:.2f}x "
          f"as fast (memory packing's includes its probe)")
    if packed.memory:
        worst = max(packed.memory, key=lambda m: abs(m.error))
        print(f"   memory packing's trials, predicted (batches padded to max_length) vs measured "
              f"peak RSS (batches padded to their longest clause): worst "
              f"{worst.error:+.1%}, mean |error| "
              f"{sum(abs(m.error) for m in packed.memory) / len(packed.memory):.1%}")
    same = {tuple(sorted(r.sampled.items())) for r in fixed.records} == {
        tuple(sorted(r.sampled.items())) for r in packed.records}
    print(f"   same configurations in both: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
