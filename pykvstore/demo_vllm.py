"""The main demo: a support assistant on real vLLM, restarted, serving its long
shared prefix from the bucket instead of recomputing it.

A model is made locally (Llama-shaped, 8 layers, hidden 1024, float32: prefill
cost is visible on 2 cores). Every session sends the same system prompt and
tool definitions (4,096 tokens) plus its own short question.

    phase 1  the replica starts cold: the first session computes the prefix,
             the connector stores it in the bucket
    phase 2  the replica is restarted (a new process, vLLM's own cache is gone)
             and serves the prefix from the bucket

Run with the vLLM venv's Python and the repository on PYTHONPATH (`make demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

PREFIX_TOKENS, SESSIONS, VOCAB = 4096, 6, 4096
MODEL_NAME = "demo/support-llama-8L"
TAG = "support-bot/system-v1"


def make_model(path: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=8192)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(path)


def workload(phase: int) -> list[list[int]]:
    import random

    shared = random.Random(42)
    prefix = [shared.randrange(VOCAB) for _ in range(PREFIX_TOKENS)]  # system prompt + tool definitions
    own = random.Random(phase)
    return [prefix + [own.randrange(VOCAB) for _ in range(own.randrange(20, 60))] for _ in range(SESSIONS)]


def replica(model: str, bucket: str, phase: int) -> None:
    """One serving process: answers every session, prints what it measured."""
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model, served_model_name=MODEL_NAME, skip_tokenizer_init=True, dtype="float32",
              enforce_eager=True, max_model_len=8192, kv_cache_memory_bytes=1 << 30, seed=0,
              kv_transfer_config=KVTransferConfig(
                  kv_connector="PyKVStoreConnector", kv_connector_module_path="pykvstore.integrations.vllm",
                  kv_role="kv_both", kv_load_failure_policy="recompute",
                  kv_connector_extra_config={"bucket": bucket, "capacity": "4GiB", "chunk_tokens": 256, "tag": TAG}))
    first_token = SamplingParams(temperature=0.0, max_tokens=1)  # wall time of a 1-token answer = TTFT
    ttft, cached, prompt_tokens = [], 0, 0
    for prompt in workload(phase):
        t0 = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], first_token, use_tqdm=False)[0]
        ttft.append(time.perf_counter() - t0)
        cached += out.num_cached_tokens
        prompt_tokens += len(prompt)
    print("RESULT " + json.dumps({"ttft": ttft, "cached": cached, "prompt_tokens": prompt_tokens}), flush=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bucket", default="./demo-bucket")
    ap.add_argument("--model-dir", default="./demo-model")
    ap.add_argument("--phase", type=int)
    ap.add_argument("--sessions-per-day", type=int, default=2000, help="traffic for the cost figure")
    ap.add_argument("--price", type=float, default=0.15, help="dollars per million input tokens")
    args = ap.parse_args()
    if args.phase:
        return replica(args.model_dir, args.bucket, args.phase)

    if not os.path.exists(os.path.join(args.model_dir, "config.json")):
        print(f"making a Llama-shaped model (8 layers, hidden 1024) in {args.model_dir}", flush=True)
        make_model(args.model_dir)
    import pykvstore as kv

    shutil.rmtree(args.bucket, ignore_errors=True)  # every run starts from an empty bucket

    def bucket_hit_tokens() -> int:
        """Tokens the connector has loaded from the bucket so far (0 before it exists)."""
        if not os.path.exists(os.path.join(args.bucket, "bucket.json")):
            return 0
        with kv.Bucket(args.bucket) as b:
            return int(b.stats().by_model.get(MODEL_NAME, {}).get("hit_tokens", 0))

    results = {}
    for phase, label in ((1, "cold replica"), (2, "restarted replica, prefix from the bucket")):
        print(f"phase {phase}: {label} — starting vLLM ...", flush=True)
        hits_before = bucket_hit_tokens()
        r = subprocess.run([sys.executable, "-m", "pykvstore.demo_vllm", "--bucket", args.bucket,
                            "--model-dir", args.model_dir, "--phase", str(phase)], capture_output=True, text=True)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
            raise SystemExit(f"phase {phase} failed")
        res = json.loads(line[len("RESULT "):])
        results[phase] = res
        computed = res["prompt_tokens"] - res["cached"]
        # vLLM counts a prompt's tokens it did not compute as cached, wherever they came
        # from: its own prefix cache (earlier sessions in this process) or the connector.
        from_bucket = min(res["cached"], bucket_hit_tokens() - hits_before)
        print(f"  TTFT p50 {pct(res['ttft'], 0.5):.2f} s, p95 {pct(res['ttft'], 0.95):.2f} s; "
              f"first session {res['ttft'][0]:.2f} s\n"
              f"  prompt tokens: {computed} computed, {res['cached'] - from_bucket} from vLLM's own prefix cache "
              f"(earlier sessions in this process), {from_bucket} loaded from the bucket", flush=True)

    from pykvstore.cli import main as cli, recompute_cost

    with kv.Bucket(args.bucket) as b:
        s = b.stats(args.price)
    m = s.by_model.get(MODEL_NAME, {})
    speedup = results[1]["ttft"][0] / max(results[2]["ttft"][0], 1e-9)
    monthly = recompute_cost(PREFIX_TOKENS, args.sessions_per_day, args.price)
    print(f"\nafter the restart the first session's TTFT fell from {results[1]['ttft'][0]:.2f} s to "
          f"{results[2]['ttft'][0]:.2f} s ({speedup:.0f}x): the {PREFIX_TOKENS}-token prefix was loaded, not recomputed")
    print(f"bucket hit rate for {MODEL_NAME}: {100 * (m.get('hit_rate') or 0):.1f}% of tokens asked for "
          f"({m.get('hit_tokens', 0)} hit, {m.get('miss_tokens', 0)} missed)")
    print(f"at {args.sessions_per_day:,} sessions a day and ${args.price}/M input tokens, re-encoding this prefix "
          f"costs ${monthly:,.2f} a month; the bucket makes that a one-time prefill\n")
    cli(["stats", args.bucket, "--price", str(args.price)])


if __name__ == "__main__":
    main()
