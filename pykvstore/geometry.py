"""What makes KV interchangeable: the Geometry (layers, planes, heads, head width,
dtype) and the dtypes a chunk may hold, each with its safetensors name and the
integer type of the same width that bytes move as.

Why apart from layout.py: a geometry describes a chunk, not an engine's tensors.
The catalog's namespaces, the CLI, sizing and the Redis landing reason about it
without any paged tensor, while layout.py (PagedKV) maps engine axes onto it and
moves blocks. Pure description: no thread of its own, no native code; it runs on
whichever thread builds or reads a geometry (mostly the caller's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from .errors import InputError, LayoutError

# torch dtype -> (name, safetensors dtype, integer dtype of the same width)
_DTYPES: dict[torch.dtype, tuple[str, str, torch.dtype]] = {
    torch.bfloat16: ("bfloat16", "BF16", torch.int16),
    torch.float16: ("float16", "F16", torch.int16),
    torch.float32: ("float32", "F32", torch.int32),
    torch.float64: ("float64", "F64", torch.int64),
    torch.float8_e4m3fn: ("float8_e4m3fn", "F8_E4M3", torch.uint8),
    torch.float8_e5m2: ("float8_e5m2", "F8_E5M2", torch.uint8),
    torch.uint8: ("uint8", "U8", torch.uint8),
    torch.int8: ("int8", "I8", torch.uint8),
}
_BY_NAME = {v[0]: k for k, v in _DTYPES.items()}


def _dtype_entry(dtype: Union[torch.dtype, str]) -> tuple[torch.dtype, tuple[str, str, torch.dtype]]:
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in _BY_NAME:
            raise InputError(f"unsupported KV dtype {dtype!r}; supported: {', '.join(sorted(_BY_NAME))}")
        dtype = _BY_NAME[name]
    if dtype not in _DTYPES:
        raise LayoutError(f"unsupported KV dtype {dtype}; supported: {', '.join(sorted(_BY_NAME))}")
    return dtype, _DTYPES[dtype]


@dataclass(frozen=True)
class Geometry:
    """What makes KV interchangeable: layer count, planes, heads, head width, dtype.

    The block size is not part of it: a chunk moves between block sizes.
    """

    layers: int
    heads: int
    head_dim: int
    dtype: str
    planes: int = 2  # 2: K and V; 1: an MLA latent

    def __post_init__(self) -> None:
        torch_dtype, (name, _, _) = _dtype_entry(self.dtype if isinstance(self.dtype, (str, torch.dtype)) else str(self.dtype))
        object.__setattr__(self, "dtype", name)
        for field in ("layers", "heads", "head_dim", "planes"):
            v = getattr(self, field)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise InputError(f"geometry {field} must be a positive integer, got {v!r}")
            object.__setattr__(self, field, int(v))
        if self.planes not in (1, 2):
            raise InputError(f"geometry planes must be 2 (K and V) or 1 (MLA latent), got {self.planes}")
        if self.planes == 1 and self.heads != 1:
            raise InputError("an MLA latent geometry (planes=1) has heads=1")

    @classmethod
    def mla(cls, layers: int, latent_dim: int, dtype: Union[torch.dtype, str]) -> "Geometry":
        """The geometry of an MLA latent cache (DeepSeek: latent_dim 576)."""
        return cls(layers=layers, heads=1, head_dim=latent_dim, dtype=dtype, planes=1)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _BY_NAME[self.dtype]

    @property
    def safetensors_dtype(self) -> str:
        return _DTYPES[self.torch_dtype][1]

    @property
    def view_dtype(self) -> torch.dtype:
        return _DTYPES[self.torch_dtype][2]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    def chunk_shape(self, tokens: int) -> tuple[int, int, int, int, int]:
        return (self.layers, self.planes, tokens, self.heads, self.head_dim)

    def chunk_bytes(self, tokens: int) -> int:
        return self.layers * self.planes * tokens * self.heads * self.head_dim * self.itemsize

    def as_params(self) -> dict[str, Any]:
        return {"layers": self.layers, "planes": self.planes, "heads": self.heads,
                "head_dim": self.head_dim, "dtype": self.dtype}
