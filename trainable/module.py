"""The Lightning module: one loss and one metrics path for every split."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassF1Score,
)

from trainable.config import TrialConfig


def eval_metrics(split: str) -> MetricCollection:
    """Unfair-class F1/precision/recall, accuracy and macro-F1, named `{split}/...`."""
    return MetricCollection(
        {
            "f1": BinaryF1Score(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "accuracy": BinaryAccuracy(),
            "macro_f1": MulticlassF1Score(num_classes=2, average="macro"),
        },
        prefix=f"{split}/",
    )


class ClauseClassifier(pl.LightningModule):
    """Fine-tunes a (quantized, LoRA-wrapped) sequence classifier on fair/unfair clauses."""

    def __init__(self, model: torch.nn.Module, cfg: TrialConfig,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.val_metrics = eval_metrics("val")
        self.test_metrics = eval_metrics("test")
        # Average precision ranks P(unfair), so it takes probabilities, not the argmax.
        self.val_ap = BinaryAveragePrecision()
        self.test_ap = BinaryAveragePrecision()
        # Checkpoints hold the trainable weights only (see on_save_checkpoint).
        self.strict_loading = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for a tokenized batch (labels, if present, are ignored)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def _compute_metrics(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        labels = batch["labels"]
        logits = self(batch).float()
        loss = F.cross_entropy(logits, labels, weight=self.class_weights)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels),
                 sync_dist=True, prog_bar=split == "train")
        if split != "train":
            metrics = self.val_metrics if split == "val" else self.test_metrics
            metrics.update(logits.argmax(dim=-1), labels)
            ap = self.val_ap if split == "val" else self.test_ap
            ap.update(torch.softmax(logits, dim=-1)[:, 1], labels)
            # Lightning computes, syncs and resets logged torchmetrics objects at epoch end.
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(labels),
                          prog_bar=split == "val")
            self.log(f"{split}/ap", ap, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._compute_metrics(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._compute_metrics(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._compute_metrics(batch, "test")

    def configure_optimizers(self) -> Any:
        from transformers import get_linear_schedule_with_warmup

        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(
            optimizer, num_warmup_steps=int(self.cfg.warmup_ratio * total), num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resume checkpoints carry the adapter and head, not the frozen (quantized) base.
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trainable}
