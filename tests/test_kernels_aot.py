"""The Triton kernels compiled ahead of time for sm_80, sm_90 and sm_100, on a CPU.

Each case builds real engine tensors for a dims form, lets `_plan` decide the
launch, lets triton's own launcher code derive the specialisation attributes
from those arguments (pykvstore.kernels.aot), compiles for the named target
and asserts on the PTX, SASS and ptxas's report: 16-byte accesses wherever
`_plan` proves alignment and never wider than the memory really is aligned
(checked against every run's address), no spills, registers within
REG_BOUND, int64 address arithmetic, and enough bytes in flight per SM to
keep HBM busy. Compiles are cached per process (and on disk by triton).
"""

import functools
import os
import shutil

import pytest
import torch

if not torch.cuda.is_available():  # as tests/test_kernels.py: whichever runs first sets how the kernels load
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

import pykvstore as kv  # noqa: E402
from pykvstore.kernels import aot  # noqa: E402  (triton is here: an import error is a failure, not a skip)
from helpers import block_table, make_cache  # noqa: E402

TARGETS = [80, 90, 100]
FORMS = ["2BTHD", "B2THD", "BHTC", "BTHC", "BTD", "LB2THD", "BLTHC"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn]
BLOCKS, BS, PER = 8, 16, 4  # engine blocks, block size, blocks per chunk (the ids: 8 blocks, 2 chunks)

pytestmark = pytest.mark.skipif(not shutil.which(aot.get_ptxas(90).path), reason="triton's ptxas is missing")


