"""Check the cluster files offline: `python cluster/validate.py [FILE ...]`.

    python cluster/validate.py                 # every file in cluster/, one line each
    python cluster/validate.py my-cluster.yaml # a filled-in copy, before `ray up`
    python cluster/validate.py --write-lock    # regenerate cluster/requirements.lock

A cluster YAML must pass Ray's own config validation (defaults filled in the way `ray up`
does, then Ray's schema; no cloud calls, no credentials) and this project's invariants: a
GPU worker type that scales from zero, a head that takes no trials, every node installing
the project with the pinned torch and lock, MLflow and the Ray dashboard bound to
127.0.0.1, no port but SSH open to the world, instance profiles or service accounts instead
of keys, and nothing in any file that looks like a credential. The lock's pins must
satisfy pyproject.toml and each other (read on the platform the lock was made for). Whether
the Python running this script (the driver's venv) has exactly the locked versions is
reported as a WARNING line, not a failure: `make` installs with the lock, and a venv built
some other way may differ by a patch release without anything being wrong with the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

CLUSTER_DIR = Path(__file__).resolve().parent
REPO_ROOT = CLUSTER_DIR.parent  # `ray up` runs from here, so file_mounts paths are relative to it
LOCK = CLUSTER_DIR / "requirements.lock"
PROJECT = "qlora-tune"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
WORLD = {"0.0.0.0/0", "::/0"}

# Strings that look like secrets. Split so that this file does not match itself.
CREDENTIAL_PATTERNS = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "an AWS secret key field": re.compile("aws_secret" + r"_access_key|aws_session" + "_token",
                                          re.IGNORECASE),
    "a private key": re.compile("-----BEGIN [A-Z ]*PRIVATE" + " KEY-----"),
    "a service-account key": re.compile(r'"private_key(?:_id)?"\s*:'),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "a password in a URL": re.compile(r"[a-z+]+://[^/\s:@]+:[^/\s@]+@"),
}

_PIP_OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-i",
                           "--index-url", "--extra-index-url", "-f", "--find-links", "--python",
                           "-t", "--target", "--prefix", "--root", "--upgrade-strategy",
                           "--platform", "--python-version", "--only-binary", "--no-binary",
                           "--cache-dir", "--timeout", "--retries", "--progress-bar"}


# ---------------------------------------------------------------- the lock file

def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """Installed name -> version of everything the project needs at run time (extras followed)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in (extras or {""})]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in envs):
                continue
            dep = canonicalize_name(req.name)
            try:
                found[dep] = metadata.version(dep)
            except metadata.PackageNotFoundError:
                raise RuntimeError(f"{dep} (needed by {name}) is not installed here") from None
            todo.append((dep, frozenset(req.extras)))
    found.pop(canonicalize_name(project), None)
    return dict(sorted(found.items()))


def public(version: str) -> str:
    """A version without its local label: torch 2.13.0+cpu and 2.13.0 are the same release."""
    return version.split("+", 1)[0]


