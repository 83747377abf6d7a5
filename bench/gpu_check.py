"""GPU check: two 4-bit QLoRA trials sharing one GPU, side by side: `python bench/gpu_check.py`.

    python bench/gpu_check.py --prepare          # here, with the project installed: fills .gpucheck/
    bash bench/gpu_check.sh                      # on the GPU machine (no internet), < 5 min

What "two trials at 0.5 GPU each" means to the GPU: two trial processes on one device at
once. This runs exactly that with `python -m trainable.train` (4-bit NF4 via bitsandbytes,
bf16, LoRA) and reports, per trial, samples/s, peak GPU memory (nvidia-smi, per process) and
validation F1, plus the GPU's utilization over the run. With Ray importable there it also
runs the same pair as a Ray Tune study with `--gpus-per-trial 0.5` (Ray's wheel, 79 MB, is
over what one device call can carry, so it runs only where Ray is installed).

The model is a BERT-base-sized encoder (12 layers, hidden 768: roberta-base's shape) with
random weights, built on the spot with the packaged MiniLM's tokenizer, since a 440 MB
checkpoint cannot travel either; speed and memory depend on the shape, not the weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpucheck"


def prepare() -> None:
    """Fill .gpucheck/ with what the GPU machine lacks: the tokenizer and bitsandbytes."""
    from trainable.config import PACKAGED_MODEL
    from trainable.model import resolve_model

    tok = CARRY / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    src = Path(resolve_model(PACKAGED_MODEL))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(src / name, tok / name)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    "--platform", "manylinux_2_24_x86_64", "-d", str(CARRY / "wheels"),
                    "bitsandbytes==0.50.2"], check=True)
    print(f"prepared {CARRY}: carry it to the GPU machine (git-excluded, about 45 MB)")


def build_model(folder: Path) -> Path:
    """A random BERT-base-shaped classifier saved with the carried tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(CARRY / "tokenizer")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072, num_labels=2,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


class GpuSampler(threading.Thread):
    """Samples utilization and per-process memory with nvidia-smi every half second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.util: list[float] = []
        self.memory: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                util = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                       "--format=csv,noheader,nounits"], capture_output=True,
                                      text=True, timeout=5).stdout.split()
                self.util += [float(u) for u in util[:1]]
                apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                       "--format=csv,noheader,nounits"], capture_output=True,
                                      text=True, timeout=5).stdout
                for line in apps.strip().splitlines():
                    pid, mib = (x.strip() for x in line.split(","))
                    self.memory[int(pid)] = max(self.memory.get(int(pid), 0.0), float(mib))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)


def run_pair(model: Path, out: Path, epochs: int, accelerator: str) -> dict:
    """Two trials at once on one device; their figures and the GPU's."""
    sampler = GpuSampler()
    sampler.start()
    started = time.time()
    procs = []
    for i, (lr, bs) in enumerate([(1e-3, 16), (5e-4, 32)]):
        cmd = [sys.executable, "-m", "trainable.train", "--model", str(model), "--data", "demo",
               "--quantization", "4bit", "--accelerator", accelerator, "--epochs", str(epochs),
               "--lr", str(lr), "--batch-size", str(bs), "--max-length", "128",
               "--output-dir", str(out / f"trial-{i}")]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate()[0] for p in procs]
    wall = time.time() - started
    sampler.stop.set()
    sampler.join(timeout=5)
    trials = []
    for i, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        if proc.returncode != 0:
            raise SystemExit(f"trial {i} failed:\n{log[-3000:]}")
        metrics = json.loads((out / f"trial-{i}" / "metrics.json").read_text())
        train_rows = 240  # the demo set's train split
        trials.append({"trial": i, "seconds": metrics["seconds"],
                       "samples_per_s": round(train_rows * epochs / metrics["seconds"], 1),
                       "gpu_memory_mib": sampler.memory.get(proc.pid),
                       "best_val_f1": round(metrics["metrics"]["val/f1"], 4)})
    util = sampler.util
    return {"wall_s": round(wall, 1), "trials": trials,
            "gpu_util_mean": round(sum(util) / len(util), 1) if util else None,
            "gpu_util_max": max(util) if util else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prepare", action="store_true", help="fill .gpucheck/ here, then stop")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accelerator", default="cuda", help="cpu only to dry-run the plumbing")
    p.add_argument("--out", type=Path, default=Path("/tmp/gpucheck"))
    args = p.parse_args()
    if args.prepare:
        prepare()
        return 0
    import torch

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
    shutil.rmtree(args.out, ignore_errors=True)
    model = build_model(args.out / "bert-base-random")
    result = run_pair(model, args.out, args.epochs, args.accelerator)
    print(json.dumps(result, indent=2))
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
