"""Reading and checking the splits, subsampling, class weights, and length-aware batching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainable import data
from trainable.config import PACKAGED_MODEL, TrialConfig
from trainable.errors import UserError

pytestmark = pytest.mark.unit

# Texts that trip naive readers: LexGLUE quotes, a lone double quote, pandas' NA markers.
TRICKY_TEXTS = ["the `` service '' is provided as is .", 'a lone " quote stays', "none", "NA",
                "null , really", "n/a"]


def _frame(n_fair: int = 8, n_unfair: int = 2) -> pd.DataFrame:
    texts = [f"clause number {i} ." for i in range(n_fair + n_unfair)]
    return pd.DataFrame({"text": texts, "label": [0] * n_fair + [1] * n_unfair})


def _write_tsv(path: Path, rows: list[tuple[str, object]], header: str = "text\tlabel") -> Path:
    lines = [header] + [f"{t}\t{lab}" for t, lab in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_split_dir(folder: Path, rows: list[tuple[str, object]] | None = None) -> Path:
    """A valid three-split TSV folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows or [(t, i % 2) for i, t in enumerate(TRICKY_TEXTS)]
    for split in data.SPLITS:
        _write_tsv(folder / f"{split}.tsv", rows)
    return folder


# --- reading ---------------------------------------------------------------------------

def _expected() -> pd.DataFrame:
    return pd.DataFrame({"text": TRICKY_TEXTS, "label": [i % 2 for i in range(len(TRICKY_TEXTS))]})


@pytest.mark.parametrize("fmt", data.FORMATS)
def test_reads_each_format(tmp_path, fmt):
    df = _expected()
    # Extra columns (like the shipped `category`) are dropped.
    full = df.assign(category=["Other"] * len(df))
    path = tmp_path / f"train.{fmt}"
    if fmt == "tsv":
        _write_tsv(path, list(zip(full["text"], full["label"], strict=True)), header="text\tlabel")
    elif fmt == "csv":
        full.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in full.to_dict("records")),
                        encoding="utf-8")
    else:
        full.to_parquet(path)
    got = data.read_split_file(path)
    assert list(got.columns) == ["text", "label"]
    assert got["text"].tolist() == TRICKY_TEXTS
    assert got["label"].tolist() == df["label"].tolist()
    assert all(isinstance(v, int) for v in got["label"].tolist())


@pytest.mark.parametrize(("split", "labels", "expected"), [
    ("validation", [0] * 1500, "validation split has 0 unfair and 1,500 fair clauses: F1 of the "
                               "unfair class would be 0 for every trial"),
    ("validation", [1, 1], "validation split has 2 unfair and 0 fair clauses: flagging every "
                           "clause would score F1 1.0"),
    ("train", [0, 0, 0], "train split has 0 unfair and 3 fair clauses: the model would never "
                         "see an unfair clause"),
    ("test", [0, 0], "test split has 0 unfair and 2 fair clauses"),
])
def test_a_split_without_both_classes_is_refused_at_load(tmp_path, split, labels, expected):
    folder = _write_split_dir(tmp_path / "d")
    _write_tsv(folder / f"{split}.tsv", [(f"clause {i} .", lab) for i, lab in enumerate(labels)])
    with pytest.raises(UserError) as e:
        data.load_splits(TrialConfig(data=str(folder), eval_test=True))
    assert str(e.value).startswith(f"data {folder}: {expected}"), str(e.value)


def test_a_one_class_test_split_is_not_checked_when_test_is_not_read(tmp_path):
    folder = _write_split_dir(tmp_path / "d")
    _write_tsv(folder / "test.tsv", [("clause .", 0)])
    splits = data.load_splits(TrialConfig(data=str(folder)), with_test=False)
    assert splits.test is None and set(splits.validation["label"]) == {0, 1}


