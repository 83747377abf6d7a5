"""A real multi-node Ray cluster on this machine: a head and two worker raylets (`ray start`).

The head takes no trials (0 CPUs, none of the trial resource); each worker advertises
`fake_gpu` (standing in for a GPU slot, what `trial_slot` is on the cloud cluster) and one
pretend GPU, so `--gpus-per-trial 0.5` is scheduled as on a GPU cluster while torch still
trains on the CPU. Run with `-s` to see the placement table. The wall time of this study
against the same study on a single node is a benchmark, not a test: `python bench/multinode.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_study_cli, study_runs, tiny_study_args, trial_dirs
from tests.localcluster import TRIAL_RESOURCE, LocalCluster
from trainable.memory import PEAK_RSS

pytestmark = pytest.mark.integration

STUDY = {"num_trials": 4, "max_concurrent": 2, "epochs": 2, "search_seed": 0}


@pytest.fixture(scope="module")
def cluster():
    """A head (no trials) and two worker raylets with one `fake_gpu` and one pretend GPU each."""
    local = LocalCluster()
    try:
        yield local.start()
    finally:
        local.stop()


def _run(name: str, model_dir: Path, work: Path, uri: str, env: dict[str, str] | None = None,
         **flags: object) -> dict:
    proc = run_study_cli(*tiny_study_args(model_dir, work / "runs", uri, name, f"tests-{name}",
                                          **(STUDY | flags)), cwd=work, env=env)
    if proc.returncode != 0:
        pytest.fail(f"study {name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-6000:]}")
    return {"name": name, "experiment": f"tests-{name}", "storage": work / "runs", "proc": proc,
            "uri": uri}


@pytest.fixture(scope="module")
def multinode_study(cluster, warm_tiny_model_dir, mlflow_server, tmp_path_factory):
    """The smoke study on the cluster: `--address host:port`, trials need `fake_gpu` and half
    a GPU. The driver's environment names the cluster's token file but not RAY_AUTH_MODE:
    the driver must turn token auth on by itself."""
    env = {"RAY_AUTH_TOKEN_PATH": str(cluster.token_path)}
    return _run("multinode", warm_tiny_model_dir, tmp_path_factory.mktemp("multinode"),
                mlflow_server.uri, env=env, address=cluster.address,
                trial_resource=TRIAL_RESOURCE, gpus_per_trial=0.5)


@pytest.fixture(scope="module")
def data_parallel_study(cluster, multinode_study, warm_tiny_model_dir, mlflow_server,
                        tmp_path_factory):
    """One trial on two Ray Train workers (gloo, CPU) on the cluster, found through
    `--address auto` and $RAY_ADDRESS, with the token itself in $RAY_AUTH_TOKEN."""
    env = {"RAY_ADDRESS": cluster.address, "RAY_AUTH_TOKEN": cluster.token_path.read_text()}
    return _run("data-parallel", warm_tiny_model_dir, tmp_path_factory.mktemp("data-parallel"),
                mlflow_server.uri, env=env, address="auto", trial_resource=TRIAL_RESOURCE,
                gpus_per_trial=0, workers_per_trial=2, num_trials=1, max_concurrent=1)


def test_trials_land_on_both_workers_and_never_on_the_head(cluster, multinode_study):
    _, _, runs = study_runs(multinode_study["uri"], multinode_study["experiment"],
                            multinode_study["name"])
    assert len(runs) == STUDY["num_trials"]
    placement = {r.data.tags["trial_id"]: r.data.tags.get("node_id") for r in runs}
    print(f"\nhead node  {cluster.head_id}")
    for i, worker in enumerate(cluster.worker_ids):
        print(f"worker {i}   {worker}")
    print("trial      node (MLflow tag node_id)")
    for trial_id, node in sorted(placement.items()):
        role = ("head" if node == cluster.head_id else
                f"worker {cluster.worker_ids.index(node)}" if node in cluster.worker_ids else "?")
        print(f"{trial_id}   {node}  ({role})")
    assert all(placement.values()), placement
    assert cluster.head_id not in placement.values()
    assert set(placement.values()) == set(cluster.worker_ids)
    # All raylets share this machine's address: the IP tag cannot tell them apart.
    assert len({r.data.tags["node"] for r in runs}) == 1


def test_every_trial_checkpoints_to_the_shared_storage(multinode_study):
    dirs = trial_dirs(multinode_study["storage"], multinode_study["name"])
    assert len(dirs) == STUDY["num_trials"]
    for trial_id, folder in dirs.items():
        checkpoints = sorted(folder.glob("checkpoint_*"))
        assert checkpoints, f"trial {trial_id}: no checkpoint in {folder}"
        for ckpt in checkpoints:
            assert (ckpt / "adapter_model.safetensors").is_file(), ckpt
            assert (ckpt / "adapter_config.json").is_file(), ckpt


def test_driver_best_result_equals_mlflow(multinode_study):
    client, _, runs = study_runs(multinode_study["uri"], multinode_study["experiment"],
                                 multinode_study["name"])
    scores = {r.data.tags["trial_id"]: max(m.value for m in client.get_metric_history(
        r.info.run_id, "val/f1")) for r in runs}
    out = multinode_study["proc"].stdout
    match = re.search(r"best trial (\S+): val/f1 ([0-9.]+) at epoch (\d+)", out)
    assert match, out[-2000:]
    best = max(scores.values())
    assert float(match.group(2)) == pytest.approx(best, abs=1e-4)
    assert scores[match.group(1)] == pytest.approx(best, abs=1e-4)


def test_two_worker_data_parallel_trial_reports_the_same_metric_keys(
        cluster, multinode_study, data_parallel_study):
    client, _, [parallel] = study_runs(data_parallel_study["uri"],
                                       data_parallel_study["experiment"],
                                       data_parallel_study["name"])
    _, _, single = study_runs(multinode_study["uri"], multinode_study["experiment"],
                              multinode_study["name"])
    assert parallel.data.tags["state"] == "completed"
    assert parallel.data.tags["epochs"] == str(STUDY["epochs"])
    # A single-process trial also reports its process's peak RSS; a data-parallel trial trains
    # in its workers' processes, so its own process's peak would say nothing.
    assert set(parallel.data.metrics) == set(single[0].data.metrics) - {PEAK_RSS}
    assert PEAK_RSS in single[0].data.metrics
    steps = [m.step for m in client.get_metric_history(parallel.info.run_id, "val/f1")]
    assert steps == list(range(1, STUDY["epochs"] + 1))
    assert parallel.data.tags["node_id"] in cluster.worker_ids
    names = {Path(a.path).name for a in client.list_artifacts(parallel.info.run_id, "adapter")}
    assert "adapter_model.safetensors" in names
    [folder] = trial_dirs(data_parallel_study["storage"], data_parallel_study["name"]).values()
    assert all((c / "adapter_model.safetensors").is_file() for c in folder.glob("checkpoint_*"))
    assert list(folder.glob("checkpoint_*"))
    # Ray Train's own run folder is gone once its checkpoints are in Tune's trial folder.
    assert not list((data_parallel_study["storage"] / data_parallel_study["name"]).glob(
        ".ray-train-*"))
    assert "2 Ray Train workers" in data_parallel_study["proc"].stderr
