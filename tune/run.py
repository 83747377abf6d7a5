"""Tune QLoRA fine-tuning on UNFAIR-ToS: `python tune/run.py --help`.

    python tune/run.py --smoke                              # tiny local study, demo data
    python tune/run.py --data-dir ../shared/data/unfair_tos # 8 trials, 2 at a time
    python tune/run.py --address auto --mlflow-uri http://127.0.0.1:5000 ...  # on a cluster

Flags of `python -m trainable.train` fix that trial-config field for every trial (a searched
field passed this way is no longer searched). Precedence: defaults < --smoke < --config
file < flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainable.cli import ArgumentParser, add_dataclass_flags, command
from trainable.config import DEMO_DATA, OBJECTIVE, TrialConfig
from trainable.errors import UserError, first_line
from trainable.train import add_trial_arguments, trial_changes
from tune.auth import use_token_auth
from tune.space import BY_NAME, CHOICE, DIMENSIONS, space_section
from tune.study import StudyConfig

# --smoke: a tiny study for the quickstart and CI (about two minutes on two cores).
SMOKE_STUDY = {"name": "smoke", "num_trials": 3, "max_concurrent": 2, "lora_ranks": (4, 8),
               "max_lengths": (64,), "batch_sizes": (16, 32), "lr_min": 1e-3, "lr_max": 5e-3}
SMOKE_TRIAL = {"epochs": 2, "data": DEMO_DATA}

# Study fields a --resume may change: where things run and are mirrored, not what is searched.
RESUMABLE = {"name", "storage_path", "address", "mlflow_uri"}

# Study fields whose flag differs from what the field's type and docstring give.
STUDY_FLAG_OVERRIDES: dict[str, dict[str, Any]] = {
    "storage_path": {"metavar": "DIR_OR_URI"},
    "mlflow_uri": {"metavar": "URI"},
    "address": {"metavar": "ADDRESS"},
    "trial_resource": {"metavar": "NAME"},
}


def _space_flags() -> dict[str, dict[str, Any]]:
    """Flags of each dimension's study keys, from the search-space table."""
    flags: dict[str, dict[str, Any]] = {}
    for dim in DIMENSIONS:
        if dim.kind != CHOICE:
            for key, end in zip(dim.keys, ("lower", "upper"), strict=True):
                flags[key] = dict(type=float, metavar="X",
                                  help=f"{end} bound of {dim.name} ({dim.help}; default "
                                       f"{dim.describe()})")
            if dim.key:
                flags[dim.key] = dict(type=float, nargs="+", metavar="X",
                                      help=f"{dim.name} values to choose from, instead of its "
                                           f"range")
        else:
            flags[dim.keys[0]] = dict(type=dim.type, nargs="+", metavar="V",
                                      help=f"{dim.help} (default {dim.describe()})")
    return flags


def build_parser() -> ArgumentParser:
    """The driver's flags: study fields, then every trial flag of trainable.train."""
    p = ArgumentParser(prog="python tune/run.py", description=__doc__.split("\n")[0])
    study = p.add_argument_group("study")
    add_dataclass_flags(study, StudyConfig, STUDY_FLAG_OVERRIDES, skip=("searched", "space"))
    space = p.add_argument_group("search space (tune/space.py)")
    for name, spec in _space_flags().items():
        space.add_argument(f"--{name.replace('_', '-')}", dest=name, **spec)
    study.add_argument("--config", type=Path, metavar="FILE",
                       help="YAML/JSON file with `study:` and `trial:` sections")
    study.add_argument("--resume", action="store_true", help="continue an interrupted study")
    study.add_argument("--smoke", action="store_true",
                       help="tiny study (3 trials, 2 epochs, demo data unless --data-dir)")
    add_trial_arguments(p.add_argument_group("trial (fixed for every trial)"))
    return p


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `study` and `trial` sections of a YAML or JSON config file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"config file {path}: cannot read ({first_line(e)})") from None
    if not isinstance(data, dict) or set(data) - {"study", "trial", "space"}:
        raise UserError(f"config file {path}: expected only `study:`, `space:` and `trial:` "
                        f"sections")
    study, trial = data.get("study") or {}, data.get("trial") or {}
    if not isinstance(study, dict) or not isinstance(trial, dict):
        raise UserError(f"config file {path}: `study` and `trial` must be mappings")
    if "space" in data:
        study = study | space_section(data["space"], f"config file {path}")
    return _floats(study, StudyConfig), _floats(trial, TrialConfig)


