"""Real studies: the `tune/run.py` script, a local Ray runtime, a real MLflow server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    REPO_ROOT,
    Study,
    error_lines,
    run_study_cli,
    study_runs,
    tiny_study_args,
    trial_dirs,
)
from trainable.errors import UserError
from tune.mirror import BEST_METRIC
from tune.records import COMPLETED, FAILED, STOPPED
from tune.space import DEFAULT_SEARCHED

pytestmark = pytest.mark.integration

SEARCHED = DEFAULT_SEARCHED


def test_every_trial_is_one_child_run_of_one_parent(tiny_study):
    client, parents, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                           tiny_study["name"])
    assert len(parents) == 1
    parent = parents[0]
    assert len(children) == 6
    assert len({r.data.tags["trial_id"] for r in children}) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    assert parent.data.params["study.num_trials"] == "6"


def test_child_runs_hold_sampled_and_fixed_params_and_per_epoch_history(tiny_study):
    client, _, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                     tiny_study["name"])
    dirs = trial_dirs(tiny_study["storage"], tiny_study["name"])
    assert set(dirs) == {r.data.tags["trial_id"] for r in children}
    for run in children:
        sampled = json.loads((dirs[run.data.tags["trial_id"]] / "params.json").read_text())
        params = run.data.params
        assert float(params["lr"]) == pytest.approx(sampled["lr"])
        for key in ("lora_rank", "max_length", "batch_size"):
            assert int(params[key]) == sampled[key]
        # Fixed trial-config fields pass through unchanged.
        assert params["epochs"] == "3" and params["data"] == "demo"
        assert params["model"] == str(tiny_study["model_dir"])
        epochs = int(run.data.tags["epochs"])
        for key in ("val/f1", "val/loss", "val/precision", "val/recall", "val/macro_f1",
                    "train/loss", BEST_METRIC):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, epochs + 1)), (key, steps)
        assert run.data.tags["node"]
        assert run.data.tags["state"] in (COMPLETED, STOPPED)


def test_asha_stopped_at_least_one_trial_and_mlflow_says_so(tiny_study):
    client, _, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                     tiny_study["name"])
    states = {r.data.tags["trial_id"]: (r.data.tags["state"], int(r.data.tags["epochs"]))
              for r in children}
    stopped = [t for t, (state, _) in states.items() if state == STOPPED]
    assert stopped, f"ASHA stopped no trial: {states}"
    for state, epochs in states.values():
        assert (epochs < 3) if state == STOPPED else (epochs == 3 and state == COMPLETED)
    assert "stopped early by ASHA" in tiny_study["proc"].stdout


def test_reported_best_trial_is_the_highest_val_f1_in_mlflow(tiny_study):
    client, parents, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                           tiny_study["name"])
    scores = {r.data.tags["trial_id"]: max(m.value for m in client.get_metric_history(
        r.info.run_id, "val/f1")) for r in children}
    best_score = max(scores.values())
    out = tiny_study["proc"].stdout
    match = re.search(r"best trial (\S+): val/f1 ([0-9.]+) at epoch (\d+)", out)
    assert match, out[-2000:]
    # The reported trial reaches the highest val/f1 of any epoch of any trial (ties allowed).
    assert scores[match.group(1)] == pytest.approx(best_score)
    assert float(match.group(2)) == pytest.approx(best_score, abs=1e-4)
    assert parents[0].data.tags["best_trial_id"] == match.group(1)
    assert parents[0].data.metrics["val/f1"] == pytest.approx(best_score)
    run_id = next(r.info.run_id for r in children if r.data.tags["trial_id"] == match.group(1))
    assert run_id in out


def test_each_finished_trial_has_its_best_adapter_as_artifact(tiny_study):
    client, _, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                     tiny_study["name"])
    for run in children:
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"adapter_model.safetensors", "adapter_config.json",
                "trial_config.json", "metrics.json", "validation_scores.json"} <= names
        assert "resume.ckpt" not in names
        history = client.get_metric_history(run.info.run_id, "val/f1")
        best = max(m.value for m in history)
        # Epochs tied for the best are all the best epoch (as analysis.best reads them): Ray
        # keeps the newest of tied checkpoints, so the adapter may be any of them.
        assert run.data.tags["adapter_epoch"] in {str(m.step) for m in history if m.value == best}


def test_checkpoints_stay_bounded_and_hold_no_base_weights(tiny_study):
    for folder in trial_dirs(tiny_study["storage"], tiny_study["name"]).values():
        checkpoints = sorted(folder.glob("checkpoint_*"))
        assert 1 <= len(checkpoints) <= 3  # best 2 by val/f1, plus the latest
        for ckpt in checkpoints:
            assert (ckpt / "adapter_model.safetensors").is_file()
            total = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
            assert total < 5_000_000, f"{ckpt} holds {total} bytes"
    assert (tiny_study["storage"] / tiny_study["name"] / "optuna.db").is_file()


def test_resume_after_an_interruption_adds_no_duplicate_run(warm_tiny_model_dir, mlflow_server,
                                                            tmp_path):
    name, experiment = "resumable", "tests-resume"
    args = tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", mlflow_server.uri, name,
                           experiment, num_trials=4, max_concurrent=1, scheduler="none",
                           epochs=2)
    with Study(args, tmp_path) as study:
        study.wait_for(r"completed after 2 epoch", timeout=600)
        study.proc.send_signal(signal.SIGINT)  # Ctrl-C while the second trial runs
        first_out = study.finish(timeout=300)
    assert study.proc.returncode == 130, first_out[-3000:]
    # This tool's resume command, not Ray's Python one.
    assert f"continue it with: python tune/run.py --resume --name {name}" in first_out
    assert "Tuner.restore" not in first_out, first_out[-3000:]
    finished = set(re.findall(r"trial (\S+) completed after", first_out))
    assert finished

    resumed = run_study_cli("--resume", "--name", name, "--storage-path", tmp_path / "runs",
                            "--mlflow-uri", mlflow_server.uri, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "MLflow could not be updated" not in resumed.stderr
    rerun = set(re.findall(r"trial (\S+) started", resumed.stdout))
    assert not finished & rerun, f"finished trials ran again: {finished & rerun}"

    client, parents, children = study_runs(mlflow_server.uri, experiment, name)
    assert len(parents) == 1
    ids = [r.data.tags["trial_id"] for r in children]
    assert len(ids) == len(set(ids)) == 4
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/f1")]
        assert steps == [1, 2], (run.data.tags["trial_id"], steps)
        assert run.data.tags["state"] == COMPLETED
    assert parents[0].info.status == "FINISHED"


# -- bad input: one line, exit 2, before any trial starts, nothing written --------------------

def _main(argv, capsys):
    from tune.run import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("flags, culprit", [
    (["--lr-min", "1e-3", "--lr-max", "1e-4"], "lr_min"),
    (["--lrs", "1e-3", "--lr-min", "1e-4"], "lrs lists lr's choices"),
    (["--lrs", "0", "1e-3"], "lrs: every choice must be positive"),
    (["--lora-ranks", "8", "0"], "lora_ranks"),
    (["--max-lengths", "64", "100000"], "max_lengths"),
    (["--batch-sizes", "0"], "batch_sizes"),
    (["--max-concurrent", "0"], "max_concurrent"),
    (["--address", "127.0.0.1:1"], "Ray address 127.0.0.1:1"),
    (["--mlflow-uri", "http://127.0.0.1:1"], "MLflow tracking server http://127.0.0.1:1"),
    (["--mlflow-uri", "file:///tmp/mlruns"], "MLflow tracking URI"),
    (["--data-dir", "/no/such/dir"], "/no/such/dir"),
])
def test_bad_study_input_fails_before_any_trial(flags, culprit, tmp_path, monkeypatch, capsys,
                                                 tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "runs"
    argv = ["--model", tiny_model_dir, "--storage-path", storage, *flags]
    if "--data-dir" not in flags:
        argv += ["--data", "demo"]
    if "--max-lengths" not in flags:
        argv += ["--max-lengths", "32", "64"]  # within the tiny model's 128 positions
    code, err = _main(argv, capsys)
    assert code == 2
    assert len(error_lines(err)) == 1 and culprit in error_lines(err)[0], err
    assert "Traceback" not in err
    assert not storage.exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_gpus_asked_on_a_cluster_without_gpus(tmp_path, tiny_model_dir):
    storage = tmp_path / "runs"
    proc = run_study_cli("--model", tiny_model_dir, "--data", "demo", "--storage-path", storage,
                         "--max-lengths", "32", "64",
                         "--gpus-per-trial", "0.5", "--mlflow-uri",
                         f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "gpus_per_trial 0.5" in errors[0] and "no GPUs" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (storage / "qlora-unfair-tos").exists()


def test_the_driver_cli_does_not_import_ray_before_deciding():
    """Ray reads $RAY_AUTH_MODE once, on import: parsing a study's flags must not import it."""
    code = ("import sys; from tune.run import parse_args; parse_args(['--smoke']); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_starting_a_study_twice_without_resume_is_refused(tiny_study, capsys, monkeypatch):
    monkeypatch.chdir(tiny_study["cwd"])
    code, err = _main(tiny_study_args(tiny_study["model_dir"], tiny_study["storage"],
                                      tiny_study["tracking_uri"], tiny_study["name"],
                                      tiny_study["experiment"]), capsys)
    assert code == 2 and "--resume" in error_lines(err)[0]
    _, parents, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                      tiny_study["name"])
    assert len(parents) == 1 and len(children) == 6


