"""UNFAIR-ToS clauses: read the splits, check them, tokenize, and batch by length.

Sources: a local directory of `train`/`validation`/`test` files (TSV as in LexGLUE's
preprocessing, CSV, JSONL or parquet) with `text` and `label` columns, LexGLUE's
`unfair_tos` from the Hugging Face hub, or the demo set shipped in `trainable/demo`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from trainable.config import DEMO_DATA, HUB_DATA, TrialConfig
from trainable.errors import UserError

SPLITS = ("train", "validation", "test")
FORMATS = ("tsv", "csv", "jsonl", "parquet")
HUB_DATASET = ("coastalcph/lex_glue", "unfair_tos")


@dataclass(frozen=True)
class Splits:
    """Clauses per split: DataFrames with columns `text` (str) and `label` (0 fair, 1 unfair)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame | None


def demo_dir() -> Path:
    """The folder of the shipped demo set."""
    return Path(str(resources.files("trainable") / "demo"))


def load_splits(cfg: TrialConfig, with_test: bool | None = None) -> Splits:
    """Read, check and subsample the splits named by `cfg.data`."""
    with_test = cfg.eval_test if with_test is None else with_test
    wanted = SPLITS if with_test else SPLITS[:2]
    if cfg.data == HUB_DATA:
        frames = load_hub(wanted)
    elif cfg.data == DEMO_DATA:
        frames = {s: read_split_file(find_split_file(demo_dir(), s)) for s in wanted}
    else:
        frames = {s: read_split_file(find_split_file(Path(cfg.data), s)) for s in wanted}
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples,
              "test": cfg.max_eval_samples}
    frames = {s: subsample(df, limits[s], cfg.seed) for s, df in frames.items()}
    check_classes(frames, cfg.data)
    return Splits(train=frames["train"], validation=frames["validation"], test=frames.get("test"))


# Why a split without one of the classes is refused: (no unfair clause, no fair clause).
_ONE_CLASS = {
    "train": ("the model would never see an unfair clause",
              "the model would never see a fair clause"),
    "validation": ("F1 of the unfair class would be 0 for every trial",
                   "flagging every clause would score F1 1.0, so val/f1 could not rank trials"),
    "test": ("test F1 of the unfair class would be 0 whatever the model",
             "the test metrics could not count a single false alarm"),
}


def check_classes(frames: dict[str, pd.DataFrame], source: str) -> None:
    """Refuse a split without both classes (one line naming the split and its counts): a
    study on it trains quietly towards a meaningless val/f1."""
    for split, df in frames.items():
        unfair = int(df["label"].sum())
        fair = len(df) - unfair
        if unfair and fair:
            continue
        why = _ONE_CLASS.get(split, _ONE_CLASS["validation"])[0 if not unfair else 1]
        raise UserError(f"data {source}: {split} split has {unfair:,} unfair and {fair:,} fair "
                        f"clauses: {why}")


def find_split_file(data_dir: Path, split: str) -> Path:
    """The one file holding `split` in `data_dir`, whatever its format."""
    if not data_dir.is_dir():
        what = "is not a directory" if data_dir.exists() else "does not exist"
        raise UserError(f"data directory {data_dir} {what}")
    found = [data_dir / f"{split}.{ext}" for ext in FORMATS if (data_dir / f"{split}.{ext}").is_file()]
    if not found:
        names = ", ".join(f"{split}.{ext}" for ext in FORMATS)
        raise UserError(f"data directory {data_dir}: no {split} split (looked for {names})")
    if len(found) > 1:
        raise UserError(f"data directory {data_dir}: {split} split is ambiguous "
                        f"({', '.join(p.name for p in found)}); keep one")
    return found[0]


def read_split_file(path: Path) -> pd.DataFrame:
    """Read one split file into a checked `text`/`label` frame."""
    fmt = path.suffix.lstrip(".")
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                                f"{e.start})") from None
            if fmt == "tsv":
                # LexGLUE's preprocessing writes `` and '' for quotes, never CSV quoting;
                # keep_default_na stops clauses such as "none" becoming NaN.
                df = pd.read_csv(io.StringIO(text), sep="\t", quoting=csv.QUOTE_NONE,
                                 keep_default_na=False, dtype={"text": str})
            elif fmt == "csv":
                df = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype={"text": str})
            else:
                df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except UserError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for malformed files
        raise UserError(f"{path}: cannot parse as {fmt} ({type(e).__name__}: {e})") from None
    return check_frame(df, str(path))