def lock_text(pins: dict[str, str]) -> str:
    """The lock file for these pins, with the Python it was made with."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    head = [
        "# Exact versions of everything qlora-tune needs at run time, as installed in the",
        "# driver's venv. Every cluster node installs the project with `pip install -c` this",
        "# file, after torch, so all nodes run the versions the driver was tested with.",
        f"# python {py} (linux x86_64; markers evaluated there). torch: the CPU build on the",
        "# head, PyPI's CUDA build on GPU workers; same release, so one pin serves both.",
        "# Regenerate after changing the venv: python cluster/validate.py --write-lock",
    ]
    return "\n".join(head + [f"{n}=={public(v)}" for n, v in pins.items()]) + "\n"


def read_lock(path: Path = LOCK) -> tuple[dict[str, str], str | None]:
    """(name -> version, python major.minor) from a lock file."""
    from packaging.utils import canonicalize_name

    pins, python = {}, None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if m := re.match(r"#\s*python\s+(\d+\.\d+)", line):
            python = m.group(1)
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path.name}: {line!r} is not pinned with ==")
        pins[canonicalize_name(name)] = version.strip()
    return pins, python


def lock_problems(path: Path = LOCK) -> list[str]:
    """How the lock differs from what this Python has installed (empty: it matches)."""
    pins, python = read_lock(path)
    problems = []
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python != here:
        problems.append(f"made for python {python}, this venv is {here}")
    installed = {n: public(v) for n, v in runtime_closure().items()}
    for name in sorted(set(pins) | set(installed)):
        want, have = pins.get(name), installed.get(name)
        if want != have:
            problems.append(f"{name}: lock {want or '-'}, venv {have or '-'}")
    return problems


def lock_environment(python: str) -> dict[str, str]:
    """Marker values of the platform the lock is made for (its header: linux x86_64, CPython)."""
    return {"python_version": python, "python_full_version": f"{python}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def project_requirements() -> list[str]:
    """The project's run-time requirements, from pyproject.toml (installed metadata on 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the editable install's metadata says the same
        return list(metadata.distribution(PROJECT).requires or [])
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def installed_requires(name: str, version: str) -> list[str] | None:
    """The requirements of name==version from its installed metadata; None if not installed at it."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return list(dist.requires or []) if public(dist.version) == version else None


@dataclass
class LockConsistency:
    """What lock_consistency found: problems (conflicts), and which pins it could read."""

    problems: list[str] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)    # pins whose own requirements were read
    unchecked: set[str] = field(default_factory=set)  # pins with no metadata at that version here


def lock_consistency(path: Path = LOCK,
                     requires_of: Callable[[str, str], list[str] | None] = installed_requires,
                     ) -> LockConsistency:
    """Whether the lock's pins satisfy pyproject.toml and each other, as pip would resolve them.

    Walks the requirements down from pyproject.toml with the lock's markers (its Python,
    linux x86_64): every requirement reached must be pinned, at a version its specifier
    admits. A pin's own requirements come from requires_of (default: the installed metadata,
    read only where the installed version equals the pin). A venv that differs from the
    lock can therefore only leave pins unchecked, never make the lock fail.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins, python = read_lock(path)
    env = lock_environment(python or f"{sys.version_info.major}.{sys.version_info.minor}")
    found = LockConsistency()
    todo: list[tuple[str, frozenset[str], list[str]]] = [(PROJECT, frozenset(),
                                                          project_requirements())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras, requires = todo.pop()
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not any(
                    req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
                continue
            dep = canonicalize_name(req.name)
            pinned = pins.get(dep)
            if pinned is None:
                found.problems.append(f"{dep} (needed by {name}: {req}) is not pinned")
                continue
            if not req.specifier.contains(pinned, prereleases=True):
                found.problems.append(f"{dep}=={pinned} does not satisfy {name}'s {req}")
            if (dep, frozenset(req.extras)) in seen:
                continue
            seen.add((dep, frozenset(req.extras)))
            own = requires_of(dep, pinned)
            if own is None:
                found.unchecked.add(dep)
                continue
            found.checked.add(dep)
            todo.append((dep, frozenset(req.extras), own))
    found.unchecked -= found.checked
    return found


def drift_warning(path: Path = LOCK) -> str | None:
    """A WARNING line when this Python's installed versions differ from the lock, else None."""
    try:
        drift = lock_problems(path)
    except (metadata.PackageNotFoundError, RuntimeError) as e:
        return f"WARNING: lock not compared with this venv: {e}"
    if not drift:
        return None
    return (f"WARNING: this venv differs from the lock ({'; '.join(drift)}). `make study` / "
            f"`make test` install with the lock; after a deliberate upgrade, regenerate it "
            f"with `python cluster/validate.py --write-lock`")


# ---------------------------------------------------------------- shell commands

def simple_commands(command: str) -> list[list[str]]:
    """A shell line split into simple commands (at ;, &&, ||, |, parentheses), as words."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for word in lexer:
        if word in {";", "&&", "||", "|", "&", "(", ")"}:
            out.append([])
        else:
            out[-1].append(word)
    return [c for c in out if c]


def pip_installs(command: str) -> list[dict[str, Any]]:
    """Each `pip install` in a shell line: its options (name -> values) and positional args."""
    found = []
    for words in simple_commands(command):
        names = [Path(w).name for w in words]
        if "install" not in names or not any(n in ("pip", "pip3") for n in names):
            continue
        opts: dict[str, list[str]] = {}
        args: list[str] = []
        rest = words[names.index("install") + 1:]
        i = 0
        while i < len(rest):
            word = rest[i]
            if word.startswith("-"):
                key, eq, value = word.partition("=")
                if eq:
                    opts.setdefault(key, []).append(value)
                elif key in _PIP_OPTIONS_WITH_VALUE and i + 1 < len(rest):
                    opts.setdefault(key, []).append(rest[i + 1])
                    i += 1
                else:
                    opts.setdefault(key, [])
            else:
                args.append(word)
            i += 1
        found.append({"opts": opts, "args": args})
    return found


def option(words: list[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` among words."""
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _get(value: Any, key: str) -> Any:
    # Ray's GCP examples write `scheduling` as a one-item list; the API takes a mapping.
    if isinstance(value, list):
        value = value[0] if value else {}
    return value.get(key) if isinstance(value, dict) else None


def _is_path(arg: str) -> bool:
    return arg.startswith(("~", "/", ".", "git+", "http://", "https://", "file:"))


# ---------------------------------------------------------------- one cluster YAML

class ClusterCheck:
    """The invariants of one cluster YAML (parsed), read against Ray's prepared config."""

    def __init__(self, raw: dict[str, Any], root: Path = REPO_ROOT, lock: Path = LOCK):
        self.raw, self.root, self.lock = raw, root, lock
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.config: dict[str, Any] = {}

    def run(self) -> ClusterCheck:
        """Ray's validation, then ours; problems and notes accumulate on self."""
        if not self.ray_validation():
            return self
        self.node_types()
        self.installs()
        self.services()
        self.network()
        self.identities()
        return self

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def ray_validation(self) -> bool:
        """Fill defaults the way `ray up` does, then Ray's own schema and consistency checks."""
        from ray.autoscaler._private.util import prepare_config, validate_config

        # Ray prints its warnings (cli_logger) and info lines; keep the warnings as notes.
        ray_logger = logging.getLogger("ray")
        level, printed = ray_logger.level, io.StringIO()
        ray_logger.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                self.config = prepare_config(copy.deepcopy(self.raw))
                validate_config(self.config)
        except Exception as e:  # jsonschema.ValidationError, ValueError, KeyError, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.fail(f"Ray rejects the config: {first}")
            return False
        finally:
            ray_logger.setLevel(level)
        for warning in re.split(r"\n(?=\S)", printed.getvalue().strip()):
            text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", warning).split())
            if text:  # its first sentence, without the log prefix
                first = re.split(r"(?<=\.)\s", text.split(" -- ", 1)[-1])[0]
                self.notes.append("ray warns: " + first)
        return True

    @property
    def provider(self) -> str:
        return self.config["provider"]["type"]

    @property
    def head_type(self) -> str:
        return self.config["head_node_type"]

    def workers(self) -> dict[str, dict[str, Any]]:
        """Node types other than the head's."""
        return {k: v for k, v in self.config["available_node_types"].items()
                if k != self.head_type}

    def node_types(self) -> None:
        """A GPU worker type that scales from zero; a head that offers trials nothing."""
        head = self.config["available_node_types"][self.head_type]
        res = head.get("resources", {})
        if res.get("GPU", None) != 0:
            self.fail("head must advertise GPU: 0 explicitly (else Ray detects any GPU it has "
                      "and trials may land there)")
        if res.get("CPU", None) != 0:
            self.fail("head must advertise CPU: 0 (the driver and MLflow run outside Ray's "
                      "scheduler; with CPUs, a trial asking no GPU could run on the head)")
        gpu_types = {k: v for k, v in self.workers().items()
                     if v.get("resources", {}).get("GPU", 0) >= 1}
        if not gpu_types:
            self.fail("no GPU worker type (a non-head node type with resources GPU >= 1)")
        for name, node in gpu_types.items():
            if node.get("min_workers", 0) != 0:
                self.fail(f"{name}: min_workers must be 0 (GPU nodes only while trials run)")
            if node.get("max_workers", 0) < 1:
                self.fail(f"{name}: max_workers must be at least 1")
        custom = {r for v in gpu_types.values() for r in v.get("resources", {})
                  if r not in ("CPU", "GPU", "memory", "object_store_memory")}
        if custom & set(res):
            self.fail(f"head advertises trial resource(s) {sorted(custom & set(res))}")
        for name, node in gpu_types.items():
            nc = node["node_config"]
            kind = nc.get("InstanceType") or nc.get("machineType") or "?"
            spot = ("spot" if nc.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
                    or _get(nc.get("scheduling"), "provisioningModel") == "SPOT"
                    else "on-demand")
            self.notes.append(f"{name} {kind} {spot} {node.get('min_workers', 0)}-"
                              f"{node['max_workers']} x {node['resources']}")

    def setup_of(self, name: str) -> list[str]:
        """The setup commands `ray up` runs on a node type (after prepare_config merged them)."""
        if name == self.head_type:
            return list(self.config["head_setup_commands"])
        node = self.config["available_node_types"][name]
        if "worker_setup_commands" in node:  # a node type's own list replaces the global ones
            return list(node["worker_setup_commands"])
        return list(self.config["worker_setup_commands"])

    def to_local(self, remote: str) -> Path | None:
        """The local path that file_mounts copies to `remote` (a mounted folder's parent too)."""
        remote = remote.rstrip("/")
        for r, local in self.config.get("file_mounts", {}).items():
            r, local = r.rstrip("/"), str(local).rstrip("/")
            base = (self.root / Path(local).expanduser()).resolve()
            if remote == r:
                return base
            if remote.startswith(r + "/"):
                return base / remote[len(r) + 1:]
            if r.startswith(remote + "/"):  # remote is a parent of this mount
                tail = Path(r[len(remote) + 1:])
                if base.parts[-len(tail.parts):] == tail.parts:
                    return Path(*base.parts[:-len(tail.parts)])
        return None

    def installs(self) -> None:
        """Every node: torch pinned to the lock, then the project with the lock as constraints."""
        try:
            pins, python = read_lock(self.lock)
        except (OSError, ValueError) as e:
            self.fail(f"cannot read the lock {self.lock}: {e}")
            return
        for name in self.config["available_node_types"]:
            commands = self.setup_of(name)
            torch_at = project_at = None
            for i, command in enumerate(commands):
                for words in simple_commands(command):
                    made_with = option(words, "--python") if "venv" in words else None
                    if made_with is not None and python and made_with != python:
                        self.fail(f"{name}: venv made with python {made_with}, lock is for "
                                  f"python {python}")
                for pip in pip_installs(command):
                    self._pins(name, pip, pins)
                    if any(a.startswith("torch==") for a in pip["args"]) and torch_at is None:
                        torch_at = i
                    if self._installs_project(pip) and project_at is None:
                        project_at = i
                        lock_refs = pip["opts"].get("-c", []) + pip["opts"].get("--constraint", [])
                        if not any(self.to_local(c) == self.lock.resolve() for c in lock_refs):
                            self.fail(f"{name}: the project install does not use "
                                      f"-c {self.lock.name} (mounted from {self.lock})")
            if torch_at is None:
                self.fail(f"{name}: setup does not `pip install torch==...` (install torch "
                          f"first, on its own, or pip pulls whatever build it likes)")
            if project_at is None:
                self.fail(f"{name}: setup does not pip install the project (a file_mounts "
                          f"copy of the repo, or a git URL)")
            elif torch_at is not None and torch_at > project_at:
                self.fail(f"{name}: torch must be installed before the project")

    def _pins(self, name: str, pip: dict[str, Any], pins: dict[str, str]) -> None:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name

        for arg in pip["args"]:
            if _is_path(arg):
                continue
            try:
                req = Requirement(arg)
            except InvalidRequirement:
                self.fail(f"{name}: cannot read pip requirement {arg!r}")
                continue
            specs = list(req.specifier)
            if len(specs) != 1 or specs[0].operator != "==":
                self.fail(f"{name}: pip install {arg} is not pinned with ==")
                continue
            locked = pins.get(canonicalize_name(req.name))
            if locked is not None and public(specs[0].version) != locked:
                self.fail(f"{name}: installs {arg} but the lock says {req.name}=={locked}")

    def _installs_project(self, pip: dict[str, Any]) -> bool:
        targets = pip["opts"].get("-e", []) + pip["opts"].get("--editable", []) + [
            a for a in pip["args"] if _is_path(a)]
        for target in targets:
            if target.startswith("git+") and "@" in target.rsplit("/", 1)[-1]:
                return True  # a git URL pinned to a commit or tag
            local = self.to_local(target)
            pyproject = local / "pyproject.toml" if local else None
            if pyproject and pyproject.is_file() and re.search(
                    rf'^name\s*=\s*"{PROJECT}"', pyproject.read_text(encoding="utf-8"), re.M):
                return True
        return False

    def services(self) -> None:
        """MLflow started on the head, bound to 127.0.0.1; the Ray dashboard not on 0.0.0.0."""
        head_commands = self.setup_of(self.head_type) + list(self.config["head_start_ray_commands"])
        servers = []
        for command in head_commands:
            for words in simple_commands(command):
                names = [Path(w).name for w in words]
                if "mlflow" in names and "server" in names:
                    servers.append(words)
                if "ray" in names and "start" in names and "--head" in words:
                    host = option(words, "--dashboard-host")
                    if host is not None and host not in LOCAL_HOSTS:
                        self.fail(f"Ray dashboard bound to {host}; keep it on 127.0.0.1 and "
                                  f"use `ray dashboard`")
        if not servers:
            self.fail("the head does not start an MLflow server (mlflow server ...)")
        for words in servers:
            host = option(words, "--host") or option(words, "-h")
            if host not in LOCAL_HOSTS:
                self.fail(f"MLflow server bound to {host or 'its default'}; bind it to "
                          f"127.0.0.1 and reach it by SSH port-forwarding")
            if not option(words, "--backend-store-uri"):
                self.fail("MLflow server has no --backend-store-uri")
            dest = option(words, "--artifacts-destination") or option(words, "--default-artifact-root")
            if not dest or not dest.startswith(("s3://", "gs://")):
                self.fail(f"MLflow artifacts must go to a bucket, not {dest or 'the head disk'}")

    def network(self) -> None:
        """Nothing but SSH (22) open to the world."""
        extra = (self.config["provider"].get("security_group") or {}).get("IpPermissions") or []
        for rule in extra:
            sources = ({r.get("CidrIp") for r in rule.get("IpRanges", [])}
                       | {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])})
            if not sources & WORLD:
                continue
            ssh_only = (str(rule.get("IpProtocol")) == "tcp" and rule.get("FromPort") == 22
                        and rule.get("ToPort") == 22)
            if not ssh_only:
                ports = (f"{rule.get('FromPort')}-{rule.get('ToPort')}"
                         if rule.get("FromPort") != rule.get("ToPort") else rule.get("FromPort"))
                self.fail(f"security group opens port {ports} ({rule.get('IpProtocol')}) to "
                          f"{', '.join(sorted(sources & WORLD))}; only 22 may be")
        for name, node in self.config["available_node_types"].items():
            nc = node["node_config"]
            if self.provider == "aws" and ("SecurityGroupIds" in nc or "NetworkInterfaces" in nc):
                self.notes.append(f"{name}: security groups set outside this file; check their "
                                  f"ingress yourself")
            if self.provider == "gcp":
                nets = [n.get("subnetwork") or n.get("network") or ""
                        for n in nc.get("networkInterfaces", [])]
                if not nets or any(n.rstrip("/").split("/")[-1] == "default" for n in nets):
                    self.fail(f"{name}: use a dedicated VPC (networkInterfaces); the default "
                              f"network's rules open RDP (3389) to the world")

    def identities(self) -> None:
        """Cloud access through instance profiles / service accounts, never keys in the file."""
        provider = self.config["provider"]
        for key in ("aws_credentials", "gcp_credentials"):
            if key in provider:
                self.fail(f"provider.{key} puts credentials in the file; use the provider's "
                          f"own auth (instance profile, service account)")
        for name, node in self.config["available_node_types"].items():
            nc = node["node_config"]
            if self.provider == "aws":
                profile = nc.get("IamInstanceProfile") or {}
                if not (profile.get("Name") or profile.get("Arn")):
                    self.fail(f"{name}: no IamInstanceProfile (its S3 access must come from one)")
                if str(nc.get("ImageId", "")).lower() in ("", "latest_dlami"):
                    self.fail(f"{name}: set ImageId (Ray's default AMI is an Ubuntu 18.04 "
                              f"DLAMI with CUDA 11.2)")
            if self.provider == "gcp" and name != self.head_type and not nc.get("serviceAccounts"):
                self.fail(f"{name}: no serviceAccounts (its bucket access must come from one)")