def _floats(values: dict[str, Any], cls: type) -> dict[str, Any]:
    # YAML 1.1 reads `1e-3` (no dot) as a string; float fields take it as the number meant.
    float_fields = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type)}
    out = dict(values)
    for key, value in values.items():
        if key in float_fields and isinstance(value, str):
            try:
                out[key] = float(value)
            except ValueError:
                pass  # left as is: the config's own validation names the field
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[StudyConfig, TrialConfig, bool]:
    """Flags (and config file) to (study config, base trial config, resume)."""
    args = vars(build_parser().parse_args(argv))
    config_file, resume, smoke = args.pop("config"), args.pop("resume"), args.pop("smoke")
    trial_flags = trial_changes(args)
    study_flags = {k: v for k, v in args.items() if v is not None}
    if resume:
        return _resume_configs(study_flags, trial_flags, config_file, smoke)
    study_values: dict[str, Any] = dict(SMOKE_STUDY) if smoke else {}
    trial_values: dict[str, Any] = dict(SMOKE_TRIAL) if smoke else {}
    if config_file is not None:
        file_study, file_trial = read_config_file(config_file)
        study_values |= file_study
        trial_values |= file_trial
    study_values |= study_flags
    trial_values |= trial_flags
    # A searched field fixed for every trial (flag or file) is no longer searched.
    searched = study_values.get("searched", StudyConfig().searched)
    # An explicit target_modules or lora_alpha makes lora_targets or lora_alpha_ratio moot.
    fixed = [f for f in searched if f in trial_values
             or f in BY_NAME and BY_NAME[f].fixed_by in trial_values]
    if fixed:
        study_values["searched"] = tuple(f for f in searched if f not in fixed)
    trial_values.pop("output_dir", None)  # each trial writes to its own folder
    base = TrialConfig().replace(**trial_values)
    study = StudyConfig().replace(**study_values)
    if not study.searched:
        raise UserError("every searched field is fixed; nothing to tune (drop one of "
                        f"--{' --'.join(f.replace('_', '-') for f in fixed)})")
    if base.cv_folds and study.workers_per_trial > 1:
        raise UserError(f"cv_folds {base.cv_folds}: a cross-validated trial runs in one process "
                        f"(got workers_per_trial {study.workers_per_trial})")
    return study, base, False


def _resume_configs(study_flags: dict[str, Any], trial_flags: dict[str, Any],
                    config_file: Path | None, smoke: bool) -> tuple[StudyConfig, TrialConfig, bool]:
    from tune.study import read_study_file

    extra = sorted(set(study_flags) - RESUMABLE) + sorted(trial_flags)
    if config_file is not None or extra:
        given = ["--config"] if config_file is not None else []
        given += [f"--{k.replace('_', '-')}" for k in extra]
        raise UserError(f"--resume continues a study with its saved settings; drop "
                        f"{' '.join(given)}")
    where = StudyConfig().replace(**({"name": SMOKE_STUDY["name"]} if smoke else {})
                                  | {k: v for k, v in study_flags.items() if k in RESUMABLE})
    stored = read_study_file(where.experiment_path)
    if stored is None:
        raise UserError(f"--resume: no study at {where.experiment_path} (check --name and "
                        f"--storage-path)")
    study, base, _ = stored
    overrides = {k: v for k, v in study_flags.items() if k in ("address", "mlflow_uri")}
    return study.replace(storage_path=where.storage_path, **overrides), base, True


