"""Shared fixtures: a tiny real BERT classifier, the shipped data, and a CLI runner.

The tiny model is a real (randomly initialised) BERT built from a `BertConfig`, saved the
way a hub model is, so tests exercise the real loading, quantization and LoRA paths in
seconds instead of fine-tuning MiniLM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """No network here: hub look-ups fail at once instead of retrying (set before HF imports)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests on machines without CUDA."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sequence classifier plus the packaged MiniLM tokenizer, on disk."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trainable.config import PACKAGED_MODEL
    from trainable.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    # Hidden size 64: bitsandbytes quantizes in blocks of 64 values.
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=128, num_labels=2,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)  # the same tiny model in every session
    model = BertForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real UNFAIR-ToS files: $UNFAIR_TOS_DIR or ../shared/data/unfair_tos."""
    folder = Path(os.environ.get("UNFAIR_TOS_DIR") or REPO_ROOT.parent / "shared" / "data"
                  / "unfair_tos")
    if not all((folder / f"{s}.tsv").is_file() for s in ("train", "validation", "test")):
        pytest.skip(f"real UNFAIR-ToS data not found in {folder} (set UNFAIR_TOS_DIR)")
    return folder


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: offline, quiet tokenizers, plus `env`."""
    merged = dict(os.environ)
    merged.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    merged.update(env or {})
    return merged


def run_cli(*args: str, module: str = "trainable.train", env: dict[str, str] | None = None,
            timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> *args` in a fresh process and capture its output."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=cli_env(env),
                          cwd=cwd or REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    """`run_cli(*args, env=None, timeout=...)` -> CompletedProcess of `python -m trainable.train`."""
    return run_cli


def error_lines(stderr: str) -> list[str]:
    """The lines of `stderr` our CLIs print for a user error (libraries may add warnings)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