def check_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Keep `text` and `label`, checking both; `where` names the source in errors."""
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns)) or "none"
        raise UserError(f"{where}: missing column {' and '.join(map(repr, missing))} "
                        f"(found: {found})")
    if len(df) == 0:
        raise UserError(f"{where}: no rows")
    labels = df["label"].map(_as_label)
    bad = labels.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise UserError(f"{where}: label must be 0 or 1, row {row + 1} has "
                        f"{df['label'].astype(object).iloc[row]!r}")
    text = df["text"]
    empty = text.map(lambda t: not isinstance(t, str) or not t.strip())
    if empty.any():
        row = int(empty.idxmax())
        raise UserError(f"{where}: row {row + 1} has no text")
    return pd.DataFrame({"text": text.astype(str).tolist(), "label": labels.astype(int).tolist()})


def _as_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def load_hub(splits: Iterable[str] = SPLITS) -> dict[str, pd.DataFrame]:
    """LexGLUE `unfair_tos` from the hub, binarized."""
    import datasets  # heavy import, only for this source

    name, config = HUB_DATASET
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as e:  # offline, gated, renamed: all reach the user the same way
        raise UserError(f"data {HUB_DATA!r}: cannot load {name}/{config} from the Hugging Face "
                        f"hub ({type(e).__name__}: {e}); pass --data-dir DIR for local "
                        f"files") from None
    return {s: check_frame(binarize_lexglue(ds[s]), f"{name}/{config} {s}") for s in splits}


def binarize_lexglue(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """LexGLUE rows (`text`, `labels` list of unfair types) to fair (0) / unfair (1)."""
    rows = [{"text": r["text"], "label": int(len(r["labels"]) > 0)} for r in records]
    return pd.DataFrame(rows, columns=["text", "label"])


def subsample(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most `limit` rows, keeping the class ratio (both classes stay when both exist)."""
    if limit is None or limit >= len(df):
        return df
    # Each class gets its share of `limit` but at least one row (sklearn's stratified split
    # can round a rare class away, and fails when fewer rows than classes are left out);
    # the largest class absorbs the rounding.
    counts = df["label"].value_counts()
    quota = (counts * limit / len(df)).round().astype(int).clip(lower=1)
    quota[counts.idxmax()] += limit - int(quota.sum())
    kept = [rows.sample(n=int(quota[label]), random_state=seed)
            for label, rows in df.groupby("label")]
    return pd.concat(kept).sort_index().reset_index(drop=True)


def cv_splits(splits: Splits, folds: int, seed: int) -> list[Splits]:
    """`folds` (train, validation) pairs over train and validation pooled: each clause of the
    pool validates in exactly one fold; each class is shuffled (seeded) and dealt out in turn,
    so every fold keeps the class ratio. Test, if any, stays as it is."""
    import numpy as np

    pool = pd.concat([splits.train, splits.validation], ignore_index=True)
    fold = np.empty(len(pool), dtype=int)
    rng = np.random.default_rng(seed)
    for _, rows in pool.groupby("label"):
        shuffled = rng.permutation(rows.index.to_numpy())
        fold[shuffled] = np.arange(len(shuffled)) % folds
    small = min(int((pool["label"] == c).sum()) for c in (0, 1))
    if small < folds:
        raise UserError(f"cv_folds {folds}: the pooled train and validation splits hold only "
                        f"{small} clauses of one class; every fold needs one of each")
    return [Splits(train=pool[fold != i].reset_index(drop=True),
                   validation=pool[fold == i].reset_index(drop=True), test=splits.test)
            for i in range(folds)]


# Batch key of each clause's row in its split: per-clause predictions go back in split order
# whatever the sampler (length-sorted, or split over DDP ranks).
INDEX = "index"


class ClauseDataset(Dataset):
    """Tokenized clauses, unpadded; the collator pads each batch."""

    def __init__(self, frame: pd.DataFrame, tokenizer: Any, max_length: int):
        enc = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
        keys = list(enc.keys())
        self.items = [
            {**{k: enc[k][i] for k in keys}, "labels": int(label), INDEX: i}
            for i, label in enumerate(frame["label"].tolist())
        ]
        self.lengths = [len(item["input_ids"]) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def make_loader(dataset: ClauseDataset, tokenizer: Any, cfg: TrialConfig, train: bool) -> DataLoader:
    """Batches padded per batch (or to max_length), grouped by length when asked."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    collate = DataCollatorWithPadding(
        tokenizer,
        padding="max_length" if cfg.pad_to_max_length else "longest",
        max_length=cfg.max_length,
    )
    if train and cfg.group_by_length:
        # transformers' sampler: random mega-batches of 50 batches, each sorted by length,
        # so batches stay random across the epoch but hold clauses of similar length.
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = LengthGroupedSampler(cfg.micro_batch_size, lengths=dataset.lengths, generator=gen)
        return DataLoader(dataset, batch_size=cfg.micro_batch_size, sampler=sampler,
                          collate_fn=collate)
    if train:
        gen = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(dataset, batch_size=cfg.micro_batch_size, shuffle=True, generator=gen,
                          collate_fn=collate)
    # Evaluation order does not change the metrics: sorting by length minimises padding.
    order = sorted(range(len(dataset)), key=dataset.lengths.__getitem__, reverse=True)
    return DataLoader(dataset, batch_size=cfg.micro_batch_size, sampler=order, collate_fn=collate)


def class_weights(labels: Iterable[int], scheme: str) -> torch.Tensor | None:
    """Cross-entropy weights for classes 0 and 1 under `scheme` (see TrialConfig)."""
    labels = list(labels)
    if scheme == "none":
        return None
    counts = [labels.count(0), labels.count(1)]
    if min(counts) == 0:
        return None
    w = torch.tensor([len(labels) / (2.0 * c) for c in counts])
    return w.sqrt() if scheme == "sqrt" else w
