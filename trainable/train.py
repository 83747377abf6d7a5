"""One QLoRA trial, standalone: `python -m trainable.train --help`.

    python -m trainable.train --data-dir ../shared/data/unfair_tos --epochs 3 --eval-test

`train(cfg)` is a plain function (the tune driver wraps it): check every input, build the
model and data, fit with validation after each epoch, keep the best epoch's adapter,
optionally evaluate it on the test split, and return the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainable.adapter import (
    METRICS,
    RESUME,
    TRIAL_CONFIG,
    VALIDATION_SCORES,
    load_adapter_weights,
    write_json,
)
from trainable.checkpoint import EpochCheckpoint, Report
from trainable.cli import ArgumentParser, add_dataclass_flags, command
from trainable.config import DEMO_DATA, HUB_DATA, OBJECTIVE, PACKAGED_MODEL, TrialConfig
from trainable.errors import TrialOutOfMemoryError, UserError
from trainable.memory import status_bytes

log = logging.getLogger("trainable")

ADAPTER_DIR = "adapter"  # under output_dir: the best epoch's adapter folder
CHECKPOINTS_DIR = "checkpoints"  # under output_dir: per-epoch folders while training


@dataclass(frozen=True)
class TrialResult:
    """What one trial produced."""

    best_epoch: int
    metrics: dict[str, float]
    """Train and validation metrics of the best epoch by OBJECTIVE."""
    history: list[dict[str, float]]
    """Metrics of every epoch, in order."""
    adapter_dir: str | None
    """The best epoch's adapter folder (None if it is not on this machine)."""
    test_metrics: dict[str, float] = field(default_factory=dict)
    """Test-split metrics of the best adapter (when cfg.eval_test)."""
    seconds: float = 0.0
    """Wall time of the fit, including validation."""
    folds: list[list[dict[str, float]]] = field(default_factory=list)
    """With cv_folds: each fold's own history (`history` is their mean)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


@dataclass
class _Prepared:
    device: str
    precision: str
    tokenizer: Any
    loaders: dict[str, Any]
    class_weights: Any


def prepare(cfg: TrialConfig, resume_from: Path | None = None,
            splits: Any | None = None) -> _Prepared:
    """Check every input that can be checked before training; load and tokenize the data
    (`splits`, when given, instead of the data `cfg` names)."""
    from trainable import data, model

    device = model.resolve_device(cfg)
    model_config = model.load_model_config(cfg)
    tokenizer = model.load_tokenizer(cfg)
    model.check_max_length(cfg, model_config, tokenizer)
    model.check_quantization(cfg.quantization, device)
    output = Path(cfg.output_dir)
    if resume_from is None and (output / ADAPTER_DIR).exists():
        raise UserError(f"output_dir {output} already holds a trained adapter; pass another "
                        f"--output-dir or remove it")
    if resume_from is not None and not (Path(resume_from) / RESUME).is_file():
        raise UserError(f"resume checkpoint {resume_from}: {RESUME} is missing")
    splits = data.load_splits(cfg) if splits is None else splits
    loaders = {"train": data.make_loader(data.ClauseDataset(splits.train, tokenizer, cfg.max_length),
                                         tokenizer, cfg, train=True),
               "val": data.make_loader(data.ClauseDataset(splits.validation, tokenizer,
                                                          cfg.max_length), tokenizer, cfg, train=False)}
    if splits.test is not None:
        loaders["test"] = data.make_loader(data.ClauseDataset(splits.test, tokenizer, cfg.max_length),
                                           tokenizer, cfg, train=False)
    weights = data.class_weights(splits.train["label"], cfg.class_weighting)
    log.info("data: %d train, %d validation%s clauses; class weights %s", len(splits.train),
             len(splits.validation), "" if splits.test is None else f", {len(splits.test)} test",
             None if weights is None else [round(w, 3) for w in weights.tolist()])
    return _Prepared(device, model.resolve_precision(cfg, device), tokenizer,
                     loaders, weights)


def train(cfg: TrialConfig, callbacks: Sequence[Any] = (), report: Report | None = None,
          resume_from: Path | None = None, progress: bool = True,
          **trainer_args: Any) -> TrialResult:
    """Fine-tune one configuration; return the best epoch's metrics and adapter folder.

    `callbacks` are extra Lightning callbacks; `report(metrics, folder)` is called after
    each epoch once its checkpoint folder is on disk; `resume_from` is such a folder to
    continue from; `trainer_args` go to `lightning.Trainer` (strategy, devices, ...).

    The trial's memory is handed back before this returns or raises (`release_memory`):
    Ray Tune runs trial after trial in one reused process. A fit that runs out of memory
    before its first epoch is reported starts again with half the micro-batch and twice the
    gradient accumulation (`smaller_micro_batch`), down to one clause per micro-batch.
    """
    try:
        if cfg.cv_folds:
            return _cross_validate(cfg, callbacks, report, progress, trainer_args)
        while True:
            reported = _Counted(report)
            try:
                return _fit(cfg, callbacks, reported, resume_from, progress, trainer_args)
            except TrialOutOfMemoryError as e:
                smaller = smaller_micro_batch(cfg)
                if smaller is None or reported.calls:
                    # After a reported epoch a new start would report that epoch twice.
                    raise
                log.warning("%s; retrying with micro-batches of %d x %d (same batch of %d)",
                            e, smaller.micro_batch_size, smaller.grad_accumulation,
                            smaller.batch_size)
                _clear_frames(e)
            _detach_from_model(callbacks)
            release_memory()  # the failed attempt's model and batches, before the next loads
            cfg = smaller
    except BaseException as e:
        # The traceback keeps every frame of the fit alive, and with them the model, the
        # optimizer and the trainer, for as long as the caller holds the exception (an ASHA
        # stop reaches Ray as SystemExit). Tracebacks print the same without their locals.
        _clear_frames(e)
        raise
    finally:
        _detach_from_model(callbacks)
        release_memory()


def _cross_validate(cfg: TrialConfig, callbacks: Sequence[Any], report: Report | None,
                    progress: bool, trainer_args: dict[str, Any]) -> TrialResult:
    """One fit per fold (`cfg.cv_folds`), then each epoch reported with the folds' mean
    metrics and the first fold's adapter of that epoch. A retried trial starts over: a
    checkpoint holds one fold's state, not the others'."""
    from trainable import data

    if "strategy" in trainer_args:
        raise UserError(f"cv_folds {cfg.cv_folds}: a cross-validated trial runs in one process "
                        f"(set workers_per_trial to 1)")
    output = Path(cfg.output_dir)
    if (output / ADAPTER_DIR).exists():
        raise UserError(f"output_dir {output} already holds a trained adapter; pass another "
                        f"--output-dir or remove it")
    folds = data.cv_splits(data.load_splits(cfg), cfg.cv_folds, cfg.seed)
    kept = output / "cv-epochs"  # the first fold's epoch folders, as its checkpoints prune them

    def keep(metrics: dict[str, float], folder: Path) -> None:
        # Without its validation scores: they are one fold's clauses, not the objective's.
        target = kept / f"epoch-{int(metrics['epoch']):03d}"
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns(RESUME, VALIDATION_SCORES))
        write_json(target / TRIAL_CONFIG, cfg.to_dict())  # says it was cross-validated

    results = []
    for i, splits in enumerate(folds):
        log.info("fold %d of %d: %d train, %d validation clauses", i + 1, len(folds),
                 len(splits.train), len(splits.validation))
        fold_dir = output / f"fold-{i + 1}"
        fold_cfg = cfg.replace(cv_folds=None, eval_test=False, output_dir=str(fold_dir))
        results.append(_fit(fold_cfg, callbacks, keep if i == 0 else None, None, progress,
                            trainer_args, splits))
        shutil.rmtree(fold_dir, ignore_errors=True)
        release_memory()
    histories = [r.history for r in results]
    history = [{k: sum(h[e][k] for h in histories) / len(histories)
                for k in histories[0][e] if all(k in h[e] for h in histories)}
               | {"epoch": e + 1} for e in range(min(len(h) for h in histories))]
    best: dict[str, float] | None = None
    for metrics in history:
        folder = kept / f"epoch-{int(metrics['epoch']):03d}"
        write_json(folder / METRICS, metrics)  # what the checkpoint is ranked and picked by
        if report is not None:
            report(metrics, folder)
        if OBJECTIVE.better(metrics.get(OBJECTIVE.metric, float("nan")),
                            None if best is None else best[OBJECTIVE.metric]):
            best = metrics
    if best is None:
        raise RuntimeError("cross-validation finished without a validation result")
    shutil.copytree(kept / f"epoch-{int(best['epoch']):03d}", output / ADAPTER_DIR)
    shutil.rmtree(kept, ignore_errors=True)
    result = TrialResult(best_epoch=int(best["epoch"]), metrics=best, history=history,
                         adapter_dir=str(output / ADAPTER_DIR),
                         seconds=round(sum(r.seconds for r in results), 2),
                         folds=histories)
    write_json(output / METRICS, result.to_dict())
    return result


def smaller_micro_batch(cfg: TrialConfig) -> TrialConfig | None:
    """`cfg` with half the micro-batch and twice the accumulation (the same optimisation step
    in about half the activation memory); None once the micro-batch is one clause."""
    if cfg.micro_batch_size < 2:
        return None
    accumulation = cfg.grad_accumulation * 2
    while cfg.batch_size % accumulation:  # an odd micro-batch: the next divisor of the batch
        accumulation += 1
    return cfg.replace(grad_accumulation=accumulation)


class _Counted:
    """A Report that counts its calls (a retry must not report an epoch twice)."""

    def __init__(self, report: Report | None):
        self.report = report
        self.calls = 0

    def __call__(self, metrics: dict[str, float], folder: Path) -> None:
        self.calls += 1
        if self.report is not None:
            self.report(metrics, folder)


def _fit(cfg: TrialConfig, callbacks: Sequence[Any], report: Report | None,
         resume_from: Path | None, progress: bool, trainer_args: dict[str, Any],
         splits: Any | None = None) -> TrialResult:
    import lightning.pytorch as pl
    import torch

    from trainable.model import build_model, count_parameters
    from trainable.module import ClauseClassifier

    log.info("trial config: %s", json_line(cfg.to_dict()))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    prepared = prepare(cfg, resume_from, splits)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    net = build_model(cfg, prepared.device, prepared.precision)
    trainable_params, total_params = count_parameters(net)
    log.info("model %s: %s quantization, %d of %d parameters trainable (%.2f%%)", cfg.model,
             cfg.quantization, trainable_params, total_params, 100 * trainable_params / total_params)
    module = ClauseClassifier(net, cfg, prepared.class_weights)

    output = Path(cfg.output_dir)
    epochs = EpochCheckpoint(output / CHECKPOINTS_DIR, cfg, report, resume_from)
    trainer = pl.Trainer(
        accelerator=prepared.device,
        precision=prepared.precision,
        max_epochs=cfg.epochs,
        accumulate_grad_batches=cfg.grad_accumulation,
        logger=False,
        callbacks=[epochs, *callbacks],
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=str(output),
        **({"devices": 1} | trainer_args),
    )
    started = time.perf_counter()
    with out_of_memory_as_error(cfg):
        trainer.fit(module, train_dataloaders=prepared.loaders["train"],
                    val_dataloaders=prepared.loaders["val"],
                    ckpt_path=None if resume_from is None else str(Path(resume_from) / RESUME),
                    weights_only=True)
        seconds = time.perf_counter() - started
        return _finish(cfg, trainer, module, epochs, prepared, seconds)


def release_memory() -> None:
    """Give back what a finished fit freed: reference cycles, the CUDA cache, the C heap."""
    import gc

    import torch

    # Lightning's trainer and module point at each other, so the model, its optimizer state
    # and the batches' buffers outlive the fit until the cycle collector's next full pass,
    # which a reused trial process may not reach before the next trial loads its model.
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # cached blocks would stay out of reach of other processes
    _trim_c_heap()


def _trim_c_heap() -> None:
    # glibc keeps what a fit freed (weights read and quantized, activations, optimizer state)
    # in its heaps and rarely returns it to the OS. Ray Tune runs each trial in a new thread,
    # which glibc serves from the next of its arenas (up to 8 per core), so a reused trial
    # process kept about 0.5 GB more after every trial (issue 14: 1.0 GB to 3.4 GB over 8
    # MiniLM trials, with the heap's live bytes flat). malloc_trim(0) hands the free pages of
    # every arena back, in a fraction of a second.
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


def _detach_from_model(callbacks: Sequence[Any]) -> None:
    # Lightning hands every callback the module's `log` and `log_dict` (bound methods), so a
    # callback the caller keeps would keep the whole model alive.
    import lightning.pytorch as pl

    for callback in callbacks:
        for name in ("log", "log_dict"):
            bound = getattr(callback, "__dict__", {}).get(name)
            if isinstance(getattr(bound, "__self__", None), pl.LightningModule):
                delattr(callback, name)


def _clear_frames(error: BaseException) -> None:
    """Drop the local variables of every finished frame in `error`'s tracebacks and causes."""
    import traceback

    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)  # frames still running are left alone
        pending += [e.__cause__, e.__context__]


