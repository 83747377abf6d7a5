"""Checks on the offline demo data set shipped in ``trainable/demo/``, and its generator
(``docs/demo/make_demo.py``, outside the installed package)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT
from trainable.data import demo_dir

pytestmark = pytest.mark.unit

DEMO_DIR = demo_dir()
GENERATOR = REPO_ROOT / "docs" / "demo" / "make_demo.py"
SPLITS = ["train", "validation", "test"]
UNFAIR_CATEGORIES = {
    "Limitation of liability",
    "Unilateral termination",
    "Unilateral change",
    "Content removal",
    "Contract by using",
    "Choice of law",
    "Jurisdiction",
    "Arbitration",
}


def _path(split: str) -> Path:
    return DEMO_DIR / f"{split}.tsv"


def _read(split: str) -> pd.DataFrame:
    return pd.read_csv(
        _path(split), sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False
    )


@pytest.fixture(scope="module")
def frames() -> dict:
    return {split: _read(split) for split in SPLITS}


@pytest.mark.parametrize("split", SPLITS)
def test_columns_and_labels(frames, split):
    df = frames[split]
    assert list(df.columns) == ["text", "category", "label"]
    assert len(df) > 0
    assert set(df["label"].unique()) <= {0, 1}
    assert set(df["category"]) <= UNFAIR_CATEGORIES | {"Other"}
    assert (df["label"] == (df["category"] != "Other").astype(int)).all()


@pytest.mark.parametrize("split", SPLITS)
def test_both_classes_present(frames, split):
    counts = frames[split]["label"].value_counts()
    assert counts.get(0, 0) > 0
    assert counts.get(1, 0) > 0


def test_all_unfair_categories_in_train(frames):
    assert UNFAIR_CATEGORIES <= set(frames["train"]["category"])


@pytest.mark.parametrize("split", SPLITS)
def test_text_is_lowercase_single_line(frames, split):
    texts = frames[split]["text"]
    assert (texts.str.len() > 0).all()
    assert (texts == texts.str.lower()).all()
    assert not texts.str.contains(r"[\t\n\r]").any()


@pytest.mark.parametrize("split", SPLITS)
def test_text_is_already_in_the_form_prediction_normalizes_to(frames, split):
    from trainable.text import normalize

    texts = frames[split]["text"]
    assert [t for t in texts if normalize(t) != t] == []


def test_no_text_shared_between_splits(frames):
    texts = {split: set(frames[split]["text"]) for split in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not texts[a] & texts[b], f"{a} and {b} share clauses"


def test_generator_reproduces_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_demo", GENERATOR)
    make_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_demo)
    assert make_demo.DEMO_DIR == DEMO_DIR  # it regenerates the shipped files by default
    make_demo.write_demo(tmp_path)
    for split in SPLITS:
        assert (tmp_path / f"{split}.tsv").read_bytes() == _path(split).read_bytes()
