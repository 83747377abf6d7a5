"""An adapter folder: its file names, and writing and reading it (no Lightning, no Ray).

Light on purpose: inference, export, analysis and the MLflow mirror read adapter folders
and must not pull in Lightning; `trainable.checkpoint` writes one per epoch during a fit.

An adapter folder holds the LoRA adapter and head (peft's `adapter_model.safetensors` and
`adapter_config.json`), `trial_config.json` (which names the base model and tokenizer),
`metrics.json`, and `validation_scores.json` (that epoch's P(unfair) of every validation
clause, in split order, with the labels: what `analysis` bootstraps the objective from, with
no model loaded); an epoch checkpoint adds `resume.ckpt` (Lightning's optimizer and loop
state), which exports leave out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainable.config import TrialConfig
from trainable.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TRIAL_CONFIG = "trial_config.json"
METRICS = "metrics.json"
RESUME = "resume.ckpt"
VALIDATION_SCORES = "validation_scores.json"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_adapter(model: Any, folder: Path, cfg: TrialConfig, metrics: dict[str, float],
                 validation_scores: dict[str, Any] | None = None) -> None:
    """Write the adapter (safetensors), the trial config, the metrics and, when given, the
    validation scores (`{"labels", "scores"}`, stamped with the metrics' epoch) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    write_json(folder / TRIAL_CONFIG, cfg.to_dict())
    write_json(folder / METRICS, metrics)
    if validation_scores is not None:
        write_json(folder / VALIDATION_SCORES, {"epoch": metrics.get("epoch"), **validation_scores})


def read_adapter_folder(folder: Path) -> tuple[TrialConfig, dict[str, Any]]:
    """The trial config and metrics of an adapter folder, checking that it is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint {folder}: no such folder")
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRIAL_CONFIG):
        if not (folder / name).is_file():
            raise UserError(f"checkpoint {folder}: {name} is missing")
    cfg = TrialConfig.from_json_file(folder / TRIAL_CONFIG)
    metrics_path = folder / METRICS
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return cfg, metrics


def load_adapter_weights(model: Any, folder: Path) -> None:
    """Load an adapter folder's safetensors weights into a peft model built the same way."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        state = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    except Exception as e:
        raise UserError(f"checkpoint {folder}: cannot read {ADAPTER_WEIGHTS} ({e})") from None
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise UserError(f"checkpoint {folder}: weights do not fit this model "
                        f"(unexpected {unexpected[0]})")
