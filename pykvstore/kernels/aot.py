"""What the paged-copy kernel compiles to on a named GPU, learnt on any machine.

Triton compiles ahead of time for a target it is told (no driver, no device):
this module specialises the kernel exactly as triton's launcher would for the
arguments `paged_copy._plan` produces (pointer alignment, integers divisible
by 16, integers equal to 1), compiles it for sm_80, sm_90 or sm_100, runs the
ptxas that triton bundles with `-v`, and reads the PTX, TTIR and SASS. From
that it reports what matters on first contact with a GPU: access widths,
spills, registers, how many programs an SM holds and the bytes each keeps in
flight. tests/test_kernels_aot.py asserts on it; `python -m
pykvstore.kernels.aot` prints the per-target table of benchmarks/README.md.

Runs on the caller's thread; spawns ptxas and cuobjdump. Importable under
TRITON_INTERPRET=1 (it compiles the kernel's Python function, not the
interpreter's wrapper).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource
from triton.compiler import compile as triton_compile
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from . import paged_copy


@dataclass(frozen=True)
class Gpu:
    """The figures of one GPU per compute capability that the launch analysis uses."""

    name: str
    capability: int
    sms: int
    hbm_bytes_per_s: float


GPUS = {
    80: Gpu("A100-SXM4-80GB", 80, 108, 2.039e12),
    90: Gpu("H200-SXM", 90, 132, 4.8e12),  # H100-SXM: 132 SMs, 3.35 TB/s
    100: Gpu("B200", 100, 148, 8.0e12),
}
# Per SM on sm_80, sm_90 and sm_100 alike (CUDA programming guide, compute capabilities table).
THREADS_PER_SM = 2048
PROGRAMS_PER_SM = 32
REGS_PER_SM = 65536
REG_UNIT = 256  # registers are granted per warp in units of 256
# Loaded HBM latency assumed for Little's law (unloaded is about 0.5-0.7 us on
# A100/H100); the first GPU run measures the bandwidth this implies.
LOADED_LATENCY_S = 1e-6
REG_BOUND = 96  # <= 96 registers: at least 5 programs of 128 threads per SM (benchmarks/README.md)


def _jit() -> JITFunction:
    k = paged_copy._paged_copy_kernel
    return k if isinstance(k, JITFunction) else JITFunction(k.fn)  # under TRITON_INTERPRET=1


_KERNEL = None


def kernel() -> JITFunction:
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _jit()
    return _KERNEL


def launch(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int,
           to_staging: bool, skip: int = 0, rows: Optional[int] = None) -> tuple[tuple, dict, tuple]:
    """The positional args, keyword args and grid gather (to_staging) or scatter would launch with."""
    base, layer_off, args, consts, grid = paged_copy._plan(views, block_ids, staging, blocks_per_chunk, rows)
    kwargs = dict(TO_STAGING=to_staging, num_warps=paged_copy.NUM_WARPS, **consts)
    return (base, staging, layer_off, block_ids, *args, 0 if to_staging else skip), kwargs, grid


def specialise(args: tuple, kwargs: dict, capability: int, *, alignment: bool = True):
    """signature, constexprs, attrs and options, derived by triton's own launcher code from the arguments.

    alignment=False withholds the divisibility attributes (the negative control).
    """
    fn = kernel()
    backend = make_backend(GPUTarget("cuda", capability, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    if not alignment:
        attrs = {k: [] for k in attrs}
    return signature, constexprs, attrs, options


_TOOLS = Path(get_ptxas(80).path).parent
_WIDTH = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*)")
_SASS = re.compile(r"\b(LDG|STG|LDL|STL)(\.[\w]+)*")


@dataclass
class Compiled:
    """One compiled kernel: its code and what ptxas and cuobjdump say about it."""

    capability: int
    constexprs: dict
    attrs: dict
    num_warps: int
    ptx: str
    ttir: str
    cubin: bytes
    ptxas_log: str
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    local_bytes: int  # cuobjdump LOCAL + STACK of the cubin triton built (spills live in the stack frame)
    extra: dict = field(default_factory=dict)

    def accesses(self, op: str) -> list[int]:
        """Bytes per global `op` ('ld' or 'st') instruction in the PTX, leaving out the 64-bit index loads."""
        out = []
        for kind, mods in _WIDTH.findall(self.ptx):
            if kind != op:
                continue
            parts = mods.split(".")
            lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v[248]", p)), 1)
            bits = next((int(p[1:]) for p in parts if re.fullmatch(r"[bsuf](8|16|32|64)", p)), 0)
            if bits == 64 and lanes == 1:
                continue  # block ids and layer offsets (int64); data views are at most 32-bit
            out.append(lanes * bits // 8)
        return out

    def engine_widths(self) -> set[int]:
        return set(self.accesses("ld" if self.constexprs["TO_STAGING"] else "st"))

    def staging_widths(self) -> set[int]:
        return set(self.accesses("st" if self.constexprs["TO_STAGING"] else "ld"))

    @property
    def sass(self) -> str:
        """The cubin disassembled (on first use: nvdisasm is the slow step)."""
        if "sass" not in self.extra:
            with tempfile.TemporaryDirectory() as d:
                Path(d, "k.cubin").write_bytes(self.cubin)
                self.extra["sass"] = _run([str(_TOOLS / "cuobjdump"), "-sass", str(Path(d, "k.cubin"))]).stdout
        return self.extra["sass"]

    def wide_loads_before_first_store(self) -> tuple[int, int]:
        """(128-bit loads before the first global store, all 128-bit loads) in the SASS."""
        before = total = 0
        stored = False
        for m in _SASS.finditer(self.sass):
            text = m.group(0)
            if text.startswith("STG"):
                stored = True
            elif text.startswith("LDG") and text.endswith(".128"):
                total += 1
                before += not stored
        return before, total

    def local_memory_instructions(self) -> int:
        """LDL/STL in the SASS plus .local in the PTX."""
        return sum(1 for m in _SASS.finditer(self.sass) if m.group(1) in ("LDL", "STL")) + self.ptx.count(".local")

    def narrow_address_math(self) -> list[str]:
        """TTIR lines that multiply in 32 bits or offset a data pointer by 32-bit offsets."""
        bad = []
        for line in self.ttir.splitlines():
            if "arith.muli" in line and not re.search(r":\s*(tensor<[\dx]*i64>|i64)\s", line + " "):
                bad.append(line.strip())
            if "tt.addptr" in line and "x!tt.ptr<i64>" not in line and "tensor<" in line \
                    and not re.search(r",\s*tensor<[\dx]+i64>", line):
                bad.append(line.strip())
        return bad

    def programs_per_sm(self) -> int:
        warps = self.num_warps
        per_warp = -(-self.registers * 32 // REG_UNIT) * REG_UNIT
        by_regs = REGS_PER_SM // per_warp // warps
        return min(PROGRAMS_PER_SM, THREADS_PER_SM // (32 * warps), by_regs)

    def steps(self) -> int:
        """Tiles a row takes: each step's loads are issued before its stores."""
        c = self.constexprs
        return -(-c["HEADS"] * c["HEAD_DIM"] // c["TILE"])

    def step_bytes(self, item: int) -> int:
        """Data bytes one program loads per step: ROWS rows of min(row, tile) elements."""
        c = self.constexprs
        return c["ROWS"] * min(c["HEADS"] * c["HEAD_DIM"], c["TILE"]) * item


_CACHE: dict[str, Compiled] = {}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, **kw)


