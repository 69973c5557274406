"""The CUDA sources compiled for sm_80, sm_90 and sm_100 on a CPU, warnings as errors.

nvcc (whatever toolkit is installed; CUDA 13.0 here) builds csrc/cuda/*.cu for
the three targets; cuobjdump (bundled with triton) reads back one image per
target and the kernels each holds. The copy engine calls
`cudaMemcpyBatchAsync`, whose signature changed between CUDA 12.8 and 13:
copy_engine.cu is compiled against the installed toolkit's header and against
CUDA 12.8's real header (the nvidia-cuda-runtime-cu12 12.8 wheel, host
compiler only: the file has no device code), and each branch of its version
guard is shown to fail against the other header.
"""

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
TARGETS = [80, 90, 100]
GENCODE = [f"-gencode=arch=compute_{t},code=sm_{t}" for t in TARGETS] + ["-gencode=arch=compute_100,code=compute_100"]
STRICT = ["-std=c++17", "-Werror", "all-warnings", "-Xcompiler=-Wall,-Wextra,-Werror", f"-I{ROOT / 'csrc/include'}"]
SOURCES = sorted((ROOT / "csrc/cuda").glob("*.cu"))
CU128 = Path(sysconfig.get_paths()["purelib"]) / "nvidia/cuda_runtime/include"

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


def cuobjdump() -> str:
    triton = pytest.importorskip("triton.backends.nvidia.compiler")
    return str(Path(triton.get_ptxas(80).path).parent / "cuobjdump")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Every .cu compiled once for the three targets (plus sm_100 PTX), and nvcc's output."""
    out = tmp_path_factory.mktemp("cuda")
    r = run([NVCC, "-c", *STRICT, "--resource-usage", *GENCODE, *SOURCES, "-odir", out], cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
    return {s.name: out / (s.stem + ".o") for s in SOURCES}, r.stdout + r.stderr


def toolkit_include() -> Path:
    """The installed toolkit's include directory, as nvcc itself names it."""
    out = run([NVCC, "--dryrun", "-c", "x.cu"]).stderr
    return Path(re.search(r'INCLUDES="-I([^"]+)"', out).group(1)).resolve()


def nvcc_release() -> tuple[int, int]:
    m = re.search(r"release (\d+)\.(\d+)", run([NVCC, "--version"]).stdout)
    return int(m.group(1)), int(m.group(2))


def test_every_source_has_an_image_for_each_target(objects):
    objs, _ = objects
    assert set(objs) == {"copy_engine.cu", "runtime_info.cu"}
    for name, obj in objs.items():
        listed = run([cuobjdump(), "--list-elf", obj]).stdout
        assert sorted(int(a) for a in re.findall(r"\.sm_(\d+)\.cubin", listed)) == TARGETS, (name, listed)


def test_no_kernel_runs_on_the_sms(objects):
    """The copy engine drives DMA only: copy engines do not steal SMs from prefill (design.md).

    A kernel added here must come with its own register and spill bounds in this test.
    """
    objs, log = objects
    for name, obj in objs.items():
        usage = run([cuobjdump(), "--dump-resource-usage", obj]).stdout
        images = [re.search(r"arch = sm_(\d+)", part).group(1) for part in usage.split("Fatbin elf code")[1:]]
        assert sorted(images, key=int) == [str(t) for t in TARGETS], usage
        assert re.findall(r"Function (\S+):", usage) == [], f"{name} now holds kernels:\n{usage}"
    assert "spill" not in log and "Used" not in log  # ptxas reported no function either


def test_warnings_are_errors_under_these_flags(tmp_path):
    """Negative control: the same flags reject a host warning and a device warning."""
    host = tmp_path / "host.cu"
    host.write_text("int f(int x) { int unused; return x; }\n")
    device = tmp_path / "device.cu"
    device.write_text("__global__ void k(int* p) { int unused; p[0] = 1; }\n")
    for src in (host, device):
        r = run([NVCC, "-c", *STRICT, GENCODE[1], src, "-o", tmp_path / "x.o"])
        assert r.returncode != 0 and "unused" in r.stdout + r.stderr, r.stdout + r.stderr


def branch(guard: str) -> str:
    """copy_engine.cu with its CUDA 13 guard forced true or false."""
    text = (ROOT / "csrc/cuda/copy_engine.cu").read_text()
    assert text.count("#if CUDART_VERSION >= 13000") == 1
    return text.replace("#if CUDART_VERSION >= 13000", f"#if {guard}")


def host_compile(tmp_path, source: str, include: Path) -> subprocess.CompletedProcess:
    """g++ -fsyntax-only of a host-only .cu against the runtime headers in `include`."""
    src = tmp_path / "copy_engine_host.cpp"
    src.write_text(source)
    return run(["g++", "-x", "c++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                "-isystem", include, "-isystem", toolkit_include(),  # crt/ (the 12.8 wheel has none)
                f"-I{ROOT / 'csrc/include'}", src])


@pytest.mark.skipif(not (CU128 / "cuda_runtime_api.h").exists(), reason="nvidia-cuda-runtime-cu12 12.8 not installed")
def test_batch_copy_compiles_against_cuda_12_8_and_the_installed_toolkit(tmp_path):
    version = (CU128 / "cuda_runtime_api.h").read_text()
    assert "#define CUDART_VERSION  12080" in version  # the 12.8 header, 9-argument cudaMemcpyBatchAsync
    assert re.search(r"cudaMemcpyBatchAsync\(void \*\*dsts.*size_t \*failIdx, cudaStream_t stream\)", version)
    source = (ROOT / "csrc/cuda/copy_engine.cu").read_text()
    r = host_compile(tmp_path, source, CU128)
    assert r.returncode == 0, r.stderr
    # The 13 call against 12.8's header fails: the guard is what makes it compile.
    r = host_compile(tmp_path, branch("1"), CU128)
    assert r.returncode != 0 and "cudaMemcpyBatchAsync" in r.stderr, r.stderr
    installed = toolkit_include()
    if nvcc_release() >= (13, 0):  # the 8-argument signature is the installed one
        r = host_compile(tmp_path, branch("0"), installed)
        assert r.returncode != 0 and "cudaMemcpyBatchAsync" in r.stderr, r.stderr
