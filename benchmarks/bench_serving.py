"""vLLM's OpenAI server under load, with and without pykvstore, driven by vLLM's own serving benchmark.

Run with the vLLM venv's Python and the repository on PYTHONPATH:

    PYTHONPATH=. .venv-vllm/bin/python benchmarks/bench_serving.py [--out benchmarks/results/<date>-cpu-serving.json]

The load generator is `vllm.benchmarks.serve.benchmark` (what `vllm bench serve`
runs) at a fixed concurrency, fed token-id prompts (SampleRequest accepts them;
the model has no tokenizer, the servers run with --skip-tokenizer-init and the
output token counts come from the server's usage). Its endpoint ready check is
off: it would send the first prompt before the clock starts.

Two workloads, every configuration in the same run:

1. zero reuse: every prompt unique, so the bucket can only cost. pykvstore off
   and on run side by side (two servers up at once) in alternating rounds, so
   a noisy phase of the machine hits both; the server not being measured is
   stopped (SIGSTOP) during the other's round, and each round's CPU seconds
   (all of the server's processes, until it is quiet again: stores written
   after the last answer count) give the store's cost apart from the
   machine's noise. A third server runs a connector that does nothing
   (null_connector.py): what vLLM's connector plumbing costs by itself, so
   pykvstore's own cost is its loss against that server.
2. multi-turn support traffic after a restart: conversations share a system
   prompt and tool definitions and carry their own history; the measured
   request is each conversation's next turn. Before the restart a server saw
   each conversation's previous turn. Measured on:
     - cold: a restarted server without a connector (its own prefix cache
       starts empty; it recomputes each history, and the shared prefix once);
     - pykvstore: a restarted server with the connector on the bucket the
       server before the restart filled;
     - warm: the server that saw the previous turns, not restarted, no
       connector: vLLM's own prefix cache holds everything (the physical best).

Prefill tokens computed come from the server's own counter
(vllm:prompt_tokens_by_source{source="local_compute"}), read before and after.

CPU placement: vLLM's CPU backend keeps cores back from the worker's OpenMP
threads for its scheduler process (which spins while it waits for the worker),
one by default and one more whenever any KV connector is configured (meant
for NIXL's P/D transfers). On a 2-core machine that second reservation cannot
be met, so a server with any connector gets no core kept back: its worker's
two OpenMP threads then share cores with the spinning scheduler, and it runs
2-3x slower than the same server without a connector, whatever the connector
does (measured here; none of that time is in the connector's code). The
benchmark therefore gives every server the placement vLLM picks without a
connector (VLLM_CPU_NUM_OF_RESERVED_CPU=1: one OpenMP thread, one core for the
scheduler); --reserved-cpus auto leaves vLLM's choice alone. Not an issue on
GPUs, where vLLM reserves no cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 600


def make_model(path: Path, layers: int, hidden: int, vocab: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=2,
                      max_position_embeddings=8192)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One vLLM OpenAI server (its own process group), killed on stop."""

    def __init__(self, name: str, model: Path, work: Path, bucket: Path | str | None, kv_bytes: int,
                 chunk_tokens: int, reserved_cpus: str = "1") -> None:
        self.name, self.port = name, free_port()
        self.log = work / f"server-{name}.log"
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                "--served-model-name", "bench", "--skip-tokenizer-init", "--dtype", "float32", "--enforce-eager",
                "--max-model-len", "8192", "--kv-cache-memory-bytes", str(kv_bytes), "--seed", "0",
                "--host", "127.0.0.1", "--port", str(self.port), "--enable-prompt-tokens-details",
                "--disable-uvicorn-access-log"]
        if bucket == "null":  # vLLM's connector plumbing with a connector that does nothing
            args += ["--kv-transfer-config", json.dumps({
                "kv_connector": "NullConnector", "kv_connector_module_path": "null_connector", "kv_role": "kv_both"})]
        elif bucket is not None:
            args += ["--kv-transfer-config", json.dumps({
                "kv_connector": "PyKVStoreConnector", "kv_connector_module_path": "pykvstore.integrations.vllm",
                "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
                "kv_connector_extra_config": {"bucket": str(bucket), "capacity": "8GiB",
                                              "chunk_tokens": chunk_tokens, "tag": "bench-serving"}})]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), str(ROOT / "benchmarks"),
                                                                      os.environ.get("PYTHONPATH")) if p))
        if reserved_cpus != "auto":
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = reserved_cpus
        self.proc = subprocess.Popen(args, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server {self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=5).read()
                return self
            except OSError:
                time.sleep(1)
        self.stop()
        raise SystemExit(f"server {self.name} did not start in {START_TIMEOUT} s")

    def computed_tokens(self) -> int:
        """Prompt tokens this server computed itself so far (not from any cache)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30).read().decode()
        return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                       if ln.startswith("vllm:prompt_tokens_by_source_total") and 'source="local_compute"' in ln))

    def _group(self) -> list[int]:
        """The pids of this server's process group (API server, engine core, worker)."""
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.getpgid(int(d)) == self.proc.pid:
                        pids.append(int(d))
                except OSError:
                    pass
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU seconds its processes have used so far."""
        total = 0
        for pid in self._group():
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def settle(self, quiet: float = 0.05, timeout: float = 30.0) -> None:
        """Waits until the server uses under `quiet` of a core over half a second (its stores written)."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - last < quiet * 0.5:
                return
            last = now

    def pause(self) -> None:
        """SIGSTOP: a server not being measured takes no CPU from the one that is."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused server could not act on SIGTERM
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def drive(server: Server, prompts: list[list[int]], output_len: int, concurrency: int) -> dict:
    """vLLM's serving benchmark against one server; its metrics plus the prefill tokens computed."""
    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.serve import TaskType, benchmark

    requests = [SampleRequest(prompt=p, prompt_len=len(p), expected_output_len=output_len) for p in prompts]
    before = server.computed_tokens()
    r = asyncio.run(benchmark(
        task_type=TaskType.GENERATION, endpoint_type="openai",
        api_url=f"http://127.0.0.1:{server.port}/v1/completions", base_url=f"http://127.0.0.1:{server.port}",
        model_id="bench", model_name="bench", tokenizer=None, input_requests=requests, logprobs=None,
        request_rate=float("inf"), burstiness=1.0, disable_tqdm=True, num_warmups=0, profile=False,
        selected_percentile_metrics=["e2el"], selected_percentiles=[50.0, 99.0],
        ignore_eos=True, goodput_config_dict={}, max_concurrency=concurrency, lora_modules=None,
        extra_headers=None, extra_body=None, ready_check_timeout_sec=0))
    keep = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
            "output_throughput", "median_e2el_ms", "p99_e2el_ms")
    out = {k: r[k] for k in keep if k in r}
    # vLLM's own percentile table skips TTFT without a tokenizer; the per-request TTFTs its request
    # function measured (first streamed chunk) are in the result, so the percentiles come from those.
    out["ttfts_s"] = [round(t, 4) for t in r["ttfts"]]
    out["median_ttft_ms"] = 1000 * pct(r["ttfts"], 50)
    out["p99_ttft_ms"] = 1000 * pct(r["ttfts"], 99)
    out["prefill_tokens_computed"] = server.computed_tokens() - before
    if out.get("failed"):
        raise SystemExit(f"{server.name}: {out['failed']} requests failed: {r.get('errors', [])[:3]}")
    return out


