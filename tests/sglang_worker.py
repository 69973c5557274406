"""Runs real SGLang (its venv) against the pykvstore HiCache backend for tests/test_sglang.py.

    python sglang_worker.py store WORKDIR   # one "server": two TP ranks' worth of pages, then exits
    python sglang_worker.py serve WORKDIR   # a restarted server and its neighbours: loads, keys, faults, lifecycle

Prints one line, RESULT {json}. Pages are random bf16 from a fixed seed, so the
second process regenerates what the first stored and compares bit for bit.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sglang_env as se  # noqa: E402
import torch  # noqa: E402

L, H, D, P, PAGES = 4, 2, 32, 16, 12  # 12 pages of 16 tokens, 16 KiB a page
MODEL = "test-org/tiny-llama"


def pages_data(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-32768, 32767, (2, PAGES * P, L, H, D), generator=g, dtype=torch.int16)


def prompt(seed: int) -> list[int]:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, 32000, (PAGES * P,), generator=g).tolist()


# The axis order of one flat page (SGLang's get_data_page / set_from_flat_data_page), and the
# permutation from it to page_first's (2, P, L, H, D).
_PAGE = {"page_first": ((2, P, L, H, D), (0, 1, 2, 3, 4)), "layer_first": ((2, L, P, H, D), (0, 2, 1, 3, 4)),
         "page_first_direct": ((2, L, P, H, D), (0, 2, 1, 3, 4)), "page_head": ((2, H, P, L, D), (0, 2, 3, 1, 4))}


def fill(pool, idx, data) -> None:
    """Writes page_first-ordered data into any layout through SGLang's own flat-page setter."""
    shape, perm = _PAGE[pool.layout]
    inverse = [perm.index(i) for i in range(5)]
    for i in range(PAGES):
        page = data[:, i * P : (i + 1) * P].permute(inverse)  # (2, P, L, H, D) -> the layout's order
        assert page.shape == shape
        pool.set_from_flat_data_page(int(idx[i * P]), page.contiguous().view(pool.dtype).reshape(-1))


def read(pool, idx) -> torch.Tensor:
    """The pool's pages in page_first order, via SGLang's own get_data_page."""
    shape, perm = _PAGE[pool.layout]
    out = [pool.get_data_page(int(idx[i * P]), flat=True).view(torch.int16).view(shape).permute(perm)
           for i in range(PAGES)]
    return torch.cat(out, dim=1)


def server(bucket, layout="page_first", model=MODEL, tp_rank=0, tp_size=1, **options):
    pool = se.mha_pool(L, H, D, P, 2 * PAGES, layout)
    b, cfg = se.backend("pykvstore", pool, bucket, model=model, tp_rank=tp_rank, tp_size=tp_size, **options)
    return pool, b, se.controller(b, cfg, pool)


def store(c, pool, seed: int) -> int:
    idx = pool.alloc(PAGES * P)
    fill(pool, idx, pages_data(seed))
    tokens = prompt(seed)
    op = se.StorageOperation(idx, tokens, hash_value=se.page_hashes(tokens, P))
    c.backup(op)  # SGLang's HiCacheController._page_backup -> batch_set_v1
    pool.free(idx)
    return op.completed_tokens


def load(c, pool, seed: int) -> dict:
    """SGLang's prefetch: hit query (batch_exists), then _page_transfer (batch_get_v1)."""
    op = se.PrefetchOperation(f"req-{seed}", prompt(seed))
    hashes, hit_tokens = c.hit_query(op)
    idx = pool.alloc(PAGES * P)
    pool.kv_buffer.zero_()
    op.hash_value, op.host_indices = hashes, idx[: len(hashes) * P]
    loaded = c.transfer(op) if hashes else 0
    got = read(pool, idx)
    pool.free(idx)
    return {"hit_tokens": hit_tokens, "loaded_pages": loaded, "bit_exact": bool(torch.equal(got, pages_data(seed)))}


def cmd_store(work: str) -> dict:
    pool, b, c = server(os.path.join(work, "bucket"), tag="sglang-test")
    out = {"stored": store(c, pool, 0), "backend": type(b).__module__ + "." + type(b).__name__}
    b.close()
    return out


