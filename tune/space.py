"""The search space, declared once: a table of dimensions, and everything derived from it.

Each row of `DIMENSIONS` is one trial-config field the search can sample: how (a log-uniform
or uniform float range, or a list of choices), its default range or choices, and the study
keys that hold them (`lr_min`/`lr_max`, `lora_ranks`, ...). From the table come the Ray
domains, the casts of sampled values, the study's flags and config-file keys, its MLflow
params, and the analysis tables and plots. Adding a dimension is one row here plus the
trial-config field it sets.

No Ray import at module level: analysis reads the table without starting Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from trainable.config import CLASS_WEIGHTINGS, LORA_TARGETS
from trainable.errors import UserError

if TYPE_CHECKING:
    from trainable.config import TrialConfig

LOG_FLOAT, FLOAT, CHOICE = "log_float", "float", "choice"
Kind = Literal["log_float", "float", "choice"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _float(value: Any) -> Any:
    # YAML 1.1 reads `1e-3` (no dot) as a string; a float key takes it as the number meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # left as is: validation names the key
    return value


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Dimension:
    """One searched trial-config field: how it is sampled, over what."""

    name: str
    """The trial-config field it sets; also its MLflow param and column name."""
    kind: Kind
    """log_float (log-uniform), float (uniform), or choice (one of `choices`)."""
    low: float | None = None
    """Lower bound of a float range."""
    high: float | None = None
    """Upper bound of a float range."""
    choices: tuple[Any, ...] = ()
    """The values of a choice dimension."""
    type: type = float
    """The Python type of a sampled value (Optuna and Ray hand back numpy scalars)."""
    minimum: float | None = None
    """The smallest value allowed (a choice below it, or a range starting below it, is an error)."""
    below: float | None = None
    """A bound every value must stay under (dropout and warm-up are fractions below 1)."""
    allowed: tuple[str, ...] = ()
    """The values a string choice may take (the trial config's own list); empty: any."""
    fixed_by: str | None = None
    """A trial-config field that, when set for every trial, makes this one moot (an explicit
    `target_modules` list wins over `lora_targets`): the search then leaves it out."""
    key: str | None = None
    """The study key holding the choices (`lora_ranks`). Float ranges use `<name>_min/_max`;
    one with a `key` (`lrs`) may be given a list of choices there instead of its range."""
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind in (LOG_FLOAT, FLOAT):
            lo, hi = f"{self.name}_min", f"{self.name}_max"
            if not (_number(self.low) and _number(self.high)) or (
                    self.kind == LOG_FLOAT and self.low <= 0):
                need = "positive numbers" if self.kind == LOG_FLOAT else "numbers"
                raise UserError(f"{lo} and {hi} must be {need} (got {self.low!r} to {self.high!r})")
            if self.minimum is not None and self.low < self.minimum:
                raise UserError(f"{lo} must be >= {self.minimum} (got {self.low!r})")
            if self.below is not None and self.high >= self.below:
                raise UserError(f"{hi} must be below {self.below:g} (got {self.high!r})")
            if self.low >= self.high:
                raise UserError(f"{self.name} range is empty or reversed: {lo} {self.low} must "
                                f"be below {hi} {self.high}")
            return
        if self.kind != CHOICE:
            raise UserError(f"dimension {self.name}: kind must be {LOG_FLOAT}, {FLOAT} or "
                            f"{CHOICE} (got {self.kind!r})")
        key = self.key or self.name
        values = self.choices
        if isinstance(values, list):
            object.__setattr__(self, "choices", values := tuple(values))
        if not isinstance(values, tuple) or not values:
            raise UserError(f"{key} must be a non-empty list (got {values!r})")
        if self.type is int:
            bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool)
                   or (self.minimum is not None and v < self.minimum)]
            if bad:
                raise UserError(f"{key}: {bad[0]!r} is not an integer >= {self.minimum:g}")
        elif self.type is float:
            bad = [v for v in values if not _number(v)
                   or (self.minimum is not None and v < self.minimum)]
            if bad:
                at_least = "" if self.minimum is None else f" >= {self.minimum:g}"
                raise UserError(f"{key}: {bad[0]!r} is not a number{at_least}")
        elif not all(isinstance(v, self.type) for v in values):
            raise UserError(f"{key}: every choice must be a {self.type.__name__} (got {list(values)})")
        bad = [v for v in values if self.allowed and v not in self.allowed
               or self.below is not None and v >= self.below]
        if bad:
            need = f"one of {', '.join(self.allowed)}" if self.allowed else f"below {self.below:g}"
            raise UserError(f"{key}: {bad[0]!r} is not {need}")
        if len(set(values)) != len(values):
            raise UserError(f"{key} lists a value twice ({list(values)})")

    @property
    def log(self) -> bool:
        """Whether plots and tables show it on a log scale."""
        return self.kind == LOG_FLOAT

    @property
    def keys(self) -> tuple[str, ...]:
        """Its study keys (flags, config-file keys, study.json and MLflow params)."""
        if self.kind == CHOICE:
            return (self.key or self.name,)
        return (f"{self.name}_min", f"{self.name}_max")

    @property
    def all_keys(self) -> tuple[str, ...]:
        """Every study key it takes: a float range's bounds, and its choices key if it has one."""
        return self.keys + ((self.key,) if self.kind != CHOICE and self.key else ())

    def settings(self) -> dict[str, Any]:
        """Its range or choices under its study keys."""
        if self.kind == CHOICE:
            return {self.keys[0]: list(self.choices)}
        return dict(zip(self.keys, (self.low, self.high), strict=True))

    def with_settings(self, values: dict[str, Any]) -> Dimension:
        """A copy with the range or choices under its keys in `values` (validated)."""
        if self.kind == CHOICE:
            if self.keys[0] not in values:
                return self
            return replace(self, choices=_tuple(values[self.keys[0]]))
        lo, hi = self.keys
        if self.key and self.key in values:  # choices instead of the range
            if lo in values or hi in values:
                raise UserError(f"{self.key} lists {self.name}'s choices: leave out {lo} and {hi}")
            choices = _tuple(values[self.key])
            if self.kind == LOG_FLOAT and isinstance(choices, tuple) and any(
                    _number(_float(v)) and _float(v) <= 0 for v in choices):
                raise UserError(f"{self.key}: every choice must be positive (got {list(choices)})")
            return replace(self, kind=CHOICE, low=None, high=None, choices=tuple(
                _float(v) for v in choices) if isinstance(choices, tuple) else choices)
        return replace(self, low=_float(values.get(lo, self.low)),
                       high=_float(values.get(hi, self.high)))

    def domain(self) -> Any:
        """The Ray Tune domain that samples it."""
        from ray import tune

        if self.kind == LOG_FLOAT:
            return tune.loguniform(self.low, self.high)
        if self.kind == FLOAT:
            return tune.uniform(self.low, self.high)
        return tune.choice(list(self.choices))

    def cast(self, value: Any) -> Any:
        """A sampled value as the trial config wants it (a plain int, float or str)."""
        return self.type(value)

    def describe(self) -> str:
        """Its range or choices, for help texts."""
        if self.kind == CHOICE:
            return " ".join(map(str, self.choices))
        return f"{self.low:g} to {self.high:g}" + (" (log)" if self.log else "")