def pct(xs: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default, which vLLM's figures use)."""
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def merge(parts: list[dict]) -> dict:
    """Rounds of one configuration as one run: totals over the summed duration, percentiles pooled per round."""
    dur = sum(p["duration"] for p in parts)
    rates = [p["request_throughput"] for p in parts]
    done = sum(p["completed"] for p in parts)
    out_toks = sum(p["total_output_tokens"] for p in parts)
    return {"rounds": len(parts), "duration": dur, "completed": done, "request_throughput": done / dur,
            "output_throughput": out_toks / dur,
            "median_ttft_ms": 1000 * pct([t for p in parts for t in p["ttfts_s"]], 50),
            "p99_ttft_ms": 1000 * pct([t for p in parts for t in p["ttfts_s"]], 99),
            "prefill_tokens_computed": sum(p["prefill_tokens_computed"] for p in parts),
            "cpu_seconds_per_request": sum(p.get("cpu_seconds", 0.0) for p in parts) / done,
            "median_round_throughput": pct(rates, 50),
            # the machine's noise: how far apart rounds of the same configuration came out
            "round_throughput_spread": (max(rates) - min(rates)) / (sum(rates) / len(rates)),
            "per_round": parts}


def conversations(n: int, system: int, vocab: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Support chats: a shared system prompt and tool definitions, then each chat's own history.

    Returns (previous turn, next turn) per conversation; the next turn extends
    the previous one by the assistant's reply and a new user message.
    """
    rnd = random.Random(seed)
    shared = [rnd.randrange(vocab) for _ in range(system)]
    before, after = [], []
    for _ in range(n):
        history = []
        for _ in range(rnd.randrange(3, 9)):  # earlier exchanges: user message + assistant reply
            history += [rnd.randrange(vocab) for _ in range(rnd.randrange(80, 260))]
        prev = shared + history + [rnd.randrange(vocab) for _ in range(rnd.randrange(30, 90))]
        before.append(prev)
        after.append(prev + [rnd.randrange(vocab) for _ in range(rnd.randrange(40, 120))]  # reply
                     + [rnd.randrange(vocab) for _ in range(rnd.randrange(30, 90))])  # next question
    return before, after


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        info["load_avg_at_start"] = os.getloadavg()
    except (OSError, StopIteration):
        pass
    import vllm

    info["vllm"] = vllm.__version__
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", help="model, buckets and server logs (default: a temporary directory)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / time.strftime("%Y-%m-%d-cpu-serving.json")))
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--chunk-tokens", type=int, default=128, help="the connector's chunk (vLLM CPU's block: 128)")
    ap.add_argument("--unique-prompts", type=int, default=16, help="zero reuse: prompts per round")
    ap.add_argument("--unique-len", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=6, help="zero reuse: alternating rounds per configuration")
    ap.add_argument("--chats", type=int, default=32)
    ap.add_argument("--system-tokens", type=int, default=2048, help="shared system prompt + tool definitions")
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--kv-bytes", type=int, default=768 << 20)
    ap.add_argument("--only", choices=("zero-reuse", "multi-turn"), help="run one workload (default: both)")
    ap.add_argument("--no-null-connector", dest="null_connector", action="store_false",
                    help="zero reuse without the third server (a connector that does nothing: vLLM's plumbing alone)")
    ap.add_argument("--reserved-cpus", default="1",
                    help="VLLM_CPU_NUM_OF_RESERVED_CPU for every server ('auto': vLLM's choice, see above)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    model, bucket = work / "model", work / "bucket"
    if not (model / "config.json").exists():
        make_model(model, args.layers, args.hidden, args.vocab)
    shutil.rmtree(bucket, ignore_errors=True)
    result = {"benchmark": "bench_serving", "machine": machine(), "load_generator": "vllm.benchmarks.serve.benchmark",
              "model": {"layers": args.layers, "hidden": args.hidden, "kv_heads": 2, "head_dim": 64,
                        "vocab": args.vocab, "dtype": "float32"},
              "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")}}
    t_start = time.monotonic()
    servers: list[Server] = []

    def start(*specs) -> list[Server]:
        new = [Server(name, model, work, b, args.kv_bytes, args.chunk_tokens, args.reserved_cpus) for name, b in specs]
        servers.extend(new)
        return [s.wait_ready() for s in new]

    try:
        # --- zero reuse: off and on side by side, alternating rounds --------------------------------
        print("starting servers: no connector (warm later) and pykvstore (fills the bucket) ...", flush=True)
        plain, pyk = start(("plain", None), ("pykvstore", bucket))
        rnd = random.Random(1)
        zero: dict[str, list] = {"off": [], "on": [], "null": []}
        null = None
        if args.only != "multi-turn" and args.null_connector:
            (null,) = start(("null-connector", "null"))
        order = [("off", plain), ("on", pyk)] + ([("null", null)] if null else [])
        for r in range(args.rounds if args.only != "multi-turn" else 0):
            for label, server in order[r % len(order):] + order[:r % len(order)]:  # each goes first in turn
                prompts = [[rnd.randrange(args.vocab) for _ in range(args.unique_len)]
                           for _ in range(args.unique_prompts)]
                # Only the measured server runs: the others are stopped (SIGSTOP), so no
                # server's background work (the connector's writes, vLLM's own housekeeping)
                # lands in another's round. The round's CPU seconds run until the server is
                # quiet again, so stores written after the last answer are counted too.
                others = [o for _, o in order if o is not server]
                for o in others:
                    o.pause()
                cpu0 = server.cpu_seconds()
                round_ = drive(server, prompts, args.output_len, args.concurrency)
                server.settle()
                round_["cpu_seconds"] = server.cpu_seconds() - cpu0
                for o in others:
                    o.resume()
                zero[label].append(round_)
                print(f"  zero reuse round {r} {label}: {round_['request_throughput']:.3f} req/s, "
                      f"{round_['cpu_seconds']:.2f} CPU s", flush=True)
        if args.only != "multi-turn":
            off, on = merge(zero["off"]), merge(zero["on"])
            result["zero_reuse"] = {
                "pykvstore_off": off, "pykvstore_on": on,
                "throughput_loss": 1 - on["request_throughput"] / off["request_throughput"],
                "median_round_throughput_loss": 1 - on["median_round_throughput"] / off["median_round_throughput"],
                "cpu_per_request_ratio": on["cpu_seconds_per_request"] / off["cpu_seconds_per_request"],
                "ttft_p99_ratio": on["p99_ttft_ms"] / off["p99_ttft_ms"],
                "targets": {"throughput_loss_max": 0.03, "ttft_p99_ratio_max": 1.05}}
            if null is not None:
                nul = merge(zero["null"])
                result["zero_reuse"]["null_connector"] = nul
                result["zero_reuse"]["null_connector_loss"] = 1 - nul["request_throughput"] / off["request_throughput"]
                result["zero_reuse"]["loss_vs_null_connector"] = 1 - on["request_throughput"] / nul["request_throughput"]
                result["zero_reuse"]["ttft_p99_ratio_vs_null_connector"] = on["p99_ttft_ms"] / nul["p99_ttft_ms"]
                null.stop()
        if args.only != "zero-reuse":
            # --- multi-turn: previous turns before the restart --------------------------------------------
            before, after = conversations(args.chats, args.system_tokens, args.vocab, seed=2)
            print("previous turns on both servers ...", flush=True)
            drive(plain, before, args.output_len, args.concurrency)
            drive(pyk, before, args.output_len, args.concurrency)
            time.sleep(2)  # the connector's stores land
            multi = {"warm_prefix_cache": drive(plain, after, args.output_len, args.concurrency)}
            for s in (plain, pyk):
                s.stop()
            # --- restarted servers ----------------------------------------------------------------------------
            print("restarting: no connector (cold) and pykvstore ...", flush=True)
            cold, restarted = start(("cold", None), ("pykvstore-restarted", bucket))
            multi["pykvstore"] = drive(restarted, after, args.output_len, args.concurrency)
            multi["cold"] = drive(cold, after, args.output_len, args.concurrency)
            w, p, c = multi["warm_prefix_cache"], multi["pykvstore"], multi["cold"]
            multi["prompt_tokens"] = sum(len(x) for x in after)
            multi["pykvstore_vs_warm_throughput"] = p["request_throughput"] / w["request_throughput"]
            multi["pykvstore_vs_warm_ttft_p50"] = p["median_ttft_ms"] / w["median_ttft_ms"]
            multi["pykvstore_vs_cold_throughput"] = p["request_throughput"] / c["request_throughput"]
            multi["targets"] = {"vs_warm_throughput_min": 0.9, "vs_warm_ttft_p50_max": 1.1, "vs_cold_throughput_min": 3.0}
            result["multi_turn_after_restart"] = multi
    finally:
        for s in servers:
            s.stop()
    result["wall_seconds"] = time.monotonic() - t_start
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
