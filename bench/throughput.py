"""Training throughput of one trial's step, variants side by side: `python bench/throughput.py`.

    python bench/throughput.py --data-dir ../shared/data/unfair_tos --steps 40 --rounds 3

Each (round, variant) runs in a fresh process (so peak memory is the variant's own), in
interleaved order, and the table reports medians over rounds and ratios to the first
variant. Tokens/s counts real (non-padding) tokens, the work a user cares about; padded
tokens/s is what the model actually computed. Steps are forward + backward + AdamW under
the same autocast Lightning uses; the first 5 steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    # name: trial-config changes from the default trial (4-bit NF4, bf16 autocast, batch 16,
    # max_length 128, per-batch padding with length-grouped batches)
    "qlora-4bit-grouped": {},
    "qlora-4bit-pad-max": {"pad_to_max_length": True, "group_by_length": False},
    "qlora-4bit-padded-shuffled": {"group_by_length": False},
    "lora-fp32": {"quantization": "none", "precision": "32-true"},
    "lora-bf16-mixed": {"quantization": "none", "precision": "bf16-mixed"},
}
WARMUP = 5


def worker(variant: str, data_dir: str, steps: int, threads: int) -> dict:
    """Time `steps` training steps of `variant`; return the figures as a dict."""
    import resource

    import torch

    from trainable import data, model
    from trainable.config import TrialConfig
    from trainable.module import ClauseClassifier

    torch.set_num_threads(threads)
    cfg = TrialConfig(data=data_dir, **VARIANTS[variant])
    device = model.resolve_device(cfg)
    precision = model.resolve_precision(cfg, device)
    tokenizer = model.load_tokenizer(cfg)
    splits = data.load_splits(cfg, with_test=False)
    loader = data.make_loader(data.ClauseDataset(splits.train, tokenizer, cfg.max_length),
                              tokenizer, cfg, train=True)
    torch.manual_seed(cfg.seed)
    module = ClauseClassifier(model.build_model(cfg, device, precision), cfg,
                              data.class_weights(splits.train["label"], cfg.class_weighting))
    module.to(device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr)
    dtype = model.compute_dtype(precision)
    batches = iter(loader)
    tokens = padded = 0
    started = None
    for step in range(WARMUP + steps):
        if step == WARMUP:
            started = time.perf_counter()
            tokens = padded = 0
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            logits = module(batch).float()
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"],
                                                 weight=module.class_weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "steps": steps, "seconds": seconds, "tokens": tokens,
            "padded_tokens": padded, "tokens_per_s": tokens / seconds,
            "padded_tokens_per_s": padded / seconds, "step_s": seconds / steps,
            "peak_rss_mb": peak_mb}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                             "data" / "unfair_tos"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data_dir, args.steps, args.threads)))
        return 0
    rows: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for variant in args.variants:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", variant, "--data-dir", args.data_dir,
                 "--steps", str(args.steps), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
                env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows[variant].append(result)
            print(f"round {r + 1} {variant:28s} {result['tokens_per_s']:8.0f} tok/s "
                  f"{result['step_s']:.3f} s/step {result['peak_rss_mb']:.0f} MB", flush=True)
    base = statistics.median(x["tokens_per_s"] for x in rows[args.variants[0]])
    print(f"\nmedians over {args.rounds} rounds, {args.steps} timed steps each, "
          f"{args.threads} thread(s), batch 16, max_length 128:")
    print(f"{'variant':28s} {'tokens/s':>9s} {'padded tok/s':>12s} {'s/step':>7s} "
          f"{'peak RSS MB':>11s} {'vs first':>8s}")
    for variant, results in rows.items():
        tps = statistics.median(x["tokens_per_s"] for x in results)
        print(f"{variant:28s} {tps:9.0f} "
              f"{statistics.median(x['padded_tokens_per_s'] for x in results):12.0f} "
              f"{statistics.median(x['step_s'] for x in results):7.3f} "
              f"{statistics.median(x['peak_rss_mb'] for x in results):11.0f} {tps / base:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
