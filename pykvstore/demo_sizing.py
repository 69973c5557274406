"""Sizing demo: support-assistant traffic on real vLLM against a 0 GB bucket,
`pykvstore size`, a resize to the recommendation while the engine runs, the
same traffic again, and the measured hit rate beside the predicted one.

Traffic: five system prompts (768-2,048 tokens) with Zipf popularity, each
session one to three turns that grow its history, a short think time between
requests. vLLM's own prefix cache is off, so every reused token the engine
gets comes from the bucket.

    pass 1  the bucket has capacity 0 (the free tier): the connector stores
            nothing and loads nothing, every prompt is recorded
    size    `pykvstore size` reads the history and recommends a capacity
    resize  `pykvstore resize` to it, from another process, engine still up
    pass 2  the same traffic: the bucket now stores and serves

Run with the vLLM venv's Python and the repository on PYTHONPATH
(`make demo-sizing`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

from .demo_vllm import make_model, pct

MODEL_NAME = "demo/support-llama-8L"
TAG = "support-bot/sizing"
PROMPTS = (1536, 1024, 2048, 768, 1280)  # system prompt + tools, per product line
REQUESTS, VOCAB, THINK = 20, 4096, 0.3


def traffic(seed: int = 7) -> list[list[int]]:
    rnd = random.Random(seed)
    systems = [[rnd.randrange(VOCAB) for _ in range(n)] for n in PROMPTS]
    weights = [1 / (i + 1) ** 1.1 for i in range(len(systems))]
    out: list[list[int]] = []
    while len(out) < REQUESTS:
        history = list(rnd.choices(systems, weights)[0])
        for _ in range(rnd.randint(1, 3)):
            history += [rnd.randrange(VOCAB) for _ in range(rnd.randint(40, 120))]  # the user's message
            out.append(list(history))
            history += [rnd.randrange(VOCAB) for _ in range(rnd.randint(60, 200))]  # the assistant's answer
    return out[:REQUESTS]


def engine(model: str, bucket: str) -> None:
    """One vLLM process, two passes; waits on stdin between them (the resize happens meanwhile)."""
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model, served_model_name=MODEL_NAME, skip_tokenizer_init=True, dtype="float32",
              enforce_eager=True, max_model_len=8192, kv_cache_memory_bytes=1 << 30, seed=0,
              enable_prefix_caching=False,
              kv_transfer_config=KVTransferConfig(
                  kv_connector="PyKVStoreConnector", kv_connector_module_path="pykvstore.integrations.vllm",
                  kv_role="kv_both", kv_load_failure_policy="recompute",
                  kv_connector_extra_config={"bucket": bucket, "capacity": 0, "chunk_tokens": 256, "tag": TAG}))
    params = SamplingParams(temperature=0.0, max_tokens=1)  # wall time of a 1-token answer = TTFT
    for n in (1, 2):
        if n == 2:
            sys.stdin.readline()  # the driver has sized and resized the bucket
        ttft, cached, tokens, answers = [], 0, 0, []
        for prompt in traffic():
            t0 = time.perf_counter()
            out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0]
            ttft.append(time.perf_counter() - t0)
            cached += out.num_cached_tokens
            tokens += len(prompt)
            answers.append(list(out.outputs[0].token_ids))
            time.sleep(THINK)
        print(f"PASS{n} " + json.dumps({"ttft": ttft, "cached": cached, "prompt_tokens": tokens,
                                        "answers": answers}), flush=True)


def _read_pass(proc: subprocess.Popen, n: int, log: list[str]) -> dict:
    for line in proc.stdout:
        if line.startswith(f"PASS{n} "):
            return json.loads(line[len(f"PASS{n} "):])
        log.append(line)
    sys.stderr.write("".join(log[-60:]))
    raise SystemExit(f"the engine stopped before pass {n} ended")


def _settled(bucket: str, puts: int, timeout: float = 30.0) -> None:
    """Waits until the engine's recorder has flushed every prompt of pass 1."""
    from . import recorder

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t = recorder.read_totals(bucket)
        if t is not None and t.puts >= puts:
            return
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bucket", default="./demo-sizing-bucket")
    ap.add_argument("--model-dir", default="./demo-model")
    ap.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--price", type=float, default=0.15, help="dollars per million input tokens")
    args = ap.parse_args()
    if args.engine:
        return engine(args.model_dir, args.bucket)
    if not os.path.exists(os.path.join(args.model_dir, "config.json")):
        print(f"making a Llama-shaped model (8 layers, hidden 1024) in {args.model_dir}", flush=True)
        make_model(args.model_dir)
    shutil.rmtree(args.bucket, ignore_errors=True)
    from .cli import main as cli

    print(f"pass 1: {REQUESTS} support sessions against a 0 GB bucket — starting vLLM ...", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "pykvstore.demo_sizing", "--engine", "--bucket", args.bucket,
                             "--model-dir", args.model_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    log: list[str] = []
    try:
        p1 = _read_pass(proc, 1, log)
        print(f"  TTFT p50 {pct(p1['ttft'], 0.5):.2f} s; prompt tokens {p1['prompt_tokens']}, served from the "
              f"bucket {p1['cached']} (a 0 GB bucket serves nothing)\n", flush=True)
        _settled(args.bucket, REQUESTS)
        print(f"$ pykvstore size {args.bucket} --price {args.price}", flush=True)
        cli(["size", args.bucket, "--price", str(args.price)])
        import pykvstore as kv

        with kv.Bucket(args.bucket) as b:
            report = b.size(price_per_mtok=args.price)
            rec = report.recommended
            predicted = next(r.hit_rate for r in report.rows if r.capacity == rec)
        size = f"{rec >> 20}MiB" if rec % (1 << 20) == 0 else str(rec)
        print(f"\n$ pykvstore resize {args.bucket} {size}", flush=True)
        cli(["resize", args.bucket, size])
        print("\npass 2: the same traffic, same engine process (nothing restarted or reconfigured)", flush=True)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        p2 = _read_pass(proc, 2, log)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    measured = p2["cached"] / p2["prompt_tokens"]
    same = p1["answers"] == p2["answers"]
    print(f"  TTFT p50 {pct(p2['ttft'], 0.5):.2f} s (pass 1: {pct(p1['ttft'], 0.5):.2f} s); "
          f"served from the bucket {p2['cached']} of {p2['prompt_tokens']} prompt tokens")
    print(f"\npredicted token hit rate at {rec / (1 << 20):.0f} MiB: {predicted:.1%}; measured: {measured:.1%}")
    print(f"first tokens identical in both passes: {same}")


if __name__ == "__main__":
    main()
