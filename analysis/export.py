"""The exported model folder: adapter, tokenizer, trial config, threshold and metrics.

    export/
      adapter_model.safetensors, adapter_config.json   the LoRA adapter and head (peft)
      trial_config.json, metrics.json                  how it was trained; its epoch's metrics
      tokenizer files                                  save_pretrained
      threshold.json                                   decision threshold and the evidence for it
      evaluation.json                                  test metrics, baseline, provenance
      base_model/                                      only when the base was a local folder

`trainable.inference.load_trained(export)` loads it offline (the packaged MiniLM or a hub
model in the local cache as base). An MLflow model (`models:/name@alias`) wraps this folder
as its `export` artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from analysis.bootstrap import DEFAULT_THRESHOLD
from trainable.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, METRICS, TRIAL_CONFIG, write_json
from trainable.config import PACKAGED_MODEL, TrialConfig
from trainable.errors import UserError, first_line
from trainable.inference import BASE_MODEL_DIR

THRESHOLD_FILE = "threshold.json"
EVALUATION_FILE = "evaluation.json"
# Base-model files worth carrying: configs, vocabularies and safetensors weights (never pickles).
_BASE_FILES = ("*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "merges.txt")


def write_export(adapter_dir: Path, export_dir: Path, tokenizer: Any, threshold: dict[str, Any],
                 evaluation: dict[str, Any]) -> Path:
    """Write the export folder (replacing an earlier export there); return its path."""
    export_dir = Path(export_dir)
    if export_dir.exists() and (not export_dir.is_dir() or any(export_dir.iterdir()) and not (
            export_dir / TRIAL_CONFIG).is_file()):
        raise UserError(f"export dir {export_dir} exists and is not an earlier export; "
                        f"pass an empty or new folder")
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.", dir=export_dir.parent))
    try:
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, METRICS):
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, tmp / name)
        cfg = TrialConfig.from_json_file(adapter_dir / TRIAL_CONFIG)
        base = _local_base_model(cfg)
        if base is not None:
            _copy_base(base, tmp / BASE_MODEL_DIR)
            cfg = cfg.replace(model=BASE_MODEL_DIR)  # resolved against the folder on load
        write_json(tmp / TRIAL_CONFIG, cfg.to_dict())
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / THRESHOLD_FILE, threshold)
        write_json(tmp / EVALUATION_FILE, evaluation)
        if export_dir.exists():
            shutil.rmtree(export_dir)
        os.replace(tmp, export_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return export_dir


def _local_base_model(cfg: TrialConfig) -> Path | None:
    """The base model's folder when it is a local folder (not the packaged model, not a hub id)."""
    if cfg.model == PACKAGED_MODEL:
        return None
    path = Path(cfg.model).expanduser()
    if path.is_dir() and any(path.glob("*.safetensors")):
        return path
    return None


def _copy_base(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for pattern in _BASE_FILES:
        for path in source.glob(pattern):
            if path.is_file():
                shutil.copy2(path, dest / path.name)


def read_threshold(folder: str | Path) -> float:
    """The decision threshold saved with an export (0.5 when there is none)."""
    path = Path(folder) / THRESHOLD_FILE
    if not path.is_file():
        return DEFAULT_THRESHOLD
    try:
        value = float(json.loads(path.read_text(encoding="utf-8"))["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: unreadable threshold ({e})") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{path}: threshold {value} is not a probability")
    return value


def find_export(root: Path) -> Path:
    """The export folder inside a downloaded MLflow model (or `root` itself)."""
    root = Path(root)
    if (root / TRIAL_CONFIG).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(TRIAL_CONFIG) if (p.parent / ADAPTER_CONFIG).is_file())
    if not found:
        raise UserError(f"{root}: no exported model inside (no {TRIAL_CONFIG} beside an adapter)")
    return found[0]


def resolve_model_arg(model: str, tracking_uri: str | None, workdir: Path) -> Path:
    """An export folder for MODEL: the folder itself, or an MLflow model URI downloaded into
    `workdir` (`models:/name@alias`, `models:/name/version`, `runs:/id/path`)."""
    if model.startswith(("models:/", "runs:/")):
        import mlflow

        if not tracking_uri:
            raise UserError(f"model {model}: an MLflow URI needs --mlflow-uri or "
                            f"MLFLOW_TRACKING_URI")
        try:
            source = registered_source(model, tracking_uri)
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(workdir),
                                                        tracking_uri=tracking_uri)
        except UserError:
            raise
        except Exception as e:  # MlflowException (no such model/alias), connection errors
            reason = first_line(e)
            raise UserError(f"model {model}: cannot download from {tracking_uri} ({reason})") from None
        return find_export(Path(local))
    path = Path(model).expanduser()
    if not path.is_dir():
        raise UserError(f"model {model}: no such folder (an export folder from analysis.best, or "
                        f"models:/NAME@ALIAS)")
    if not (path / TRIAL_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        missing = TRIAL_CONFIG if not (path / TRIAL_CONFIG).is_file() else ADAPTER_WEIGHTS
        raise UserError(f"model {model}: not an exported model folder ({missing} is missing)")
    return path


def registered_source(uri: str, tracking_uri: str) -> str:
    """The artifact location behind a `models:/name@alias`, `models:/name/version` or
    `models:/<logged model id>` URI (other URIs as they are).

    Resolved with a client bound to `tracking_uri` (as registry too): MLflow's own resolution
    of models:/ URIs asks the default stores (a sqlite file in the working directory) instead.
    """
    from mlflow.tracking import MlflowClient

    if not uri.startswith("models:/"):
        return uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = uri[len("models:/"):].strip("/")
    name, _, version = ref.rpartition("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        source = client.get_model_version_by_alias(name, alias).source
    elif name and version.isdigit():
        source = client.get_model_version(name, version).source
    else:
        source = uri
    if source.startswith("models:/"):  # MLflow 3: a version points at a logged model
        source = client.get_logged_model(source[len("models:/"):].strip("/")).artifact_location
    return source
