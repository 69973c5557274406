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
