"""GPU variants: engine tensors on a CUDA device. Skipped without one."""

import pytest
import torch

import pykvstore as kv
from helpers import block_table, make_cache, reference, tokens

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FORMS = ["2BTHD", "B2THD", "BHTC", "BTHC", "BTD", "LB2THD"]


def to_cuda(cache):
    return cache.cuda() if isinstance(cache, torch.Tensor) else [t.cuda() for t in cache]


def to_cpu(cache):
    return cache.cpu() if isinstance(cache, torch.Tensor) else [t.cpu() for t in cache]


def test_extension_sees_the_device():
    assert kv.cuda_compiled and kv.cuda_available()


@pytest.mark.parametrize("dims", FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_cuda_round_trip_matches_the_cpu_path(bucket, dims, dtype):
    host_src = make_cache(dims, dtype=dtype, seed=1, blocks=64, bs=16)
    src, dst = to_cuda(host_src), to_cuda(make_cache(dims, dtype=dtype, seed=2, blocks=64, bs=16))
    toks, a, b = tokens(200), block_table(13, 64, 1), block_table(13, 64, 2)
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.put(toks, kv.PagedKV(src, dims), a) == 192
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:  # from disk
        assert s.get(toks, kv.PagedKV(dst, dims), b, start=70) == 192
    torch.cuda.synchronize()
    got = reference(to_cpu(dst), dims, b, 16, 70, 192)
    assert torch.equal(got, reference(host_src, dims, a, 16, 70, 192))
    # and a CPU engine reads what the GPU engine stored
    cpu_dst = make_cache(dims, dtype=dtype, seed=3, blocks=64, bs=16)
    with kv.KVStore(bucket, model="gpu", chunk_tokens=64) as s:
        assert s.get(toks, kv.PagedKV(cpu_dst, dims), b) == 192
    assert torch.equal(reference(cpu_dst, dims, b, 16, 0, 192), reference(host_src, dims, a, 16, 0, 192))