# The table. The first four are the default search; the others are searched when named in
# the study's `searched` (or a config file's `space:` section; tune/spaces/lora.yaml names all).
DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("lr", LOG_FLOAT, low=1e-4, high=3e-3, key="lrs", help="peak learning rate of AdamW"),
    Dimension("lora_rank", CHOICE, choices=(4, 8, 16, 32), type=int, minimum=1, key="lora_ranks",
              help="LoRA ranks to choose from"),
    Dimension("max_length", CHOICE, choices=(64, 128, 256), type=int, minimum=8,
              key="max_lengths", help="token limits (most clauses are far shorter than 128)"),
    Dimension("batch_size", CHOICE, choices=(8, 16, 32), type=int, minimum=1, key="batch_sizes",
              help="batch sizes to choose from"),
    Dimension("lora_alpha_ratio", LOG_FLOAT, low=0.5, high=8.0, fixed_by="lora_alpha",
              help="LoRA alpha over rank, the scale of the adapter's update"),
    Dimension("lora_targets", CHOICE, choices=LORA_TARGETS, type=str, allowed=LORA_TARGETS,
              key="lora_target_presets", fixed_by="target_modules",
              help="which layers get LoRA, resolved per architecture"),
    Dimension("lora_dropout", FLOAT, low=0.0, high=0.3, minimum=0.0, below=1.0,
              help="dropout on the LoRA path"),
    Dimension("class_weighting", CHOICE, choices=CLASS_WEIGHTINGS, type=str,
              allowed=CLASS_WEIGHTINGS, key="class_weightings",
              help="loss weights against the 1:9 imbalance"),
    Dimension("warmup_ratio", FLOAT, low=0.0, high=0.2, minimum=0.0, below=1.0,
              help="fraction of the steps spent warming up the learning rate"),
    # Log-uniform: AdamW shrinks weights by lr x weight_decay per step, so 1e-4 is as good as
    # none and 0.1 is strong; what matters is the order of magnitude.
    Dimension("weight_decay", LOG_FLOAT, low=1e-4, high=0.1,
              help="AdamW weight decay on the adapter and the head"),
)
DEFAULT_SEARCHED: tuple[str, ...] = ("lr", "lora_rank", "max_length", "batch_size")
BY_NAME = {d.name: d for d in DIMENSIONS}
SETTING_KEYS = {key: d.name for d in DIMENSIONS for key in d.all_keys}
"""Every study key of the table, to the dimension that owns it."""


