"""Builds pykvstore._C with CMake. Sources, flags and CUDA detection live in
CMakeLists.txt; this file only drives it.

Environment: PYKVSTORE_CUDA=AUTO|ON|OFF, CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL.

Each Python environment builds in its own directory, build/cmake-<hash of
its prefix and ABI>, kept between installs (a rebuild recompiles what
changed). A cache whose cmake or ninja is gone, as pip's temporary build
environments are after each install, is set up again instead of failing.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: str = ".") -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(Path(source_dir).resolve())


def build_dir_of_this_python(source_dir: str) -> Path:
    """The CMake build directory of the running interpreter's environment: CMake
    caches the interpreter it found, so environments never share one."""
    ident = f"{sys.prefix}\0{sys.executable}\0{sysconfig.get_config_var('SOABI')}"
    return Path(source_dir) / "build" / f"cmake-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def drop_stale_cache(build_dir: Path, generator: str) -> None:
    """Forgets a CMake cache that names another generator, or a cmake or make
    program that no longer exists (pip deletes its build environment after
    each install); the compiled objects stay for the next build to reuse."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return
    entries = {}
    for line in cache.read_text(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "//")):
            entries[name.split(":")[0]] = value
    if entries.get("CMAKE_GENERATOR", generator) != generator:
        shutil.rmtree(build_dir)
    elif any(entries.get(k) and not Path(entries[k]).exists() for k in ("CMAKE_COMMAND", "CMAKE_MAKE_PROGRAM")):
        cache.unlink()


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = "Debug" if self.debug else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPYKVSTORE_CUDA={os.environ.get('PYKVSTORE_CUDA', 'AUTO').upper()}",
        ]
        ninja = shutil.which("ninja")
        generator = "Ninja" if ninja else "Unix Makefiles"
        args += [f"-G{generator}"] + ([f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else [])
        args += [a for a in os.environ.get("CMAKE_ARGS", "").split() if a]
        build_dir = build_dir_of_this_python(ext.source_dir)
        drop_stale_cache(build_dir, generator)
        build_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.source_dir, *args], cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("pykvstore._C")], cmdclass={"build_ext": CMakeBuild})