def test_load_splits_from_a_folder(tmp_path):
    folder = _write_split_dir(tmp_path / "d")
    splits = data.load_splits(TrialConfig(data=str(folder)))
    assert splits.test is None  # eval_test is off by default
    assert splits.train["text"].tolist() == TRICKY_TEXTS
    assert len(splits.validation) == len(TRICKY_TEXTS)
    with_test = data.load_splits(TrialConfig(data=str(folder), eval_test=True))
    assert with_test.test is not None and len(with_test.test) == len(TRICKY_TEXTS)


def test_labels_as_strings_floats_and_bools_are_accepted(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0.0, 1.0, 1.0, 0.0]}).to_parquet(
        folder / "train.parquet")
    assert data.read_split_file(folder / "train.parquet")["label"].tolist() == [0, 1, 1, 0]
    (folder / "validation.jsonl").write_text(
        '{"text": "a", "label": true}\n{"text": "b", "label": false}\n', encoding="utf-8")
    assert data.read_split_file(folder / "validation.jsonl")["label"].tolist() == [1, 0]


def test_demo_data_loads_with_both_classes():
    splits = data.load_splits(TrialConfig(data="demo", eval_test=True))
    for df in (splits.train, splits.validation, splits.test):
        assert set(df["label"]) == {0, 1}
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (240, 80, 80)


@pytest.mark.parametrize(("split", "rows", "unfair"), [
    ("train", 1780, 168), ("validation", 463, 33), ("test", 1607, 169)])
def test_real_shipped_files_parse_with_the_documented_counts(shared_data_dir, split, rows, unfair):
    df = data.read_split_file(data.find_split_file(shared_data_dir, split))
    assert len(df) == rows
    assert int(df["label"].sum()) == unfair
    assert df["text"].map(lambda t: isinstance(t, str) and t.strip() != "").all()


def test_real_files_through_load_splits_with_subsampling(shared_data_dir):
    cfg = TrialConfig(data=str(shared_data_dir), max_train_samples=200, max_eval_samples=100,
                      eval_test=True)
    splits = data.load_splits(cfg)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (200, 100, 100)
    for df in (splits.train, splits.validation, splits.test):
        assert set(df["label"]) == {0, 1}


# --- bad inputs: each a UserError naming the culprit --------------------------------------

def _error(cfg_data: Path) -> str:
    with pytest.raises(UserError) as err:
        data.load_splits(TrialConfig(data=str(cfg_data)))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_data_dir(tmp_path):
    message = _error(tmp_path / "nowhere")
    assert "nowhere" in message and "does not exist" in message


def test_data_dir_is_a_file(tmp_path):
    path = tmp_path / "file.tsv"
    path.write_text("text\tlabel\n", encoding="utf-8")
    assert "not a directory" in _error(path)


def test_missing_split_file(tmp_path):
    folder = _write_split_dir(tmp_path / "d")
    (folder / "validation.tsv").unlink()
    message = _error(folder)
    assert "validation" in message and str(folder) in message


def test_ambiguous_split(tmp_path):
    folder = _write_split_dir(tmp_path / "d")
    _expected().to_csv(folder / "train.csv", index=False)
    message = _error(folder)
    assert "ambiguous" in message and "train.tsv" in message and "train.csv" in message


@pytest.mark.parametrize(("header", "missing"), [("sentence\tlabel", "text"),
                                                 ("text\tcategory", "label")])
def test_missing_column(tmp_path, header, missing):
    folder = _write_split_dir(tmp_path / "d")
    _write_tsv(folder / "train.tsv", [("a clause", 0)], header=header)
    message = _error(folder)
    assert "train.tsv" in message and f"missing column {missing!r}" in message


def test_empty_split(tmp_path):
    folder = _write_split_dir(tmp_path / "d")
    (folder / "validation.tsv").write_text("text\tlabel\n", encoding="utf-8")
    message = _error(folder)
    assert "validation.tsv" in message and "no rows" in message


def test_zero_byte_split_file(tmp_path):
    folder = _write_split_dir(tmp_path / "d")
    (folder / "train.tsv").write_bytes(b"")
    assert "train.tsv" in _error(folder)