def mla_check(bucket: str) -> dict:
    """MLA pages are one shard for all TP ranks: rank 0 (SGLang's writer) stores from a page_first
    pool, rank 1 (not a writer: its sets store nothing) loads them into a layer_first pool."""
    out = {}
    hs = se.page_hashes(prompt(3)[: 4 * P], P)
    src = se.mla_pool(L, 32, 8, P, 8, "page_first")
    dst = se.mla_pool(L, 32, 8, P, 8, "layer_first")
    b0, _ = se.backend("pykvstore", src, bucket, model="test-org/tiny-mla", tp_rank=0, tp_size=2, mla=True)
    b1, _ = se.backend("pykvstore", dst, bucket, model="test-org/tiny-mla", tp_rank=1, tp_size=2, mla=True)
    i0, i1 = src.alloc(4 * P), dst.alloc(4 * P)
    src.kv_buffer.copy_(torch.randint(-32768, 32767, src.kv_buffer.shape, dtype=torch.int16,
                                      generator=torch.Generator().manual_seed(3)).view(src.dtype))
    out["non_writer_set"] = b1.batch_set_v1(hs, i1)
    out["after_non_writer"] = b1.batch_exists(hs)
    out["writer_set"] = b0.batch_set_v1(hs, i0)
    out["other_rank_exists"] = b1.batch_exists(hs)
    out["other_rank_get"] = b1.batch_get_v1(hs, i1)
    # a flat MLA page is (P, L, 1, C) in page_first and (L, P, 1, C) in layer_first
    out["bit_exact"] = all(
        torch.equal(src.get_data_page(int(i0[k * P]), flat=True).view(torch.int16).view(P, L, -1),
                    dst.get_data_page(int(i1[k * P]), flat=True).view(torch.int16).view(L, P, -1).transpose(0, 1))
        for k in range(4))
    b0.close()
    b1.close()
    return out


def cmd_serve(work: str) -> dict:
    bucket = os.path.join(work, "bucket")
    out = {}
    # the restarted server (a new process) and a second replica sharing the bucket
    pool, b, c = server(bucket)
    out["restarted"] = load(c, pool, 0)
    out["replica_stored"] = store(c, pool, 1)
    pool2, b2, c2 = server(bucket)
    out["replica_sees_other"] = load(c2, pool2, 1)
    # a layer_first host pool loads the pages a page_first one stored (canonical chunks)
    pool3, b3, c3 = server(bucket, layout="layer_first")
    out["layer_first"] = load(c3, pool3, 0)
    # the other MHA layouts too
    for layout in ("page_first_direct", "page_head"):
        p, bb, cc = server(bucket, layout=layout)
        out[layout] = load(cc, p, 0)
        bb.close()
    out["mla"] = mla_check(os.path.join(work, "mla"))
    # never a hit: another model, another TP shard, another salt
    for name, kw in {"other_model": {"model": "test-org/other"}, "other_tp_rank": {"tp_rank": 1, "tp_size": 2},
                     "other_tp_size": {"tp_rank": 0, "tp_size": 2}, "salted": {"salt": "tenant-2"}}.items():
        p, bb, cc = server(bucket, **kw)
        out[name] = load(cc, p, 0)["hit_tokens"]
        bb.close()
    # batch_exists counts leading consecutive hits only
    hs = se.page_hashes(prompt(0), P)
    out["exists_leading"] = b.batch_exists(hs[:3] + ["0" * 64] + hs[3:6])
    out["exists_all"] = b.batch_exists(hs)
    # bad host indices: nothing moves, every page a miss
    out["misaligned"] = b.batch_get_v1(hs[:2], torch.arange(1, 2 * P + 1))
    # a key that is not a string, indices that are not numbers: every page a miss, nothing raised into SGLang
    out["bad_input_calls"] = []
    for call in (lambda: b.batch_get_v1([None, hs[1]], torch.arange(2 * P)),
                 lambda: b.batch_set_v1([hs[0], 5], torch.arange(2 * P)),
                 lambda: b.batch_get_v1(hs[:1], ["x"] * P), lambda: b.batch_get_v1(hs[:1], None)):
        try:
            out["bad_input_calls"].append(call())
        except Exception as e:
            out["bad_input_calls"].append(f"raised {e!r}")
    # what SGLang's factory built, and the generic flat-page path SGLang uses without interface_v1
    out["is_hicache_storage"] = isinstance(b, se.HiCacheStorage)
    out["factory_class"] = type(b).__name__
    page = pool.get_dummy_flat_data_page()
    out["generic_get"] = b.get(hs[0], page) is not None
    ref = pages_data(0)[:, :P].contiguous()
    out["generic_get_exact"] = bool(torch.equal(page.view(torch.int16).view(2, P, L, H, D), ref))
    for bad in ({"bucket": bucket, "capacity": "lots"}, {"bucket": bucket, "colour": "red"}, {}):
        try:
            se.backend("pykvstore", pool, bad.pop("bucket", ""), **bad)
            out.setdefault("config_errors", []).append(None)
        except ValueError as e:
            out.setdefault("config_errors", []).append(type(e).__name__)
    out["stats"] = {"metrics": repr(b.get_stats())[:200], "bucket_chunks": b.bucket_stats()["bucket"]["chunks"]}
    for x in (b, b2, b3):
        x.close()
    return out