def compile_args(args: tuple, kwargs: dict, capability: int, *, alignment: bool = True) -> Compiled:
    """Compiles the kernel for `capability` as the launcher would for these arguments (cached per process)."""
    signature, constexprs, attrs, options = specialise(args, kwargs, capability, alignment=alignment)
    key = repr((capability, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                options.num_warps))
    if key in _CACHE:
        return _CACHE[key]
    target = GPUTarget("cuda", capability, 32)
    k = triton_compile(ASTSource(kernel(), signature, constexprs, attrs), target=target, options=options.__dict__)
    ptx, cubin = k.asm["ptx"], k.asm["cubin"]
    arch = sm_arch_from_capability(capability)
    with tempfile.TemporaryDirectory() as d:
        src, out, cub = Path(d, "k.ptx"), Path(d, "k.o"), Path(d, "triton.cubin")
        src.write_text(ptx)
        cub.write_bytes(cubin)
        # The flags triton's make_cubin passes, with -v for the resource report.
        log = _run([get_ptxas(capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}",
                    str(src), "-o", str(out)]).stderr
        usage = _run([str(_TOOLS / "cuobjdump"), "--dump-resource-usage", str(cub)]).stdout
    num = lambda pat, text: int(m.group(1)) if (m := re.search(pat, text)) else -1  # noqa: E731
    names = list(kernel().arg_names)
    c = Compiled(
        capability=capability,
        constexprs={names[k[0]]: v for k, v in constexprs.items()},
        attrs={names[k[0]]: v for k, v in attrs.items() if v},
        num_warps=options.num_warps, ptx=ptx, ttir=k.asm["ttir"], cubin=cubin, ptxas_log=log,
        registers=num(r"Used (\d+) registers", log),
        spill_store_bytes=num(r"(\d+) bytes spill stores", log),
        spill_load_bytes=num(r"(\d+) bytes spill loads", log),
        stack_bytes=num(r"(\d+) bytes stack frame", log),
        local_bytes=num(r"LOCAL:(\d+)", usage) + num(r"STACK:(\d+)", usage),
        extra={"cubin_registers": num(r"REG:(\d+)", usage), "ptxas": get_ptxas(capability).version},
    )
    _CACHE[key] = c
    return c