def space_from_settings(settings: dict[str, Any]) -> tuple[Dimension, ...]:
    """The table with the ranges and choices that `settings` (study keys) give; others default."""
    return tuple(d.with_settings(settings) for d in DIMENSIONS)


def space_section(section: Any, where: str) -> dict[str, Any]:
    """A config file's `space:` section as study keys, plus the `searched` list it implies
    (the dimensions it names, in order). Each entry gives `low`/`high` (float dimensions) or
    `choices` (or is a plain list of choices); an empty entry keeps the default range."""
    if not isinstance(section, dict) or not section:
        raise UserError(f"{where}: `space` must map dimension names to ranges or choices")
    values: dict[str, Any] = {"searched": list(section)}
    for name, spec in section.items():
        dim = BY_NAME.get(name)
        if dim is None:
            raise UserError(f"{where}: space: unknown dimension {name!r} (known: "
                            f"{', '.join(BY_NAME)})")
        spec = {"choices": spec} if isinstance(spec, list) else spec or {}
        fields = ("choices",) if dim.kind == CHOICE else ("low", "high")
        if dim.kind != CHOICE and dim.key and isinstance(spec, dict) and "choices" in spec:
            fields, keys = ("choices",), (dim.key,)  # a float dimension given as choices
        else:
            keys = dim.keys
        if not isinstance(spec, dict) or set(spec) - set(fields):
            takes = ("low and high, or choices" if dim.kind != CHOICE and dim.key
                     else " and ".join(fields))
            raise UserError(f"{where}: space: {name} ({dim.kind}) takes {takes}")
        values |= {key: spec[f] for key, f in zip(keys, fields, strict=True) if f in spec}
    return values


def search_space(study: Any) -> dict[str, Any]:
    """Ray Tune domains for the study's searched fields, keyed by field name."""
    return {d.name: d.domain() for d in study.space if d.name in study.searched}


def trial_config(base: TrialConfig, sampled: dict[str, Any]) -> TrialConfig:
    """The base trial config with the sampled values in place; other fields pass through."""
    return base.replace(**{d.name: d.cast(sampled[d.name]) for d in DIMENSIONS
                           if d.name in sampled})
