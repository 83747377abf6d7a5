"""The memory model's arithmetic, the probe's configurations, the packing requests and the
out-of-memory retry's smaller micro-batch (no model trained, no Ray started)."""

from __future__ import annotations

import pytest

from trainable.config import TrialConfig
from trainable.errors import UserError
from trainable.memory import Architecture, Calibration, MemoryModel, corner_configs, features
from trainable.train import smaller_micro_batch
from tune import packing
from tune.run import parse_args
from tune.study import StudyConfig

pytestmark = pytest.mark.unit

MINILM = Architecture(layers=6, hidden=384, heads=12)
SIZES = {"batch_size": [8, 16, 32], "max_length": [64, 128, 256], "lora_rank": [4, 8, 16, 32]}


def _peaks(model: MemoryModel, configs: list[TrialConfig]) -> list[float]:
    return [model.predict(c) for c in configs]


def test_three_corner_probes_recover_the_coefficients_and_predict_the_rest():
    truth = MemoryModel(MINILM, (1.1e9, 45.0, 3.0))
    probes = corner_configs(TrialConfig(), SIZES)
    fitted = MemoryModel.fit(MINILM, probes, _peaks(truth, probes))
    for want, got in zip(truth.coefficients, fitted.coefficients, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    every = [TrialConfig(batch_size=b, max_length=n) for b in (8, 16, 32) for n in (64, 128, 256)]
    for cfg in every:
        assert fitted.predict(cfg) == pytest.approx(truth.predict(cfg), rel=1e-6)


def test_fitted_terms_are_never_negative():
    # Peaks that fall as batches grow would need a negative coefficient; memory never does that.
    probes = corner_configs(TrialConfig(), SIZES)
    fitted = MemoryModel.fit(MINILM, probes, [3e9, 2e9, 1e9])
    assert all(c >= 0 for c in fitted.coefficients)


def test_a_larger_batch_longer_sequence_or_wider_model_needs_more():
    model = MemoryModel(MINILM, (1e9, 40.0, 2.0))
    small = TrialConfig(batch_size=8, max_length=64)
    assert model.predict(small.replace(batch_size=16)) > model.predict(small)
    assert model.predict(small.replace(max_length=128)) > model.predict(small)
    wide = MemoryModel(Architecture(layers=12, hidden=768, heads=12), model.coefficients)
    assert wide.predict(small) > model.predict(small)
    # Activations: twice the tokens, twice the term; attention scores: four times per doubling.
    one, two = features(small, MINILM), features(small.replace(max_length=128), MINILM)
    assert two[1] == 2 * one[1] and two[2] == 4 * one[2]


def test_micro_batches_cut_the_activation_terms_not_the_fixed_one():
    cfg = TrialConfig(batch_size=32, max_length=256)
    halved = cfg.replace(grad_accumulation=2)
    full, half = features(cfg, MINILM), features(halved, MINILM)
    assert half[0] == full[0]
    assert half[1] == full[1] / 2 and half[2] == full[2] / 2


def test_the_probe_spans_the_smallest_and_largest_configurations():
    configs = corner_configs(TrialConfig(), SIZES)
    assert [(c.batch_size, c.max_length, c.lora_rank) for c in configs] == [
        (8, 64, 4), (32, 64, 32), (32, 256, 32)]
    # A space without searched sizes probes the base configuration once.
    assert corner_configs(TrialConfig(batch_size=16), {}) == [TrialConfig(batch_size=16)]


def test_a_trial_asks_for_its_prediction_plus_the_margin_and_a_gpu_share():
    study = StudyConfig(packing="memory")
    model = MemoryModel(MINILM, (1e9, 40.0, 2.0))
    small, large = TrialConfig(batch_size=8, max_length=64), TrialConfig(batch_size=32,
                                                                         max_length=256)
    cpu = Calibration(model, None, None)
    for cfg in (small, large):
        asked = packing.trial_memory(study, cpu, cfg, gpus=0.0)
        assert asked["memory"] == pytest.approx(model.predict(cfg) * (1 + packing.MARGIN), abs=1)
        assert asked["cpu"] == study.cpus_per_trial and asked["gpu"] == 0.0
    gpu = Calibration(model, model, gpu_total=int(80e9))
    small_gpu = packing.trial_memory(study, gpu, small, gpus=1.0)["gpu"]
    large_gpu = packing.trial_memory(study, gpu, large, gpus=1.0)["gpu"]
    assert 0 < small_gpu < large_gpu <= 1.0
    assert small_gpu >= model.predict(small) * (1 + packing.MARGIN) / 80e9
    # A prediction beyond the GPU asks for the whole GPU, not more.
    huge = Calibration(model, MemoryModel(MINILM, (1e12, 0.0, 0.0)), gpu_total=int(80e9))
    assert packing.trial_memory(study, huge, small, gpus=1.0)["gpu"] == 1.0


def test_the_probe_sizes_follow_the_searched_fields():
    study = StudyConfig.from_dict({"searched": ["lr", "batch_size"], "batch_sizes": [4, 12]})
    assert packing.probe_sizes(study) == {"batch_size": [4, 12]}
    configs = packing.probe_configs(study, TrialConfig(max_length=96))
    assert [(c.batch_size, c.max_length) for c in configs] == [(4, 96), (12, 96)]
    assert all(c.threads == 1 for c in configs)


def test_packing_is_a_study_option_with_fixed_shares_by_default():
    assert StudyConfig().packing == "fixed"
    study, _, _ = parse_args(["--packing", "memory"])
    assert study.packing == "memory"
    with pytest.raises(UserError, match="packing must be fixed or memory"):
        StudyConfig(packing="greedy")
    with pytest.raises(UserError, match="workers_per_trial 2"):
        StudyConfig(packing="memory", workers_per_trial=2)


def test_a_retry_halves_the_micro_batch_and_keeps_the_batch():
    cfg = TrialConfig(batch_size=48)
    seen = []
    while cfg is not None:
        seen.append((cfg.micro_batch_size, cfg.grad_accumulation))
        assert cfg.micro_batch_size * cfg.grad_accumulation == 48
        cfg = smaller_micro_batch(cfg)
    assert seen == [(48, 1), (24, 2), (12, 4), (6, 8), (3, 16), (1, 48)]


def test_grad_accumulation_must_divide_the_batch():
    assert TrialConfig(batch_size=16, grad_accumulation=4).micro_batch_size == 4
    for bad in (0, 3, 32):
        with pytest.raises(UserError, match="grad_accumulation"):
            TrialConfig(batch_size=16, grad_accumulation=bad)