@contextlib.contextmanager
def memory_limit(gigabytes: float | None) -> Iterator[None]:
    """Let this process allocate at most `gigabytes` more memory for the block's duration.

    Enforced with RLIMIT_DATA on top of the data segment the process already holds (read
    from /proc/self/status), so the budget means what the trial adds: weights, activations,
    optimizer state. RLIMIT_DATA counts reserved, not resident, memory; a cgroup would count
    resident memory but needs privileges a trial does not have.
    """
    if gigabytes is None:
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = (status_bytes("VmData") or 0) + int(gigabytes * 1024**3)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:  # a reused trial process must get its memory back
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@contextlib.contextmanager
def out_of_memory_as_error(cfg: TrialConfig) -> Iterator[None]:
    """Turn the allocators' many out-of-memory failures into one clear TrialOutOfMemoryError."""
    import torch

    try:
        with memory_limit(cfg.memory_limit_gb):
            yield
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, (MemoryError, torch.OutOfMemoryError)) and not any(
                s in text for s in ("can't allocate memory", "not enough memory", "out of memory")):
            raise
        where = f"limit {cfg.memory_limit_gb} GB" if cfg.memory_limit_gb else "device memory"
        raise TrialOutOfMemoryError(
            f"out of memory ({where}) at batch_size {cfg.batch_size}"
            f"{'' if cfg.grad_accumulation == 1 else f' ({cfg.micro_batch_size} per micro-batch)'}"
            f", max_length {cfg.max_length}: {text.splitlines()[0][:300] if text else type(e).__name__}"
        ) from e