@pytest.mark.parametrize(("bad", "shown"), [(2, "2"), (-1, "-1"), ("unfair", "'unfair'"),
                                            ("", "''"), ("0.5", "0.5")])
def test_labels_outside_0_1(tmp_path, bad, shown):
    folder = _write_split_dir(tmp_path / "d")
    _write_tsv(folder / "train.tsv", [("fine", 0), ("also fine", 1), ("bad one", bad)])
    message = _error(folder)
    assert "train.tsv" in message and "label must be 0 or 1" in message
    assert message.endswith(f"row 3 has {shown}")


def test_non_utf8_bytes(tmp_path):
    folder = _write_split_dir(tmp_path / "d")
    (folder / "test.tsv").unlink()
    (folder / "train.tsv").write_bytes("text\tlabel\ncaf\u00e9 clause\t0\n".encode("latin-1"))
    message = _error(folder)
    assert "train.tsv" in message and "UTF-8" in message and "0xe9" in message


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text(tmp_path, text):
    folder = _write_split_dir(tmp_path / "d")
    _write_tsv(folder / "validation.tsv", [("a clause", 0), (text, 1)])
    message = _error(folder)
    assert "validation.tsv" in message and "row 2" in message and "no text" in message


def test_null_text_in_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok", "label": 0}\n{"text": null, "label": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"train\.jsonl: row 2 has no text"):
        data.read_split_file(path)


def test_malformed_jsonl_names_the_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok", "label": 0}\n{oops\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"train\.jsonl: cannot parse as jsonl"):
        data.read_split_file(path)


# --- LexGLUE from the hub -------------------------------------------------------------------

def test_binarize_lexglue_records():
    records = [{"text": "fair clause", "labels": []},
               {"text": "unfair clause", "labels": [3]},
               {"text": "very unfair clause", "labels": [0, 7]}]
    df = data.binarize_lexglue(records)
    assert df["text"].tolist() == ["fair clause", "unfair clause", "very unfair clause"]
    assert df["label"].tolist() == [0, 1, 1]
    assert data.check_frame(df, "hub")["label"].tolist() == [0, 1, 1]


def test_hub_unreachable_is_a_one_line_error_pointing_to_local_files(monkeypatch):
    # The real hub path, offline (conftest sets HF_HUB_OFFLINE): it must fail fast and
    # clearly, never fall back to the demo set.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        data.load_splits(TrialConfig(data="hub"))
    message = str(err.value)
    assert "coastalcph/lex_glue/unfair_tos" in message and "--data-dir" in message
    assert "\n" not in message


def test_binarize_lexglue_empty_input_keeps_columns():
    df = data.binarize_lexglue([])
    assert list(df.columns) == ["text", "label"] and len(df) == 0


# --- subsampling ----------------------------------------------------------------------------

def test_subsample_without_limit_returns_everything():
    df = _frame(90, 10)
    assert data.subsample(df, None, 0) is df
    assert data.subsample(df, 100, 0) is df
    assert data.subsample(df, 1000, 0) is df


def test_subsample_keeps_the_class_ratio_and_is_deterministic():
    df = _frame(900, 100)
    a = data.subsample(df, 100, seed=1)
    assert len(a) == 100
    assert int(a["label"].sum()) == 10
    assert a.equals(data.subsample(df, 100, seed=1))
    assert not a.equals(data.subsample(df, 100, seed=2))
    # Rows are real rows of the input, kept in their original order, without duplicates.
    assert set(a["text"]) <= set(df["text"]) and a["text"].is_unique
    order = [int(t.split()[2]) for t in a["text"]]
    assert order == sorted(order)
    assert a.index.tolist() == list(range(100))


@pytest.mark.parametrize(("n_fair", "n_unfair", "limit"), [
    (90, 10, 4), (90, 10, 2), (98, 2, 3), (8, 2, 2), (8, 2, 9), (90, 10, 99), (463, 33, 462)])
