"""vLLM general plugin: makes `"kv_connector": "PyKVStoreConnector"` work by name.

vLLM calls every `vllm.general_plugins` entry point in each of its processes
(API server, engine core, workers) before it builds a connector. `register`
adds PyKVStoreConnector to vLLM's KVConnectorFactory lazily: the connector
module (torch, the native extension) is imported only when an engine asks for
the connector. Loading the plugin twice, or beside an explicit
`kv_connector_module_path`, is harmless.

pyproject.toml declares the entry point, so `pip install pykvstore` into vLLM's
environment is all a user needs. A checkout used through PYTHONPATH has no
distribution metadata for vLLM to find; for that case this file, run as a
script with the environment's own Python, writes a minimal one:

    .venv-vllm/bin/python pykvstore/integrations/vllm_plugin.py --install /path/to/checkout

(`make vllm-env` does it). It only writes a `.dist-info` with the entry point
and a `.pth` putting the checkout on sys.path: nothing is built or copied.
"""

from __future__ import annotations

import logging

NAME = "PyKVStoreConnector"
MODULE = "pykvstore.integrations.vllm"
ENTRY_POINT = "pykvstore.integrations.vllm_plugin:register"
# The metadata the --install mode writes; not "pykvstore", so pip never takes a
# checkout on sys.path for an installed copy of the package.
SHIM = "pykvstore_vllm_checkout"

log = logging.getLogger("pykvstore")


def register() -> None:
    """Called by vLLM in every process; registers the connector class by name (idempotent)."""
    try:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    except ImportError:  # not a vLLM process, or a vLLM without v1 connectors
        return
    registry = getattr(KVConnectorFactory, "_registry", {})
    if NAME in registry:
        return
    try:
        KVConnectorFactory.register_connector(NAME, MODULE, NAME)
    except ValueError:  # registered between the check and the call (another plugin copy)
        pass


def install(checkout: str, site_dir: str | None = None) -> str:
    """Writes the entry point's metadata (and a .pth for `checkout`) into site-packages.

    Returns the .dist-info directory. Rewrites what an earlier run wrote, so a
    moved checkout is picked up by running it again.
    """
    import os
    import sysconfig

    site_dir = site_dir or sysconfig.get_paths()["purelib"]
    checkout = os.path.abspath(checkout)
    if any(ch in checkout for ch in "\r\n"):  # a .pth runs any line that starts with "import"
        raise ValueError(f"{checkout!r}: a checkout path with a line break cannot go into a .pth file")
    if not os.path.isfile(os.path.join(checkout, "pykvstore", "integrations", "vllm.py")):
        raise ValueError(f"{checkout} is not a pykvstore checkout")
    info = os.path.join(site_dir, f"{SHIM}-0.0.dist-info")
    os.makedirs(info, exist_ok=True)
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: {SHIM}\nVersion: 0.0\n"
                    "Summary: vLLM plugin entry point for the pykvstore checkout at " + checkout + "\n",
        "entry_points.txt": f"[vllm.general_plugins]\npykvstore = {ENTRY_POINT}\n",
        "INSTALLER": "pykvstore\n",
    }
    for name, text in files.items():
        with open(os.path.join(info, name), "w") as f:
            f.write(text)
    pth = os.path.join(site_dir, f"{SHIM}.pth")
    with open(pth, "w") as f:
        f.write(checkout + "\n")
    record = [os.path.join(os.path.basename(info), n) for n in (*files, "RECORD")] + [os.path.basename(pth)]
    with open(os.path.join(info, "RECORD"), "w") as f:  # lets `pip uninstall pykvstore_vllm_checkout` remove it
        f.write("".join(f"{r},,\n" for r in record))
    return info


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Make this checkout's vLLM plugin visible to this Python environment")
    ap.add_argument("--install", metavar="CHECKOUT", required=True, help="the pykvstore checkout directory")
    args = ap.parse_args()
    print("vLLM plugin metadata written to", install(args.install))
