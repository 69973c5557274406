"""The --install mode of the vLLM plugin writes a .pth and a .dist-info, and nothing a Python start-up would run."""

import os
import subprocess
import sys

import pytest

from pykvstore.integrations.vllm_plugin import SHIM, install


def fake_checkout(path):
    os.makedirs(os.path.join(path, "pykvstore", "integrations"))
    open(os.path.join(path, "pykvstore", "integrations", "vllm.py"), "w").close()
    return path


def test_a_checkout_path_with_a_line_break_is_refused_not_run_at_startup(tmp_path):
    marker = tmp_path / "ran"
    evil = fake_checkout(str(tmp_path / f"co\nimport pathlib; pathlib.Path({str(marker)!r}).touch()\n"))
    site = tmp_path / "site"
    site.mkdir()
    with pytest.raises(ValueError, match="line break"):
        install(evil, str(site))
    subprocess.run([sys.executable, "-c", f"import site; site.addsitedir({str(site)!r})"], check=True)
    assert not marker.exists() and not os.listdir(site)


def test_installing_again_replaces_the_checkout(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(fake_checkout(str(tmp_path / "a")), str(site))
    install(fake_checkout(str(tmp_path / "b")), str(site))
    assert sorted(os.listdir(site)) == [f"{SHIM}-0.0.dist-info", f"{SHIM}.pth"]
    assert (site / f"{SHIM}.pth").read_text() == str(tmp_path / "b") + "\n"


def test_a_directory_that_is_not_a_checkout_is_refused_and_nothing_written(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "elsewhere" / "pykvstore").mkdir(parents=True)  # no integrations/vllm.py
    with pytest.raises(ValueError, match="not a pykvstore checkout"):
        install(str(tmp_path / "elsewhere"), str(site))
    assert not os.listdir(site)


def test_register_outside_vllm_does_nothing_and_raises_nothing():
    """vLLM's entry point may be loaded by a Python without vLLM (pip's own metadata scans, say)."""
    import importlib.util

    from pykvstore.integrations.vllm_plugin import register

    assert importlib.util.find_spec("vllm") is None  # this test runs in the project's venv, without vLLM
    assert register() is None


def test_the_script_installs_the_plugin_into_its_own_python(tmp_path):
    """What `make vllm-env` runs: the environment's Python, as a script, with the checkout path. A fresh
    venv then sees the entry point vLLM loads, and finds pykvstore in the checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True, timeout=120)
    py = str(tmp_path / "env" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([py, os.path.join(root, "pykvstore", "integrations", "vllm_plugin.py"), "--install", root],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "vLLM plugin metadata written to" in r.stdout and str(tmp_path / "env") in r.stdout
    check = ("import importlib.metadata as m, importlib.util as u; "  # no import of pykvstore: numpy is not here
             "print([e.value for e in m.entry_points(group='vllm.general_plugins')]); print(u.find_spec('pykvstore').origin)")
    r = subprocess.run([py, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    entry, where = r.stdout.splitlines()
    assert entry == "['pykvstore.integrations.vllm_plugin:register']"
    assert where == os.path.join(root, "pykvstore", "__init__.py")  # the checkout, through the .pth
