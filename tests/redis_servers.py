"""Real redis-server processes on loopback for the tests and benchmarks: one
node, or a 3-master cluster. Skips (in tests) where redis-server is missing;
.ci/run installs Debian's."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, its bus port (+10000) must be free and valid too."""
    if not cluster:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for port in random.sample(range(20000, 40000), 200):
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    def __init__(self, password: Optional[str] = None, cluster: bool = False, workdir: Optional[Path] = None,
                 maxmemory: Optional[str] = None) -> None:
        self.port = free_port(cluster)
        self.password = password
        self.cluster = cluster
        self.maxmemory = maxmemory
        # a directory of our own is removed whole at close(); in a given workdir, only ours
        self._own = None if workdir else Path(tempfile.mkdtemp(prefix="pykvstore-redis-"))
        self.dir = Path(workdir or self._own) / str(self.port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--protected-mode", "no", "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def cli(self, *args: str) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return subprocess.run(["redis-cli", "-p", str(self.port), *auth, *args], capture_output=True,
                              text=True, timeout=30).stdout.strip()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cli("ping") == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.stop()
        shutil.rmtree(self._own or self.dir, ignore_errors=True)


class RedisCluster:
    """Three masters on loopback, no replicas."""

    def __init__(self) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(3)]
        r = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                            "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            self.close()
            raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout} {r.stderr}")
        try:
            self.wait_ok()
        except RuntimeError:
            self.close()
            raise

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports cluster_state:ok (after creation, or a node's restart)."""
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not come up")
            time.sleep(0.1)

    def holders(self, keys: list[str]) -> list[int]:
        """For each key, the index of the node whose slots hold it."""
        out = []
        for k in keys:
            slot = self.nodes[0].cli("cluster", "keyslot", k)
            owners = [i for i, n in enumerate(self.nodes) if n.cli("cluster", "countkeysinslot", slot) != "0"]
            if len(owners) != 1:
                raise RuntimeError(f"key {k} is on nodes {owners}")
            out.append(owners[0])
        return out

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def close(self) -> None:
        for n in self.nodes:
            n.close()