def test_failed_state_is_never_reported_for_a_clean_study(tiny_study):
    _, _, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                tiny_study["name"])
    assert all(r.data.tags["state"] != FAILED for r in children)


def test_environment_secrets_never_reach_mlflow_or_the_study_files(tiny_study):
    from tests.conftest import FAKE_SECRETS

    client, parents, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                           tiny_study["name"])
    secrets = list(FAKE_SECRETS.values())
    for run in parents + children:
        logged = json.dumps([run.data.params, run.data.tags])
        assert not any(s in logged for s in secrets), run.info.run_id
    texts = [tiny_study["proc"].stdout, tiny_study["proc"].stderr]
    experiment = tiny_study["storage"] / tiny_study["name"]
    texts += [f.read_text(errors="replace") for f in experiment.rglob("*.json")]
    assert not any(s in t for s in secrets for t in texts)


def test_runs_of_trials_ray_never_recorded_are_marked_lost(mlflow_server):
    """After a driver was killed, Ray's restored study may lack a trial that MLflow already
    has (Ray snapshots every 10 s or more): that run is marked lost and closed; runs of
    trials Ray knows, open or finished, are left alone. Analysis leaves lost runs out."""
    from analysis.study import load_from_mlflow
    from trainable.config import TrialConfig
    from tune.mirror import Mirror
    from tune.records import LOST, RUNNING, TrialRecord
    from tune.study import StudyConfig

    study = StudyConfig(name="lost-runs", experiment="tests-lost", mlflow_uri=mlflow_server.uri)
    mirror = Mirror(study, TrialConfig(epochs=2))
    mirror.start(resume=False)
    sampled = {"lr": 1e-3, "lora_rank": 4, "max_length": 64, "batch_size": 16}
    epoch = {"epoch": 1, "val/f1": 0.5, "val/loss": 0.4, "train/loss": 0.6}
    records = {trial_id: TrialRecord(trial_id, sampled, [epoch], state=state)
               for trial_id, state in (("known", RUNNING), ("gone", RUNNING),
                                       ("done", COMPLETED))}
    for record in records.values():
        mirror.apply(record)

    assert mirror.mark_lost({"known", "done"}) == ["gone"]
    assert mirror.mark_lost({"known", "done"}) == []  # repeatable
    client, _, children = study_runs(mlflow_server.uri, "tests-lost", "lost-runs")
    by_id = {r.data.tags["trial_id"]: r for r in children}
    assert by_id["gone"].data.tags["state"] == LOST
    assert by_id["gone"].info.status == "KILLED"
    assert "driver was killed" in by_id["gone"].data.tags["error"]
    assert by_id["known"].data.tags["state"] == RUNNING
    assert by_id["known"].info.status == "RUNNING"
    assert by_id["done"].data.tags["state"] == COMPLETED
    loaded = load_from_mlflow(client, "tests-lost", "lost-runs")
    assert {t.trial_id for t in loaded.trials} == {"known", "done"}


