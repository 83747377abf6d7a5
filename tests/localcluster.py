"""A multi-node Ray cluster on this machine for tests: a head and worker raylets (`ray start`)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, free_port

# What each worker advertises, standing in for a GPU slot (`trial_slot` on the cloud cluster).
TRIAL_RESOURCE = "fake_gpu"


class LocalCluster:
    """A head plus worker raylets, each started with `ray start` into one private temp dir.

    Nothing of another Ray on this machine is touched: the address file `ray start` writes
    (which a plain `ray.init()` would join) lands in the private temp dir, every port is
    picked free, and the cluster has its own auth token. `ray stop` cannot be scoped (it ends
    every Ray process on the machine), so teardown ends only the process groups started here
    and their children.
    """

    def __init__(self, workers: int = 2, worker_cpus: int = 2, fake_gpus: int = 1):
        # Short: Ray's unix sockets live under the temp dir (108-byte path limit).
        self.root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.workers, self.worker_cpus, self.fake_gpus = workers, worker_cpus, fake_gpus
        self.port = free_port()
        self.address = ""  # host:port of the head, once started
        self.token_path = self.root / "auth_token"
        self.groups: list[int] = []
        self.head_id = ""
        self.worker_ids: list[str] = []
        self.start_s = 0.0  # wall time of `start`, for the timings

    def env(self) -> dict[str, str]:
        """What a raylet (and a script talking to the cluster) needs: the cluster's token."""
        return cli_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                        "RAY_DEDUP_LOGS": "0",
                        # A raylet must register within 30 s by default; this machine is shared.
                        "RAY_raylet_start_wait_time_s": "120"})

    def _ray_start(self, *args: str) -> subprocess.Popen:
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--temp-dir", str(self.root), "--disable-usage-stats",
                  "--object-store-memory", str(200 * 1024**2),
                  "--dashboard-agent-listen-port", str(free_port())]
        log = open(self.root / f"start-{len(self.groups)}.log", "wb")
        proc = subprocess.Popen([ray, "start", *args, *common], env=self.env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(proc.pid)  # its daemons stay in this process group
        return proc

    def start(self) -> LocalCluster:
        started = time.perf_counter()
        self.token_path.write_text(secrets.token_hex(32))
        head = self._ray_start("--head", "--port", str(self.port), "--num-cpus", "0",
                               "--num-gpus", "0", "--include-dashboard", "true",
                               "--dashboard-host", "127.0.0.1", "--dashboard-port",
                               str(free_port()), "--ray-client-server-port", str(free_port()))
        self._wait(head, "head")
        # Written by `ray start --head` into the private temp dir, not /tmp/ray.
        self.address = (self.root / "ray_current_cluster").read_text().strip()
        # One at a time: on a loaded machine, raylets starting together miss their
        # registration deadline.
        for i in range(self.workers):
            worker = self._ray_start("--address", self.address, "--num-cpus",
                                     str(self.worker_cpus), "--num-gpus", "1", "--resources",
                                     # `worker_<i>` tells the nodes apart (kill_worker).
                                     json.dumps({TRIAL_RESOURCE: self.fake_gpus,
                                                 f"worker_{i}": 1}))
            self._wait(worker, f"worker {i}")
        deadline = time.time() + 60
        while time.time() < deadline:
            nodes = self.nodes()
            if len(nodes) == 1 + self.workers:
                break
            time.sleep(2)
        else:
            pytest.fail(f"cluster has {len(nodes)} live nodes, expected {1 + self.workers}")
        self.head_id = next(n["id"] for n in nodes if TRIAL_RESOURCE not in n["resources"])
        by_name = {name: n["id"] for n in nodes for name in n["resources"]
                   if name.startswith("worker_")}
        self.worker_ids = [by_name[f"worker_{i}"] for i in range(self.workers)]  # start order
        self.start_s = round(time.perf_counter() - started, 1)
        return self

    def _wait(self, proc: subprocess.Popen, what: str) -> None:
        if proc.wait(timeout=120) != 0:
            logs = "".join(p.read_text(errors="replace")[-2000:]
                           for p in sorted(self.root.glob("start-*.log")))
            pytest.fail(f"ray start ({what}) failed with {proc.returncode}:\n{logs}")

    def nodes(self) -> list[dict]:
        """Live nodes: id and resources, read through a short-lived driver."""
        script = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                  "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} "
                  "for n in ray.nodes() if n['Alive']]))")
        proc = subprocess.run([sys.executable, "-c", script, self.address], env=self.env(),
                              text=True, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        import psutil

        procs: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            try:
                ours = os.getpgid(p.pid) in self.groups or any(
                    str(self.root) in arg for arg in p.info["cmdline"] or [])
                if ours:
                    procs[p.pid] = p
                    # Workers run in sessions of their own but stay children of a raylet.
                    procs.update({c.pid: c for c in p.children(recursive=True)})
            except (psutil.Error, ProcessLookupError):
                continue
        for p in procs.values():
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker `index`'s raylet and everything it started: the node is gone."""
        import psutil

        group = self.groups[1 + index]
        procs = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == group:
                    procs += [p, *p.children(recursive=True)]
            except (psutil.Error, ProcessLookupError):
                continue
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
