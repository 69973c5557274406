"""Runs real vLLM (its own venv) for the connector tests: one engine per call.

    python vllm_engine.py MODEL_DIR BUCKET|- PROMPTS.json [SALT]

PYKVSTORE_TEST_CONNECTOR (JSON) adds to the connector's extra config.

Prints one JSON line: per prompt, the generated token ids and num_cached_tokens.
Makes the tiny model first if MODEL_DIR is empty.
"""

import json
import os
import sys


def make_model(path: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(path)


def main() -> None:
    model, bucket, prompts_file = sys.argv[1:4]
    salt = sys.argv[4] if len(sys.argv) > 4 else None
    if not os.path.exists(os.path.join(model, "config.json")):
        make_model(model)
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    kwargs = {}
    if bucket != "-":
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="PyKVStoreConnector", kv_connector_module_path="pykvstore.integrations.vllm",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"bucket": bucket, "chunk_tokens": 256, "tag": "vllm-test",
                                       **json.loads(os.environ.get("PYKVSTORE_TEST_CONNECTOR", "{}"))})
    llm = LLM(model=model, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=4096,
              kv_cache_memory_bytes=256 << 20, seed=0, **kwargs)
    prompts = json.load(open(prompts_file))
    params = SamplingParams(temperature=0.0, max_tokens=8)
    results = []
    for p in prompts:  # one at a time: each sees what the previous stored
        extra = {"cache_salt": salt} if salt else {}
        out = llm.generate([TokensPrompt(prompt_token_ids=p, **extra)], params, use_tqdm=False)[0]
        results.append({"tokens": list(out.outputs[0].token_ids), "cached": out.num_cached_tokens})
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
