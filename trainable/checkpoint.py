"""Adapter-only checkpoints: written per epoch, atomically, and loaded without unpickling.

Each epoch folder is an adapter folder (`trainable.adapter`) plus `resume.ckpt` (Lightning's
optimizer and loop state, trainable weights only) so an interrupted trial can continue. The
frozen base model is never saved.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

from trainable.adapter import METRICS, RESUME, save_adapter
from trainable.config import GRAD_ACCUMULATION, OBJECTIVE, TrialConfig

# Called after each epoch's checkpoint is on disk: (metrics of that epoch, its folder).
Report = Callable[[dict[str, float], Path], None]


class EpochCheckpoint(Checkpoint):
    """After each epoch: save an adapter folder, track the best by OBJECTIVE, report, prune.

    Keeps the best and the latest epoch folders under `root`; older ones are deleted once the
    report hook (which may copy them elsewhere, as Ray Tune does) has returned.
    """

    def __init__(self, root: Path, cfg: TrialConfig, report: Report | None = None,
                 resume_from: Path | None = None):
        self.root = Path(root)
        self.cfg = cfg
        self.report = report
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.latest_dir: Path | None = None

    @property
    def best_metrics(self) -> dict[str, float] | None:
        """The metrics of the best epoch so far."""
        return next((m for m in self.history if m["epoch"] == self.best_epoch), None)

    @property
    def best_dir(self) -> Path | None:
        """The folder of the best epoch so far."""
        return None if self.best_epoch is None else self.epoch_dir(self.best_epoch)

    def epoch_dir(self, epoch: int) -> Path:
        """Folder of an epoch (1-based)."""
        return self.root / f"epoch-{epoch:03d}"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resumed from a folder outside `root` (another output_dir, or a copy Ray Tune
        # restored): bring that epoch's adapter along, as it may remain the best epoch.
        src = self.resume_from
        if src is not None and trainer.is_global_zero and (src / METRICS).is_file():
            epoch = json.loads((src / METRICS).read_text(encoding="utf-8")).get("epoch")
            target = None if epoch is None else self.epoch_dir(int(epoch))
            if target is not None and target.resolve() != src.resolve():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(src, target, ignore=shutil.ignore_patterns(RESUME))
        trainer.strategy.barrier()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after validation and after the module's epoch-end hooks (Lightning calls
        # checkpoint callbacks last), so both train/ and val/ epoch metrics are final.
        epoch = trainer.current_epoch + 1
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("train/", "val/"))}
        metrics["epoch"] = epoch
        if self.cfg.grad_accumulation > 1:  # a trial that ran out of memory and retried
            metrics[GRAD_ACCUMULATION] = float(self.cfg.grad_accumulation)
        self.history.append(metrics)
        if OBJECTIVE.better(metrics.get(OBJECTIVE.metric, float("nan")),
                            None if self.best_metrics is None else self.best_metrics[OBJECTIVE.metric]):
            self.best_epoch = epoch
        final, tmp = self.epoch_dir(epoch), self.root / f".epoch-{epoch:03d}.tmp"
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier()
        trainer.save_checkpoint(tmp / RESUME, weights_only=False)  # collective; rank 0 writes
        if trainer.is_global_zero:
            save_adapter(pl_module.model, tmp, self.cfg, metrics,
                         getattr(pl_module, "validation_scores", None))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        trainer.strategy.barrier()
        self.latest_dir = final
        if self.report is not None:
            self.report(metrics, final)
        if trainer.is_global_zero:
            self._prune(keep={self.best_dir, final})

    def _prune(self, keep: set[Path | None]) -> None:
        for folder in self.root.glob("epoch-*"):
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.best_epoch = state_dict.get("best_epoch")
