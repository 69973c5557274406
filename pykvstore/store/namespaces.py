"""Namespaces: which (model, revision, geometry, chunk size, TP shard, hash, salt) a chunk belongs to,
and the chained chunk keys of token prefixes inside one.

Runs on any thread of the store (the caller's for lookup and put, the put
and get threads for their calls). A namespace is derived once per geometry
and registered with the bucket (and the remote tier) before its first chunk
is written, so a `lookup` without tensors can find it later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from ..bucket import Bucket
from ..errors import InputError
from ..keys import FORMAT_VERSION, as_tokens, chunk_keys_hex, namespace_digest
from ..layout import Geometry


@dataclass(frozen=True)
class Namespace:
    digest: bytes
    hex: str
    params: dict[str, Any]


class Namespaces:
    """The namespaces of one store, by geometry; `geometry` is the last one seen (or given)."""

    def __init__(self, bucket: Bucket, remote: Any, *, model: str, revision: Optional[str], chunk_tokens: int,
                 tp_rank: int, tp_size: int, hash: str, salt: Optional[str], geometry: Optional[Geometry]) -> None:  # noqa: A002
        self._bucket, self._remote = bucket, remote
        self.model, self.revision, self.chunk_tokens = model, revision, chunk_tokens
        self.tp_rank, self.tp_size, self.hash, self.salt = tp_rank, tp_size, hash, salt
        self.geometry = geometry
        self._by_geometry: dict[Geometry, Namespace] = {}
        self._registered: set[str] = set()

    def with_salt(self, salt: Optional[str]) -> "Namespaces":
        """The same namespaces for another tenant salt (digest): every key differs."""
        other = Namespaces(self._bucket, self._remote, model=self.model, revision=self.revision,
                           chunk_tokens=self.chunk_tokens, tp_rank=self.tp_rank, tp_size=self.tp_size,
                           hash=self.hash, salt=salt, geometry=self.geometry)
        other._registered = self._registered  # registration is by digest: one record for every view
        return other

    def of(self, geometry: Geometry) -> Namespace:
        ns = self._by_geometry.get(geometry)
        if ns is None:
            params = {
                "format": FORMAT_VERSION, "model": self.model, "revision": self.revision,
                "geometry": geometry.as_params(), "chunk_tokens": self.chunk_tokens,
                "tp_rank": self.tp_rank, "tp_size": self.tp_size, "hash": self.hash, "salt": self.salt,
            }
            digest = namespace_digest(params, self.hash)
            ns = self._by_geometry[geometry] = Namespace(digest, digest.hex(), params)
        return ns

    def candidates(self) -> list[Namespace]:
        """Namespaces `lookup` may answer for: the known geometry, else every stored one."""
        if self.geometry is not None:
            return [self.of(self.geometry)]
        out = []
        stored = self._bucket.namespaces(self.model)
        if self._remote is not None:
            known = {d for d, _ in stored}
            stored += [(d, json.loads(p)) for d, p in self._remote.namespaces(self.model).items() if d not in known]
        for digest, params in stored:
            try:
                g = Geometry(**params["geometry"])
            except (InputError, KeyError, TypeError):
                continue
            ns = self.of(g)
            if ns.hex == digest:  # same revision, salt, chunk size, TP shard, hash
                out.append(ns)
        return out

    def keys(self, ns: Namespace, toks: Any) -> list[str]:
        """Chained chunk keys (hex) of the full chunks of `toks` in `ns`."""
        return chunk_keys_hex(ns.digest, toks, self.chunk_tokens, self.hash)

    def hashes(self, tokens: Any) -> list[str]:
        """Chained chunk keys (hex) of the full chunks of `tokens`, in the known geometry's namespace."""
        toks = as_tokens(tokens)
        if self.geometry is None:
            raise InputError("hashes() needs the KV geometry: pass geometry= to KVStore or put/get a PagedKV first")
        return self.keys(self.of(self.geometry), toks)

    def keys_everywhere(self, tokens: Any) -> list[str]:
        """Keys of `tokens` in every namespace `lookup` would consult."""
        toks = as_tokens(tokens)
        keys: list[str] = []
        for ns in self.candidates():
            keys += self.keys(ns, toks)
        return keys

    def register(self, ns: Namespace) -> None:
        """Makes `ns` known to the bucket (and the remote tier) before a chunk of it is written."""
        if ns.hex not in self._registered:
            self._bucket.add_namespace(ns.hex, self.model, ns.params)
            if self._remote is not None:
                self._remote.add_namespace(self.model, ns.hex, json.dumps(ns.params, sort_keys=True))
            self._registered.add(ns.hex)
