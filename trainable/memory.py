"""A trial's peak memory, predicted from its config and calibrated by a short probe.

The model (per process, peak resident memory on CPU; peak allocated memory on CUDA):

    peak = fixed + per_activation x micro_batch x max_length x layers x hidden
                 + per_score x micro_batch x max_length^2 x layers x heads

`fixed` is the process, the libraries and the (quantized) weights; the second term is the
activations kept for the backward pass, which grow with every token of the batch; the third
is the attention scores, which grow with the square of the sequence. LoRA's own state (rank x
(in + out) weights per adapted layer, their gradients and AdamW moments) is under 1% of the
peak at the ranks searched here, so it has no term of its own: the probe runs the largest rank
at the largest batch, which puts it in the fit. The coefficients are fit (non-negative least
squares) to a few training steps at the smallest and largest configurations of a study's
space, each padded to its max_length, on the node type that will run the trials: the peak of
a trial, whose batches are padded per batch, is at most that of its longest batch.

No Ray here: `tune.packing` runs the probe on a node and turns predictions into resources.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trainable.config import TrialConfig
from trainable.errors import UserError

GIB = 1024**3
# A metric of each epoch of a single-process trial on Linux: the peak resident memory of its
# process so far in GiB (what `--packing memory` predicts; the study reports the error).
PEAK_RSS = "train/peak_rss_gib"
PROBE_STEPS = 3  # training steps per probe: the peak is reached in the first backward pass


@dataclass(frozen=True)
class Architecture:
    """What the memory model reads from a model's config."""

    layers: int
    hidden: int
    heads: int

    @classmethod
    def of(cls, model_config: Any) -> Architecture:
        """From a transformers config (its attribute map names DistilBERT's `dim` `hidden_size`)."""
        try:
            return cls(int(model_config.num_hidden_layers), int(model_config.hidden_size),
                       int(model_config.num_attention_heads))
        except AttributeError as e:
            raise UserError(f"memory model: the model config lacks {e.name or e}") from None


def features(cfg: TrialConfig, arch: Architecture) -> tuple[float, float, float]:
    """The model's three terms for `cfg` before their coefficients: 1, activations, scores."""
    tokens = cfg.micro_batch_size * cfg.max_length
    return (1.0, float(tokens * arch.layers * arch.hidden),
            float(tokens * cfg.max_length * arch.layers * arch.heads))


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes of one trial = coefficients . features(cfg); fit by `fit`."""

    arch: Architecture
    coefficients: tuple[float, float, float]
    """Bytes: fixed, per activation unit (token x layer x hidden), per attention score."""

    def predict(self, cfg: TrialConfig) -> float:
        """Predicted peak bytes of a trial of `cfg`."""
        return sum(c * f for c, f in zip(self.coefficients, features(cfg, self.arch), strict=True))

    @classmethod
    def fit(cls, arch: Architecture, configs: Sequence[TrialConfig],
            peaks: Sequence[float]) -> MemoryModel:
        """Coefficients that best explain the measured `peaks` of `configs`, none negative
        (memory never shrinks with a longer batch); exact with three distinct probes."""
        import numpy as np
        from scipy.optimize import nnls

        if len(configs) != len(peaks) or not configs:
            raise ValueError("fit needs one measured peak per config")
        x = np.array([features(c, arch) for c in configs])
        y = np.array(peaks, dtype=float)
        # Scale each column to 1 so that nnls sees a well-conditioned problem (the terms span
        # ten orders of magnitude), then scale the solution back.
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1.0
        solution, _ = nnls(x / scale, y)
        coefficients = tuple(float(v) for v in solution / scale)
        return cls(arch, coefficients)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Peak:
    """One measured trial (or probe): its config and its peak memory."""

    cfg: TrialConfig
    rss: int
    """Peak resident bytes of the process during the fit (VmHWM, reset before it)."""
    gpu: int | None = None
    """Peak bytes allocated by torch on the CUDA device (None without CUDA)."""


@dataclass(frozen=True)
class Calibration:
    """The memory models of one node type, fit to its probes."""

    rss: MemoryModel
    gpu: MemoryModel | None
    gpu_total: int | None
    """Total memory of the node's GPU in bytes (None without CUDA)."""
    probes: tuple[Peak, ...] = field(default=())