def credential_problems(text: str) -> list[str]:
    """What in a file's text looks like a secret."""
    return [f"looks like it holds {what}" for what, pattern in CREDENTIAL_PATTERNS.items()
            if pattern.search(text)]


def placeholders(text: str) -> list[str]:
    """The REPLACE_ME_* names still to fill in."""
    return sorted(set(re.findall(r"REPLACE_ME_[A-Z0-9]\w*", text)))


def check_yaml_text(text: str, root: Path = REPO_ROOT, lock: Path = LOCK) -> ClusterCheck:
    """Every check of one cluster YAML, from its text."""
    import yaml

    raw = yaml.safe_load(text)
    check = ClusterCheck(raw if isinstance(raw, dict) else {}, root=root, lock=lock)
    if not isinstance(raw, dict):
        check.fail("not a YAML mapping")
    else:
        check.run()
    check.problems += credential_problems(text)
    return check


def check_path(path: Path) -> tuple[bool, str]:
    """(ok, one-line verdict) for one file in cluster/ (YAMLs fully, others for secrets)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        check = check_yaml_text(text)
        if check.problems:
            return False, "FAIL: " + "; ".join(check.problems)
        todo = placeholders(text)
        notes = check.notes + ([f"fill in {', '.join(todo)}"] if todo else [])
        return True, f"OK (ray {_ray_version()} schema, {check.provider}; {'; '.join(notes)})"
    problems = credential_problems(text)
    if path.resolve() == LOCK.resolve() and not problems:
        try:
            found = lock_consistency(path)
        except (OSError, ValueError) as e:  # unreadable, or a line that is not name==version
            return False, f"FAIL: {e}"
        if found.problems:
            return False, "FAIL: the lock's pins conflict: " + "; ".join(found.problems)
        unread = f", {len(found.unchecked)} not installed here at that version" if found.unchecked else ""
        return True, (f"OK (no credentials; {len(read_lock(path)[0])} pins satisfy pyproject.toml "
                      f"and each other: {len(found.checked)} read{unread})")
    return (False, "FAIL: " + "; ".join(problems)) if problems else (True, "OK (no credentials)")


def _ray_version() -> str:
    import ray

    return ray.__version__


def main(argv: list[str] | None = None) -> int:
    """Print one line per file; exit 1 if any file fails."""
    p = argparse.ArgumentParser(prog="python cluster/validate.py", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="default: every file in cluster/ but *.py")
    p.add_argument("--write-lock", action="store_true",
                   help="write cluster/requirements.lock from this venv, then check")
    args = p.parse_args(argv)
    if args.write_lock:
        LOCK.write_text(lock_text(runtime_closure()), encoding="utf-8")
    files = args.files or sorted(f for f in CLUSTER_DIR.rglob("*")
                                 if f.is_file() and f.suffix != ".py" and "__pycache__" not in f.parts)
    ok = True
    for path in files:
        good, line = check_path(path)
        ok &= good
        shown = path.resolve().relative_to(REPO_ROOT) if path.resolve().is_relative_to(REPO_ROOT) else path
        print(f"{shown}: {line}")
        if good and path.resolve() == LOCK.resolve() and (warning := drift_warning(path)):
            print(f"{shown}: {warning}")  # a report, not a failure: the exit status stays 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