def test_subsample_keeps_both_classes_and_respects_the_limit(n_fair, n_unfair, limit):
    df = _frame(n_fair, n_unfair)
    kept = data.subsample(df, limit, seed=0)
    assert len(kept) == limit
    assert set(kept["label"]) == {0, 1}
    assert kept["text"].is_unique


def test_subsample_of_a_single_class():
    df = _frame(10, 0)
    kept = data.subsample(df, 4, seed=0)
    assert len(kept) == 4 and set(kept["label"]) == {0}


# --- class weights --------------------------------------------------------------------------

def test_class_weights():
    labels = [0] * 8 + [1] * 2
    balanced = data.class_weights(labels, "balanced")
    assert balanced.tolist() == pytest.approx([10 / 16, 10 / 4])
    # Balanced weights give both classes the same total weight.
    assert float(balanced[0]) * 8 == pytest.approx(float(balanced[1]) * 2)
    assert data.class_weights(labels, "sqrt").tolist() == pytest.approx(
        [math.sqrt(10 / 16), math.sqrt(10 / 4)])
    assert data.class_weights(labels, "none") is None
    assert data.class_weights(iter(labels), "balanced").tolist() == pytest.approx(balanced.tolist())
    assert data.class_weights(pd.Series(labels), "sqrt").tolist() == pytest.approx(
        [math.sqrt(10 / 16), math.sqrt(10 / 4)])
    # One class only: nothing to balance.
    assert data.class_weights([0, 0, 0], "balanced") is None
    assert data.class_weights([1, 1], "sqrt") is None
    equal = data.class_weights([0, 1, 0, 1], "balanced")
    assert equal.tolist() == pytest.approx([1.0, 1.0])


# --- tokenizing and batching ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from trainable.model import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))


@pytest.fixture(scope="module")
def varied_frame() -> pd.DataFrame:
    """Clauses from 1 to 60 words, in shuffled length order, labels tied to the length."""
    gen = torch.Generator().manual_seed(0)
    n_words = (torch.randperm(120, generator=gen) % 60 + 1).tolist()
    texts = [" ".join(["term"] * k) + " ." for k in n_words]
    return pd.DataFrame({"text": texts, "label": [k % 2 for k in n_words]})


MAX_LENGTH = 32


def _cfg(**changes) -> TrialConfig:
    return TrialConfig(batch_size=8, max_length=MAX_LENGTH, seed=3).replace(**changes)


def test_dataset_truncates_to_max_length(tokenizer, varied_frame):
    ds = data.ClauseDataset(varied_frame, tokenizer, MAX_LENGTH)
    assert len(ds) == len(varied_frame)
    assert max(ds.lengths) == MAX_LENGTH  # the 60-word clauses were cut
    assert min(ds.lengths) < 8
    assert ds[0]["labels"] == varied_frame["label"][0]


def test_per_batch_padding_is_the_longest_clause_in_the_batch(tokenizer, varied_frame):
    ds = data.ClauseDataset(varied_frame, tokenizer, MAX_LENGTH)
    for group_by_length in (True, False):
        loader = data.make_loader(ds, tokenizer, _cfg(group_by_length=group_by_length), train=True)
        widths = []
        for batch in loader:
            width = batch["input_ids"].shape[1]
            assert width <= MAX_LENGTH
            assert int(batch["attention_mask"].sum(dim=1).max()) == width
            widths.append(width)
        if group_by_length:
            assert min(widths) < MAX_LENGTH  # batches of short clauses stay short


def test_pad_to_max_length_pads_every_batch_to_max_length(tokenizer, varied_frame):
    ds = data.ClauseDataset(varied_frame, tokenizer, MAX_LENGTH)
    for train in (True, False):
        loader = data.make_loader(ds, tokenizer, _cfg(pad_to_max_length=True), train=train)
        for batch in loader:
            assert batch["input_ids"].shape[1] == MAX_LENGTH
            assert batch["attention_mask"].shape[1] == MAX_LENGTH


