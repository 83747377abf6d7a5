"""QLoRA on a CUDA device: the packaged MiniLM in 4-bit for one epoch on a small sample."""

from __future__ import annotations

import math

import pytest

from trainable.config import EVAL_METRICS, TrialConfig
from trainable.train import train

pytestmark = pytest.mark.gpu


def _layer_recorder():
    import lightning.pytorch as pl
    import torch

    class RecordLayers(pl.Callback):
        def __init__(self) -> None:
            self.layers: dict[str, tuple[type, torch.device]] = {}

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            for name, module in pl_module.model.named_modules():
                weight = getattr(module, "weight", None)
                if isinstance(module, torch.nn.Linear) and weight is not None:
                    self.layers[name] = (type(module), weight.device)

    return RecordLayers()


def test_qlora_trains_on_cuda(shared_data_dir, tmp_path):
    import bitsandbytes as bnb

    recorder = _layer_recorder()
    cfg = TrialConfig(data=str(shared_data_dir), quantization="4bit", accelerator="cuda",
                      max_train_samples=256, max_eval_samples=128, epochs=1, max_length=128,
                      batch_size=16, eval_test=True, output_dir=str(tmp_path / "out"))
    result = train(cfg, callbacks=[recorder], progress=False)

    assert [h["epoch"] for h in result.history] == [1]
    assert {"train/loss", *(f"val/{m}" for m in EVAL_METRICS)} <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert set(result.test_metrics) == {f"test/{m}" for m in EVAL_METRICS}
    assert result.adapter_dir is not None

    # Every linear layer of the encoder is 4-bit on the GPU; the new head stays unquantized.
    encoder = {n: v for n, v in recorder.layers.items()
               if ".encoder." in n and "lora_" not in n}
    assert encoder
    for name, (kind, device) in encoder.items():
        assert issubclass(kind, bnb.nn.Linear4bit), name
        assert device.type == "cuda", name
    head = {n: v for n, v in recorder.layers.items() if "classifier" in n and "lora_" not in n}
    assert head and not any(issubclass(k, bnb.nn.Linear4bit) for k, _ in head.values())