def _finish(cfg: TrialConfig, trainer: Any, module: Any, epochs: EpochCheckpoint,
            prepared: _Prepared, seconds: float) -> TrialResult:
    """Keep the best epoch's adapter, evaluate it on test if asked, write metrics.json."""
    if epochs.best_metrics is None:
        raise RuntimeError("training finished without a validation result")
    output = Path(cfg.output_dir)
    adapter_dir = None
    test_metrics: dict[str, float] = {}
    best = epochs.best_dir
    if best is not None and best.is_dir() and trainer.is_global_zero:
        adapter_dir = output / ADAPTER_DIR
        tmp = output / f".{ADAPTER_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(best, tmp, ignore=shutil.ignore_patterns(RESUME))
        tmp.replace(adapter_dir)
        shutil.rmtree(output / CHECKPOINTS_DIR, ignore_errors=True)
        if "test" in prepared.loaders:
            load_adapter_weights(module.model, adapter_dir)
            results = trainer.test(module, dataloaders=prepared.loaders["test"], verbose=False)
            test_metrics = {k: float(v) for k, v in results[0].items()}
    result = TrialResult(best_epoch=int(epochs.best_metrics["epoch"]),
                         metrics=dict(epochs.best_metrics), history=list(epochs.history),
                         adapter_dir=None if adapter_dir is None else str(adapter_dir),
                         test_metrics=test_metrics, seconds=round(seconds, 2))
    if trainer.is_global_zero:
        write_json(output / METRICS, result.to_dict())
    return result