@functools.lru_cache(maxsize=None)
def case(dims, dtype=torch.bfloat16, noncontiguous=False, hd=None, heads=8):
    """Llama-3-8B's KV geometry (32 layers, 8 kv heads x 128) or DeepSeek-V3's MLA latent (61 x 576)."""
    mla = "H" not in dims
    host = make_cache(dims, dtype=dtype, layers=61 if mla else 32, blocks=BLOCKS, bs=BS, heads=1 if mla else heads,
                      hd=hd or (576 if mla else 128), noncontiguous=noncontiguous)
    p = kv.PagedKV(host, dims)
    ids = p.block_ids(block_table(BLOCKS, BLOCKS), BLOCKS)
    staging = torch.empty((BLOCKS // PER,) + p.geometry.chunk_shape(PER * BS), dtype=p.geometry.view_dtype)
    return p._views, ids, staging


def run_alignment(starts: torch.Tensor, length: int) -> int:
    """The widest power-of-two access (<= 16 bytes) that every run (start byte, length) allows."""
    return next(w for w in (16, 8, 4, 2, 1) if length % w == 0 and bool((starts % w == 0).all()))


def true_alignment(views, ids, staging) -> tuple[int, int]:
    """(engine, staging) alignment from the byte address of every contiguous run the launch copies."""
    v0, item = views[0], views[0].element_size()
    _, planes, bs, heads, hd = v0.shape
    sb, sp, st, sh, sd = v0.stride()
    row_contig = sd == 1 and (heads == 1 or sh == hd)
    idx = lambda n: torch.arange(n, dtype=torch.int64)  # noqa: E731
    off = (ids.view(-1, 1, 1, 1) * sb + idx(planes).view(1, -1, 1, 1) * sp + idx(bs).view(1, 1, -1, 1) * st
           + (idx(1) if row_contig else idx(heads)).view(1, 1, 1, -1) * sh)
    if sd != 1:  # runs of one element
        off = (off.unsqueeze(-1) + idx(hd) * sd).flatten()
    layer_ptrs = torch.tensor([v.data_ptr() for v in views], dtype=torch.int64)
    engine_starts = (layer_ptrs.view(-1, 1) + off.flatten().view(1, -1) * item).flatten()
    length = item * (heads * hd if row_contig else hd if sd == 1 else 1)
    rows = staging.numel() // (heads * hd)
    staging_starts = staging.data_ptr() + idx(rows) * heads * hd * item
    return run_alignment(engine_starts, length), run_alignment(staging_starts, heads * hd * item)


def assert_sound(c, views, ids, staging):
    """The properties every compiled kernel must have, whatever its layout."""
    item = views[0].element_size()
    engine_ok, staging_ok = true_alignment(views, ids, staging)
    assert max(c.engine_widths()) <= engine_ok, f"engine accesses {c.engine_widths()} wider than runs ({engine_ok} B)"
    assert max(c.staging_widths()) <= staging_ok, f"staging accesses {c.staging_widths()} wider than ({staging_ok} B)"
    assert min(c.engine_widths() | c.staging_widths()) >= item
    if engine_ok == staging_ok == 16 and views[0].stride()[4] == 1:
        assert c.constexprs["ALIGN"] > 1, "every run is 16-byte aligned but _plan did not prove it"
    assert c.spill_store_bytes == 0 and c.spill_load_bytes == 0, c.ptxas_log
    assert c.stack_bytes == 0 and c.local_bytes == 0 and ".local" not in c.ptx, c.ptxas_log
    assert 0 < c.registers <= aot.REG_BOUND, c.ptxas_log
    assert c.extra["cubin_registers"] == c.registers  # our ptxas -v run matches the cubin triton built
    assert c.narrow_address_math() == []


def assert_vectorised(c):
    """16-byte loads and stores on both sides: what `_plan` proving alignment must buy."""
    assert c.engine_widths() == {16}, f"engine side: {c.engine_widths()} bytes per access"
    assert c.staging_widths() == {16}, f"staging side: {c.staging_widths()} bytes per access"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"sm_{t}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("dims", FORMS)
@pytest.mark.parametrize("to_staging", [True, False], ids=["gather", "scatter"])
def test_every_form_compiles_vectorised_without_spills(dims, dtype, target, to_staging):
    views, ids, staging = case(dims, dtype)
    c = aot.compile_plan(views, ids, staging, PER, to_staging, target)
    assert c.constexprs["ALIGN"] == 16 // views[0].element_size()
    assert_vectorised(c)
    assert_sound(c, views, ids, staging)


@pytest.mark.parametrize("dims", FORMS)
@pytest.mark.parametrize("to_staging", [True, False], ids=["gather", "scatter"])
def test_strided_channels_stay_element_wide(dims, to_staging):
    """Channels not contiguous (axes allocated in reverse): nothing proven, element accesses on the engine side."""
    views, ids, staging = case(dims, noncontiguous=True)
    c = aot.compile_plan(views, ids, staging, PER, to_staging, 90)
    assert c.constexprs["ALIGN"] == 1
    assert c.engine_widths() == {views[0].element_size()}
    assert_sound(c, views, ids, staging)


def misaligned(kind):
    views, ids, staging = case("BHTC", hd=12 if kind == "head runs of 24 bytes" else None)
    if kind == "staging off by one element":
        staging = torch.empty(staging.numel() + 1, dtype=staging.dtype)[1:].view(staging.shape)
    if kind == "layers off by one element":
        shifted = [torch.empty(v.untyped_storage().nbytes() // v.element_size() + 1, dtype=v.dtype)[1:]
                   .as_strided(v.shape, v.stride()) for v in views]
        views = shifted
    return views, ids, staging


@pytest.mark.parametrize("kind", ["staging off by one element", "layers off by one element", "head runs of 24 bytes"])
@pytest.mark.parametrize("to_staging", [True, False], ids=["gather", "scatter"])
def test_never_wider_than_the_memory_is_aligned(kind, to_staging):
    views, ids, staging = misaligned(kind)
    engine_ok, staging_ok = true_alignment(views, ids, staging)
    assert min(engine_ok, staging_ok) < 16  # the case is what it says
    c = aot.compile_plan(views, ids, staging, PER, to_staging, 90)
    assert c.constexprs["ALIGN"] == 1
    assert_sound(c, views, ids, staging)
    with pytest.raises(AssertionError):
        assert_vectorised(c)


@pytest.mark.parametrize("to_staging", [True, False], ids=["gather", "scatter"])
def test_negative_control_without_the_alignment_attributes(to_staging):
    """The same aligned launch compiled without the divisibility attributes: the vector check fails."""
    views, ids, staging = case("2BTHD")
    good = aot.compile_plan(views, ids, staging, PER, to_staging, 90)
    assert good.attrs.get("engine_ptr") == [["tt.divisibility", 16]]  # derived from the tensors, not written here
    assert_vectorised(good)
    bare = aot.compile_plan(views, ids, staging, PER, to_staging, 90, alignment=False)
    assert bare.attrs == {}
    with pytest.raises(AssertionError, match="bytes per access"):
        assert_vectorised(bare)
    assert max(bare.engine_widths()) < 16


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"sm_{t}")
@pytest.mark.parametrize("model", list(aot.MODELS))
def test_each_sm_keeps_enough_bytes_in_flight(model, target):
    """Occupancy x bytes a program loads before its first store >= twice what Little's law asks of the HBM."""
    views, ids, staging, per, _, _ = aot.model_case(model)
    item = views[0].element_size()
    need = aot.hbm_need_per_sm(aot.GPUS[target])
    for to_staging in (True, False):
        c = aot.compile_plan(views, ids, staging, per, to_staging, target)
        assert_vectorised(c)
        assert_sound(c, views, ids, staging)
        assert c.local_memory_instructions() == 0  # no LDL/STL in the SASS either
        before, total = c.wide_loads_before_first_store()
        assert before == total // c.steps() > 0, "a step's loads must all be issued before its first store"
        assert c.programs_per_sm() * c.step_bytes(item) >= 2 * need, (c.programs_per_sm(), c.step_bytes(item))


def test_one_row_per_program_starves_a_sharded_head():
    """The grid before ROWS (one row per program) on a one-head shard: short of the HBM's need on an H200."""
    views, ids, staging, per, _, _ = aot.model_case("llama-3-70b TP8 shard BHTC bf16")
    c = aot.compile_plan(views, ids, staging, per, True, 90, rows=1)
    assert c.programs_per_sm() * c.step_bytes(views[0].element_size()) < aot.hbm_need_per_sm(aot.GPUS[90])
    assert max(c.engine_widths()) < 16  # 128 threads over a 128-element row: one element each


def test_the_address_check_flags_32_bit_index_math():
    """narrow_address_math must see what it looks for, or `== []` above proves nothing: 32-bit
    multiplies and pointer offsets are flagged, their 64-bit forms are not."""
    narrow = ["%12 = arith.muli %10, %11 : tensor<128xi32>",
              "%20 = tt.addptr %18, %19 : tensor<128x!tt.ptr<bf16>>, tensor<128xi32>"]
    wide = ["%13 = arith.muli %10, %11 : tensor<128xi64>", "%14 = arith.muli %a, %b : i64",
            "%21 = tt.addptr %18, %19 : tensor<128x!tt.ptr<bf16>>, tensor<128xi64>",
            "%22 = tt.addptr %ids, %c : tensor<4x!tt.ptr<i64>>, tensor<4xi32>"]  # the block-id table itself
    c = aot.Compiled(capability=90, constexprs={}, attrs={}, num_warps=4, ptx="", ttir="\n".join(narrow + wide),
                     cubin=b"", ptxas_log="", registers=0, spill_store_bytes=0, spill_load_bytes=0, stack_bytes=0,
                     local_bytes=0)
    assert c.narrow_address_math() == narrow


def test_the_report_has_one_row_per_model_and_direction():
    """`python -m pykvstore.kernels.aot`'s table (benchmarks/README.md), for sm_90 (compiled above already)."""
    rows = aot.report(capabilities=(90,), rows_options=(None,))
    assert [(r["model"], r["op"]) for r in rows] == [(m, op) for m in aot.MODELS for op in ("gather", "scatter")]
    need = round(aot.hbm_need_per_sm(aot.GPUS[90]))
    for r in rows:
        assert r["target"] == "sm_90" and r["gpu"] == aot.GPUS[90].name and r["need_per_sm"] == need
        assert r["spill_bytes"] == 0 and r["engine_widths"] == r["staging_widths"] == [16], r
        assert r["in_flight_per_sm"] == r["programs_per_sm"] * r["step_bytes"] >= 2 * need, r