def cmd_damaged(work: str) -> dict:
    """The bucket has had one chunk file damaged (by the test): exactly that page misses."""
    pool, b, c = server(os.path.join(work, "bucket"))
    hs = se.page_hashes(prompt(0), P)
    idx = pool.alloc(PAGES * P)
    pool.kv_buffer.zero_()
    ok = b.batch_get_v1(hs, idx)
    got = read(pool, idx)
    want = pages_data(0)
    exact = [bool(torch.equal(got[:, i * P : (i + 1) * P], want[:, i * P : (i + 1) * P])) for i in range(PAGES)]
    out = {"ok": ok, "exact": exact, "exists_after": b.batch_exists(hs), "chunk_keys": b._keys(hs)[1]}
    b.close()
    # the same fault under SGLang's own file backend, driven the way SGLang drives it (generic pages)
    fpath = os.path.join(work, "file")
    fb, fcfg = se.backend("file", pool, fpath)
    fc = se.controller(fb, fcfg, pool)
    out["file_stored"] = store(fc, pool, 0)
    name = sorted(f for f in os.listdir(fpath) if f.endswith(".bin"))[5]
    with open(os.path.join(fpath, name), "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))
    res = load(fc, pool, 0)
    out["file_loaded_pages"], out["file_bit_exact"] = res["loaded_pages"], res["bit_exact"]
    return out


def cmd_lifecycle(work: str) -> dict:
    out = {}
    page_bytes = 2 * L * P * H * D * 2
    # capacity: four pages' worth (plus headers); a pinned prompt survives a later one filling it
    cap = 4 * (page_bytes + 8192)
    bucket = os.path.join(work, "capacity")
    pool, b, c = server(bucket, capacity=cap, pin=True, tag="pinned-prompt")
    hs0 = se.page_hashes(prompt(0)[: 2 * P], P)
    idx = pool.alloc(2 * P)
    fill_two = pages_data(0)[:, : 2 * P]
    for i in range(2):
        pool.set_from_flat_data_page(int(idx[i * P]), fill_two[:, i * P : (i + 1) * P].contiguous().view(pool.dtype).reshape(-1))
    out["pinned_set"] = b.batch_set_v1(hs0, idx)
    pool_b, b_unpinned, c_unpinned = server(bucket, capacity=cap, tag="bulk")
    out["bulk_stored"] = store(c_unpinned, pool_b, 1)
    hs1 = se.page_hashes(prompt(1), P)
    out["pinned_held"] = b.batch_exists(hs0)
    out["bulk_held_first"] = b_unpinned.batch_exists(hs1)
    st = b.bucket_stats()["bucket"]
    out["used"], out["capacity"] = st["used_bytes"], st["capacity_bytes"]
    out["tags"] = sorted(t["tag"] for t in st["by_tag"])
    out["pinned_chunks"] = st.get("pinned_chunks")
    b.close()
    b_unpinned.close()
    # ttl: a page stored with ttl 1s is a miss once it has expired
    pool, b, c = server(os.path.join(work, "ttl"), ttl="1s")
    stored = store(c, pool, 2)
    hs2 = se.page_hashes(prompt(2), P)
    out["ttl_before"] = b.batch_exists(hs2)
    time.sleep(1.5)
    out["ttl_after"] = b.batch_exists(hs2)
    out["ttl_stored"] = stored
    b.close()
    return out


if __name__ == "__main__":
    cmd, work = sys.argv[1], sys.argv[2]
    result = {"store": cmd_store, "serve": cmd_serve, "damaged": cmd_damaged, "lifecycle": cmd_lifecycle}[cmd](work)
    print("RESULT " + json.dumps(result), flush=True)
