"""Any Hugging Face encoder: one tiny random-weight classifier per architecture family of
trainable.model.LORA_LAYERS trains one epoch in 4-bit, 8-bit and unquantized, saves its head
with the adapter, and reloads through trainable.inference to the very metrics it reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import save_tiny_encoder
from trainable.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from trainable.config import TrialConfig
from trainable.model import HEAD_MODULES, LORA_LAYERS

pytestmark = pytest.mark.integration

# The trial, shrunk: 64 demo clauses in 4 batches, one epoch, one torch thread.
SMALL = dict(data="demo", max_train_samples=64, max_eval_samples=32, batch_size=16,
             max_length=64, accelerator="cpu", threads=1, seed=0, lora_rank=4, epochs=1,
             eval_test=True)
ARCHITECTURES = ("bert", "roberta", "distilbert", "deberta-v2", "modernbert")
# (architecture, quantization, lora_targets preset): the default preset everywhere, and
# every linear layer in 4-bit (peft's own "all-linear" used to wrap DistilBERT's head).
CASES = [(arch, quantization, "attention+head") for quantization in ("4bit", "8bit", "none")
         for arch in ARCHITECTURES] + [(arch, "4bit", "all-linear") for arch in ARCHITECTURES]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """`encoder_dir(model_type)`: a saved tiny classifier of that family (built once)."""
    folders: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in folders:
            folders[model_type] = save_tiny_encoder(tmp_path_factory.mktemp(model_type),
                                                    model_type)
        return folders[model_type]

    return get


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _in_head(key: str) -> bool:
    return any(part.endswith(HEAD_MODULES) for part in key.split("."))


def _test_metrics(net, cfg: TrialConfig, tmp_path: Path) -> dict[str, float]:
    import lightning.pytorch as pl

    from trainable.module import ClauseClassifier
    from trainable.train import prepare

    prepared = prepare(cfg.replace(output_dir=str(tmp_path / "eval")))
    trainer = pl.Trainer(accelerator="cpu", precision=prepared.precision, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    module = ClauseClassifier(net, cfg, prepared.class_weights)
    return {k: float(v) for k, v in trainer.test(module, dataloaders=prepared.loaders["test"],
                                                 verbose=False)[0].items()}


@pytest.mark.parametrize(("model_type", "quantization", "preset"), CASES,
                         ids=["-".join(case) for case in CASES])
def test_trains_saves_its_head_and_reloads_to_the_same_metrics(model_type, quantization, preset,
                                                                encoder_dir, tmp_path):
    from trainable.inference import load_trained
    from trainable.model import build_model, count_parameters
    from trainable.train import train

    folder = encoder_dir(model_type)
    cfg = TrialConfig(model=str(folder), quantization=quantization, lora_targets=preset,
                      output_dir=str(tmp_path / "out"), **SMALL)
    result = train(cfg, progress=False)
    adapter = Path(result.adapter_dir)
    tensors = _tensors(adapter / ADAPTER_WEIGHTS)

    # LoRA where the family's preset says, and nowhere in the head.
    targets = LORA_LAYERS[model_type].targets(preset)
    saved_config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert set(saved_config["target_modules"]) == set(targets)
    lora_modules = {k.split(".lora_")[0] for k in tensors if ".lora_" in k}
    for name in targets:
        assert any(m.endswith(f".{name}") for m in lora_modules), (name, sorted(lora_modules))
    assert not any(_in_head(m) for m in lora_modules)

    # The head is trained in full and saved: every head tensor moved from the base model's.
    base = _tensors(folder / "model.safetensors")
    head = {k: v for k, v in tensors.items() if ".lora_" not in k}
    assert head and all(_in_head(k) for k in head), sorted(head)
    for key, value in head.items():
        before = base[key.removeprefix("base_model.model.")]
        assert not torch.equal(value.float(), before.float()), f"{key} did not train"

    # Every trainable parameter is in the adapter file, nothing else.
    net = build_model(cfg, "cpu", "bf16-mixed")
    trainable, _ = count_parameters(net)
    assert sum(t.numel() for t in tensors.values()) == trainable

    # Reloaded for inference, the adapter scores the test split as the trial did; the base
    # model without it does not.
    reloaded, _, loaded_cfg = load_trained(adapter, device="cpu")
    assert loaded_cfg == cfg
    reloaded_metrics = _test_metrics(reloaded, cfg, tmp_path)
    for key, value in result.test_metrics.items():
        assert reloaded_metrics[key] == pytest.approx(value, abs=1e-4), key
    untrained = _test_metrics(net.eval(), cfg, tmp_path)
    assert untrained["test/loss"] != pytest.approx(result.test_metrics["test/loss"], abs=1e-4)

    size = (adapter / ADAPTER_WEIGHTS).stat().st_size
    print(f"\nARCH {model_type} {quantization} {preset} trainable={trainable} "
          f"adapter_bytes={size} reload=ok test/loss={result.test_metrics['test/loss']:.4f}")