# -- MLflow run times are the trials' own ---------------------------------------------------------

def test_trial_runs_last_as_long_as_ray_timed_the_trials(tiny_study):
    """A trial's run starts when the trial did (its first report less Ray's time_total_s)
    and ends with its last report, not when the mirror first or last wrote it; the report
    times are the trial's own (`reported_at`, to the millisecond), not Ray's whole seconds."""
    _, parents, children = study_runs(tiny_study["tracking_uri"], tiny_study["experiment"],
                                      tiny_study["name"])
    dirs = trial_dirs(tiny_study["storage"], tiny_study["name"])
    for run in children:
        results = [json.loads(line) for line in
                   (dirs[run.data.tags["trial_id"]] / "result.json").read_text().splitlines()]
        ray_seconds = results[-1]["time_total_s"]
        seconds = (run.info.end_time - run.info.start_time) / 1000
        print(f"trial {run.data.tags['trial_id']}: MLflow {seconds:.2f} s, Ray time_total_s "
              f"{ray_seconds:.2f} s")
        first = results[0]  # epoch 1
        assert 0 <= first["reported_at"] - first["timestamp"] < 1  # Ray's, truncated
        assert run.info.start_time == int((first["reported_at"] - first["time_total_s"]) * 1000)
        assert run.info.end_time == int(results[-1]["reported_at"] * 1000)
        # Ray's time_total_s leaves out the gaps between epochs (hand-over, checkpoint copy),
        # so the run may be a little longer, never shorter.
        assert seconds >= ray_seconds - 0.01, (seconds, ray_seconds)
    parent = parents[0].info
    assert parent.start_time <= min(r.info.start_time for r in children)
    assert parent.end_time >= max(r.info.end_time for r in children)


