"""Triton kernels that move KV between an engine's paged blocks and contiguous chunks.

Loaded only for device tensors (and by tests under TRITON_INTERPRET=1); set
TRITON_INTERPRET before this package is first imported. `pykvstore.kernels.aot`
(not imported here) compiles them for a named GPU on any machine and reports
what they compile to (tests/test_kernels_aot.py, benchmarks/README.md).
"""

from .paged_copy import gather, scatter

__all__ = ["gather", "scatter"]