def print_summary(summary: Any) -> None:
    """The study's outcome: counts, compute, the best trial and where to find it."""
    from tune.records import COMPLETED, FAILED, STOPPED

    study, counts = summary.study, summary.counts
    epochs_run = sum(r.epochs for r in summary.records)
    print(f"\nstudy {study.name}: {len(summary.records)} trials ({counts.get(COMPLETED, 0)} "
          f"completed, {counts.get(STOPPED, 0)} stopped early by ASHA, {counts.get(FAILED, 0)} "
          f"failed) in {summary.seconds / 60:.1f} min")
    print(f"trial-epochs run: {epochs_run}; trials' own time {summary.trial_seconds / 60:.1f} min")
    if summary.retried:
        print(f"out of memory: {summary.retried} trial(s) went on with a smaller micro-batch "
              f"(same batch, metric train/grad_accumulation on their MLflow runs)")
    if summary.memory:
        worst = max(summary.memory, key=lambda m: abs(m.error))
        mean = sum(abs(m.error) for m in summary.memory) / len(summary.memory)
        # The prediction is for batches padded to max_length; a trial's batches are padded to
        # their longest clause, so on short clauses it needs less than predicted.
        print(f"memory model: predicted (batches padded to max_length) vs measured peak RSS over "
              f"{len(summary.memory)} trials: mean error {mean:.1%}, worst {worst.error:+.1%} "
              f"(trial {worst.trial_id})")
    if summary.best is None:
        print("no trial has finished with a result")
        return
    best = summary.best_result
    params = "  ".join(f"{k}={summary.best.sampled.get(k)}" for k in study.searched)
    print(f"best trial {summary.best.trial_id}: {OBJECTIVE.metric} "
          f"{best[OBJECTIVE.metric]:.4f} at epoch {best.get('epoch')}")
    print(f"  {params}")
    print(f"  adapter: {summary.best_adapter}")
    if summary.mlflow_synced:
        from tune.mlflow_ui import describe_links, study_links

        print(f"  MLflow run: {summary.best_run_id} (study run {summary.parent_run_id})")
        links = study_links(study.tracking_uri, summary.experiment_id, study.name,
                            summary.trial_run_ids, summary.best_run_id)
        print("\n".join(describe_links(study.tracking_uri, links)))
    else:
        print(f"  MLflow not updated; once it is reachable: python -m tune.sync --name "
              f"{study.name} --storage-path {study.storage_path}")


def quiet_libraries() -> None:
    """Keep the study's console to its progress lines and warnings."""
    import logging

    import mlflow  # noqa: F401  (configures its loggers on import; set levels after)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A failed trial's traceback goes to its error.txt and MLflow tag `error`; the study's
    # console gets one line per failure (ProgressPrinter), not Ray's page of traceback.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)


def hide_ray_resume_hint() -> None:
    """Keep Ray's "Resume experiment with: Tuner.restore(...)" off the console after Ctrl-C:
    it is Ray's Python API, not this tool's command, which main() prints instead."""
    import logging

    # Ray logs it once, as a warning of `ray.tune.tune` (ray/tune/tune.py, run()), with no
    # switch of its own; a filter on that logger drops just that record.
    logging.getLogger("ray.tune.tune").addFilter(
        lambda record: "Tuner.restore(" not in record.getMessage())


@command(verbose=True, env={
    # The mirror's requests run in Ray Tune's event loop: an outage may stall it only seconds.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # Ray's new console output prints its own boxes even at verbose=0; the study prints its
    # own one-line progress (tune.callbacks.ProgressPrinter).
    "RAY_AIR_NEW_OUTPUT": "0",
    # Adapter checkpoints every epoch are small; Ray's warning about frequent snapshots is noise.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"})
def main(argv: Sequence[str] | None = None) -> int:
    """Run the study the flags describe; print the best trial."""
    quiet_libraries()
    hide_ray_resume_hint()
    study, base, resume = parse_args(argv)
    # Before anything imports ray: it reads $RAY_AUTH_MODE once, on import.
    use_token_auth(study.address or os.environ.get("RAY_ADDRESS"))
    from tune.driver import run_study

    summary = run_study(study, base, resume=resume)
    print_summary(summary)
    if summary.interrupted:
        print(f"study interrupted; continue it with: python tune/run.py --resume --name "
              f"{study.name} --storage-path {study.storage_path}", file=sys.stderr)
        return 130
    if summary.best is None:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
