"""Triton gather/scatter on a GPU: prints one JSON object, each figure beside its baselines.

Shapes: Llama-3-8B (32 layers, 8 kv heads, head dim 128, bf16, block 16,
2,048 scattered blocks), one tensor-parallel shard of Llama-3-70B (80 layers,
1 kv head, vLLM's head-major BHTC) and DeepSeek-V3 MLA (61 layers, latent
576, bf16, block 64). Baselines in the same run: (a) one device-to-device
copy_ of a contiguous buffer of the same size — the practical limit — (b) a
per-layer torch.index_select / index_copy_ loop and (c) the same kernel with
one row per program (rows=1, the grid before ROWS). GB/s counts bytes moved
once. Also: the time for 16 blocks, where launch overhead dominates, and the
registers and spills of the kernel the launch compiled beside what
pykvstore.kernels.aot predicted for this GPU without one (benchmarks/README.md
lists the figures this run must confirm). Without a CUDA device it says so
and exits.

    python benchmarks/bench_kernels.py
"""

from __future__ import annotations

import json

import torch


def timed(fn, repeat: int = 20) -> float:
    """Median seconds of `repeat` runs, timed with CUDA events after a warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def compiled_vs_predicted(views, ids, staging, per_chunk: int) -> dict:
    """Registers and spills of the gather kernel as launched here, and as compiled ahead of time."""
    from pykvstore.kernels import aot, paged_copy

    args, kwargs, grid = aot.launch(views, ids, staging, per_chunk, True)
    k = paged_copy._paged_copy_kernel[grid](*args, **kwargs)
    major, minor = torch.cuda.get_device_capability(0)
    out = {"rows": kwargs["ROWS"], "registers": k.n_regs, "spills": k.n_spills}
    if major * 10 + minor in aot.GPUS:
        c = aot.compile_args(args, kwargs, major * 10 + minor)
        out.update(aot_registers=c.registers, aot_spill_bytes=c.spill_store_bytes + c.spill_load_bytes,
                   aot_programs_per_sm=c.programs_per_sm(), aot_engine_widths=sorted(c.engine_widths()))
    return out


def case(name: str, layers: int, dims: str, shape: tuple, blocks: int, block_size: int, per_chunk: int) -> dict:
    import pykvstore as kv
    from pykvstore.kernels import gather, scatter

    total_blocks = blocks + 64
    caches = [torch.randn(shape, device="cuda").to(torch.bfloat16) for _ in range(layers)]
    p = kv.PagedKV(caches, dims=dims)
    ids = torch.randperm(total_blocks, device="cuda")[:blocks]
    g = p.geometry
    chunks = blocks // per_chunk
    staging = torch.empty((chunks,) + g.chunk_shape(per_chunk * block_size), dtype=g.view_dtype, device="cuda")
    nbytes = staging.numel() * staging.element_size()
    flat_src, flat_dst = torch.empty_like(staging), torch.empty_like(staging)
    views = p._views

    def loop_gather():  # per layer, per plane: index_select into the staging
        s = staging.view(chunks, layers, g.planes, per_chunk, block_size, g.heads, g.head_dim)
        for layer, v in enumerate(views):
            for pl in range(g.planes):
                s[:, layer, pl].copy_(v[:, pl].index_select(0, ids).view(chunks, per_chunk, block_size, g.heads, g.head_dim))

    def loop_scatter():
        s = staging.view(chunks, layers, g.planes, per_chunk, block_size, g.heads, g.head_dim)
        for layer, v in enumerate(views):
            for pl in range(g.planes):
                v[:, pl].index_copy_(0, ids, s[:, layer, pl].reshape(blocks, block_size, g.heads, g.head_dim))

    t_copy = timed(lambda: flat_dst.copy_(flat_src))
    t_gather = timed(lambda: gather(views, ids, staging, per_chunk))
    t_scatter = timed(lambda: scatter(views, ids, staging, per_chunk))
    t_gather1 = timed(lambda: gather(views, ids, staging, per_chunk, rows=1), 10)
    t_scatter1 = timed(lambda: scatter(views, ids, staging, per_chunk, rows=1), 10)
    t_loop_g, t_loop_s = timed(loop_gather, 5), timed(loop_scatter, 5)
    small_ids = ids[:16 - 16 % per_chunk or per_chunk]
    small = torch.empty((len(small_ids) // per_chunk,) + g.chunk_shape(per_chunk * block_size), dtype=g.view_dtype,
                        device="cuda")
    t_small = timed(lambda: gather(views, small_ids, small, per_chunk))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gbps = lambda t: nbytes / t / 1e9  # noqa: E731
    kernel = compiled_vs_predicted(views, ids, staging, per_chunk)
    return {
        "case": name, "bytes": nbytes, "blocks": blocks, "block_size": block_size,
        "gather_GBps": gbps(t_gather), "scatter_GBps": gbps(t_scatter), "copy_GBps": gbps(t_copy),
        "rows1_gather_GBps": gbps(t_gather1), "rows1_scatter_GBps": gbps(t_scatter1),
        "loop_gather_GBps": gbps(t_loop_g), "loop_scatter_GBps": gbps(t_loop_s),
        "gather_vs_copy": t_copy / t_gather, "scatter_vs_copy": t_copy / t_scatter,
        "gather_vs_rows1": t_gather1 / t_gather, "scatter_vs_rows1": t_scatter1 / t_scatter,
        "gather_vs_loop": t_loop_g / t_gather, "scatter_vs_loop": t_loop_s / t_scatter,
        "targets": {"vs_copy": 0.85, "vs_loop": 2.0, "vs_rows1": 1.0},
        "programs": -(-blocks * block_size // kernel["rows"]) * layers * g.planes,
        "programs_rows1": blocks * block_size * layers * g.planes, "sms": sms,
        "kernel": kernel,
        "small_16_blocks_us": t_small * 1e6,
    }


def main() -> None:
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "kernels", "skipped": "no CUDA device"}))
        return
    out = {"bench": "kernels", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": [
        case("llama-3-8b", 32, "2BTHD", (2, 2048 + 64, 16, 8, 128), 2048, 16, 16),
        case("llama-3-70b-tp8-shard", 80, "BHTC", (2048 + 64, 1, 16, 256), 2048, 16, 16),
        case("deepseek-v3-mla", 61, "BTD", (512 + 64, 64, 576), 512, 64, 4),
    ]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