def calibrate(probes: Sequence[Peak], model_config: Any) -> Calibration:
    """Fit the CPU (and, with CUDA, GPU) memory models to measured probes."""
    import torch

    arch = Architecture.of(model_config)
    configs = [p.cfg for p in probes]
    rss = MemoryModel.fit(arch, configs, [p.rss for p in probes])
    gpu, total = None, None
    if all(p.gpu is not None for p in probes) and torch.cuda.is_available():
        gpu = MemoryModel.fit(arch, configs, [p.gpu for p in probes])
        total = int(torch.cuda.get_device_properties(0).total_memory)
    return Calibration(rss, gpu, total, tuple(probes))


def probe_config(cfg: TrialConfig, output_dir: str, steps: int = PROBE_STEPS) -> TrialConfig:
    """`cfg` cut to `steps` training batches and one validation batch, padded to max_length."""
    return cfg.replace(max_train_samples=max(2, cfg.batch_size * steps),
                       max_eval_samples=max(2, cfg.batch_size), epochs=1, eval_test=False,
                       pad_to_max_length=True, output_dir=output_dir, memory_limit_gb=None)


def measure(cfg: TrialConfig, steps: int = PROBE_STEPS, **train_args: Any) -> Peak:
    """Train `steps` probe steps of `cfg` (`probe_config`) and measure their peak memory.

    The peak is this process's: it counts the libraries already imported, as a trial's
    process does. Linux keeps the peak resident size (VmHWM) and resets it on request.
    """
    import torch

    from trainable.train import train

    cuda = torch.cuda.is_available() and cfg.accelerator != "cpu"
    with tempfile.TemporaryDirectory(prefix="memory-probe-") as tmp:
        if not reset_peak_rss():
            raise UserError("memory probe: cannot measure peak memory here (it reads Linux's "
                            "/proc/self/clear_refs and VmHWM)")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train(probe_config(cfg, tmp, steps), progress=False,
              **{"limit_train_batches": steps, "limit_val_batches": 1} | train_args)
        rss = peak_rss() or 0
        gpu = int(torch.cuda.max_memory_allocated()) if cuda else None
    return Peak(cfg, rss, gpu)


def probe(configs: Sequence[TrialConfig], steps: int = PROBE_STEPS) -> Calibration:
    """Measure a few steps of each config in this process and fit the memory models.

    Every config must share the base model (the fit is per model). A peak counts what the
    process already holds, as in a reused trial process.
    """
    from trainable.model import load_model_config

    if len({c.model for c in configs}) != 1:
        raise ValueError("probe configs must share one model")
    peaks = [measure(cfg, steps) for cfg in configs]
    if len(configs) > 1:
        # Once a large fit has run, a process holds more between fits (the allocator's and
        # libraries' caches: 4-7% of a MiniLM trial's peak): the smallest config again, as a
        # reused trial process would run it after a large one.
        again = measure(configs[0], steps)
        peaks[0] = max(peaks[0], again, key=lambda p: p.rss)
    return calibrate(peaks, load_model_config(configs[0]))


def corner_configs(base: TrialConfig, sizes: dict[str, Sequence[int]]) -> list[TrialConfig]:
    """The probes for a space whose size fields (batch_size, max_length, lora_rank) take
    `sizes` (fields not named keep the base's value): the smallest of all, the largest of
    all, and the largest batch at the smallest length, which tells the activations' linear
    term from the attention scores' square one."""
    lo = {k: min(v) for k, v in sizes.items()}
    hi = {k: max(v) for k, v in sizes.items()}
    mixed = hi | ({"max_length": lo["max_length"]} if "max_length" in lo else {})
    configs = [base.replace(**lo), base.replace(**mixed), base.replace(**hi)]
    unique: list[TrialConfig] = []
    for c in configs:
        if c not in unique:
            unique.append(c)
    return unique


def reset_peak_rss() -> bool:
    """Start counting this process's peak resident memory afresh; False where Linux's
    /proc/self/clear_refs is missing (other systems, Linux before 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def peak_rss() -> int | None:
    """This process's peak resident bytes since the last `reset_peak_rss` (None: unknown)."""
    return status_bytes("VmHWM")


def status_bytes(key: str) -> int | None:
    """A size Linux keeps for this process in /proc/self/status (`VmRSS`, `VmHWM`, `VmData`,
    ...), in bytes; None where it is not kept (other systems)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    return None
