"""The host tier owns the bytes it serves: a chunk file changed in place later cannot reach the engine.

It used to keep the private mapping a load verified; a file overwritten in
place afterwards was then served unverified, and one truncated in place
killed the process with SIGBUS on the next hit.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pykvstore as kv
from helpers import block_table, make_cache, reference
from test_faults import put_three
from workers import sequence

HERE = Path(__file__).parent

_SECOND_GET = r"""
import os, sys
sys.path.insert(0, sys.argv[3])
import torch
import pykvstore as kv
from helpers import block_table, make_cache, reference
from workers import sequence

kv.defaults.set(mmap_read=sys.argv[2])
bucket, how = sys.argv[1], sys.argv[4]
toks, src, src_ids = sequence(1)
with kv.KVStore(bucket, model="m", chunk_tokens=32, host_capacity="64MiB") as s:
    dst = make_cache("BHTC", seed=9)
    ids = block_table(12, 24, 4)
    assert s.get(toks, kv.PagedKV(dst, "BHTC"), ids) == 96  # verified; now in the host tier
    paths = [s.root / r.path for r in s._catalog.ready_prefix(s.hashes(toks), __import__("time").time())]
    with open(paths[1], "r+b") as f:  # in place: same inode, the page cache changes under any mapping
        if how == "overwrite":
            f.seek(-4096, os.SEEK_END)
            f.write(b"\x5a" * 4096)
        else:
            f.truncate(4096)
    dst2 = make_cache("BHTC", seed=11)
    got = s.get(toks, kv.PagedKV(dst2, "BHTC"), ids)
    ok = torch.equal(reference(dst2, "BHTC", ids, 8, 0, got), reference(src, "BHTC", src_ids, 8, 0, got))
    print("loaded", got, "exact", ok)
"""


@pytest.mark.parametrize("how", ["overwrite", "truncate"])
def test_a_file_changed_in_place_after_a_load_never_reaches_the_engine(bucket, how, read_path):
    put_three(bucket)
    r = subprocess.run([sys.executable, "-c", _SECOND_GET, str(bucket), read_path, str(HERE), how],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the process died (signal {-r.returncode})" if r.returncode < 0 else r.stderr[-2000:]
    loaded, exact = r.stdout.split()[1], r.stdout.split()[3]
    assert exact == "True" and loaded in ("32", "96")


def test_the_host_tier_holds_no_mapping_of_a_chunk_file(bucket, read_path):
    toks, paths = put_three(bucket)
    with kv.KVStore(bucket, model="m", chunk_tokens=32, host_capacity="64MiB") as s:
        assert s.get(toks, kv.PagedKV(make_cache("BHTC", seed=9), "BHTC"), block_table(12, 24, 4)) == 96
        assert len(s._host) == 3
        from pykvstore import _C

        assert not any(isinstance(owner, _C.MappedFile) for _, _, owner in s._host._items.values())
        gc.collect()  # the load's own mappings go with its last reference
        maps = Path(f"/proc/{os.getpid()}/maps").read_text()
        assert not any(str(p) in maps for p in paths)
