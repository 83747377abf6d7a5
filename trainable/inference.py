"""Load a trained adapter folder and score clauses with it (no Ray, no Lightning).

An adapter folder is what a trial checkpoints and what `analysis.best` exports: peft's
`adapter_model.safetensors` and `adapter_config.json` plus `trial_config.json`, which names
the base model and how it was quantized. An export may also hold the tokenizer and, for a
base model that was a local folder, a copy of it under `base_model/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainable.adapter import ADAPTER_WEIGHTS, read_adapter_folder
from trainable.config import TrialConfig
from trainable.errors import UserError, first_line

BASE_MODEL_DIR = "base_model"  # inside an export: the base model when it was a local folder


def load_trained(folder: str | Path, device: str | None = None) -> tuple[Any, Any, TrialConfig]:
    """(peft model in eval mode, tokenizer, trial config) of an adapter or export folder."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    from trainable import model as models

    folder = Path(folder)
    cfg, _ = read_adapter_folder(folder)
    if not Path(cfg.model).is_absolute() and (folder / cfg.model).is_dir():
        cfg = cfg.replace(model=str(folder / cfg.model))  # an export carrying its base model
    saved = read_adapter_weights(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    models.check_quantization(cfg.quantization, device)
    precision = inference_precision(cfg, device)
    base = models.build_base_model(cfg, device, precision)
    try:
        net = PeftModel.from_pretrained(base, str(folder), is_trainable=False)
    except RuntimeError as e:
        raise UserError(_mismatch_message(folder, cfg, str(e))) from None
    except Exception as e:  # peft raises ValueError/KeyError for configs that do not fit
        reason = first_line(e)
        raise UserError(f"checkpoint {folder}: cannot load the adapter onto model {cfg.model} "
                        f"({reason})") from None
    # peft only warns when adapter weights name modules this model lacks (an adapter from
    # another architecture) and leaves those layers untrained: refuse instead.
    expected = set(get_peft_model_state_dict(net))
    missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or unexpected:
        example = (f"unexpected {unexpected[0]}" if unexpected else f"missing {missing[0]}")
        raise UserError(f"checkpoint {folder}: adapter weights do not fit model {cfg.model} "
                        f"({example}); was it trained on another base model?")
    net.eval()
    return net, load_folder_tokenizer(folder, cfg), cfg


def read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors, from safetensors only; a damaged file is a one-line error."""
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError for a truncated or foreign file
        raise UserError(f"checkpoint {folder}: {ADAPTER_WEIGHTS} is corrupted or not a "
                        f"safetensors file ({first_line(e)})") from None


def _mismatch_message(folder: Path, cfg: TrialConfig, error: str) -> str:
    found = re.search(r"size mismatch for ([^:]+): copying a param with shape (\S+ \[?[^)]*\)?)"
                      r" from checkpoint, the shape in current model is (\S+ \[?[^)]*\)?)", error)
    if found or "size mismatch" in error:
        detail = (f"{found.group(1)}: {found.group(2)} in the checkpoint, {found.group(3)} in "
                  f"the model" if found else error.splitlines()[0])
        return (f"checkpoint {folder}: adapter weights do not fit model {cfg.model} (size "
                f"mismatch for {detail}); was it trained on another base model?")
    return f"checkpoint {folder}: cannot load the adapter ({error.splitlines()[0]})"


def load_folder_tokenizer(folder: Path, cfg: TrialConfig) -> Any:
    """The tokenizer saved in the folder (an export), else the base model's."""
    from transformers import AutoTokenizer

    from trainable.model import load_tokenizer

    if (Path(folder) / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:
            raise UserError(f"tokenizer in {folder}: cannot load ({first_line(e)})") from None
    return load_tokenizer(cfg)


def inference_precision(cfg: TrialConfig, device: str) -> str:
    """The training precision, except fp16 on CPU (slow there): bf16 instead."""
    from trainable.model import resolve_precision

    precision = resolve_precision(cfg, device)
    return "bf16-mixed" if device == "cpu" and precision == "16-mixed" else precision


def predict_proba(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int,
                  batch_size: int = 32, precision: str | None = None,
                  progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """P(unfair) for each text, in input order.

    Batches hold texts of similar length, each padded to its longest; `precision` is the
    Lightning precision to autocast to (None: the compute dtype the model was quantized
    with, else fp32). `progress` is called with the number of texts of each batch done.
    """
    texts = list(texts)
    probs = np.zeros(len(texts), dtype=np.float64)
    if not texts:
        return probs
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]), reverse=True)
    device = next(model.parameters()).device
    dtype = _autocast_dtype(model, precision)
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        batch = tokenizer.pad([{k: encoded[k][i] for k in encoded} for i in ids],
                              return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            logits = model(**batch).logits.float()
        probs[ids] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        if progress is not None:
            progress(len(ids))
    return probs


def _autocast_dtype(model: Any, precision: str | None) -> torch.dtype | None:
    from trainable.model import compute_dtype

    if precision is not None:
        dtype = compute_dtype(precision)
        return None if dtype == torch.float32 else dtype
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    dtype = quant.get("bnb_4bit_compute_dtype") if isinstance(quant, dict) else getattr(
        quant, "bnb_4bit_compute_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), None)
    return dtype if dtype in (torch.bfloat16, torch.float16) else None
