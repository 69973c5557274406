"""HF transformers integration with a real (tiny, locally made) Llama."""

import subprocess
import sys
import textwrap

import pytest
import torch

import pykvstore as kv

transformers = pytest.importorskip("transformers")
from pykvstore.integrations.transformers import load_prefix, save_prefix  # noqa: E402



@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    m = transformers.LlamaForCausalLM(cfg).to(torch.float32).eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    m.save_pretrained(path)
    return m, path


def greedy(m, ids, cache=None, n=8):
    with torch.no_grad():
        # past_key_values= on every supported version (transformers 5.x refuses cache=)
        kwargs = {"past_key_values": cache} if cache is not None else {}
        return m.generate(ids, max_new_tokens=n, do_sample=False, **kwargs)[0, ids.shape[1]:].tolist()


def test_a_restored_prefix_continues_exactly(model, bucket):
    m, _ = model
    ids = torch.randint(0, 512, (1, 90), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = m(ids[:, :70], use_cache=True).past_key_values
    with kv.KVStore(bucket, model="tiny-llama", chunk_tokens=32) as s:
        assert save_prefix(s, ids[0, :70], cache, tag="tf/test") == 64
    with kv.KVStore(bucket, model="tiny-llama", chunk_tokens=32) as s:
        restored, n = load_prefix(s, ids[0], m.config, torch.float32)
        assert n == 64 and restored.get_seq_length() == 64
        for mine, ref in zip(restored.layers, cache.layers):  # bit-exact KV
            assert torch.equal(mine.keys, ref.keys[:, :, :64]) and torch.equal(mine.values, ref.values[:, :, :64])
        assert greedy(m, ids, restored) == greedy(m, ids)
        # negative control: generate really reads the cache it is given
        wrong, _ = load_prefix(s, ids[0], m.config, torch.float32)
        for layer in wrong.layers:
            layer.values.mul_(50.0)
        assert greedy(m, ids, wrong) != greedy(m, ids)
    with kv.KVStore(bucket, model="another-model", chunk_tokens=32) as s:
        empty, n = load_prefix(s, ids[0], m.config)
        assert n == 0 and empty.get_seq_length() == 0
    with kv.KVStore(bucket, model="tiny-llama", chunk_tokens=32) as s:  # another dtype never hits
        assert load_prefix(s, ids[0], m.config, torch.bfloat16)[1] == 0


def test_a_prefix_saved_by_one_process_serves_another(model, bucket):
    _, path = model
    script = textwrap.dedent(f"""
        import torch, transformers, pykvstore as kv
        from pykvstore.integrations.transformers import save_prefix
        m = transformers.LlamaForCausalLM.from_pretrained({str(path)!r}).eval()
        ids = torch.randint(0, 512, (1, 100), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            cache = m(ids[:, :96], use_cache=True).past_key_values
        with kv.KVStore({str(bucket)!r}, model="tiny-llama", chunk_tokens=32) as s:
            print(save_prefix(s, ids[0], cache))
    """)
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip() == "96"
    m = transformers.LlamaForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, 512, (1, 100), generator=torch.Generator().manual_seed(2))
    with kv.KVStore(bucket, model="tiny-llama", chunk_tokens=32) as s:
        restored, n = load_prefix(s, ids[0], m.config)
        assert n == 96
        assert greedy(m, ids, restored) == greedy(m, ids)


def test_bad_caches_are_named(model, bucket):
    with kv.KVStore(bucket, model="tiny-llama", chunk_tokens=32) as s:
        with pytest.raises(kv.InputError, match="DynamicCache"):
            save_prefix(s, list(range(64)), object())
