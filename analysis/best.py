"""Pick a study's best checkpoint, evaluate it on test, register it, and export it.

    python -m analysis.best --mlflow-uri http://127.0.0.1:5000 --experiment qlora-unfair-tos \\
        --export-dir models/champion

The best trial is the one with the best objective over all its epochs (not its last epoch);
its adapter of that epoch comes from the trial's MLflow artifact `adapter/` (checked against
its metrics.json epoch), else from the Ray checkpoint of that epoch. How sure that choice is:
the top trials' objective with bootstrap intervals over the validation clauses, and how often
each is best on the same resamples. The champion is evaluated on the test split at 0.5, at
the F1-optimal threshold on validation, and at the threshold the rule picks (0.5 unless
tuning holds up on left-out validation clauses; `analysis.bootstrap`), which the export
uses; test metrics at it come with bootstrap intervals, beside a TF-IDF + LinearSVC baseline
trained on the same train split. All of it is logged to a new MLflow run
under the study's parent run (run_type `evaluation`); the model is registered with the alias
`champion` and exported as a folder that `trainable.inference.load_trained` loads offline.

The steps live by concern: `analysis.select` (which checkpoint), `analysis.evaluate` (its
test metrics, the baseline, the export check) and `analysis.register` (MLflow run, model
registry, export folder); this module is the command that runs them in order.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from analysis.bootstrap import DEFAULT_THRESHOLD
from analysis.ensemble import DEFAULT_MEMBERS, evaluate_ensemble
from analysis.evaluate import Evaluation, check_export, evaluate, write_plots
from analysis.register import CHAMPION, DEFAULT_MODEL_NAME, log_and_register, write_export
from analysis.select import choose, compare_top, fetch_checkpoint
from analysis.study import Study, add_study_arguments, study_from_args
from trainable.adapter import TRIAL_CONFIG
from trainable.cli import ArgumentParser, command
from trainable.config import OBJECTIVE
from trainable.errors import UserError


def parse_args(argv: Sequence[str] | None = None) -> Any:
    """The command line."""
    p = ArgumentParser(prog="python -m analysis.best",
                       description="Evaluate, register and export a study's best checkpoint.")
    add_study_arguments(p)
    p.add_argument("--export-dir", type=Path, required=True, metavar="DIR",
                   help="where the self-contained model folder is written")
    p.add_argument("--data-dir", metavar="DIR",
                   help="train/validation/test files (default: the data the study trained on)")
    p.add_argument("--storage-path", metavar="DIR",
                   help="Ray results folder, if not where the study recorded it")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                   help=f"MLflow registered model name (default: {DEFAULT_MODEL_NAME})")
    p.add_argument("--ensemble", type=int, default=DEFAULT_MEMBERS, metavar="K",
                   help=f"also evaluate the mean of the top K trials' adapters beside the "
                        f"champion (default: {DEFAULT_MEMBERS}; 1: do not)")
    args = p.parse_args(argv)
    if args.ensemble < 1:
        p.error(f"--ensemble: must be at least 1 (got {args.ensemble})")
    return args


def run(args: Any) -> tuple[Study, Evaluation, str, str, Path]:
    """Choose, fetch, evaluate, export, log and register; the plain function behind main()."""
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    study, client = study_from_args(uri, args.experiment, args.study, args.storage_path,
                                    allow_offline=False)
    trial, epochs, value = choose(study)
    tracking_uri = client.tracking_uri if client else uri
    top = compare_top(study, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="analysis-best-") as tmp:
        tmp_path = Path(tmp)
        adapter_dir, epoch, source = fetch_checkpoint(study, trial, epochs, tmp_path, tracking_uri)
        if not (adapter_dir / TRIAL_CONFIG).is_file():
            raise UserError(f"checkpoint {source}: {TRIAL_CONFIG} is missing")
        evaluation, tokenizer, curves = evaluate(adapter_dir, args.data_dir)
        evaluation.study, evaluation.trial_id, evaluation.epoch = study.name, trial.trial_id, epoch
        evaluation.logged_value, evaluation.checkpoint_source = value, source
        evaluation.top_trials = top.to_dict()
        if args.ensemble > 1:
            champion = {"trial_id": trial.trial_id, "epoch": epoch, "value": value,
                        "source": source, "probs": curves["probs"], "labels": curves["labels"]}
            ensemble = evaluate_ensemble(study, args.ensemble, champion, evaluation.data, tmp_path,
                                         tracking_uri, trusted=evaluation.threshold_rule.get(
                                             "trusted", True))
            evaluation.ensemble = asdict(ensemble) if ensemble else {}
        plots_dir = tmp_path / "plots"
        plots_dir.mkdir()
        plots = write_plots(evaluation, curves, plots_dir)
        threshold = {"threshold": evaluation.threshold, "chosen_on": "validation",
                     "validation_f1": evaluation.metrics["val_chosen"]["f1"],
                     "default": DEFAULT_THRESHOLD,
                     "tuned": evaluation.tuned_threshold, "evidence": evaluation.threshold_rule}
        export = write_export(adapter_dir, args.export_dir, tokenizer, threshold, evaluation)
        for path in plots:
            shutil.copy2(path, export / path.name)
        check_export(export, curves["val_texts"][:16], curves["probs"]["val"][:16])
        run_id, version = log_and_register(client, study, evaluation, plots, export,
                                           args.model_name)
    return study, evaluation, run_id, version, export


# Registering a model uploads it whole: each request may take longer than a metric's.
@command(env={"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"})
def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the study's best checkpoint; print a summary."""
    args = parse_args(argv)
    _quiet()
    if args.mlflow_uri:
        import mlflow

        # log_model and register_model go through MLflow's process-wide stores.
        mlflow.set_tracking_uri(args.mlflow_uri)
        mlflow.set_registry_uri(args.mlflow_uri)
    study, ev, run_id, version, export = run(args)
    m = ev.metrics
    print(f"study {study.name}: best trial {ev.trial_id}, epoch {ev.epoch} "
          f"({OBJECTIVE.metric} {ev.logged_value:.4f} as logged; {m['val']['f1']:.4f} "
          f"recomputed on {ev.sizes['validation']} validation clauses)")
    print(f"checkpoint: {ev.checkpoint_source}")
    print(f"test split ({ev.sizes['test']} clauses, data {ev.data}):")
    header = f"  {'':34s} {'F1':>6s} {'prec':>6s} {'recall':>6s} {'macroF1':>7s}  tn/fp/fn/tp"
    print(header)
    used = " (used)" if ev.threshold == DEFAULT_THRESHOLD else ""
    rows = [(f"model @ {DEFAULT_THRESHOLD:g}{used}", m["test"]),
            (f"model @ {ev.tuned_threshold:.4f} (F1-opt. on val)", m["test_tuned"])]
    if ev.threshold not in (DEFAULT_THRESHOLD, ev.tuned_threshold):
        rows.append((f"model @ {ev.threshold:.4f} (used)", m["test_chosen"]))
    if ev.ensemble:
        size = len(ev.ensemble["members"])
        rows.append((f"ensemble of top {size} @ 0.5", ev.ensemble["metrics"]["test"]))
        if ev.ensemble["threshold"] != DEFAULT_THRESHOLD:
            rows.append((f"ensemble @ {ev.ensemble['threshold']:.4f} (rule)",
                         ev.ensemble["metrics"]["test_chosen"]))
    rows.append((f"TF-IDF + LinearSVC (C={ev.baseline_C:g})", m["baseline_test"]))
    for name, r in rows:
        print(f"  {name:34s} {r['f1']:6.4f} {r['precision']:6.4f} {r['recall']:6.4f} "
              f"{r['macro_f1']:7.4f}  {r['tn']}/{r['fp']}/{r['fn']}/{r['tp']}")
    print("\n".join(ev.summary()))
    print(f"MLflow: evaluation run {run_id} under study run {study.parent_run_id}; registered "
          f"{args.model_name} version {version} as @{CHAMPION} (models:/{args.model_name}@{CHAMPION})")
    print("\n".join(_links(args, study, run_id)))
    print(f"export: {export}")
    return 0


def _links(args: Any, study: Study, run_id: str) -> list[str]:
    """Links to the evaluation run and to the study's trials in MLflow's model-training view."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tune.mlflow_ui import describe_links, label_experiment, run_page, study_page

    if not study.experiment_id:
        return []
    uri = args.mlflow_uri or mlflow.get_tracking_uri()
    # The study's view, for studies mirrored before the mirror saved it.
    label_experiment(MlflowClient(uri), study.experiment_id, study.name, study.searched)
    return describe_links(uri, [
        ("evaluation", run_page(uri, study.experiment_id, run_id)),
        ("trials", study_page(uri, study.experiment_id, study.name))])


def _quiet() -> None:
    import logging
    import warnings

    import mlflow  # noqa: F401  (configures its loggers on import; set levels after)

    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)


if __name__ == "__main__":
    sys.exit(main())
