"""Installing from one checkout into several Python environments, alternately.

pip builds in a temporary environment whose cmake and ninja are deleted after
each install; a CMake cache left in the checkout that points at them used to
fail the next install ("Running '.../ninja' '--version' failed"). Here each
install finds cmake and ninja in a directory that is deleted right after it,
so every later install meets a cache whose tools are gone, offline (the
installs run without build isolation and without an index). Two throwaway
environments take turns: A, B, then A again; each must import its own
pykvstore._C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _copy_checkout(dst: Path) -> None:
    """The files a build reads, copied so the test never touches the real checkout's build/."""
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("CMakeLists.txt", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for name in ("csrc", "pykvstore"):
        shutil.copytree(REPO / name, dst / name, ignore=skip)


def _venv(path: Path) -> Path:
    """A bare environment that sees this interpreter's packages (pip, setuptools,
    pybind11, torch) through a .pth line, but not its pykvstore."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "zz_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def _install(py: Path, src: Path, tools: Path) -> None:
    tools.mkdir()
    for tool in ("cmake", "ninja", "make"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    env = dict(os.environ, PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", PYKVSTORE_CUDA="OFF",
               CMAKE_BUILD_PARALLEL_LEVEL="2", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("CMAKE_ARGS", None)
    try:
        r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", str(src)], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"install into {py.parent.parent.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    finally:
        shutil.rmtree(tools)  # as pip removes its build environment


def _imported_from(py: Path, cwd: Path) -> str:
    r = subprocess.run([str(py), "-c", "import pykvstore._C as c; print(c.__file__)"], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


def test_alternating_installs_into_two_environments(tmp_path: Path) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on PATH")
    src = tmp_path / "checkout"
    src.mkdir()
    _copy_checkout(src)
    envs = {name: _venv(tmp_path / f"venv-{name}") for name in ("a", "b")}
    for i, name in enumerate(("a", "b", "a")):
        _install(envs[name], src, tmp_path / f"tools-{i}")
        where = _imported_from(envs[name], tmp_path)
        assert where.startswith(str(tmp_path / f"venv-{name}")), where
    # one build directory per environment, each with a cache the last install set up
    caches = sorted((src / "build").glob("cmake-*/CMakeCache.txt"))
    assert len(caches) == 2
