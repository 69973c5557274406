"""Runs a script in the vLLM venv's Python and hands back the JSON of its RESULT line.

The connector tests that need vLLM's own objects (its config, the connector
factory, its Scheduler) run them in a process of .venv-vllm (the scripts
tests/vllm_connector_paths.py and tests/vllm_review_paths.py), not in the
test's own environment; each script prints one line `RESULT {json}`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Union

import pytest

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("PYKVSTORE_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
needs_vllm = pytest.mark.skipif(not Path(VLLM_PYTHON).exists(),
                                reason="no vLLM environment (make vllm-env builds .venv-vllm)")


def run_script(path: Union[str, os.PathLike], *args: Any) -> dict:
    """`VLLM_PYTHON path args...` with this checkout importable; its RESULT json (the output's
    tails in the failure when there is none)."""
    r = subprocess.run([VLLM_PYTHON, str(path), *map(str, args)], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(line[len("RESULT "):])