@pytest.mark.parametrize("group_by_length", [True, False])
def test_training_sampler_covers_every_clause_once_per_epoch(tokenizer, varied_frame,
                                                             group_by_length):
    ds = data.ClauseDataset(varied_frame, tokenizer, MAX_LENGTH)
    loader = data.make_loader(ds, tokenizer, _cfg(group_by_length=group_by_length), train=True)
    epochs = [list(loader.sampler) for _ in range(2)]
    for order in epochs:
        assert sorted(order) == list(range(len(ds)))
    assert epochs[0] != list(range(len(ds)))  # shuffled
    # The same seed gives the same order in a fresh loader (reproducible trials).
    again = data.make_loader(ds, tokenizer, _cfg(group_by_length=group_by_length), train=True)
    assert list(again.sampler) == epochs[0]
    # Every clause is seen once per epoch through the batches too.
    n_seen = sum(len(batch["labels"]) for batch in loader)
    assert n_seen == len(ds)


def test_grouping_by_length_pads_less_than_shuffling(tokenizer, varied_frame):
    ds = data.ClauseDataset(varied_frame, tokenizer, MAX_LENGTH)

    def padded_tokens(cfg: TrialConfig) -> int:
        loader = data.make_loader(ds, tokenizer, cfg, train=True)
        return sum(batch["input_ids"].numel() for batch in loader)

    assert padded_tokens(_cfg(group_by_length=True)) < padded_tokens(_cfg(group_by_length=False))


def test_eval_loader_is_sorted_by_length_and_keeps_labels(tokenizer, varied_frame):
    ds = data.ClauseDataset(varied_frame, tokenizer, MAX_LENGTH)
    loader = data.make_loader(ds, tokenizer, _cfg(), train=False)
    order = list(loader.sampler)
    assert sorted(order) == list(range(len(ds)))
    lengths = [ds.lengths[i] for i in order]
    assert lengths == sorted(lengths, reverse=True)
    seen_lengths, seen_labels = [], []
    for batch in loader:
        seen_lengths += batch["attention_mask"].sum(dim=1).tolist()
        seen_labels += batch["labels"].tolist()
    assert seen_lengths == lengths
    assert seen_labels == [int(varied_frame["label"][i]) for i in order]


def _pooled(n_fair: int, n_unfair: int) -> data.Splits:
    rows = [{"text": f"clause {i}", "label": int(i < n_unfair)} for i in range(n_fair + n_unfair)]
    frame = pd.DataFrame(rows).sample(frac=1, random_state=1).reset_index(drop=True)
    cut = len(frame) * 3 // 4
    return data.Splits(train=frame[:cut].reset_index(drop=True),
                       validation=frame[cut:].reset_index(drop=True), test=None)


def test_cv_folds_validate_each_pooled_clause_once_and_keep_the_class_ratio():
    splits = _pooled(180, 20)
    folds = data.cv_splits(splits, 4, seed=0)
    assert len(folds) == 4
    seen = [t for f in folds for t in f.validation["text"]]
    assert sorted(seen) == sorted([*splits.train["text"], *splits.validation["text"]])
    for f in folds:
        assert not set(f.train["text"]) & set(f.validation["text"])
        assert len(f.train) + len(f.validation) == 200
        assert f.validation["label"].sum() == 5 and len(f.validation) == 50
    again = data.cv_splits(splits, 4, seed=0)
    assert all(a.validation.equals(b.validation) for a, b in zip(folds, again, strict=True))
    other = data.cv_splits(splits, 4, seed=1)
    assert not folds[0].validation.equals(other[0].validation)


def test_cv_folds_need_one_clause_of_each_class_per_fold():
    with pytest.raises(UserError, match="cv_folds 5: .* only 3 clauses of one class"):
        data.cv_splits(_pooled(50, 3), 5, seed=0)
