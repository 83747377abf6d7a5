"""Where trials run: the Ray connection, each trial's resources, and placement checks.

Resources are arithmetic on the study config (unit-tested without a cluster); the checks ask
the running cluster, and the autoscaler's node types, whether one trial fits anywhere.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from trainable.errors import UserError, first_line
from tune import auth
from tune.study import StudyConfig

# What a data-parallel trial's own Tune process asks for: it only coordinates its Ray Train
# workers, and Ray rejects 0 CPUs. The workers hold the trial's real resources.
COORDINATOR_RESOURCES = {"cpu": 0.01}


def trial_resources(study: StudyConfig, gpus: float) -> dict[str, float]:
    """Ray resources of a trial's Tune process: all of them, or almost none if data-parallel."""
    if study.workers_per_trial > 1:
        return dict(COORDINATOR_RESOURCES)
    resources: dict[str, float] = {"cpu": study.cpus_per_trial, "gpu": gpus}
    if study.trial_resource:
        resources[study.trial_resource] = 1.0
    return resources


def worker_resources(study: StudyConfig, gpus: float) -> dict[str, float]:
    """Ray resources of each data-parallel worker: the trial's CPUs, GPUs and custom resource
    split over workers_per_trial (so a trial takes one unit of trial_resource in all)."""
    n = study.workers_per_trial
    resources = {"CPU": study.cpus_per_trial / n}
    if gpus > 0:
        resources["GPU"] = gpus / n
    if study.trial_resource:
        resources[study.trial_resource] = 1.0 / n
    return resources


def data_parallel(study: StudyConfig, gpus: float) -> Any:
    """How each trial runs on Ray Train workers; None keeps a plain single-process trial."""
    from tune.trial import DataParallel

    if study.workers_per_trial == 1:
        return None
    return DataParallel(workers=study.workers_per_trial,
                        resources_per_worker=worker_resources(study, gpus), use_gpu=gpus > 0,
                        storage_path=study.experiment_path)


def describe_resources(study: StudyConfig, gpus: float) -> str:
    """What one trial holds, for the study's start-up log line."""
    if study.workers_per_trial == 1:
        return f"{trial_resources(study, gpus)} per trial"
    return (f"{study.workers_per_trial} Ray Train workers x {worker_resources(study, gpus)} "
            f"per trial")


def connect(study: StudyConfig) -> None:
    """Start Ray in-process, or join the cluster at study.address or $RAY_ADDRESS (`auto`,
    `host:port`); fails fast if unreachable. Token auth: see `tune.auth`."""
    import os

    import ray

    address = study.address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise UserError(f"Ray address {address} is unreachable ({e})") from None
    token = auth.token_auth_on()
    # Ray Train cleans up a data-parallel trial's placement group through the State API,
    # which the dashboard serves; a plain local study does without it.
    dashboard = None if address or study.workers_per_trial > 1 else False
    try:
        ray.init(address=address, include_dashboard=dashboard,
                 logging_level=logging.WARNING, log_to_driver=True,
                 runtime_env=None, ignore_reinit_error=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        if token:
            hint = "; token auth is on: is this machine's token the cluster's?"
        elif auth.has_token():
            hint = ("; this machine has a Ray auth token: if the cluster uses token auth, "
                    "export RAY_AUTH_MODE=token before starting Python")
        else:
            hint = f"; if the cluster uses token auth, put its token in {auth.TOKEN_SOURCES}"
        raise UserError(f"cannot connect to Ray at {address} ({first_line(e)}){hint}"
                        ) from None


def resolve_gpus(study: StudyConfig) -> float:
    """GPUs per trial: as asked, or one per worker where the cluster has GPUs; checked so that
    one trial (or one of its data-parallel workers) fits on some node of the cluster."""
    import ray

    cluster = ray.cluster_resources()
    have = cluster.get("GPU", 0.0)
    workers = study.workers_per_trial
    if study.gpus_per_trial is None:
        gpus = float(workers) if have > 0 else 0.0
    else:
        gpus = float(study.gpus_per_trial)
    autoscaled = _autoscaler_node_types()
    if gpus > 0 and have == 0 and not any(t.get("GPU", 0) > 0 for t in autoscaled):
        raise UserError(f"gpus_per_trial {study.gpus_per_trial} asked but the Ray cluster has no "
                        f"GPUs (resources: {_describe(cluster)})")
    if workers > 1 and gpus > 0 and (gpus < workers or gpus % workers):
        raise UserError(f"gpus_per_trial {gpus:g} over {workers} workers_per_trial: each "
                        f"data-parallel worker needs whole GPUs of its own (NCCL runs one rank "
                        f"per GPU); use a multiple of {workers}, or 0 for CPU workers")
    check_placement(study, gpus, autoscaled)
    return gpus


def check_placement(study: StudyConfig, gpus: float,
                    autoscaled: list[dict[str, float]] | None = None) -> None:
    """Fail when no node (up, or startable by the autoscaler) can hold one trial's bundle.

    Ray places a single-process trial, or each worker of a data-parallel one, on one node;
    a bundle that fits on no node waits forever. On a multi-node cluster the cluster's total
    says nothing about that: two 1-GPU workers do not make room for a 2-GPU trial.
    """
    import ray

    if study.workers_per_trial > 1:
        bundle, what = worker_resources(study, gpus), "one data-parallel worker"
    else:
        bundle = {k.upper() if k in ("cpu", "gpu") else k: v
                  for k, v in trial_resources(study, gpus).items()}
        what = "one trial"
    bundle = {k: v for k, v in bundle.items() if v > 0}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    candidates = nodes + list(_autoscaler_node_types() if autoscaled is None else autoscaled)
    if any(all(node.get(k, 0.0) >= v - 1e-9 for k, v in bundle.items()) for node in candidates):
        return
    offered = "; ".join(_describe(node) for node in nodes) or "none"
    message = (f"no node of the Ray cluster can hold {what} ({_describe(bundle)}); nodes "
               f"offer: {offered}")
    if study.trial_resource and not any(study.trial_resource in node for node in candidates):
        message += (f"; trial_resource {study.trial_resource!r} must be advertised by the worker "
                    f"nodes (ray start --resources '{{\"{study.trial_resource}\": 2}}')")
    raise UserError(message)


def _autoscaler_node_types(bootstrap: Path = Path("~/ray_bootstrap_config.yaml")
                           ) -> list[dict[str, float]]:
    """Resources of the worker node types this cluster's autoscaler can start on demand.

    A cluster launched with `ray up` may have no GPU worker yet (min_workers 0); `ray up`
    writes the cluster config to the head as ~/ray_bootstrap_config.yaml, which lists the
    node types the autoscaler starts on demand.
    """
    import yaml

    path = bootstrap.expanduser()
    if not path.is_file():
        return []
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    head = config.get("head_node_type")
    return [dict(spec.get("resources") or {})
            for name, spec in (config.get("available_node_types") or {}).items()
            if name != head and isinstance(spec, dict) and spec.get("max_workers", 0) > 0]


def _describe(resources: dict[str, float]) -> str:
    keys = ["CPU", "GPU", *sorted(k for k in resources if k not in ("CPU", "GPU", "memory",
            "object_store_memory") and not k.startswith("node:"))]
    return ", ".join(f"{k} {resources.get(k, 0):g}" for k in keys)
