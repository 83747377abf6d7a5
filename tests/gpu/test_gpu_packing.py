"""Memory packing on a CUDA node: the probe fits a GPU memory model too, whose predictions
match torch's measured peak allocation and size each trial's GPU fraction."""

from __future__ import annotations

import pytest

from trainable.config import PACKAGED_MODEL, TrialConfig
from trainable.memory import corner_configs, measure, probe
from tune import packing
from tune.study import StudyConfig

pytestmark = pytest.mark.gpu

TOLERANCE = 0.15  # as on CPU (tests/integration/test_packing.py)


def test_the_probe_predicts_peak_gpu_memory_and_sizes_gpu_fractions(shared_data_dir):
    base = TrialConfig(model=PACKAGED_MODEL, data=str(shared_data_dir), accelerator="cuda")
    sizes = {"batch_size": [8, 32], "max_length": [64, 256], "lora_rank": [4, 32]}
    calibration = probe(corner_configs(base, sizes))
    assert calibration.gpu is not None and calibration.gpu_total
    middle = base.replace(batch_size=16, max_length=128, lora_rank=8)
    measured = measure(middle, steps=3).gpu
    assert measured
    predicted = calibration.gpu.predict(middle)
    assert abs(predicted / measured - 1) < TOLERANCE, (predicted, measured)
    study = StudyConfig(packing="memory")
    small = packing.trial_memory(study, calibration, base.replace(batch_size=8, max_length=64),
                                 gpus=1.0)["gpu"]
    large = packing.trial_memory(study, calibration, base.replace(batch_size=32, max_length=256),
                                 gpus=1.0)["gpu"]
    assert 0 < small <= large <= 1.0
