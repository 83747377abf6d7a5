"""Memory-aware packing (`--packing memory`): each trial asks Ray for the memory it needs.

At study start a Ray task on a trial node probes the smallest and largest configurations of
the space for a few steps (`trainable.memory`); the memory model fit to those peaks then sizes
every trial: Ray's `memory` resource for its predicted peak RSS, and on GPU nodes a GPU
fraction of its predicted peak allocation over the GPU's total, each with MARGIN on top. Ray
starts a trial only where its request fits, so small trials share a node and large ones get
more, instead of every trial holding the share of the largest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from trainable.config import TrialConfig
from trainable.errors import UserError, first_line
from trainable.memory import GIB, Calibration, corner_configs
from tune.resources import trial_resources
from tune.space import trial_config
from tune.study import StudyConfig

log = logging.getLogger("tune")

# Headroom over a prediction: the model errs low by up to 10% on the corners of the default
# space (BENCHMARKS.md), and a trial's process is not the probe's (Tune's own state, the data
# of the full split).
MARGIN = 0.15
# The size fields of the space the probe spans; the others barely move memory.
SIZE_FIELDS = ("batch_size", "max_length", "lora_rank")


def probe_sizes(study: StudyConfig) -> dict[str, list[int]]:
    """The searched size fields and their choices (unsearched ones keep the base's value)."""
    return {name: list(study.dimension(name).choices) for name in SIZE_FIELDS
            if name in study.searched}


def probe_configs(study: StudyConfig, base: TrialConfig) -> list[TrialConfig]:
    """The configurations the probe measures, smallest first, threads as a trial gets them."""
    threads = max(1, int(round(study.cpus_per_trial)))
    return corner_configs(base.replace(threads=threads), probe_sizes(study))


def calibrate(study: StudyConfig, base: TrialConfig, gpus: float) -> Calibration:
    """Run the probe as a Ray task with one trial's CPUs and GPUs (so on a trial node) and
    return the fitted memory models."""
    import ray

    from trainable import memory

    configs = probe_configs(study, base)
    log.info("memory probe: %d configurations, %d steps each", len(configs), memory.PROBE_STEPS)
    # A fresh worker process (max_calls=1), as a trial's: what the probe measures is the peak
    # of a whole process.
    task = ray.remote(max_calls=1, max_retries=0)(memory.probe).options(
        num_cpus=study.cpus_per_trial, num_gpus=gpus)
    try:
        calibration = ray.get(task.remote(configs))
    except ray.exceptions.RayError as e:  # the probe itself ran out of memory, or its node died
        largest = configs[-1]
        cause = getattr(e, "cause", None) or e  # a task's own error, not Ray's wrapper line
        raise UserError(f"packing memory: the probe failed ({first_line(cause, 300)}); the largest "
                        f"trial (batch_size {largest.batch_size}, max_length "
                        f"{largest.max_length}) may not fit a node: lower batch_sizes or "
                        f"max_lengths, or use --packing fixed") from None
    for peak in calibration.probes:
        log.info("memory probe: batch %d x %d tokens, rank %d: peak RSS %.2f GiB%s",
                 peak.cfg.batch_size, peak.cfg.max_length, peak.cfg.lora_rank, peak.rss / GIB,
                 "" if peak.gpu is None else f", GPU {peak.gpu / GIB:.2f} GiB")
    return calibration


def trial_memory(study: StudyConfig, calibration: Calibration, cfg: TrialConfig,
                 gpus: float) -> dict[str, float]:
    """Ray resources of one trial of `cfg`: the fixed CPUs, its memory and its GPU share."""
    resources = trial_resources(study, gpus)
    resources["memory"] = float(math.ceil(calibration.rss.predict(cfg) * (1 + MARGIN)))
    if gpus > 0 and gpus <= 1 and calibration.gpu is not None and calibration.gpu_total:
        need = calibration.gpu.predict(cfg) * (1 + MARGIN) / calibration.gpu_total
        # Ray takes GPU fractions to 4 decimals; whole hundredths keep requests readable.
        resources["gpu"] = min(gpus, math.ceil(need * 100) / 100)
    return resources


def resources_per_trial(study: StudyConfig, base: TrialConfig, calibration: Calibration,
                        gpus: float) -> Callable[[dict[str, Any]], Any]:
    """What `tune.with_resources` takes: a trial's sampled values to its placement group."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    def resources(sampled: dict[str, Any]) -> Any:
        return resource_dict_to_pg_factory(
            trial_memory(study, calibration, trial_config(base, sampled), gpus))

    return resources


def check_fits(study: StudyConfig, base: TrialConfig, calibration: Calibration,
               gpus: float) -> None:
    """Fail when the largest trial of the space needs more memory than any node offers."""
    import ray

    largest = probe_configs(study, base)[-1]
    need = trial_memory(study, calibration, largest, gpus)["memory"]
    offered = [n.get("Resources", {}).get("memory", 0.0) for n in ray.nodes() if n.get("Alive")]
    if offered and max(offered) < need:
        raise UserError(f"packing memory: the largest trial (batch_size {largest.batch_size}, "
                        f"max_length {largest.max_length}) needs {need / GIB:.2f} GiB but the "
                        f"largest node offers {max(offered) / GIB:.2f} GiB; lower batch_sizes or "
                        f"max_lengths")


def describe(study: StudyConfig, base: TrialConfig, calibration: Calibration,
             gpus: float) -> str:
    """The requests of the smallest and largest trials, for the start-up log line."""
    configs = probe_configs(study, base)
    sizes = [trial_memory(study, calibration, c, gpus) for c in (configs[0], configs[-1])]
    gpu = "" if calibration.gpu is None else (
        f", GPU {sizes[0].get('gpu', 0):g} to {sizes[1].get('gpu', 0):g}")
    return (f"memory {sizes[0]['memory'] / GIB:.2f} to {sizes[1]['memory'] / GIB:.2f} GiB{gpu} "
            f"per trial (predicted peak + {MARGIN:.0%})")


def measured_peak(record: Any) -> float | None:
    """The most peak RSS (GiB, `train/peak_rss_gib`) any epoch of the trial reported."""
    from trainable.memory import PEAK_RSS

    peaks = [r[PEAK_RSS] for r in record.results if isinstance(r.get(PEAK_RSS), (int, float))]
    return max(peaks) if peaks else None


def overlap(records: list[Any]) -> tuple[int, float]:
    """The most trials that ran at once in a finished study, and the most measured peak RSS
    (GiB, `train/peak_rss_gib`) of trials running at once: what a node had to hold."""
    spans = [(*span, measured_peak(record) or 0.0) for record in records
             if (span := record.span) is not None]
    most, held = 0, 0.0
    for start, _, _ in spans:  # the load peaks when some trial starts
        running = [s for s in spans if s[0] <= start < s[1]]
        most = max(most, len(running))
        held = max(held, sum(s[2] for s in running))
    return most, held