def json_line(data: Any) -> str:
    """Compact one-line JSON for logs."""
    import json

    return json.dumps(data, sort_keys=True, separators=(",", ":"))


# Trial fields whose flag differs from what the field's type gives.
TRIAL_FLAG_OVERRIDES: dict[str, dict[str, Any]] = {
    "model": {"help": f"model id or folder (default: {PACKAGED_MODEL}, packaged)"},
    "target_modules": {"metavar": "NAME", "help": "module names that get LoRA (default: "
                                                  "detected from the architecture)"},
    "memory_limit_gb": {"metavar": "GB"},
    "max_train_samples": {"metavar": "N"},
    "max_eval_samples": {"metavar": "N"},
}


def add_trial_arguments(p: Any, skip: tuple[str, ...] = ("output_dir", "eval_test")) -> None:
    """The trial-config flags, one per TrialConfig field (unset flags leave it alone); the data
    source is a folder (--data-dir) or a named source (--data)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", dest="data", metavar="DIR",
                     help="folder with train/validation/test files (.tsv .csv .jsonl .parquet)")
    src.add_argument("--data", dest="data", choices=[HUB_DATA, DEMO_DATA],
                     help=f"'{HUB_DATA}': LexGLUE unfair_tos from the Hugging Face hub (default); "
                          f"'{DEMO_DATA}': the small shipped demo set")
    add_dataclass_flags(p, TrialConfig, TRIAL_FLAG_OVERRIDES, skip=("data", *skip))


TRIAL_FLAG_FIELDS = tuple(f.name for f in dataclasses.fields(TrialConfig))


def trial_changes(args: dict[str, Any]) -> dict[str, Any]:
    """The TrialConfig fields set on the command line (pops them from `args`)."""
    changes = {k: args.pop(k) for k in list(args) if k in TRIAL_FLAG_FIELDS}
    changes = {k: v for k, v in changes.items() if v is not None}
    if "target_modules" in changes:
        changes["target_modules"] = tuple(changes["target_modules"])
    return changes


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrialConfig, Path | None]:
    """CLI flags to a TrialConfig (each flag sets one field) and an optional resume folder."""
    p = ArgumentParser(prog="python -m trainable.train",
                       description="Fine-tune one QLoRA classifier on UNFAIR-ToS.")
    add_trial_arguments(p, skip=())
    p.add_argument("--resume-from", metavar="DIR", type=Path,
                   help="an epoch folder (with resume.ckpt) to continue from")
    args = vars(p.parse_args(argv))
    resume_from = args.pop("resume_from")
    return TrialConfig().replace(**trial_changes(args)), resume_from


@command(verbose=True)
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run one trial, print the best epoch's metrics and the adapter path."""
    cfg, resume_from = parse_args(argv)
    try:
        result = train(cfg, resume_from=resume_from)
    except TrialOutOfMemoryError as e:
        print(f"error: {e} (lower --batch-size or --max-length)", file=sys.stderr)
        return 1
    print(f"best epoch {result.best_epoch} of {cfg.epochs} by {OBJECTIVE.metric} "
          f"({OBJECTIVE.mode}):")
    for key, value in sorted(result.metrics.items()):
        if key != "epoch":
            print(f"  {key:16s} {value:.4f}")
    for key, value in sorted(result.test_metrics.items()):
        print(f"  {key:16s} {value:.4f}")
    print(f"adapter: {result.adapter_dir}")
    print(f"metrics: {Path(cfg.output_dir) / METRICS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