def compile_plan(views: list[torch.Tensor], block_ids: torch.Tensor, staging: torch.Tensor, blocks_per_chunk: int,
                 to_staging: bool, capability: int, *, rows: Optional[int] = None, alignment: bool = True) -> Compiled:
    """gather (to_staging) or scatter compiled for `capability`, specialised for these tensors."""
    args, kwargs, _ = launch(views, block_ids, staging, blocks_per_chunk, to_staging, rows=rows)
    return compile_args(args, kwargs, capability, alignment=alignment)


def hbm_need_per_sm(gpu: Gpu) -> float:
    """Read bytes in flight per SM for a copy to run at the HBM's peak (Little's law).

    A copy reads and writes equal bytes, so reads are half the traffic; stores are
    posted and need no round trip.
    """
    return gpu.hbm_bytes_per_s / 2 * LOADED_LATENCY_S / gpu.sms


# Engine shapes of real models (dims, per-layer shape with 8 blocks, layers, dtype, block size).
MODELS: dict[str, tuple[str, tuple, int, torch.dtype, int]] = {
    "llama-3-8b 2BTHD bf16": ("2BTHD", (2, 8, 16, 8, 128), 32, torch.bfloat16, 16),
    "llama-3-8b BHTC bf16 (vLLM)": ("BHTC", (8, 8, 16, 256), 32, torch.bfloat16, 16),
    "llama-2-7b MHA 2BTHD bf16": ("2BTHD", (2, 8, 16, 32, 128), 32, torch.bfloat16, 16),  # 4 steps of 1024
    "llama-3-70b TP8 shard BHTC bf16": ("BHTC", (8, 1, 16, 256), 80, torch.bfloat16, 16),
    "deepseek-v3 MLA BTD bf16": ("BTD", (8, 64, 576), 61, torch.bfloat16, 64),
    "llama-3-8b 2BTHD fp8": ("2BTHD", (2, 8, 16, 8, 128), 32, torch.float8_e4m3fn, 16),
    "llama-3-8b 2BTHD fp32": ("2BTHD", (2, 8, 16, 8, 128), 32, torch.float32, 16),
}


def model_case(name: str, blocks_per_chunk: int = 4):
    """(views, block ids, staging, blocks per chunk, block size, layers) for one of MODELS, on the CPU."""
    from ..layout import PagedKV

    dims, shape, layers, dtype, bs = MODELS[name]
    p = PagedKV([torch.zeros(shape, dtype=dtype) for _ in range(layers)], dims)
    ids = p.block_ids(list(range(blocks_per_chunk)), blocks_per_chunk)
    staging = torch.empty((1,) + p.geometry.chunk_shape(blocks_per_chunk * bs), dtype=p.geometry.view_dtype)
    return p._views, ids, staging, blocks_per_chunk, bs, layers


def report(capabilities=(80, 90, 100), rows_options=(1, None)) -> list[dict[str, Any]]:
    """One row per (model, target, direction, rows): the figures of benchmarks/README.md."""
    out = []
    for name in MODELS:
        views, ids, staging, per, bs, layers = model_case(name)
        item = views[0].element_size()
        for cap in capabilities:
            gpu = GPUS[cap]
            for rows in rows_options:
                for to_staging in (True, False):
                    c = compile_plan(views, ids, staging, per, to_staging, cap, rows=rows)
                    step = c.step_bytes(item)
                    before, total = c.wide_loads_before_first_store()
                    planes = views[0].shape[1]
                    tokens = 2048 * bs if "MLA" not in name else 512 * bs
                    out.append({
                        "model": name, "target": f"sm_{cap}", "gpu": gpu.name,
                        "op": "gather" if to_staging else "scatter", "rows": c.constexprs["ROWS"], "steps": c.steps(),
                        "registers": c.registers, "spill_bytes": c.spill_store_bytes + c.spill_load_bytes,
                        "engine_widths": sorted(c.engine_widths()), "staging_widths": sorted(c.staging_widths()),
                        "wide_loads_before_first_store": f"{before}/{total}",
                        "programs_per_sm": c.programs_per_sm(), "step_bytes": step,
                        "in_flight_per_sm": c.programs_per_sm() * step,
                        "need_per_sm": round(hbm_need_per_sm(gpu)),
                        "programs_per_launch": -(-tokens // c.constexprs["ROWS"]) * layers * planes,
                        "ptxas": c.extra["ptxas"],
                    })
    return out


def main() -> None:
    print(json.dumps({"kernels_aot": report()}, indent=1))


if __name__ == "__main__":
    main()