# -- storage and tracking checked before anything is written ---------------------------------------

@pytest.mark.parametrize("where", ["/proc/nope", "under a file"])
def test_unwritable_storage_is_refused_before_mlflow_or_ray_is_touched(
        where, tmp_path, monkeypatch, capsys, tiny_model_dir, mlflow_server):
    from mlflow.tracking import MlflowClient

    if where == "under a file":
        (tmp_path / "file").write_text("not a folder")
        where = str(tmp_path / "file" / "runs")
    elif not Path("/proc").is_dir():
        pytest.skip("no /proc on this machine")
    monkeypatch.chdir(tmp_path)
    experiment = f"tests-storage-{abs(hash(where))}"
    code, err = _main(["--smoke", "--model", tiny_model_dir, "--mlflow-uri", mlflow_server.uri,
                       "--experiment", experiment, "--storage-path", where], capsys)
    assert code == 2, err[-2000:]
    lines = error_lines(err)
    assert len(lines) == 1 and f"storage_path {where}" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name(experiment) is None


def test_a_failure_before_the_first_trial_leaves_no_mlflow_run_behind(tmp_path, tiny_model_dir,
                                                                      mlflow_server):
    """The study file cannot be written after the parent run was made (here: a folder sits
    where its temporary file goes): one line, exit 2, the run deleted, the name free."""
    from trainable.config import TrialConfig
    from tune.mirror import Mirror
    from tune.study import StudyConfig

    name, experiment = "unwritten", "tests-unstarted"
    (tmp_path / "runs" / name / ".study.json.tmp").mkdir(parents=True)
    proc = run_study_cli("--name", name, "--model", tiny_model_dir, "--data", "demo",
                         "--max-lengths", "32", "64", "--mlflow-uri", mlflow_server.uri,
                         "--experiment", experiment, "--storage-path", tmp_path / "runs",
                         cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "cannot write the study file" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    _, parents, children = study_runs(mlflow_server.uri, experiment, name,
                                      one_parent=False)  # active runs only
    assert parents == [] and children == []
    assert not (tmp_path / "runs" / name / "study.json").exists()
    study = StudyConfig(name=name, experiment=experiment, mlflow_uri=mlflow_server.uri,
                        storage_path=str(tmp_path / "elsewhere"))
    assert Mirror(study, TrialConfig()).start(resume=False)  # the name is not taken


def test_a_study_run_left_by_a_study_that_never_started_does_not_block_a_new_one(
        mlflow_server, tmp_path):
    """What an earlier version left after `--storage-path /proc/nope` (a parent run, no trial,
    no study file) is deleted by the next start; a study that did start stays protected."""
    from mlflow.tracking import MlflowClient

    from trainable.config import TrialConfig
    from tune.mirror import Mirror
    from tune.records import TrialRecord
    from tune.study import StudyConfig

    def study(storage: str) -> StudyConfig:
        return StudyConfig(name="smoke", experiment="tests-never-started",
                           mlflow_uri=mlflow_server.uri, storage_path=storage)

    client = MlflowClient(mlflow_server.uri)
    left = Mirror(study("/proc/nope"), TrialConfig()).start(resume=False)
    fresh = Mirror(study(str(tmp_path / "runs")), TrialConfig())
    new = fresh.start(resume=False)
    assert new != left and client.get_run(left).info.lifecycle_stage == "deleted"
    # A study with a study file, or with a trial run, is a real one: refused without --resume.
    (tmp_path / "runs" / "smoke").mkdir(parents=True)
    (tmp_path / "runs" / "smoke" / "study.json").write_text("{}")
    with pytest.raises(UserError, match="pass --resume"):
        Mirror(study(str(tmp_path / "elsewhere")), TrialConfig()).start(resume=False)
    (tmp_path / "runs" / "smoke" / "study.json").unlink()
    fresh.apply(TrialRecord("t1", {"lr": 1e-3, "lora_rank": 4, "max_length": 64,
                                   "batch_size": 16}, [{"epoch": 1, "val/f1": 0.5}]))
    with pytest.raises(UserError, match="pass --resume"):
        Mirror(study(str(tmp_path / "elsewhere")), TrialConfig()).start(resume=False)
    assert client.get_run(new).info.lifecycle_stage == "active"


def test_a_missing_sqlite_folder_is_made_only_after_every_check_passed(tmp_path, monkeypatch,
                                                                       capsys, tiny_model_dir):
    """The BENCHMARKS form `--mlflow-uri sqlite:///$PWD/runs/quality/mlflow.db` on a fresh
    checkout: the folder is not an error; a study refused for another reason makes nothing."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "runs" / "quality" / "mlflow.db"
    code, err = _main(["--model", tiny_model_dir, "--max-lengths", "32", "64", "--data-dir",
                       tmp_path / "nodata", "--mlflow-uri", f"sqlite:///{store}",
                       "--storage-path", "runs/quality"], capsys)
    assert code == 2 and "nodata" in error_lines(err)[0], err[-2000:]
    assert not (tmp_path / "runs").exists()


def test_a_validation_split_without_unfair_clauses_fails_before_any_trial(
        tmp_path, monkeypatch, capsys, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation"):
        labels = [i % 2 for i in range(40)] if split == "train" else [0] * 1500
        rows = "".join(f"clause {i} of {split} .\t{label}\n" for i, label in enumerate(labels))
        (data / f"{split}.tsv").write_text("text\tlabel\n" + rows, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, err = _main(["--model", tiny_model_dir, "--data-dir", data, "--max-lengths", "32",
                       "64", "--storage-path", tmp_path / "runs"], capsys)
    assert code == 2
    assert error_lines(err) == [f"error: data {data}: validation split has 0 unfair and 1,500 "
                                f"fair clauses: F1 of the unfair class would be 0 for every "
                                f"trial"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("metric", ["val/ap", "val/soft_f1"])
def test_search_metric_drives_optuna_while_the_objective_picks_the_champion(
        metric, warm_tiny_model_dir, mlflow_server, tmp_path):
    import optuna

    from tune.records import best_trial, read_trials

    name, experiment = f"by-{metric.split('/')[1]}", "tests-search-metric"
    args = tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", mlflow_server.uri, name,
                           experiment, num_trials=4, epochs=2, search_metric=metric)
    proc = run_study_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_trials(str(tmp_path / "runs" / name), max_epochs=2)
    assert len(records) == 4 and all(metric in r.last for r in records)
    # Optuna was told each trial's last search metric (where ASHA stopped it, or its last
    # epoch), not its val/f1.
    opt = optuna.load_study(study_name=name,
                            storage=f"sqlite:///{tmp_path / 'runs' / name / 'optuna.db'}")
    told = sorted(round(t.value, 6) for t in opt.trials if t.value is not None)
    assert told == sorted(round(r.last[metric], 6) for r in records)
    assert told != sorted(round(r.last["val/f1"], 6) for r in records)
    # The champion is still the best val/f1.
    _, parents, _ = study_runs(mlflow_server.uri, experiment, name)
    assert parents[0].data.tags["best_trial_id"] == best_trial(records).trial_id


def test_a_cross_validated_study_reports_each_trial_s_mean_over_folds(warm_tiny_model_dir,
                                                                       tmp_path):
    """`--cv-folds 2` through the real driver, Ray and the MLflow mirror (sqlite): each trial's
    epochs reach MLflow as their mean over folds, with an adapter checkpoint."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_study_cli(*tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", uri, "cv",
                                          "tests-cv", num_trials=2, epochs=2,
                                          scheduler="none", cv_folds=2),
                         cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client, _, children = study_runs(uri, "tests-cv", "cv")
    assert len(children) == 2
    for run in children:
        assert run.data.params["cv_folds"] == "2"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/f1")] == [1, 2]
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert "adapter_model.safetensors" in names and "validation_scores.json" not in names


def test_a_space_of_choices_trains_each_configuration_once_and_ends_complete(
        warm_tiny_model_dir, mlflow_server, tmp_path):
    """Four trials asked of a space of two configurations: TPE's repeats are answered from the
    earlier trial (tune.repeats), so two trials train, and the study ends finished, not
    interrupted."""
    name, experiment = "two-configs", "tests-repeats"
    args = tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", mlflow_server.uri, name,
                           experiment, num_trials=4, epochs=1, lr_min=None, lr_max=None,
                           lrs="1e-3 1e-2", lora_ranks=4, max_lengths=32, batch_sizes=16)
    proc = run_study_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trials (every configuration of the space once; 4 asked)" in proc.stderr
    assert "interrupted" not in proc.stdout + proc.stderr
    _, parents, children = study_runs(mlflow_server.uri, experiment, name)
    assert parents[0].info.status == "FINISHED"
    assert sorted(float(r.data.params["lr"]) for r in children) == [1e-3, 1e-2]
