"""The Lightning module: one loss and one metrics path for every split."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassF1Score,
)

from trainable.config import TrialConfig
from trainable.data import INDEX


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


class SoftF1(Metric):
    """Unfair-class F1 with P(unfair) as fractional predictions: 2 sum(p y) / (sum(p) + sum(y)).
    No threshold, so one clause moves it by its probability rather than by a whole count: on
    the recorded curves it ranked configurations steadily from epoch 2 on (BENCHMARKS.md,
    replayed studies). torchmetrics has no soft F1; three sums, reduced across ranks."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        for name in ("overlap", "predicted", "actual"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        probs, labels = probs.double(), labels.double()
        self.overlap += (probs * labels).sum()
        self.predicted += probs.sum()
        self.actual += labels.sum()

    def compute(self) -> torch.Tensor:
        total = self.predicted + self.actual
        return 2 * self.overlap / total if total > 0 else torch.zeros_like(total)


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
        self.val_soft_f1 = SoftF1()
        self.test_soft_f1 = SoftF1()
        self.validation_scores: dict[str, Any] | None = None
        """The last validation's P(unfair) per clause, in split order (see clause_scores)."""
        self._val_batches: list[tuple[torch.Tensor, ...]] = []
        # Checkpoints hold the trainable weights only (see on_save_checkpoint).
        self.strict_loading = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for a tokenized batch (labels and clause indices, if present, are ignored)."""
        inputs = {k: v for k, v in batch.items() if k not in ("labels", INDEX)}
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
            unfair = torch.softmax(logits.detach(), dim=-1)[:, 1]
            ap = self.val_ap if split == "val" else self.test_ap
            ap.update(unfair, labels)
            soft_f1 = self.val_soft_f1 if split == "val" else self.test_soft_f1
            soft_f1.update(unfair, labels)
            if split == "val" and INDEX in batch:
                self._val_batches.append((batch[INDEX].detach(), labels.detach(), unfair))
            # Lightning computes, syncs and resets logged torchmetrics objects at epoch end.
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(labels),
                          prog_bar=split == "val")
            self.log(f"{split}/ap", ap, on_step=False, on_epoch=True, batch_size=len(labels))
            self.log(f"{split}/soft_f1", soft_f1, on_step=False, on_epoch=True,
                     batch_size=len(labels))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._compute_metrics(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._compute_metrics(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self._val_batches = []
        self.validation_scores = None

    def on_validation_epoch_end(self) -> None:
        if not self._val_batches:
            return
        index, labels, scores = (torch.cat(parts) for parts in zip(*self._val_batches, strict=True))
        self._val_batches = []
        if self.trainer.world_size > 1:  # each rank validated its share of the clauses
            index, labels, scores = (self.all_gather(t).reshape(-1) for t in (index, labels, scores))
        self.validation_scores = clause_scores(index, labels, scores)

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


def clause_scores(index: torch.Tensor, labels: torch.Tensor,
                  scores: torch.Tensor) -> dict[str, Any] | None:
    """{"labels": "0010...", "scores": [P(unfair), ...]} in split order, from per-clause
    values in any order (DDP's sampler repeats a few clauses); None unless every row of the
    split from 0 on is there."""
    rows = index.cpu().tolist()
    n = max(rows) + 1
    if set(rows) != set(range(n)):
        return None
    by_row_label = dict(zip(rows, labels.cpu().tolist(), strict=True))
    by_row_score = dict(zip(rows, scores.float().cpu().tolist(), strict=True))
    return {"labels": "".join(str(int(by_row_label[i])) for i in range(n)),
            "scores": [by_row_score[i] for i in range(n)]}
