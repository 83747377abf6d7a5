"""Where trials go: resources per trial and per data-parallel worker, and the checks that
refuse a study no node of the cluster could ever run (Ray's view of the cluster is faked)."""

from __future__ import annotations

import pytest

from trainable.errors import UserError
from tune import resources
from tune.study import StudyConfig

pytestmark = pytest.mark.unit


def _node(**resources: float) -> dict:
    return {"Alive": True, "NodeID": "n", "Resources": resources}


@pytest.fixture
def cluster(monkeypatch):
    """Set the live nodes Ray reports (and no autoscaler config); returns the setter."""
    import ray

    def set_nodes(*nodes: dict, autoscaled: list[dict] | None = None) -> None:
        total: dict[str, float] = {}
        for node in nodes:
            for k, v in node["Resources"].items():
                total[k] = total.get(k, 0.0) + v
        monkeypatch.setattr(ray, "nodes", lambda: list(nodes))
        monkeypatch.setattr(ray, "cluster_resources", lambda: total)
        monkeypatch.setattr(resources, "_autoscaler_node_types", lambda: list(autoscaled or []))

    return set_nodes


HEAD = _node(CPU=0.0)
GPU_WORKER = _node(CPU=4.0, GPU=1.0, trial_slot=2.0)


def test_single_process_trial_holds_everything():
    study = StudyConfig(cpus_per_trial=2, trial_resource="trial_slot")
    assert resources.trial_resources(study, 0.5) == {"cpu": 2, "gpu": 0.5, "trial_slot": 1.0}
    assert resources.data_parallel(study, 0.5) is None


def test_data_parallel_trial_splits_its_resources_over_workers():
    study = StudyConfig(cpus_per_trial=4, workers_per_trial=2, trial_resource="trial_slot")
    assert resources.trial_resources(study, 2.0) == {"cpu": 0.01}
    assert resources.worker_resources(study, 2.0) == {"CPU": 2.0, "GPU": 1.0, "trial_slot": 0.5}
    parallel = resources.data_parallel(study, 2.0)
    assert parallel.workers == 2 and parallel.use_gpu
    assert parallel.resources_per_worker == {"CPU": 2.0, "GPU": 1.0, "trial_slot": 0.5}
    assert parallel.storage_path == study.experiment_path
    cpu_only = resources.worker_resources(study.replace(trial_resource=None), 0.0)
    assert cpu_only == {"CPU": 2.0}
    assert not resources.data_parallel(study, 0.0).use_gpu


def test_fractional_gpus_fit_on_a_gpu_worker(cluster):
    cluster(HEAD, GPU_WORKER, GPU_WORKER)
    study = StudyConfig(gpus_per_trial=0.5, trial_resource="trial_slot")
    assert resources.resolve_gpus(study) == 0.5


def test_default_is_one_gpu_per_worker_where_the_cluster_has_gpus(cluster):
    cluster(HEAD, GPU_WORKER, GPU_WORKER)
    assert resources.resolve_gpus(StudyConfig()) == 1.0
    assert resources.resolve_gpus(StudyConfig(workers_per_trial=2)) == 2.0
    cluster(_node(CPU=2.0))
    assert resources.resolve_gpus(StudyConfig(workers_per_trial=2)) == 0.0


def test_a_trial_bigger_than_any_node_is_refused_though_the_cluster_total_suffices(cluster):
    cluster(HEAD, GPU_WORKER, GPU_WORKER)  # 2 GPUs in all, 1 per node
    with pytest.raises(UserError, match="no node of the Ray cluster can hold one trial"):
        resources.resolve_gpus(StudyConfig(gpus_per_trial=2))
    # Two workers of one GPU each do fit: each worker is placed on its own.
    assert resources.resolve_gpus(StudyConfig(gpus_per_trial=2, workers_per_trial=2)) == 2.0


def test_data_parallel_workers_need_whole_gpus(cluster):
    cluster(HEAD, GPU_WORKER, GPU_WORKER)
    with pytest.raises(UserError, match="whole GPUs"):
        resources.resolve_gpus(StudyConfig(gpus_per_trial=1, workers_per_trial=2))
    with pytest.raises(UserError, match="whole GPUs"):
        resources.resolve_gpus(StudyConfig(gpus_per_trial=3, workers_per_trial=2))


def test_a_trial_resource_no_node_advertises_is_refused(cluster):
    cluster(_node(CPU=2.0))
    with pytest.raises(UserError, match="trial_resource 'trial_slot' must be advertised"):
        resources.resolve_gpus(StudyConfig(trial_resource="trial_slot"))


def test_the_autoscaler_may_start_the_node_a_trial_needs(cluster):
    cluster(HEAD, autoscaled=[{"CPU": 4, "GPU": 1, "trial_slot": 2}])
    study = StudyConfig(gpus_per_trial=0.5, trial_resource="trial_slot")
    assert resources.resolve_gpus(study) == 0.5
    cluster(HEAD, autoscaled=[{"CPU": 4, "GPU": 1}])
    with pytest.raises(UserError, match="trial_slot"):
        resources.resolve_gpus(study)


def test_no_gpus_anywhere_names_the_flag(cluster):
    cluster(_node(CPU=2.0))
    with pytest.raises(UserError, match="gpus_per_trial 0.5 asked but the Ray cluster has no GPUs"):
        resources.resolve_gpus(StudyConfig(gpus_per_trial=0.5))
